"""A throwaway Synapse (from PyPI) on loopback, for the test suite and `make demo`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from ruamel.yaml import YAML

# Generous limits: tests and demos send bursts that Synapse's defaults would throttle.
UNLIMITED = {"per_second": 10000, "burst_count": 10000}


class SynapseError(Exception):
    """The throwaway Synapse did not start or refused a setup call."""


@dataclass(frozen=True)
class SynapseSettings:
    directory: Path
    server_name: str
    port: int
    registration_files: tuple[Path, ...] = ()
    # What Gatekeeper's encryption needs: to-device messages, device lists and key counts
    # pushed in appservice transactions (see docs/operator-guide.md).
    encryption_features: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.directory / "homeserver.yaml"

    @property
    def pid_file(self) -> Path:
        """Written while the process runs: a later run finds a Synapse left behind by it."""
        return self.directory / "homeserver.pid"


def write_config(settings: SynapseSettings) -> str:
    """Write homeserver.yaml (once) and its keys; return the registration shared secret."""
    directory = settings.directory
    directory.mkdir(parents=True, exist_ok=True)
    yaml = YAML(typ="safe", pure=True)
    if settings.config_file.exists():
        existing = yaml.load(settings.config_file.read_text())
        return str(existing["registration_shared_secret"])
    shared_secret = secrets.token_urlsafe(32)
    log_config = directory / "log.yaml"
    yaml.dump(
        {
            "version": 1,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "plain",
                    "filename": str(directory / "homeserver.log"),
                }
            },
            "root": {"level": "WARNING", "handlers": ["file"]},
            # How events reach the appservice (retries, back-off) is what tests need to read.
            "loggers": {"synapse.appservice": {"level": "INFO"}},
            "disable_existing_loggers": False,
        },
        log_config,
    )
    config: dict[str, Any] = {
        "server_name": settings.server_name,
        "public_baseurl": settings.url + "/",
        "pid_file": str(settings.pid_file),
        "listeners": [
            {
                "port": settings.port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
        "log_config": str(log_config),
        "media_store_path": str(directory / "media"),
        "signing_key_path": str(directory / "signing.key"),
        "registration_shared_secret": shared_secret,
        "macaroon_secret_key": secrets.token_urlsafe(32),
        "form_secret": secrets.token_urlsafe(32),
        "report_stats": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "enable_registration": False,
        "app_service_config_files": [str(p) for p in settings.registration_files],
        "rc_message": UNLIMITED,
        "rc_registration": UNLIMITED,
        "rc_login": {
            "address": UNLIMITED,
            "account": UNLIMITED,
            "failed_attempts": UNLIMITED,
        },
        "rc_joins": {"local": UNLIMITED, "remote": UNLIMITED},
        "rc_invites": {"per_room": UNLIMITED, "per_user": UNLIMITED, "per_issuer": UNLIMITED},
        "rc_admin_redaction": UNLIMITED,
        # Tests create a room each, and encrypted ones ask for keys often.
        "rc_room_creation": UNLIMITED,
        "rc_key_requests": UNLIMITED,
        "rc_3pid_validation": UNLIMITED,
        "federation_domain_whitelist": [],
        "experimental_features": {
            "msc2409_to_device_messages_enabled": settings.encryption_features,
            "msc3202_transaction_extensions": settings.encryption_features,
        },
    }
    yaml.dump(config, settings.config_file)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "synapse.app.homeserver",
            "-c",
            str(settings.config_file),
            "--generate-keys",
        ],
        check=True,
        capture_output=True,
        cwd=directory,
    )
    return shared_secret


class SynapseServer:
    """One Synapse process; `start` returns once it answers on its client API."""

    def __init__(self, settings: SynapseSettings) -> None:
        self.settings = settings
        self.shared_secret = write_config(settings)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.settings.url

    async def start(self, timeout: float = 90.0) -> None:
        log_file = open(self.settings.directory / "stdout.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.settings.config_file)],
            cwd=self.settings.directory,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        # Synapse writes its pid file only when it daemonizes; this one is in the foreground.
        self.settings.pid_file.write_text(f"{self.process.pid}\n")
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SynapseError(
                        f"Synapse exited with {self.process.returncode}; see "
                        f"{self.settings.directory / 'stdout.log'} and homeserver.log"
                    )
                try:
                    async with session.get(f"{self.url}/_matrix/client/versions") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        await self.stop()
        raise SynapseError(f"Synapse did not answer on {self.url} within {timeout:.0f} s")

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        self.settings.pid_file.unlink(missing_ok=True)

    async def register_user(
        self, localpart: str, password: str, *, admin: bool = False
    ) -> dict[str, Any]:
        """Create a user by shared-secret registration; returns Synapse's answer."""
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        async with aiohttp.ClientSession() as session:
            async with session.get(endpoint) as response:
                nonce = (await response.json())["nonce"]
            signed = "\x00".join((nonce, localpart, password, "admin" if admin else "notadmin"))
            mac = hmac.new(self.shared_secret.encode(), signed.encode(), hashlib.sha1)
            body = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
            async with session.post(endpoint, json=body) as response:
                answer: dict[str, Any] = await response.json()
                if response.status != 200:
                    raise SynapseError(f"registering {localpart}: {answer}")
                return answer
