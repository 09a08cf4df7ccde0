"""Real peers for the suite: Synapse, PostgreSQL, SQLite, SMTP, and Gatekeeper itself.

With CI=true a peer that is missing fails the run; elsewhere its tests are skipped
with the reason shown.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from mautrix.util.async_db import Database
from ruamel.yaml import YAML

from gatekeeper.appservice.config import Config, DatabaseConfig, load_config
from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.storage.database import create_database, upgrade
from harness.matrix_user import EVENT_WAIT_SECONDS, EVENT_WAITS, MatrixUser
from harness.net import free_port
from harness.synapse import SynapseServer, SynapseSettings

IN_CI = os.environ.get("CI", "").lower() == "true"
SERVER_NAME = "gatekeeper.test"
PASSWORD = "correct horse battery staple"


def missing_peer(reason: str) -> None:
    """Fail in CI, skip elsewhere: a peer never goes missing silently."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


# --- counting what ran against which real peer -------------------------------------------

PEER_FIXTURES = {"synapse": "synapse", "postgres": "postgres_url", "chromium": "browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        for marker, fixture in PEER_FIXTURES.items():
            if fixture in fixtures:
                item.add_marker(marker)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "postgres" in (
            callspec.params.get("db_url"),
            callspec.params.get("db"),
        ):
            item.add_marker("postgres")


_passed_against: dict[str, int] = {"synapse": 0, "postgres": 0, "chromium": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        for marker in _passed_against:
            if marker in report.keywords:
                _passed_against[marker] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"real peers: {_passed_against['synapse']} tests passed against Synapse, "
        f"{_passed_against['postgres']} against PostgreSQL, "
        f"{_passed_against['chromium']} in Chromium"
    )
    if EVENT_WAITS:
        waits = sorted(EVENT_WAITS)
        terminalreporter.write_line(
            f"waits for a Matrix event: {len(waits)}, median {waits[len(waits) // 2]:.2f} s, "
            f"longest {waits[-1]:.1f} s (limit {EVENT_WAIT_SECONDS:g} s)"
        )


# --- databases ---------------------------------------------------------------------------


async def _check_postgres(url: str) -> None:
    connection = await asyncpg.connect(url, timeout=5)
    await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("GATEKEEPER_TEST_POSTGRES")
    if not url:
        missing_peer("GATEKEEPER_TEST_POSTGRES is not set")
    try:
        _in_own_loop(_check_postgres(str(url)))
    except (OSError, asyncpg.PostgresError) as error:
        missing_peer(f"PostgreSQL at GATEKEEPER_TEST_POSTGRES is unreachable: {error}")
    return str(url)


async def _create_postgres_database(server_url: str) -> str:
    name = f"gatekeeper_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def _drop_postgres_database(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _database_url(server_url: str, name: str) -> str:
    return server_url.rsplit("/", 1)[0] + "/" + name


@asynccontextmanager
async def _started(url: str) -> AsyncIterator[Database]:
    db = create_database(DatabaseConfig(url=url))
    await db.start()
    try:
        yield db
    finally:
        await db.stop()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'gatekeeper.db'}"
        return
    server_url = request.getfixturevalue("postgres_url")
    name = await _create_postgres_database(server_url)
    try:
        yield _database_url(server_url, name)
    finally:
        await _drop_postgres_database(server_url, name)


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    """A started (not yet migrated) connection to a fresh database."""
    async with _started(db_url) as db:
        yield db


# Migrating takes longer than copying or emptying: the unit tests that want the whole
# schema get, on SQLite, a copy of a file migrated once per session and, on PostgreSQL, a
# database migrated once per session and emptied before each test (DELETE takes
# milliseconds; CREATE DATABASE waits for the disk to sync).


def _in_own_loop(work: Awaitable[Any]) -> Any:
    """Run `work` in a thread with its own loop: a session fixture may first be asked for
    (request.getfixturevalue) from inside a test's running loop."""

    async def run() -> Any:
        return await work

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


async def _migrate(url: str) -> None:
    async with _started(url) as db:
        await upgrade(db)


async def _emptying_sql(url: str) -> str:
    """One round trip that deletes every row but the schema's version: what a freshly
    migrated database holds. As replica, foreign keys do not dictate the order."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'schema_version'"
        )
    finally:
        await conn.close()
    deletes = "".join(f'DELETE FROM "{table["tablename"]}";' for table in tables)
    return f"BEGIN; SET LOCAL session_replication_role = replica; {deletes} COMMIT;"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "gatekeeper.db"
    _in_own_loop(_migrate(f"sqlite:{path}"))
    return path


@pytest.fixture(scope="session")
def postgres_migrated(postgres_url: str) -> Iterator[tuple[str, str]]:
    """The session's migrated database: its URL, and the SQL that empties it."""
    name = _in_own_loop(_create_postgres_database(postgres_url))
    try:
        url = _database_url(postgres_url, name)
        _in_own_loop(_migrate(url))
        yield url, _in_own_loop(_emptying_sql(url))
    finally:
        _in_own_loop(_drop_postgres_database(postgres_url, name))


