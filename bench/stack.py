"""What a benchmark runs against: a throwaway Synapse, a fresh database, a mail sink and
Gatekeeper in a process of its own (so its peak RSS can be read), plus an admin in the
admin room."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from mautrix.types import RoomID
from mautrix.util.async_db import Database, Scheme
from ruamel.yaml import YAML

from bench.instrumented import Counts
from gatekeeper.appservice.config import Config, DatabaseConfig, load_config
from gatekeeper.appservice.storage.database import create_database
from harness.matrix_user import MatrixUser
from harness.net import free_port
from harness.synapse import SynapseServer, SynapseSettings

ROOT = Path(__file__).resolve().parent.parent
SERVER_NAME = "bench.test"
ADMIN = "benchadmin"
ADMIN_PASSWORD = "bench admin password"  # noqa: S105 (a throwaway homeserver's user)
ADMIN_API_TOKEN = "bench-admin-api-token"  # noqa: S105
POSTGRES_SERVER = os.environ.get(
    "GATEKEEPER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"
)
# The bench's load comes from loopback, as if through a reverse proxy that names each
# client in X-Forwarded-For: the per-address limits hold as configured (see load.py).
PROXY = "127.0.0.1"


class MailSink:
    """An SMTP server that only counts what it is sent."""

    def __init__(self) -> None:
        self.received = 0
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.received += 1
        return "250 OK"


@dataclass
class Stack:
    directory: Path
    synapse: SynapseServer
    gatekeeper: Process
    web_url: str
    db: Database
    admin: MatrixUser
    room_id: RoomID
    mail: MailSink
    profile_to: Path | None
    # CPU seconds of the Gatekeeper processes that restart_gatekeeper() stopped.
    retired_cpu: float = 0.0
    # The last CPU seconds seen of each PostgreSQL backend of this database, kept once it
    # ends (a pool closes idle connections, a restarted Gatekeeper opens new ones).
    backend_cpu: dict[int, float] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.directory / "gatekeeper.log"

    @property
    def counts_file(self) -> Path:
        return self.directory / "counts"

    async def restart_gatekeeper(self, admin_room: dict[str, object]) -> None:
        """Stop Gatekeeper and start it again on the same database, with these admin room
        settings; under the profiler, its report goes to a file of its own (-restarted)."""
        self.retired_cpu += _cpu_seconds(self.gatekeeper.pid)
        await _stop(self.gatekeeper)
        yaml = YAML()
        data = yaml.load(self.config_path.read_text())
        data["admin_room"].update(admin_room)
        with self.config_path.open("w") as file:
            yaml.dump(data, file)
        profile_to = self.profile_to
        if profile_to is not None:
            profile_to = profile_to.with_name(f"{profile_to.stem}-restarted{profile_to.suffix}")
        self.gatekeeper = await _launch_gatekeeper(self.directory, profile_to)
        await _wait_for_web(self.gatekeeper, self.web_url, self.log_path)

    @property
    def config_path(self) -> Path:
        return self.directory / "gatekeeper.yaml"

    def config(self) -> Config:
        """Gatekeeper's configuration, as it read it."""
        return load_config(self.config_path)

    @property
    def bot(self) -> str:
        return f"@gatekeeper:{SERVER_NAME}"

    def counts(self) -> Counts:
        """The argon2 hashes Gatekeeper computed and the HTTP requests it sent so far."""
        return Counts.read(self.counts_file)

    async def database_bytes(self) -> int:
        """The database's size on disk: PostgreSQL's pg_database_size, or SQLite's file
        with its write-ahead log."""
        if self.db.scheme == Scheme.SQLITE:
            return sum(path.stat().st_size for path in self.directory.glob("gatekeeper.db*"))
        return int(await self.db.fetchval("SELECT pg_database_size(current_database())"))

    def log_lines(self) -> list[str]:
        """The lines of every Gatekeeper log of this run (a second Gatekeeper's too)."""
        return [
            line
            for path in sorted(self.directory.glob("**/gatekeeper.log"))
            for line in path.read_text(errors="replace").splitlines()
        ]

    def reset_peak_rss(self) -> None:
        # Writing 5 to clear_refs resets the kernel's high-water mark (VmHWM) of the process.
        Path(f"/proc/{self.gatekeeper.pid}/clear_refs").write_text("5")

    async def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by Gatekeeper, Synapse and this database's PostgreSQL backends."""
        assert self.synapse.process is not None
        used = {
            "gatekeeper": self.retired_cpu + _cpu_seconds(self.gatekeeper.pid),
            "synapse": _cpu_seconds(self.synapse.process.pid),
        }
        if self.db.scheme != Scheme.SQLITE:
            backends = await self.db.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            )
            for row in backends:
                pid = row["pid"]
                self.backend_cpu[pid] = max(self.backend_cpu.get(pid, 0.0), _cpu_seconds(pid))
            used["postgres"] = sum(self.backend_cpu.values())
        return used

    async def settle(self, timeout: float = 300) -> None:
        """Wait until Gatekeeper has caught up (every notice posted, no account waiting), so
        one scenario's backlog does not weigh on the next."""
        deadline = time.monotonic() + timeout
        while await self.db.fetchval(
            "SELECT COUNT(*) FROM registration_request"
            " WHERE (status='pending' AND notice_event_id IS NULL)"
            " OR (status='approved' AND matrix_status IN ('pending', 'processing'))"
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Gatekeeper did not catch up in {timeout:.0f} s")
            await asyncio.sleep(0.1)

    def rss_mb(self, field: str = "VmRSS") -> float:
        """The Gatekeeper process's resident memory now (VmRSS) or at its peak (VmHWM)."""
        for line in Path(f"/proc/{self.gatekeeper.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} in /proc/{self.gatekeeper.pid}/status")


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    # After the command name: utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gatekeeper_config(
    path: Path, synapse: SynapseServer, db_url: str, smtp_port: int, web_port: int
) -> None:
    yaml = YAML()
    data = yaml.load((ROOT / "example-config.yaml").read_text())
    appservice_port = free_port()
    data["homeserver"].update(
        {
            "address": synapse.url,
            "domain": SERVER_NAME,
            "registration_shared_secret": synapse.shared_secret,
        }
    )
    data["appservice"].update(
        {"address": f"http://127.0.0.1:{appservice_port}", "port": appservice_port}
    )
    data["database"]["url"] = db_url
    data["admin_room"]["admins"] = [f"@{ADMIN}:{SERVER_NAME}"]
    data["admin_room"]["encrypt_created_room"] = False  # the bench's client reads plaintext
    data["web"].update(
        {
            "port": web_port,
            "public_base_url": f"http://127.0.0.1:{web_port}",
            "admin_api_token": ADMIN_API_TOKEN,
        }
    )
    data["smtp"]["port"] = smtp_port
    # Sign-ups go straight to the admins: the notices and logins measured need confirmed
    # requests, and clicking 10,000 mail links would measure the bench, not Gatekeeper.
    data["registration"]["require_email_confirmation"] = False
    data["registration"]["retry_initial_seconds"] = 0.5
    data["web"]["trusted_proxies"] = [PROXY]
    data["logging"]["level"] = "WARNING"
    with path.open("w") as file:
        yaml.dump(data, file)


