"""Gatekeeper as operators run it: a real process, its log, and a clean stop on a signal."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from harness.matrix_user import MatrixUser, wait_until
from tests.conftest import Homeserver, gatekeeper_config

GATEKEEPER = str(Path(sys.executable).parent / "gatekeeper")


async def ready(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/_matrix/mau/ready"
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


@pytest.mark.parametrize(
    ("command", "log_format", "stop_signal"),
    [
        ([GATEKEEPER], "text", signal.SIGTERM),
        ([sys.executable, "-m", "gatekeeper"], "json", signal.SIGINT),
    ],
)
async def test_runs_logs_no_secrets_and_stops_cleanly(
    synapse: Homeserver,
    alice: MatrixUser,
    tmp_path: Path,
    command: list[str],
    log_format: str,
    stop_signal: signal.Signals,
) -> None:
    config = gatekeeper_config(
        synapse,
        f"sqlite:{tmp_path / 'gatekeeper.db'}",
        tmp_path,
        logging={"level": "DEBUG", "format": log_format},
    )
    process = subprocess.Popen(
        [*command, "-c", str(tmp_path / "config.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await wait_until(lambda: ready(config.appservice.port), timeout=60)
    finally:
        process.send_signal(stop_signal)
        stdout, stderr = await asyncio.to_thread(process.communicate, timeout=30)

    assert process.returncode == 0, stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    messages = [json.loads(line)["message"] for line in lines] if log_format == "json" else lines
    assert any("Gatekeeper is ready" in m for m in messages)
    assert "Gatekeeper stopped" in messages[-1]
    for secret in config.secrets():
        assert secret not in stderr


async def test_unreachable_database_exits_with_its_code(
    synapse: Homeserver, tmp_path: Path
) -> None:
    gatekeeper_config(synapse, "postgres://nobody@127.0.0.1:1/none", tmp_path)
    result = subprocess.run(
        [GATEKEEPER, "-c", str(tmp_path / "config.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 11
    assert result.stderr.strip().splitlines()[-1].startswith("gatekeeper: database:")
