"""`make demo` (harness/demo.py) stops what it started, even when its terminal closes, and
the next run gets past a Synapse that a killed run left behind (issue 11, item 6)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import demo
from harness.net import command_line, free_port
from harness.synapse import SynapseServer, SynapseSettings

# The demo starts a real Synapse of its own: these belong with the Synapse tests, not in
# the fast layer (make test-fast).
pytestmark = pytest.mark.synapse

ROOT = Path(__file__).resolve().parent.parent


def processes_naming(text: str) -> list[int]:
    """PIDs of running processes whose command line holds `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and text in (command_line(int(entry.name)) or ""):
            found.append(int(entry.name))
    return found


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    """A demo folder of the test's own; whatever still runs from it is killed afterwards."""
    directory = tmp_path / "demo"
    yield directory
    for pid in processes_naming(str(directory)):
        os.kill(pid, signal.SIGKILL)


async def test_sighup_stops_the_demo_and_its_synapse(demo_dir: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harness.demo",
        cwd=ROOT,
        env={**os.environ, "GATEKEEPER_DEMO_DIR": str(demo_dir)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = b""
    async with asyncio.timeout(120):
        while b"Gatekeeper demo is running" not in output:
            line = await process.stdout.readline()
            assert line, output.decode()
            output += line
    synapse_pid = int((demo_dir / "synapse" / "homeserver.pid").read_text())
    assert "synapse.app.homeserver" in (command_line(synapse_pid) or "")

    process.send_signal(signal.SIGHUP)  # the terminal closed
    async with asyncio.timeout(60):
        rest, _ = await process.communicate()
    assert process.returncode == 0, rest.decode()
    assert command_line(synapse_pid) is None
    assert not (demo_dir / "synapse" / "homeserver.pid").exists()
    assert processes_naming(str(demo_dir)) == []  # neither Synapse nor Gatekeeper


async def test_a_synapse_left_behind_is_stopped_by_the_next_run(demo_dir: Path) -> None:
    directory = demo_dir / "synapse"
    left_behind = SynapseServer(SynapseSettings(directory, demo.SERVER_NAME, free_port()))
    await left_behind.start()
    orphan, left_behind.process = left_behind.process, None
    assert orphan is not None  # its demo was killed: nobody is left to stop it

    await demo.stop_stale_synapse(directory)
    assert orphan.wait(timeout=5) is not None  # it had exited; this reaps it
    assert not left_behind.settings.pid_file.exists()


async def test_a_pid_file_naming_another_process_kills_nothing(demo_dir: Path) -> None:
    directory = demo_dir / "synapse"
    directory.mkdir(parents=True)
    # Not a Synapse on this demo's config: a PID reused by something else.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (directory / "homeserver.pid").write_text(f"{bystander.pid}\n")
        await demo.stop_stale_synapse(directory)
        assert bystander.poll() is None
        assert not (directory / "homeserver.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_port_in_use_names_the_process_that_holds_it(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
            "print('listening', flush=True); time.sleep(60)",
            str(port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "listening"
        demo_dir.mkdir()
        (demo_dir / "ports").write_text(f"{port} {free_port()} {free_port()} {free_port()}")
        monkeypatch.setattr(demo, "DEMO", demo_dir)
        with pytest.raises(SystemExit) as raised:
            demo._ports()
        assert f"the synapse port {port} is in use by PID {holder.pid}" in str(raised.value)
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its pipe
