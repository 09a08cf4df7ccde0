"""`make demo`: a throwaway Synapse and Gatekeeper on SQLite under .demo/, until Ctrl-C.

A second run reuses .demo/ (same accounts, same room). Delete the folder to start afresh.
Ctrl-C, SIGTERM and SIGHUP (the terminal closed) stop both; a Synapse that a killed demo
left behind is stopped by the next run. GATEKEEPER_DEMO_DIR puts the folder elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import aiohttp
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope
from ruamel.yaml import YAML

from gatekeeper.appservice.homeserver.registration_file import generate_registration
from harness.matrix_user import MatrixUser
from harness.net import command_line, free_port, listening_pid, parent_pid, port_is_free
from harness.synapse import SynapseError, SynapseServer, SynapseSettings

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("GATEKEEPER_DEMO_DIR") or ROOT / ".demo").resolve()
SERVER_NAME = "localhost"
ADMIN = "admin"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
            raise SystemExit(f"demo: the {name} port {port} is in use {_holder(port)}")
    return ports


def _holder(port: int) -> str:
    pid = listening_pid(port)
    if pid is None:
        return (
            "by a process this user cannot see (`sudo ss -ltnp` names it); "
            "is another `make demo` running?"
        )
    return f"by PID {pid} ({(command_line(pid) or '?')[:120]}); stop it, or delete {DEMO}/ports"


def _is_demo_synapse(pid: int, settings: SynapseSettings) -> bool:
    """The process is a Synapse running on this demo's config (not a reused PID)."""
    args = command_line(pid) or ""
    return "synapse.app.homeserver" in args and str(settings.config_file) in args


async def stop_stale_synapse(directory: Path) -> None:
    """Stop the demo's Synapse that an earlier run left behind (its pid file is still there).

    A Synapse whose parent is a live demo belongs to a demo still running: not stale."""
    settings = SynapseSettings(directory, SERVER_NAME, port=0)  # only its paths are used
    try:
        pid = int(settings.pid_file.read_text())
    except (OSError, ValueError):
        return
    if not _is_demo_synapse(pid, settings):
        settings.pid_file.unlink(missing_ok=True)  # that process is gone; the PID may be reused
        return
    parent = parent_pid(pid)
    if parent is not None and "harness.demo" in (command_line(parent) or ""):
        raise SystemExit(f"demo: another `make demo` is running (PID {parent}); stop it first")
    _say(f"demo: stopping the Synapse (PID {pid}) that an earlier demo left running …")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _is_demo_synapse(pid, settings):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.1)
    settings.pid_file.unlink(missing_ok=True)


