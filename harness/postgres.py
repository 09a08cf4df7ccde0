"""A private, throwaway PostgreSQL cluster that a test may stop and start at will.

The suite's shared PostgreSQL serves everyone at once; restarting it would break other
tests. This one is Debian's binaries on a free loopback port with its data in a temp
directory, trusted (no password) and gone with the directory.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.net import free_port

# initdb and postgres refuse to run as root; as root we act as this system user.
SERVICE_USER = "postgres"


class PostgresError(Exception):
    """The private cluster could not be created, started or stopped."""


def postgres_bin_dir() -> Path:
    """Debian's newest installed server binaries (/usr/lib/postgresql/<major>/bin)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise PostgresError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
    return candidates[-1].parent


class PrivatePostgres:
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="gatekeeper-postgres-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.bin = postgres_bin_dir()
        self._as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://{SERVICE_USER}@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return self.url.rsplit("/", 1)[0] + "/" + name

    async def start(self) -> None:
        """Create the cluster on first use, then start it and wait until it takes queries."""
        if not self.data.exists():
            await self._create()
        await self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.directory / "server.log"))

    async def stop(self) -> None:
        # fast: what an operator's `systemctl restart` does; open sessions are cut off.
        await self._pg_ctl("stop", "-w", "-m", "fast")

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def destroy(self) -> None:
        """Stop the server if it runs, and remove every file of the cluster."""
        if (self.data / "postmaster.pid").exists():
            await self._pg_ctl("stop", "-w", "-m", "immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    async def _create(self) -> None:
        if self._as_root:
            account = pwd.getpwnam(SERVICE_USER)
            shutil.chown(self.directory, account.pw_uid, account.pw_gid)
        await self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SERVICE_USER,
            "--auth=trust",
            "--no-sync",  # a throwaway cluster: speed over durability of the files
            "-E",
            "UTF8",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.directory}'\n"
                "fsync = off\n"
            )

    async def _pg_ctl(self, *args: str) -> None:
        await self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), *args)

    async def _run(self, *command: str) -> None:
        if self._as_root:
            command = ("runuser", "-u", SERVICE_USER, "--", *command)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise PostgresError(
                f"{' '.join(command)} exited with {process.returncode}: "
                f"{output.decode(errors='replace').strip()[-2000:]}"
            )