# The session's started pool on the migrated PostgreSQL database: one pool, not one a test.
_shared_postgres: dict[str, Database] = {}


@pytest.fixture(scope="session", autouse=True)
async def _close_shared_postgres() -> AsyncIterator[None]:
    yield
    for shared in _shared_postgres.values():
        await shared.stop()


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A started connection to an empty database at the latest schema, on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "gatekeeper.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        async with _started(f"sqlite:{path}") as db:
            yield db
        return
    url, emptying = request.getfixturevalue("postgres_migrated")
    shared = _shared_postgres.get(url)
    if shared is None:
        shared = _shared_postgres[url] = create_database(DatabaseConfig(url=url))
        await shared.start()
    await shared.execute(emptying)
    yield shared


# --- Synapse and its users ---------------------------------------------------------------


@dataclass
class Homeserver:
    server: SynapseServer
    config_file: Path  # the Gatekeeper config whose tokens Synapse's registration carries
    users: dict[str, MatrixUser] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{SERVER_NAME}"


def write_gatekeeper_config(path: Path, synapse_url: str, port: int) -> None:
    example = YAML().load((Path(__file__).parent.parent / "example-config.yaml").read_text())
    example["homeserver"]["address"] = synapse_url
    example["homeserver"]["domain"] = SERVER_NAME
    example["appservice"]["address"] = f"http://127.0.0.1:{port}"
    example["appservice"]["port"] = port
    example["admin_room"]["admins"] = [f"@alice:{SERVER_NAME}"]
    # The plain client of harness/matrix_user.py reads the rooms the bot creates;
    # tests/test_encrypted_room.py has admins with encrypted clients and rooms.
    example["admin_room"]["encrypt_created_room"] = False
    example["logging"]["level"] = "DEBUG"
    with path.open("w") as file:
        YAML().dump(example, file)


async def start_synapse(directory: Path, encryption_features: bool = True) -> Homeserver:
    """A real Synapse that loads the registration made by `gatekeeper generate-registration`."""
    directory.mkdir(parents=True, exist_ok=True)
    synapse_port, gatekeeper_port = free_port(), free_port()
    config_file = directory / "gatekeeper.yaml"
    registration = directory / "registration.yaml"
    write_gatekeeper_config(config_file, f"http://127.0.0.1:{synapse_port}", gatekeeper_port)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gatekeeper",
            "generate-registration",
            "-c",
            str(config_file),
            "-o",
            str(registration),
        ],
        check=True,
        capture_output=True,
    )
    server = SynapseServer(
        SynapseSettings(
            directory / "hs",
            SERVER_NAME,
            synapse_port,
            (registration,),
            encryption_features=encryption_features,
        )
    )
    await server.start()
    return Homeserver(server, config_file)


async def stop_synapse(homeserver: Homeserver) -> None:
    for user in homeserver.users.values():
        await user.close()
    await homeserver.server.stop()


@pytest.fixture(scope="session")
async def synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Homeserver]:
    """The session's Synapse, with what encrypted admin rooms need."""
    homeserver = await start_synapse(tmp_path_factory.mktemp("synapse"))
    try:
        yield homeserver
    finally:
        await stop_synapse(homeserver)


@pytest.fixture
async def synapse_restarts(synapse: Homeserver) -> AsyncIterator[Homeserver]:
    """The session's Synapse, which the test may stop; it is running again afterwards."""
    yield synapse
    if synapse.server.process is None:
        await synapse.server.start()


async def matrix_user(synapse: Homeserver, localpart: str) -> MatrixUser:
    """A registered, logged-in user, shared by the session's tests."""
    if localpart not in synapse.users:
        await synapse.server.register_user(localpart, PASSWORD)
        synapse.users[localpart] = await MatrixUser.login(synapse.url, localpart, PASSWORD)
    return synapse.users[localpart]


@pytest.fixture
async def alice(synapse: Homeserver) -> MatrixUser:
    """An admin by the config's admin list."""
    return await matrix_user(synapse, "alice")


@pytest.fixture
async def mallory(synapse: Homeserver) -> MatrixUser:
    """Not an admin."""
    return await matrix_user(synapse, "mallory")


