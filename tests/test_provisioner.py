"""Account creation's retries and back-off: `Provisioner.step` on a real database, with a
stand-in for Synapse that answers what each test tells it to, and a clock the test moves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import pytest
from mautrix.util.async_db import Database
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice import timeutil
from gatekeeper.appservice.domain.applicant_mail import ApplicantMail
from gatekeeper.appservice.domain.provisioner import Provisioner
from gatekeeper.appservice.domain.registration_request import NewRequest, RegistrationRequest, State
from gatekeeper.appservice.domain.registrations import Outcome, Registrations
from gatekeeper.appservice.homeserver.account_backend import (
    AccountBackend,
    AccountTaken,
    HomeserverUnavailable,
    NewAccount,
    ProvisioningRefused,
)
from gatekeeper.appservice.storage.crypto import SecretBox
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from tests.example_config import example_config

PASSWORD = "correct horse battery staple"
START_S = 1_700_000_000.0
INITIAL_S, MAX_S, MAX_ATTEMPTS = 10.0, 30.0, 4

Answer = str | Exception  # a user ID made, or what create_account raises


class FakeBackend:
    """Just what the provisioner calls on an account backend: answers queued by the test."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.created: list[tuple[str, str | None, str | None, str | None]] = []
        self.joined: list[tuple[str, str]] = []
        self.join_refusals: list[Exception] = []  # raised by the next joins, in turn
        self.can_join_users = False

    async def create_account(self, account: NewAccount) -> str:
        self.created.append(
            (account.localpart, account.password, account.displayname, account.email)
        )
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def join_room(self, user_id: str, room_id_or_alias: str) -> None:
        if self.join_refusals:
            raise self.join_refusals.pop(0)
        self.joined.append((user_id, room_id_or_alias))


class FakeMail:
    """The welcome mail, written in the transaction that finishes provisioning."""

    def __init__(self) -> None:
        self.welcomed: list[RegistrationRequest] = []
        self.asked_to_set_password: list[RegistrationRequest] = []

    async def welcome(self, conn: LoggingConnection, request: RegistrationRequest) -> None:
        self.welcomed.append(request)

    async def welcome_set_password(
        self, conn: LoggingConnection, request: RegistrationRequest
    ) -> None:
        self.asked_to_set_password.append(request)


class Clock:
    """Stands in for `time` in appservice.timeutil: now_ms() reads this."""

    def __init__(self) -> None:
        self.now = START_S

    def time(self) -> float:
        return self.now

    def ms(self) -> int:
        return int(self.now * 1000)


@dataclass
class Setup:
    registrations: Registrations
    store: RegistrationStore
    synapse: FakeBackend
    mail: FakeMail
    box: SecretBox
    clock: Clock
    make: Callable[..., Provisioner]
    invited: list[tuple[str, str]] = field(default_factory=list)
    noted: list[str] = field(default_factory=list)

    async def approved(
        self, localpart: str = "ann", with_password: bool = True
    ) -> RegistrationRequest:
        request = await self.registrations.create(
            NewRequest(
                localpart=localpart,
                email=f"{localpart}@example.org",
                language="en",
                reason="",
                password_hash="argon2-hash" if with_password else "",
                password_encrypted=self.box.encrypt(PASSWORD) if with_password else None,
            ),
            confirmed=True,
        )
        result = await self.registrations.approve(request.id, "@alice:example.org")
        assert result.request is not None
        return result.request

    async def get(self, request_id: str) -> RegistrationRequest:
        request = await self.store.get(request_id)
        assert request is not None
        return request


@pytest.fixture
async def setup(db: Database, monkeypatch: pytest.MonkeyPatch) -> Setup:
    clock = Clock()
    monkeypatch.setattr(timeutil, "time", clock)
    store = RegistrationStore(db)
    registrations = Registrations(store)
    synapse, mail = FakeBackend(), FakeMail()
    config = example_config(
        registration={
            "retry_initial_seconds": INITIAL_S,
            "retry_max_seconds": MAX_S,
            "provisioning_max_attempts": MAX_ATTEMPTS,
            "newcomer_rooms": ["#welcome:example.org"],
        }
    )
    box = SecretBox(config.security)
    invited: list[tuple[str, str]] = []

    noted: list[str] = []

    async def invite(user_id: str, room: str) -> None:
        invited.append((user_id, room))

    async def note(text: str) -> None:
        noted.append(text)

    def make(admin_token: str | None = None) -> Provisioner:
        synapse.can_join_users = admin_token is not None
        return Provisioner(
            config,
            registrations,
            store,
            cast(AccountBackend, synapse),
            box,
            cast(ApplicantMail, mail),
            invite,
            note,
        )

    return Setup(registrations, store, synapse, mail, box, clock, make, invited, noted)


