"""The YAML config: typed sections, validation at start-up, environment overrides.

The pydantic models below are the single source of defaults; `example-config.yaml`
documents every key (a test keeps the two in step).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from gatekeeper.appservice.matrix_ids import LOCALPART_CHARS, LOCALPART_RE, LOCALPART_RULE, user_id

ENV_PREFIX = "GATEKEEPER_"
GENERATE = "generate"

USER_ID_RE = re.compile(rf"^@[{LOCALPART_CHARS}]+:[A-Za-z0-9.\-\[\]:]+$")
# Room IDs lost their ":server" suffix in room version 12.
ROOM_ID_RE = re.compile(r"^![^\s:]+(:\S+)?$")
ROOM_ALIAS_RE = re.compile(r"^#[^:]+:.+$")


class ConfigError(Exception):
    """The config cannot be used; each problem is one line naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def _check_localpart(value: str) -> str:
    if not LOCALPART_RE.match(value):
        raise ValueError(f"must be a Matrix localpart ({LOCALPART_RULE})")
    return value


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


class MasConfig(Section):
    """matrix-authentication-service, where a Synapse with MAS keeps its accounts."""

    url: str
    client_id: str
    client_secret: SecretStr
    # If set, the settings page sends people here to change their password and email.
    account_url: str | None = None

    _url = field_validator("url")(_check_http_url)

    @field_validator("account_url")
    @classmethod
    def _page_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_http_url(value)  # a page, linked as given: its trailing "/" stays
        return value

    @field_validator("client_id")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class HomeserverConfig(Section):
    address: str
    domain: str
    public_address: str | None = None
    registration_shared_secret: SecretStr | None = None
    admin_token: SecretStr | None = None
    # Without admin_token, Gatekeeper makes this server admin with the shared secret.
    admin_user: str = "gatekeeper-admin"
    request_timeout: float = 30.0
    # Accounts live in MAS: Synapse's shared secret and admin token are not used then.
    mas: MasConfig | None = None

    _address = field_validator("address")(_check_http_url)
    _admin_user = field_validator("admin_user")(_check_localpart)

    @field_validator("public_address")
    @classmethod
    def _public_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @property
    def client_url(self) -> str:
        """The URL people type into their Matrix client."""
        return self.public_address or self.address

    @field_validator("request_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a positive number of seconds")
        return value


class AppserviceConfig(Section):
    address: str = "http://127.0.0.1:29330"
    hostname: str = "127.0.0.1"
    port: int = 29330
    id: str = "gatekeeper"
    bot_username: str = "gatekeeper"
    bot_displayname: str = "Gatekeeper"
    as_token: SecretStr
    hs_token: SecretStr

    _address = field_validator("address")(_check_http_url)

    _port = field_validator("port")(_check_port)
    _bot_username = field_validator("bot_username")(_check_localpart)


class DatabaseConfig(Section):
    url: str = "sqlite:gatekeeper.db"
    max_connections: int = 10

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgres://", "postgresql://")):
            raise ValueError("must start with sqlite:, postgres:// or postgresql://")
        return value


