"""`gatekeeper generate-registration`: Synapse's registration and the tokens in the config."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from gatekeeper.appservice.cli import main

EXAMPLE = Path(__file__).parent.parent / "example-config.yaml"


def generate(config: Path, output: Path) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it, in a process of its own."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gatekeeper",
            "generate-registration",
            "-c",
            str(config),
            "-o",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def generate_here(config: Path, output: Path) -> int:
    """The same command in this process, a second faster; pytest's capsys has its output."""
    return main(["generate-registration", "-c", str(config), "-o", str(output)])


def test_writes_registration_and_tokens(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(EXAMPLE.read_text())
    output = tmp_path / "registration.yaml"

    result = generate(config, output)

    assert result.returncode == 0, result.stderr
    registration = YAML(typ="safe").load(output.read_text())
    settings = YAML(typ="safe").load(config.read_text())["appservice"]
    assert registration["as_token"] == settings["as_token"] != "generate"
    assert registration["hs_token"] == settings["hs_token"] != "generate"
    assert registration["as_token"] != registration["hs_token"]
    assert len(registration["as_token"]) >= 43  # at least 256 bits, URL-safe base64
    assert registration["id"] == "gatekeeper"
    assert registration["url"] == "http://127.0.0.1:29330"
    assert registration["sender_localpart"] == "gatekeeper"
    assert registration["rate_limited"] is False
    # What the bot's encryption needs from Synapse (homeserver/encryption.py).
    assert registration["receive_ephemeral"] is True
    assert registration["de.sorunome.msc2409.push_ephemeral"] is True
    assert registration["org.matrix.msc3202"] is True
    assert registration["io.element.msc4190"] is True
    assert registration["namespaces"]["users"] == [
        {"regex": r"^@gatekeeper:example\.org$", "exclusive": True}
    ]
    # The operator's comments survive the rewrite, and only the owner may read secrets.
    assert "# Required. The server name" in config.read_text()
    for path in (config, output):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_each_run_makes_new_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(EXAMPLE.read_text())
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    assert generate_here(config, first) == 0
    assert generate_here(config, second) == 0
    tokens = [YAML(typ="safe").load(p.read_text())["as_token"] for p in (first, second)]
    assert tokens[0] != tokens[1]


def test_invalid_config_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    text = EXAMPLE.read_text().replace("  port: 29330", "  prot: 29330")
    config.write_text(text)

    assert generate_here(config, tmp_path / "registration.yaml") == 10
    assert "appservice.prot: unknown key" in capsys.readouterr().err
    assert config.read_text() == text
    assert not (tmp_path / "registration.yaml").exists()


def test_fills_a_generated_encryption_key_and_keeps_real_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(EXAMPLE.read_text())
    assert generate_here(config, tmp_path / "registration.yaml") == 0
    keys = YAML(typ="safe").load(config.read_text())["security"]["encryption_keys"]
    assert len(keys) == 1
    assert keys[0] != "generate"

    assert generate_here(config, tmp_path / "registration.yaml") == 0
    assert YAML(typ="safe").load(config.read_text())["security"]["encryption_keys"] == keys
