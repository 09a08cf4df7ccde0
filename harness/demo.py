"""`make demo`: a throwaway Synapse and Gatekeeper on SQLite under .demo/, until Ctrl-C.

A second run reuses .demo/ (same accounts, same room). Delete the folder to start afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import subprocess
import sys
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope
from ruamel.yaml import YAML

from appservice.registration import generate_registration
from harness.matrix_user import MatrixUser
from harness.net import free_port, port_is_free
from harness.synapse import SynapseError, SynapseServer, SynapseSettings

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
SERVER_NAME = "localhost"
ADMIN = "admin"


PORT_NAMES = ("synapse", "appservice", "web", "smtp")
PREFERRED_PORTS = (8008, 29330, 29331, 2525)


def _ports() -> dict[str, int]:
    """The demo's ports, chosen once (the preferred ones when free) and kept in .demo/."""
    saved = _read_or_create(
        DEMO / "ports", lambda: " ".join(str(free_port(p)) for p in PREFERRED_PORTS)
    ).split()
    if len(saved) != len(PORT_NAMES):
        raise SystemExit("demo: .demo/ is from an older version; delete it and run again")
    ports = dict(zip(PORT_NAMES, (int(p) for p in saved), strict=True))
    for name, port in ports.items():
        if not port_is_free(port):
            raise SystemExit(
                f"demo: the {name} port {port} is in use: is another `make demo` running?"
            )
    return ports


def _read_or_create(path: Path, make: object) -> str:
    if not path.exists():
        path.write_text(str(make() if callable(make) else make))
    return path.read_text().strip()


class PrintMail:
    """The demo's mail server: shows every mail in the terminal (and keeps it in a file)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        message = BytesParser(policy=default_policy).parsebytes(envelope.original_content or b"")
        assert isinstance(message, EmailMessage)
        text = (
            f"\n--- mail to {message['To']}: {message['Subject']}\n"
            f"{message.get_content().strip()}\n---\n"
        )
        print(text, flush=True)
        with self.log_path.open("a") as log:
            log.write(text)
        return "250 OK"


def _gatekeeper_config(synapse: SynapseServer, ports: dict[str, int]) -> Path:
    """Write .demo/gatekeeper/config.yaml and its registration the first time."""
    directory = DEMO / "gatekeeper"
    config_path = directory / "config.yaml"
    if config_path.exists():
        return config_path
    directory.mkdir(parents=True, exist_ok=True)
    yaml = YAML()
    config = yaml.load((ROOT / "appservice" / "example-config.yaml").read_text())
    config["homeserver"]["address"] = synapse.url
    config["homeserver"]["domain"] = SERVER_NAME
    config["homeserver"]["registration_shared_secret"] = synapse.shared_secret
    config["appservice"]["address"] = f"http://127.0.0.1:{ports['appservice']}"
    config["appservice"]["port"] = ports["appservice"]
    config["web"]["port"] = ports["web"]
    config["web"]["public_base_url"] = f"http://127.0.0.1:{ports['web']}"
    config["smtp"]["port"] = ports["smtp"]
    config["smtp"]["from_address"] = "Gatekeeper demo <gatekeeper@localhost>"
    config["admin_room"]["admins"] = [f"@{ADMIN}:{SERVER_NAME}"]
    with config_path.open("w") as file:
        yaml.dump(config, file)
    generate_registration(config_path, directory / "registration.yaml")
    return config_path


async def _admin_room(admin: MatrixUser, gatekeeper: subprocess.Popen[bytes]) -> str:
    """The room the bot made; the admin joins it so any client shows it at once."""
    joined = await admin.api.get_joined_rooms()
    bot = f"@gatekeeper:{SERVER_NAME}"
    for room_id in joined:
        if bot in await admin.api.get_joined_members(room_id):
            return str(room_id)
    while not admin.invites:
        if gatekeeper.poll() is not None:
            raise SystemExit("Gatekeeper stopped; see .demo/gatekeeper/gatekeeper.log")
        await admin.sync_once(1000)
    room_id = admin.invites.pop()
    await admin.api.join_room_by_id(room_id)
    return str(room_id)


async def main() -> int:
    DEMO.mkdir(exist_ok=True)
    ports = _ports()
    synapse_url = f"http://127.0.0.1:{ports['synapse']}"
    registration = DEMO / "gatekeeper" / "registration.yaml"
    synapse = SynapseServer(
        SynapseSettings(DEMO / "synapse", SERVER_NAME, ports["synapse"], (registration,))
    )
    config_path = _gatekeeper_config(synapse, ports)
    mail = Controller(PrintMail(DEMO / "mail.log"), hostname="127.0.0.1", port=ports["smtp"])
    mail.start()
    password = _read_or_create(DEMO / "admin-password", lambda: secrets.token_urlsafe(12))
    print(f"Starting Synapse on {synapse_url} …", flush=True)
    try:
        await synapse.start()
    except SynapseError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    gatekeeper: subprocess.Popen[bytes] | None = None
    try:
        with contextlib.suppress(SynapseError):  # already there on a second run
            await synapse.register_user(ADMIN, password, admin=True)
        print("Starting Gatekeeper …", flush=True)
        with (config_path.parent / "gatekeeper.log").open("ab") as log_file:
            gatekeeper = subprocess.Popen(
                [sys.executable, "-m", "appservice", "-c", str(config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        admin = await MatrixUser.login(synapse_url, ADMIN, password)
        room_id = await _admin_room(admin, gatekeeper)
        web_url = f"http://127.0.0.1:{ports['web']}"
        await admin.close()
        print(
            "\nGatekeeper demo is running. Open any Matrix client (e.g. app.element.io does not"
            " reach loopback; use a desktop client) and sign in:\n"
            f"  homeserver URL : {synapse_url}\n"
            f"  admin user     : @{ADMIN}:{SERVER_NAME}\n"
            f"  password       : {password}\n"
            f"  admin room     : {room_id}  (send !help there)\n"
            f"Sign-up page   : {web_url}/sign-up  (log in at {web_url}/login)\n"
            "Mails (confirmation links) are shown here and kept in .demo/mail.log.\n"
            f"Logs: {DEMO}/synapse/homeserver.log, {config_path.parent}/gatekeeper.log\n"
            "Press Ctrl-C to stop both.",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        while not stop.is_set() and gatekeeper.poll() is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1)
        if gatekeeper.poll() is not None:
            print("Gatekeeper stopped by itself; see its log.", file=sys.stderr)
            return 1
        return 0
    finally:
        print("\nStopping …", flush=True)
        if gatekeeper is not None and gatekeeper.poll() is None:
            gatekeeper.terminate()
            gatekeeper.wait(30)
        await synapse.stop()
        mail.stop()
        print("Stopped.")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