class AdminRoomConfig(Section):
    room: str | None = None
    name: str = "Gatekeeper admins"
    admins: list[str]
    admin_power_level: int | None = None
    command_prefix: str = "!"
    encryption: bool = True
    encrypt_created_room: bool = True
    # !suspend, !deactivate, !whois: accounts made through Gatekeeper only, unless true.
    moderate_all_local_users: bool = False

    @field_validator("room")
    @classmethod
    def _room(cls, value: str | None) -> str | None:
        if value is not None and not (ROOM_ID_RE.match(value) or ROOM_ALIAS_RE.match(value)):
            raise ValueError("must be a room ID (!id:server) or alias (#name:server)")
        return value

    @field_validator("admins")
    @classmethod
    def _user_ids(cls, value: list[str]) -> list[str]:
        for admin in value:
            if not USER_ID_RE.match(admin):
                raise ValueError(f"{admin!r} is not a Matrix user ID (@name:server)")
        return value

    @field_validator("command_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value != value.strip():
            raise ValueError("must be non-empty and without spaces around it")
        return value


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class WebConfig(Section):
    public_base_url: str = "http://127.0.0.1:29331"
    hostname: str = "127.0.0.1"
    port: int = 29331
    admin_api_token: SecretStr | None = None
    session_idle_minutes: float = 30.0
    session_max_hours: float = 12.0
    remember_device_days: float = 30.0
    sudo_minutes: float = 10.0
    logout_matrix_devices_on_password_change: bool = False
    homeserver_name: str | None = None
    logo_url: str | None = None
    accent_colour: str = "#0b6e69"
    support_contact: str | None = None
    terms_url: str | None = None
    trusted_proxies: list[str] = []
    receive_timeout_seconds: float = 30.0

    _port = field_validator("port")(_check_port)

    @field_validator("accent_colour")
    @classmethod
    def _colour(cls, value: str) -> str:
        if not re.match(r"^#[0-9a-fA-F]{6}$", value):
            raise ValueError("must be a colour like #0b6e69")
        return value

    @field_validator("logo_url", "terms_url")
    @classmethod
    def _optional_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value

    @field_validator("public_base_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        value = _check_http_url(value)
        host = re.sub(r"^https?://", "", value).split("/")[0].rsplit(":", 1)[0]
        if value.startswith("http://") and host not in LOOPBACK_HOSTS:
            raise ValueError("must be https:// (plain http only on loopback, for development)")
        return value

    @field_validator("remember_device_days")
    @classmethod
    def _at_most_30_days(cls, value: float) -> float:
        if not 0 < value <= 30:
            raise ValueError("must be more than 0 and at most 30 days")
        return value

    @field_validator("sudo_minutes")
    @classmethod
    def _at_most_10_minutes(cls, value: float) -> float:
        if not 0 < value <= 10:
            raise ValueError("must be more than 0 and at most 10 minutes")
        return value

    @field_validator("session_idle_minutes", "session_max_hours")
    @classmethod
    def _positive_duration(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("receive_timeout_seconds")
    @classmethod
    def _at_most_10_minutes_to_arrive(cls, value: float) -> float:
        if not 0 < value <= 600:
            raise ValueError("must be more than 0 and at most 600 seconds")
        return value

    @property
    def secure(self) -> bool:
        """Served over https: cookies get the __Host- prefix and the Secure flag."""
        return self.public_base_url.startswith("https://")


class SmtpConfig(Section):
    hostname: str = "127.0.0.1"
    port: int = 25
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    from_address: str = "Gatekeeper <gatekeeper@example.org>"
    timeout: float = 30.0
    retry_initial_seconds: float = 10.0
    retry_max_seconds: float = 600.0

    _port = field_validator("port")(_check_port)


class RegistrationConfig(Section):
    request_ttl_hours: float = 48.0
    require_email_confirmation: bool = True
    require_reason: bool = False
    reserved_usernames: list[str] = [
        "admin*",
        "root",
        "moderator*",
        "support",
        "abuse",
        "postmaster",
        "webmaster",
        "security",
        "system",
        "synapse",
        "matrix",
        "mod",
        "noreply",
    ]
    mask_email: bool = True
    languages: list[str] = ["en", "de"]
    provisioning_max_attempts: int = 8
    retry_initial_seconds: float = 5.0
    retry_max_seconds: float = 300.0
    newcomer_rooms: list[str] = []
    send_rejection_mail: bool = True
    daily_cap: int | None = None
    allowed_email_domains: list[str] = []
    denied_email_domains: list[str] = []
    tell_room_about_blocked: bool = True
    # at_sign_up: the form asks for the password, kept encrypted until the account exists.
    # after_approval: never asked nor kept; the welcome mail links to a page that sets it.
    password: Literal["at_sign_up", "after_approval"] = "at_sign_up"  # noqa: S105 (a mode)

    @property
    def password_after_approval(self) -> bool:
        return self.password == "after_approval"  # noqa: S105 (a mode, not a password)


class AntibotConfig(Section):
    proof_of_work: bool = False
    proof_of_work_max_number: int = 100_000
    honeypot: bool = True
    captcha: Literal["none", "hcaptcha", "turnstile"] = "none"
    captcha_site_key: str | None = None
    captcha_secret: SecretStr | None = None
    captcha_verify_url: str | None = None

    @field_validator("captcha_verify_url")
    @classmethod
    def _verify_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)


class SecurityConfig(Section):
    encryption_keys: list[SecretStr]
    login_attempts_per_minute: int = 30
    signups_per_hour: int = 20
    lockout_failures: int = 30
    lockout_first_wait_seconds: int = 60
    lockout_max_wait_seconds: int = 900

    @field_validator("encryption_keys")
    @classmethod
    def _fernet_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        if not value:
            raise ValueError("needs at least one key")
        for key in value:
            if key.get_secret_value() == GENERATE:
                continue
            try:
                Fernet(key.get_secret_value())
            except ValueError:
                raise ValueError(
                    "each key must be a Fernet key (32 bytes, URL-safe base64)"
                ) from None
        return value


class RetentionConfig(Section):
    closed_requests_days: float = 30.0
    ip_addresses_days: float = 7.0
    sent_mail_days: float = 7.0

    @field_validator("closed_requests_days", "ip_addresses_days", "sent_mail_days")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0 days")
        return value


class MetricsConfig(Section):
    enabled: bool = False
    hostname: str = "127.0.0.1"
    port: int = 29332


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Config(Section):
    homeserver: HomeserverConfig
    appservice: AppserviceConfig
    database: DatabaseConfig = DatabaseConfig()
    admin_room: AdminRoomConfig
    web: WebConfig = WebConfig()
    smtp: SmtpConfig = SmtpConfig()
    registration: RegistrationConfig = RegistrationConfig()
    security: SecurityConfig
    antibot: AntibotConfig = AntibotConfig()
    retention: RetentionConfig = RetentionConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @property
    def bot_user_id(self) -> str:
        return user_id(self.appservice.bot_username, self.homeserver.domain)

    def secrets(self) -> list[str]:
        """Every secret value in the config, for log redaction."""
        values = [
            self.appservice.as_token,
            self.appservice.hs_token,
            self.homeserver.registration_shared_secret,
            self.homeserver.admin_token,
            self.homeserver.mas.client_secret if self.homeserver.mas else None,
            self.web.admin_api_token,
            self.smtp.password,
            *self.security.encryption_keys,
            self.antibot.captcha_secret,
        ]
        found = [v.get_secret_value() for v in values if v is not None]
        # A PostgreSQL URL may carry a password; a driver's error could quote it.
        database_password = urlsplit(self.database.url).password
        return [*found, database_password] if database_password else found


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return data


def _field_type(model: type[BaseModel], path: list[str]) -> Any:
    """The annotation of the field at `path`, or None if there is no such key."""
    annotation: Any = model
    for part in path:
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        field = annotation.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
    return annotation


def _is_text(annotation: Any) -> bool:
    options = get_args(annotation) or (annotation,)
    return any(option in (str, SecretStr) for option in options)


def apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Override keys from GATEKEEPER_<SECTION>__<KEY> variables (secrets, containers)."""
    problems = []
    for name, raw in sorted(environ.items()):
        # Only GATEKEEPER_<SECTION>__<KEY> names are overrides; others (GATEKEEPER_TEST_*) are not.
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name.removeprefix(ENV_PREFIX).lower().split("__")
        annotation = _field_type(Config, path)
        if annotation is None or len(path) != 2:
            problems.append(f"environment variable {name}: no config key {'.'.join(path)}")
            continue
        value: Any = raw if _is_text(annotation) else YAML(typ="safe").load(raw)
        section = data.setdefault(path[0], {})
        if not isinstance(section, dict):
            problems.append(f"{path[0]}: must be a mapping")
            continue
        section[path[1]] = value
    if problems:
        raise ConfigError(problems)
    return data


def _describe(errors: list[Any]) -> list[str]:
    """One line per problem, naming the key; a typo shows as one 'did you mean' line."""
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    missing = {tuple(e["loc"]) for e in errors if e["type"] == "missing"}
    lines = []
    for error in unknown:
        loc = tuple(str(part) for part in error["loc"])
        siblings = [m[-1] for m in missing if m[:-1] == loc[:-1]]
        siblings += list(_known_keys(loc[:-1]))
        guess = difflib.get_close_matches(loc[-1], siblings, n=1, cutoff=0.75)
        hint = ""
        if guess:
            hint = f" (did you mean '{'.'.join((*loc[:-1], guess[0]))}'?)"
            missing.discard((*loc[:-1], guess[0]))
        lines.append(f"{'.'.join(loc)}: unknown key{hint}")
    for error in errors:
        loc = tuple(str(part) for part in error["loc"])
        if error["type"] == "missing":
            if loc in missing:
                lines.append(f"{'.'.join(loc)}: missing key")
        elif error["type"] != "extra_forbidden":
            # Never echo the value: it may be a secret.
            message = error["msg"].removeprefix("Value error, ")
            got = type(error["input"]).__name__ if "type" in error["type"] else None
            lines.append(f"{'.'.join(loc)}: {message}" + (f" (got {got})" if got else ""))
    return lines


def _known_keys(section: tuple[str, ...]) -> list[str]:
    annotation = _field_type(Config, list(section)) if section else Config
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def parse_config(data: dict[str, Any], base_dir: Path) -> Config:
    """Validate raw config data; relative SQLite paths are taken from `base_dir`."""
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error.errors())) from None
    still_generate = [
        f"appservice.{key}"
        for key in ("as_token", "hs_token")
        if getattr(config.appservice, key).get_secret_value() == GENERATE
    ]
    if any(key.get_secret_value() == GENERATE for key in config.security.encryption_keys):
        still_generate.append("security.encryption_keys")
    problems = [
        f"{key}: still '{GENERATE}': run 'gatekeeper generate-registration' first"
        for key in still_generate
    ]
    if config.antibot.captcha != "none":
        problems += [
            f"antibot.{key}: needed when antibot.captcha is {config.antibot.captcha}"
            for key in ("captcha_site_key", "captcha_secret")
            if getattr(config.antibot, key) is None
        ]
    if config.homeserver.mas is not None:
        problems += [
            f"homeserver.{key}: not used with homeserver.mas (MAS makes and changes the "
            "accounts; Synapse refuses shared-secret registration then): remove it"
            for key in ("registration_shared_secret", "admin_token")
            if getattr(config.homeserver, key) is not None
        ]
    if problems:
        raise ConfigError(problems)
    url = config.database.url
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:").removeprefix("//"))
        database = config.database.model_copy(update={"url": f"sqlite:{base_dir / path}"})
        config = config.model_copy(update={"database": database})
    return config


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    data = apply_environment(read_yaml(path), os.environ if environ is None else environ)
    return parse_config(data, path.resolve().parent)
