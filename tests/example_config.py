"""The example config as a `Config`, for unit tests that need one without a file or peers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from ruamel.yaml import YAML

from gatekeeper.appservice.config import Config, parse_config

EXAMPLE = Path(__file__).parent.parent / "example-config.yaml"


def example_config(**sections: dict[str, Any]) -> Config:
    """example-config.yaml with its 'generate' secrets filled and per-test overrides."""
    data = YAML(typ="safe").load(EXAMPLE.read_text())
    data["appservice"]["as_token"] = "as-token-for-tests"
    data["appservice"]["hs_token"] = "hs-token-for-tests"
    data["security"]["encryption_keys"] = [Fernet.generate_key().decode()]
    for name, values in sections.items():
        data[name].update(values)
    return parse_config(data, EXAMPLE.parent)