def _say(text: str, error: bool = False) -> None:
    """Print, unless the terminal is gone (after SIGHUP a write fails with EIO)."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr if error else sys.stdout, flush=True)


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
        _say(text)
        with self.log_path.open("a") as log:
            log.write(text)
        return "250 OK"


def _gatekeeper_config(
    synapse: SynapseServer, ports: dict[str, int], encrypted: bool, after_approval: bool
) -> Path:
    """Write .demo/gatekeeper/config.yaml and its registration the first time; the password
    mode follows the flag on every run."""
    directory = DEMO / "gatekeeper"
    config_path = directory / "config.yaml"
    if config_path.exists():
        _set_password_mode(config_path, after_approval)
        was = YAML(typ="safe").load(config_path.read_text())["admin_room"]["encrypt_created_room"]
        if was != encrypted:
            _say(
                f"Note: this demo's admin room was made {'en' if was else 'un'}encrypted on its "
                "first run and stays so; delete .demo/ to start afresh."
            )
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
    # Plaintext by default, so that any client (even curl) can follow the room.
    config["admin_room"]["encrypt_created_room"] = encrypted
    config["registration"]["password"] = _mode(after_approval)
    with config_path.open("w") as file:
        yaml.dump(config, file)
    generate_registration(config_path, directory / "registration.yaml")
    return config_path


def _mode(after_approval: bool) -> str:
    return "after_approval" if after_approval else "at_sign_up"


def _set_password_mode(config_path: Path, after_approval: bool) -> None:
    yaml = YAML()
    config = yaml.load(config_path.read_text())
    if config["registration"].get("password", "at_sign_up") != _mode(after_approval):
        config["registration"]["password"] = _mode(after_approval)
        with config_path.open("w") as file:
            yaml.dump(config, file)


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


async def _wait_for_web(web_url: str, gatekeeper: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        while gatekeeper.poll() is None:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{web_url}/sign-up") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise SystemExit("Gatekeeper stopped; see .demo/gatekeeper/gatekeeper.log")


async def main(encrypted: bool, after_approval: bool) -> int:
    # Every stop signal, from the start: whatever has started by then is stopped again.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, main_task.cancel)
    try:
        return await _run(encrypted, after_approval)
    except asyncio.CancelledError:
        return 0


async def _run(encrypted: bool, after_approval: bool) -> int:
    DEMO.mkdir(exist_ok=True)
    await stop_stale_synapse(DEMO / "synapse")
    ports = _ports()
    synapse_url = f"http://127.0.0.1:{ports['synapse']}"
    registration = DEMO / "gatekeeper" / "registration.yaml"
    synapse = SynapseServer(
        SynapseSettings(DEMO / "synapse", SERVER_NAME, ports["synapse"], (registration,))
    )
    config_path = _gatekeeper_config(synapse, ports, encrypted, after_approval)
    mail = Controller(PrintMail(DEMO / "mail.log"), hostname="127.0.0.1", port=ports["smtp"])
    mail.start()
    password = _read_or_create(DEMO / "admin-password", lambda: secrets.token_urlsafe(12))
    gatekeeper: subprocess.Popen[bytes] | None = None
    try:
        _say(f"Starting Synapse on {synapse_url} …")
        try:
            await synapse.start()
        except SynapseError as error:
            _say(f"demo: {error}", error=True)
            return 1
        with contextlib.suppress(SynapseError):  # already there on a second run
            await synapse.register_user(ADMIN, password, admin=True)
        _say("Starting Gatekeeper …")
        with (config_path.parent / "gatekeeper.log").open("ab") as log_file:
            gatekeeper = subprocess.Popen(
                [sys.executable, "-m", "gatekeeper", "-c", str(config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        admin = await MatrixUser.login(synapse_url, ADMIN, password)
        room_id = await _admin_room(admin, gatekeeper)
        web_url = f"http://127.0.0.1:{ports['web']}"
        await admin.close()
        # On a second run the room is known at once, before Gatekeeper's web is up.
        await _wait_for_web(web_url, gatekeeper)
        _say(
            "\nGatekeeper demo is running. Open any Matrix client (e.g. app.element.io does not"
            " reach loopback; use a desktop client) and sign in:\n"
            f"  homeserver URL : {synapse_url}\n"
            f"  admin user     : @{ADMIN}:{SERVER_NAME}\n"
            f"  password       : {password}\n"
            f"  admin room     : {room_id}  ({'end-to-end encrypted; ' if encrypted else ''}"
            "send !help there)\n"
            f"Sign-up page   : {web_url}/sign-up  (log in at {web_url}/login)\n"
            + (
                "Passwords      : chosen after approval, with the welcome mail's link\n"
                if after_approval
                else ""
            )
            + f"Mails (confirmation links) are shown here and kept in {DEMO}/mail.log.\n"
            f"Logs: {DEMO}/synapse/homeserver.log, {config_path.parent}/gatekeeper.log\n"
            "Press Ctrl-C (or close the terminal) to stop both.",
        )
        await asyncio.to_thread(gatekeeper.wait)
        _say("Gatekeeper stopped by itself; see its log.", error=True)
        return 1
    finally:
        # A second signal must not cut the clean-up short.
        for signum in STOP_SIGNALS:
            asyncio.get_running_loop().add_signal_handler(signum, lambda: None)
        _say("\nStopping …")
        if gatekeeper is not None and gatekeeper.poll() is None:
            gatekeeper.terminate()
            try:
                await asyncio.to_thread(gatekeeper.wait, 30)
            except subprocess.TimeoutExpired:
                gatekeeper.kill()
        await synapse.stop()
        mail.stop()
        _say("Stopped.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A throwaway Synapse and Gatekeeper.")
    parser.add_argument(
        "--encrypted",
        action="store_true",
        help="the admin room the bot creates is end-to-end encrypted (try it with Element)",
    )
    parser.add_argument(
        "--after-approval",
        action="store_true",
        help="registration.password: after_approval (the sign-up asks for no password)",
    )
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.encrypted, arguments.after_approval)))
