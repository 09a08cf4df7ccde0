"""`gatekeeper generate-registration`: Synapse's registration file, and its tokens in the config."""

from __future__ import annotations

import os
import re
import secrets
from io import StringIO
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from ruamel.yaml import YAML

from gatekeeper.appservice.config import GENERATE, Config, ConfigError, parse_config, read_yaml


def new_token() -> str:
    return secrets.token_urlsafe(48)


def _fill_generated_key(key: object) -> object:
    return Fernet.generate_key().decode() if key == GENERATE else key


def registration_for(config: Config) -> dict[str, Any]:
    bot = re.escape(config.bot_user_id)
    return {
        "id": config.appservice.id,
        "url": config.appservice.address,
        "as_token": config.appservice.as_token.get_secret_value(),
        "hs_token": config.appservice.hs_token.get_secret_value(),
        "sender_localpart": config.appservice.bot_username,
        "rate_limited": False,
        "namespaces": {
            "users": [{"regex": f"^{bot}$", "exclusive": True}],
            "aliases": [],
            "rooms": [],
        },
        # For encrypted admin rooms (homeserver/encryption.py): Synapse pushes to-device
        # messages (MSC2409), device lists and key counts (MSC3202) in transactions, and
        # lets the as_token create the bot's device (MSC4190).
        "receive_ephemeral": True,
        "de.sorunome.msc2409.push_ephemeral": True,
        "org.matrix.msc3202": True,
        "io.element.msc4190": True,
    }


def _write_private(path: Path, text: str) -> None:
    """Write a file that holds secrets: readable by its owner only, replaced atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    temporary.replace(path)


def generate_registration(config_path: Path, output: Path) -> Config:
    """Put fresh tokens in the config file (comments kept) and write the registration."""
    tokens = {"as_token": new_token(), "hs_token": new_token()}
    data = read_yaml(config_path)
    for section in ("appservice", "security"):
        if not isinstance(data.setdefault(section, {}), dict):
            raise ConfigError([f"{section}: must be a mapping"])
    data["appservice"].update(tokens)
    keys = [_fill_generated_key(key) for key in data["security"].get("encryption_keys", [])]
    data["security"]["encryption_keys"] = keys
    config = parse_config(data, config_path.resolve().parent)

    round_trip = YAML()
    document = round_trip.load(config_path.read_text(encoding="utf-8"))
    document.setdefault("appservice", {}).update(tokens)
    # Keys already in use stay: rows encrypted with them must remain readable.
    if keys:
        security = document.setdefault("security", {})
        for index, key in enumerate(keys):
            security["encryption_keys"][index] = key
    buffer = StringIO()
    round_trip.dump(document, buffer)
    _write_private(config_path, buffer.getvalue())

    buffer = StringIO()
    YAML(typ="safe", pure=True).dump(registration_for(config), buffer)
    _write_private(output, buffer.getvalue())
    return config