async def step_at(setup: Setup, provisioner: Provisioner, at_ms: int) -> float | None:
    setup.clock.now = at_ms / 1000
    return await provisioner.step()


async def test_without_a_password_the_account_has_none_and_the_mail_sets_it(
    setup: Setup,
) -> None:
    request = await setup.approved(with_password=False)
    setup.synapse.answers = ["@ann:example.org"]

    await setup.make().step()

    assert setup.synapse.created == [("ann", None, "ann", "ann@example.org")]
    assert (await setup.get(request.id)).state is State.ACTIVE
    assert [r.id for r in setup.mail.asked_to_set_password] == [request.id]
    assert setup.mail.welcomed == []


async def test_success_makes_the_account_and_forgets_the_password(setup: Setup) -> None:
    request = await setup.approved()
    setup.synapse.answers = ["@ann:example.org"]

    assert await setup.make().step() is None  # nothing left to wait for

    done = await setup.get(request.id)
    assert (done.state, done.matrix_user_id) == (State.ACTIVE, "@ann:example.org")
    assert (done.provision_attempts, done.last_error, done.password_encrypted) == (1, None, None)
    assert setup.synapse.created == [("ann", PASSWORD, "ann", "ann@example.org")]
    assert [r.id for r in setup.mail.welcomed] == [request.id]
    # Where the homeserver cannot join users (MAS), the bot invites the newcomer.
    assert setup.invited == [("@ann:example.org", "#welcome:example.org")]
    assert setup.synapse.joined == []


async def test_with_an_admin_token_newcomers_are_joined(setup: Setup) -> None:
    await setup.approved()
    setup.synapse.answers = ["@ann:example.org"]
    await setup.make(admin_token="syt_admin").step()
    assert setup.synapse.joined == [("@ann:example.org", "#welcome:example.org")]
    assert setup.invited == []


def not_open(what: str) -> ProvisioningRefused:
    return ProvisioningRefused("M_FORBIDDEN", f"{what}: HTTP 403 M_FORBIDDEN", 403)


@pytest.mark.parametrize(
    "refusal",
    [
        not_open("joining"),  # invite-only, and Gatekeeper's admin user may not invite there
        ProvisioningRefused("GK_ADMIN_USER", "logging in as @gatekeeper-admin: not ours", 400),
    ],
)
async def test_a_join_the_admin_api_refuses_gets_the_bots_invite_then_the_join(
    setup: Setup, refusal: ProvisioningRefused
) -> None:
    await setup.approved()
    setup.synapse.answers = ["@ann:example.org"]
    setup.synapse.join_refusals = [refusal]
    await setup.make(admin_token="syt_admin").step()
    assert setup.invited == [("@ann:example.org", "#welcome:example.org")]
    assert setup.synapse.joined == [("@ann:example.org", "#welcome:example.org")]
    assert setup.noted == []


async def test_a_room_that_takes_nobody_in_is_told_to_the_admin_room(setup: Setup) -> None:
    request = await setup.approved()
    setup.synapse.answers = ["@ann:example.org"]
    setup.synapse.join_refusals = [not_open("joining"), not_open("joining as @ann")]
    await setup.make(admin_token="syt_admin").step()
    assert (await setup.get(request.id)).state is State.ACTIVE  # the account stands
    assert setup.noted == [
        "⚠️ @ann:example.org could not be brought into #welcome:example.org: joining as @ann: "
        "HTTP 403 M_FORBIDDEN. Invite them yourself; the operator guide's “Newcomer rooms” "
        "says what Gatekeeper needs in such a room."
    ]