@pytest.fixture
async def bob(synapse: Homeserver) -> MatrixUser:
    """Not in the admin list; an admin only by power level where the test sets it."""
    return await matrix_user(synapse, "bob")


# --- Gatekeeper --------------------------------------------------------------------------

StartGatekeeper = Callable[..., Awaitable[Gatekeeper]]


ADMIN_API_TOKEN = "admin-api-token-for-tests"
# homeserver.request_timeout of the tests that make Synapse hang: short, so they stay
# quick, yet long enough for start-up's own calls (creating the admin room) on a busy
# machine; at 1 s that creation timed out in a CI run.
HANG_TIMEOUT_S = 3.0


def gatekeeper_config(
    synapse: Homeserver,
    db_url: str,
    directory: Path,
    smtp_port: int | None = None,
    **sections: dict[str, Any],
) -> Config:
    """The session's Gatekeeper config with a fresh database and per-test overrides."""
    data = YAML(typ="safe").load(synapse.config_file.read_text())
    data["database"]["url"] = db_url
    data["homeserver"]["registration_shared_secret"] = synapse.server.shared_secret
    web_port = free_port()
    data["web"].update(
        {
            "port": web_port,
            "public_base_url": f"http://127.0.0.1:{web_port}",
            "admin_api_token": ADMIN_API_TOKEN,
        }
    )
    data["smtp"].update({"port": smtp_port or free_port(), "retry_initial_seconds": 0.2})
    data["smtp"]["retry_max_seconds"] = 1.0
    data["registration"].update({"retry_initial_seconds": 0.2, "retry_max_seconds": 1.0})
    for name, values in sections.items():
        data[name].update(values)
    path = directory / "config.yaml"
    with path.open("w") as file:
        YAML(typ="safe").dump(data, file)
    return load_config(path, environ={})


@pytest.fixture
async def start_gatekeeper(
    synapse: Homeserver, db_url: str, tmp_path: Path, smtp: MailCatcher
) -> AsyncIterator[StartGatekeeper]:
    """Start Gatekeeper in this process; several starts in one test share the database."""
    running: list[Gatekeeper] = []

    async def start(**sections: dict[str, Any]) -> Gatekeeper:
        config = gatekeeper_config(synapse, db_url, tmp_path, smtp.port, **sections)
        gatekeeper = Gatekeeper(config)
        running.append(gatekeeper)
        await gatekeeper.start()
        return gatekeeper

    try:
        yield start
    finally:
        for gatekeeper in running:
            await stop_or_explain(gatekeeper)


async def stop_or_explain(gatekeeper: Gatekeeper) -> None:
    """Stop; if that takes long, print what every task is waiting for (a hang's cause)."""
    stopping = asyncio.create_task(gatekeeper.stop())
    done, _ = await asyncio.wait([stopping], timeout=30)
    if not done:
        print("Gatekeeper.stop() is still running after 30 s; the tasks:", file=sys.stderr)
        for task in asyncio.all_tasks():
            task.print_stack(limit=30, file=sys.stderr)
    await stopping


# --- a real browser ---------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """Debian's headless Chromium driven by Playwright (which never downloads a browser)."""
    from playwright.async_api import async_playwright

    executable = os.environ.get("GATEKEEPER_CHROMIUM", "/usr/bin/chromium")
    if not os.access(executable, os.X_OK):
        missing_peer(f"no Chromium at {executable} (make test installs Debian's chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    """A fresh browser context (no cookies) at a phone-and-laptop-friendly width."""
    context = await browser.new_context(viewport={"width": 1000, "height": 900})
    page = await context.new_page()
    yield page
    await context.close()


# --- mail --------------------------------------------------------------------------------


class MailCatcher:
    """A real SMTP server on loopback that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())
        self._arrived = asyncio.Event()

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def go_down(self) -> None:
        self.controller.stop()

    def come_back(self) -> None:
        """Listen again on the same port (a stopped controller cannot restart)."""
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        message = BytesParser(policy=default_policy).parsebytes(envelope.original_content or b"")
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"

    def to(self, recipient: str) -> list[EmailMessage]:
        return [m for m in self.messages if recipient in str(m["To"])]

    async def wait_for(self, to: str, containing: str = "", timeout: float = 20.0) -> EmailMessage:
        """The first captured message to `to` whose text contains `containing`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for message in self.to(to):
                text = str(message["Subject"]) + message.get_content()
                if containing.lower() in text.lower():
                    return message
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no mail to {to} containing {containing!r} in {timeout} s")


@pytest.fixture
def smtp() -> Iterator[MailCatcher]:
    catcher = MailCatcher()
    catcher.controller.start()
    try:
        yield catcher
    finally:
        catcher.controller.stop()
