"""The config file: every problem stops start-up with one line naming the key."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import BaseModel
from ruamel.yaml import YAML

from gatekeeper.appservice.config import Config, ConfigError, load_config
from gatekeeper.appservice.runtime.logging_setup import RedactSecrets

EXAMPLE = Path(__file__).parent.parent / "example-config.yaml"
SECRET = "s3cret-value-that-must-not-leak"


def example_data() -> dict[str, Any]:
    data = YAML(typ="safe").load(EXAMPLE.read_text())
    data["appservice"]["as_token"] = "as-token-for-tests"
    data["appservice"]["hs_token"] = "hs-token-for-tests"
    data["security"]["encryption_keys"] = [Fernet.generate_key().decode()]
    return data


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    with path.open("w") as file:
        YAML(typ="safe").dump(data, file)
    return path


def problems(
    tmp_path: Path, data: dict[str, Any], environ: dict[str, str] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, data), environ=environ or {})
    return caught.value.problems


def run_gatekeeper(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_example_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, example_data()), environ={})
    assert config.homeserver.domain == "example.org"
    assert config.database.url == f"sqlite:{tmp_path / 'gatekeeper.db'}"


def _leaves(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update(_leaves(annotation, f"{prefix}{name}."))
        else:
            found[f"{prefix}{name}"] = field
    return found


def test_example_config_documents_every_key_with_its_default() -> None:
    data = YAML(typ="safe").load(EXAMPLE.read_text())
    lines = EXAMPLE.read_text().splitlines()
    for path, field in _leaves(Config).items():
        section, key = path.split(".")
        assert key in data[section], f"{path} is not in example-config.yaml"
        if not field.is_required():
            default = field.get_default()
            default = (
                default.get_secret_value() if hasattr(default, "get_secret_value") else default
            )
            assert data[section][key] == default, f"{path}: example differs from the default"
        start = lines.index(f"{section}:")
        index = next(
            i for i, line in enumerate(lines) if i > start and re.match(rf"\s+{key}:", line)
        )
        # A comment right above the key, or above the group of keys it belongs to.
        above = index - 1
        while re.match(r"\s+(\w+:|- )", lines[above]):
            above -= 1
        assert lines[above].strip().startswith("#"), f"{path} has no comment"


def test_typo_stops_the_program_with_one_line_naming_the_key(tmp_path: Path) -> None:
    data = example_data()
    data["appservice"]["prot"] = data["appservice"].pop("port")
    result = run_gatekeeper(write(tmp_path, data))
    assert result.returncode == 10
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "gatekeeper: config error: appservice.prot: unknown key (did you mean 'appservice.port'?)"
    ]


def test_each_of_several_problems_is_a_line_of_its_own_with_the_prefix(tmp_path: Path) -> None:
    data = example_data()
    data["appservice"]["prot"] = data["appservice"].pop("port")
    data["web"]["port"] = "eighty"
    result = run_gatekeeper(write(tmp_path, data))
    assert result.returncode == 10
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert all(line.startswith("gatekeeper: config error: ") for line in lines), lines
    assert any("appservice.prot" in line for line in lines)
    assert any("web.port" in line for line in lines)


def test_version_comes_from_the_installed_package() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"gatekeeper {version('gatekeeper')}"


def test_typo_of_a_required_key_is_one_line_too(tmp_path: Path) -> None:
    data = example_data()
    data["homeserver"]["domian"] = data["homeserver"].pop("domain")
    assert problems(tmp_path, data) == [
        "homeserver.domian: unknown key (did you mean 'homeserver.domain'?)"
    ]


def test_missing_key(tmp_path: Path) -> None:
    data = example_data()
    del data["admin_room"]["admins"]
    assert problems(tmp_path, data) == ["admin_room.admins: missing key"]


def test_the_mas_backend_names_what_it_misses_and_what_it_does_not_use(tmp_path: Path) -> None:
    data = example_data()
    data["homeserver"]["registration_shared_secret"] = "a shared secret"
    data["homeserver"]["mas"] = {"url": "http://127.0.0.1:8080", "client_secret": "s3cret"}
    assert problems(tmp_path, data) == ["homeserver.mas.client_id: missing key"]
    data["homeserver"]["mas"]["client_id"] = "01JGATEKEEPER"
    assert problems(tmp_path, data) == [
        "homeserver.registration_shared_secret: not used with homeserver.mas (MAS makes and "
        "changes the accounts; Synapse refuses shared-secret registration then): remove it"
    ]
    del data["homeserver"]["registration_shared_secret"]
    config = load_config(write(tmp_path, data), environ={})
    assert config.homeserver.mas is not None
    assert "s3cret" in config.secrets()  # redacted from every log line


def test_the_mas_section_may_come_from_the_environment(tmp_path: Path) -> None:
    environ = {
        "GATEKEEPER_HOMESERVER__MAS": "{url: 'http://mas:8080', client_id: '01J', client_secret: x}"
    }
    config = load_config(write(tmp_path, example_data()), environ=environ)
    assert config.homeserver.mas is not None
    assert config.homeserver.mas.url == "http://mas:8080"


def test_unknown_section(tmp_path: Path) -> None:
    data = example_data()
    data["smtp_server"] = {"host": "x"}
    assert problems(tmp_path, data) == ["smtp_server: unknown key"]


def test_wrong_type_names_key_and_type(tmp_path: Path) -> None:
    data = example_data()
    data["appservice"]["port"] = "8080"
    assert problems(tmp_path, data) == [
        "appservice.port: Input should be a valid integer (got str)"
    ]


def test_bad_values(tmp_path: Path) -> None:
    data = example_data()
    data["appservice"]["port"] = 70000
    data["admin_room"]["admins"] = ["alice"]
    data["homeserver"]["address"] = "localhost:8008"
    data["logging"]["format"] = "xml"
    found = problems(tmp_path, data)
    assert [line.split(":")[0] for line in found] == [
        "homeserver.address",
        "appservice.port",
        "admin_room.admins",
        "logging.format",
    ]


@pytest.mark.parametrize("seconds", [0, -1, 601])
def test_receive_timeout_is_bounded(tmp_path: Path, seconds: float) -> None:
    data = example_data()
    data["web"]["receive_timeout_seconds"] = seconds
    assert problems(tmp_path, data) == [
        "web.receive_timeout_seconds: must be more than 0 and at most 600 seconds"
    ]


def test_wrong_value_of_a_secret_is_not_echoed(tmp_path: Path) -> None:
    data = example_data()
    data["homeserver"]["admin_token"] = {"nested": SECRET}
    found = problems(tmp_path, data)
    assert len(found) == 1
    assert found[0].startswith("homeserver.admin_token:")
    assert SECRET not in found[0]


def test_ungenerated_tokens_say_what_to_run(tmp_path: Path) -> None:
    data = example_data()
    data["appservice"]["hs_token"] = "generate"
    assert problems(tmp_path, data) == [
        "appservice.hs_token: still 'generate': run 'gatekeeper generate-registration' first"
    ]


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("homeserver: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.problems == [f"{path}: not valid YAML (line 2)"]


def test_missing_file_exits_with_config_code(tmp_path: Path) -> None:
    result = run_gatekeeper(tmp_path / "nope.yaml")
    assert result.returncode == 10
    assert "nope.yaml: no such file" in result.stderr


def test_secrets_from_environment(tmp_path: Path) -> None:
    data = example_data()
    config = load_config(
        write(tmp_path, data),
        environ={
            "GATEKEEPER_HOMESERVER__ADMIN_TOKEN": SECRET,
            "GATEKEEPER_APPSERVICE__PORT": "4242",
            "UNRELATED": "x",
        },
    )
    assert config.homeserver.admin_token is not None
    assert config.homeserver.admin_token.get_secret_value() == SECRET
    assert config.appservice.port == 4242
    assert SECRET not in repr(config)


def test_a_database_password_is_redacted_from_logs(tmp_path: Path) -> None:
    data = example_data()
    data["database"]["url"] = f"postgres://gatekeeper:{SECRET}@db.example/gatekeeper"
    config = load_config(write(tmp_path, data), environ={})
    record = logging.LogRecord(
        "gatekeeper",
        logging.ERROR,
        __file__,
        1,
        "no connection to %s",
        (config.database.url,),
        None,
    )
    RedactSecrets(config.secrets()).filter(record)
    assert (
        record.getMessage()
        == "no connection to postgres://gatekeeper:<redacted>@db.example/gatekeeper"
    )


def test_unknown_environment_variable_is_named(tmp_path: Path) -> None:
    found = problems(tmp_path, example_data(), {"GATEKEEPER_HOMESERVER__ADMN_TOKEN": "x"})
    assert found == [
        "environment variable GATEKEEPER_HOMESERVER__ADMN_TOKEN:"
        " no config key homeserver.admn_token"
    ]


def test_encryption_keys_must_be_fernet_keys(tmp_path: Path) -> None:
    data = example_data()
    data["security"]["encryption_keys"] = ["not-a-key"]
    assert problems(tmp_path, data) == [
        "security.encryption_keys: each key must be a Fernet key (32 bytes, URL-safe base64)"
    ]