async def test_temporary_failures_back_off_then_give_up(setup: Setup) -> None:
    provisioner = setup.make()
    request = await setup.approved()
    setup.synapse.answers = [HomeserverUnavailable(f"down {n}") for n in range(1, 5)]
    start = setup.clock.ms()

    # 10 s, doubled each time, capped at 30 s; each round runs when the last one said.
    expected_delays_s = [10, 20, 30]
    at = start
    for attempt, delay_s in enumerate(expected_delays_s, start=1):
        assert await step_at(setup, provisioner, at) == delay_s
        waiting = await setup.get(request.id)
        assert waiting.state is State.APPROVED
        assert waiting.provision_attempts == attempt
        assert waiting.last_error == f"down {attempt}"
        assert waiting.next_attempt_at == at + delay_s * 1000
        assert waiting.password_encrypted is not None  # kept for the next attempt
        # Not due a millisecond early: nothing is tried.
        assert await step_at(setup, provisioner, at + delay_s * 1000 - 1) == pytest.approx(0.001)
        assert len(setup.synapse.created) == attempt
        at += delay_s * 1000

    assert await step_at(setup, provisioner, at) is None
    failed = await setup.get(request.id)
    assert failed.state is State.FAILED
    assert failed.provision_attempts == MAX_ATTEMPTS
    assert failed.last_error == f"gave up after {MAX_ATTEMPTS} attempts: down {MAX_ATTEMPTS}"
    assert failed.password_encrypted is None
    assert len(setup.synapse.created) == MAX_ATTEMPTS
    assert setup.mail.welcomed == []


async def test_success_after_a_failure_clears_the_error(setup: Setup) -> None:
    provisioner = setup.make()
    request = await setup.approved()
    setup.synapse.answers = [HomeserverUnavailable("down"), "@ann:example.org"]
    await step_at(setup, provisioner, setup.clock.ms())
    assert (await setup.get(request.id)).last_error == "down"

    await step_at(setup, provisioner, setup.clock.ms() + int(INITIAL_S * 1000))
    done = await setup.get(request.id)
    assert (done.state, done.provision_attempts, done.last_error) == (State.ACTIVE, 2, None)


async def test_a_name_taken_meanwhile_fails_for_good(setup: Setup) -> None:
    provisioner = setup.make()
    request = await setup.approved()
    setup.synapse.answers = [AccountTaken("M_USER_IN_USE", "@ann:example.org exists")]

    assert await provisioner.step() is None

    failed = await setup.get(request.id)
    assert (failed.state, failed.provision_attempts) == (State.FAILED, 1)
    assert failed.last_error == "the name was taken on the homeserver in the meantime"
    assert failed.password_encrypted is None
    assert await step_at(setup, provisioner, setup.clock.ms() + 3_600_000) is None
    assert len(setup.synapse.created) == 1


async def test_a_password_that_cannot_be_decrypted_fails_without_asking_synapse(
    setup: Setup,
) -> None:
    request = await setup.approved()
    other_key = SecretBox(example_config().security)
    await setup.store.set_password(request.id, "argon2-hash", other_key.encrypt("x" * 9))

    await setup.make().step()

    failed = await setup.get(request.id)
    assert failed.state is State.FAILED
    assert failed.last_error is not None
    assert "cannot be decrypted" in failed.last_error
    assert setup.synapse.created == []


async def test_an_interrupted_round_is_resumed(setup: Setup) -> None:
    request = await setup.approved()
    claimed = await setup.registrations.claim_for_provisioning()  # and then the process died
    assert claimed is not None
    assert claimed.id == request.id
    setup.synapse.answers = ["@ann:example.org"]

    await setup.make().step()

    done = await setup.get(request.id)
    assert (done.state, done.provision_attempts) == (State.ACTIVE, 2)
    history = [(e.from_state, e.to_state) for e in await setup.store.history(done.id)]
    assert ("provisioning", "approved") in history


async def test_finishing_twice_welcomes_once(setup: Setup) -> None:
    """A round whose outcome another process already wrote changes nothing."""
    request = await setup.approved()
    setup.synapse.answers = ["@ann:example.org"]
    await setup.make().step()
    again = await setup.registrations.finish_provisioning(
        request.id, "@ann:example.org", after=setup.mail.welcome
    )
    assert again.outcome is Outcome.ALREADY
    assert len(setup.mail.welcomed) == 1