@contextlib.asynccontextmanager
async def _database(sqlite: bool, directory: Path) -> AsyncIterator[str]:
    """A fresh database URL: a SQLite file, or a PostgreSQL database dropped afterwards."""
    if sqlite:
        yield f"sqlite:{directory / 'gatekeeper.db'}"
        return
    name = f"gatekeeper_bench_{secrets.token_hex(4)}"
    server = await asyncpg.connect(f"{POSTGRES_SERVER}/postgres")
    await server.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        await server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await server.close()


@contextlib.asynccontextmanager
async def twin_gatekeeper(stack: Stack) -> AsyncIterator[tuple[str, Database]]:
    """A second Gatekeeper beside the stack's, with the same config but on the other kind
    of database (fresh) and its own ports, so that a scenario can compare the two databases
    in one run; its web URL and its database. Synapse sends it nothing (the registration
    names the first), and it keeps its admin room plaintext."""
    directory = stack.directory / "twin"
    directory.mkdir(exist_ok=True)
    async with _database(stack.db.scheme != Scheme.SQLITE, directory) as db_url:
        yaml = YAML()
        data = yaml.load(stack.config_path.read_text())
        web_port, appservice_port = free_port(), free_port()
        data["database"]["url"] = db_url
        data["web"].update({"port": web_port, "public_base_url": f"http://127.0.0.1:{web_port}"})
        data["appservice"].update(
            {"address": f"http://127.0.0.1:{appservice_port}", "port": appservice_port}
        )
        data["admin_room"]["encryption"] = False
        with (directory / "gatekeeper.yaml").open("w") as file:
            yaml.dump(data, file)
        process = await _launch_gatekeeper(directory, None)
        db = create_database(DatabaseConfig(url=db_url))
        db_started = False
        try:
            web_url = f"http://127.0.0.1:{web_port}"
            await _wait_for_web(process, web_url, directory / "gatekeeper.log")
            await db.start()
            db_started = True
            yield web_url, db
        finally:
            await _stop(process)
            if db_started:
                await db.stop()


async def _wait_for_web(process: asyncio.subprocess.Process, url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"Gatekeeper exited with {process.returncode}; see {log}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/api/csrf") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"Gatekeeper did not open its web endpoint; see {log}")


async def _join_admin_room(admin: MatrixUser) -> RoomID:
    deadline = time.monotonic() + 60
    while not admin.invites:
        if time.monotonic() > deadline:
            raise RuntimeError("the bot never invited the admin to its room")
        await admin.sync_once()
    room_id = admin.invites.pop()
    await admin.api.join_room_by_id(room_id)
    return room_id


async def _launch_gatekeeper(directory: Path, profile_to: Path | None) -> Process:
    """Gatekeeper (instrumented) on the config in `directory`, its output in its log."""
    with (directory / "gatekeeper.log").open("ab") as log_file:
        profiler = ("-m", "pyinstrument", "-r", "text", "-o", str(profile_to))
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *(profiler if profile_to else ()),
            *("-m", "bench.instrumented", str(directory / "counts")),
            *("-c", str(directory / "gatekeeper.yaml")),
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )


async def _stop(gatekeeper: Process) -> None:
    gatekeeper.terminate()
    await asyncio.wait_for(gatekeeper.wait(), 30)


@contextlib.asynccontextmanager
async def running_stack(
    directory: Path, sqlite: bool, profile_to: Path | None = None
) -> AsyncIterator[Stack]:
    """Everything started; with `profile_to`, Gatekeeper runs under pyinstrument, whose
    report is written there when it stops."""
    config = directory / "gatekeeper.yaml"
    registration = directory / "registration.yaml"
    synapse = SynapseServer(
        SynapseSettings(directory / "synapse", SERVER_NAME, free_port(), (registration,))
    )
    mail = MailSink()
    web_port = free_port()
    async with _database(sqlite, directory) as db_url:
        _gatekeeper_config(config, synapse, db_url, mail.controller.port, web_port)
        generate = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gatekeeper", "generate-registration"),
            *("-c", str(config), "-o", str(registration)),
            stdout=asyncio.subprocess.DEVNULL,
        )
        if await generate.wait() != 0:
            raise RuntimeError("gatekeeper generate-registration failed")
        mail.controller.start()
        await synapse.start()
        gatekeeper = await _launch_gatekeeper(directory, profile_to)
        db = create_database(DatabaseConfig(url=db_url))
        admin: MatrixUser | None = None
        stack: Stack | None = None
        try:
            await synapse.register_user(ADMIN, ADMIN_PASSWORD, admin=True)
            admin = await MatrixUser.login(synapse.url, ADMIN, ADMIN_PASSWORD)
            web_url = f"http://127.0.0.1:{web_port}"
            await _wait_for_web(gatekeeper, web_url, directory / "gatekeeper.log")
            room_id = await _join_admin_room(admin)
            await db.start()
            stack = Stack(
                directory, synapse, gatekeeper, web_url, db, admin, room_id, mail, profile_to
            )
            yield stack
        finally:
            if admin is not None:
                await admin.close()
            await _stop(gatekeeper if stack is None else stack.gatekeeper)
            if stack is not None:
                await db.stop()
            await synapse.stop()
            mail.controller.stop()
