"""Sign-up field checks as plain function calls: no Gatekeeper, no Synapse, no database.

tests/test_signup_validation.py sends the same bad fields through the running web API.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from gatekeeper.appservice.domain.errors import FieldErrors
from gatekeeper.appservice.domain.i18n import Catalogue
from gatekeeper.appservice.domain.signup import MAX_REASON_CHARS, SignUpForm, SignUps, valid_email
from gatekeeper.appservice.homeserver.account_backend import Availability
from tests.example_config import example_config

GOOD: dict[str, Any] = {
    "userName": "ann",
    "email": "ann@example.org",
    "password": "correct horse battery staple",
    "language": "de",
    "reason": "a friend sent me",
}
DOMAIN = "example.org"  # example-config.yaml's homeserver.domain
# The longest localpart whose user ID, @<localpart>:example.org, is 255 bytes.
LONGEST = 255 - len(f"@:{DOMAIN}")


class Names:
    """What check_name() asks about a name: our own requests, then Synapse."""

    def __init__(self, requested: bool, availability: Availability) -> None:
        self.requested = requested
        self.availability = availability
        self.asked: list[str] = []

    async def name_requested(self, localpart: str) -> bool:
        return self.requested

    async def username_available(self, localpart: str) -> Availability:
        self.asked.append(localpart)
        return self.availability


def sign_ups(names: Names | None = None, **registration: Any) -> SignUps:
    """parse() and check_name() use the config and, for the latter, the two look-ups
    of `names`; none of the other peers a SignUps holds is touched."""
    unused = cast(Any, None)
    return SignUps(
        example_config(registration=registration),
        unused,
        cast(Any, names),
        cast(Any, names),
        unused,
        unused,
        unused,
        unused,
        unused,
        unused,
        unused,
    )


async def check(signups: SignUps, body: dict[str, Any]) -> SignUpForm:
    """The sign-up's field checks: parse(), then whether the name is free."""
    return await signups.check_name(*signups.parse(body))


def errors_of(body: dict[str, Any], **registration: Any) -> dict[str, str]:
    return sign_ups(**registration).parse(body)[1]


def test_a_good_sign_up_is_normalised() -> None:
    answer = sign_ups().parse(
        {**GOOD, "userName": "  Ann.Smith ", "email": " ann@EXAMPLE.org ", "reason": " hi \n"}
    )
    assert answer == (
        SignUpForm(
            localpart="ann.smith",
            email="ann@example.org",
            language="de",
            password=GOOD["password"],
            reason="hi",
        ),
        {},
    )


def test_language_and_reason_may_be_left_out() -> None:
    form, errors = sign_ups().parse(
        {k: v for k, v in GOOD.items() if k not in ("language", "reason")}
    )
    assert (form.language, form.reason, errors) == ("en", "", {})


CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"userName": "gatekeeper"}, "userName", "is reserved"),  # the bot's own name
    ({"userName": "administrator"}, "userName", "is reserved"),  # admin*
    ({"userName": "ROOT"}, "userName", "is reserved"),  # after lower-casing
    ({"userName": "Ann Smith!"}, "userName", "may only contain a-z, 0-9 and . _ = - / +"),
    ({"userName": "anné"}, "userName", "may only contain a-z, 0-9 and . _ = - / +"),
    ({"userName": "a" * (LONGEST + 1)}, "userName", "is too long"),
    ({"userName": "a" * 250}, "userName", "is too long"),
    ({"userName": ""}, "userName", "is required"),
    ({"userName": None}, "userName", "is required"),
    ({"userName": ["ann"]}, "userName", "must be a string"),
    ({"email": "not-an-address"}, "email", "is not a valid email address"),
    ({"email": "ann@"}, "email", "is not a valid email address"),
    ({"email": 42}, "email", "must be a string"),
    ({"email": ""}, "email", "is required"),
    ({"password": "short"}, "password", "must be at least 8 characters"),
    ({"password": "password1"}, "password", "is too common; choose another"),
    ({"password": "PASSWORD1"}, "password", "is too common; choose another"),
    ({"password": "x" * 5000}, "password", "must be at most 4096 bytes"),
    ({"password": "é" * 2049}, "password", "must be at most 4096 bytes"),  # 4098 bytes
    ({"password": "\ud800" * 8}, "password", "must be valid Unicode text"),
    ({"password": 12345678}, "password", "must be a string"),
    ({"language": "xx"}, "language", "must be one of en, de"),
    ({"reason": "x" * (MAX_REASON_CHARS + 1)}, "reason", "must be at most 2000 characters"),
]


@pytest.mark.parametrize(
    ("change", "field", "message"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)]
)
def test_bad_field_is_named(change: dict[str, Any], field: str, message: str) -> None:
    assert errors_of({**GOOD, **change}) == {field: message}


@pytest.mark.parametrize(
    "change",
    [
        {"userName": "a" * LONGEST},
        {"userName": "a.b_c=d-e/f+g9"},
        {"password": "é" * 2048},  # 4096 bytes
        {"password": "12345678x"},
        {"reason": "x" * MAX_REASON_CHARS},
        {"language": "en"},
    ],
)
def test_limits_themselves_are_allowed(change: dict[str, Any]) -> None:
    assert errors_of({**GOOD, **change}) == {}


def test_every_bad_field_at_once() -> None:
    errors = errors_of({"language": "xx"}, require_reason=True)
    assert errors == {
        "userName": "is required",
        "email": "is required",
        "password": "is required",
        "reason": "is required",
        "language": "must be one of en, de",
    }


def test_a_reason_may_be_required() -> None:
    assert errors_of({**GOOD, "reason": ""}, require_reason=True) == {"reason": "is required"}


@pytest.mark.parametrize(
    ("change", "registration"),
    [
        ({"userName": "   "}, {}),
        ({"email": "   "}, {}),
        ({"reason": "   "}, {"require_reason": True}),
    ],
    ids=["userName", "email", "reason"],
)
def test_blank_is_not_an_answer(change: dict[str, Any], registration: dict[str, Any]) -> None:
    [field] = change
    assert set(errors_of({**GOOD, **change}, **registration)) == {field}


def test_reserved_names_come_from_the_config() -> None:
    config_names = {"reserved_usernames": ["team-*"]}
    assert errors_of({**GOOD, "userName": "team-blue"}, **config_names) == {
        "userName": "is reserved"
    }
    form, errors = sign_ups(**config_names).parse({**GOOD, "userName": "root"})
    assert (form.localpart, errors) == ("root", {})


def test_field_errors_name_every_field_in_the_message() -> None:
    error = FieldErrors({"userName": "is required", "email": "must be a string"})
    assert str(error) == "userName: is required, email: must be a string"
    assert error.errors == {"userName": "is required", "email": "must be a string"}


def test_valid_email_normalises_and_names_the_field() -> None:
    assert valid_email("  ann@EXAMPLE.ORG ", "email") == "ann@example.org"
    with pytest.raises(FieldErrors) as raised:
        valid_email("ann at example.org", "newEmail")
    assert raised.value.errors == {"newEmail": "is not a valid email address"}


@pytest.mark.parametrize(
    ("requested", "availability", "message"),
    [
        (True, Availability.AVAILABLE, "is already taken"),
        (False, Availability.TAKEN, "is already taken"),
        (False, Availability.RESERVED, "is reserved"),
        (False, Availability.INVALID, "is not allowed by the homeserver"),
    ],
)
async def test_a_name_that_is_not_free(
    requested: bool, availability: Availability, message: str
) -> None:
    names = Names(requested, availability)
    with pytest.raises(FieldErrors) as raised:
        await check(sign_ups(names), GOOD)
    assert raised.value.errors == {"userName": message}
    # A name one of our requests holds is taken without asking Synapse.
    assert names.asked == ([] if requested else ["ann"])


async def test_a_free_name_passes() -> None:
    names = Names(False, Availability.AVAILABLE)
    assert (await check(sign_ups(names), GOOD)).localpart == "ann"
    assert names.asked == ["ann"]


async def test_a_taken_name_is_told_with_the_other_fields() -> None:
    names = Names(False, Availability.TAKEN)
    with pytest.raises(FieldErrors) as raised:
        await check(sign_ups(names), {**GOOD, "password": "short", "email": "ann@"})
    assert raised.value.errors == {
        "userName": "is already taken",
        "password": "must be at least 8 characters",
        "email": "is not a valid email address",
    }


@pytest.mark.parametrize("name", ["Ann Smith!", "administrator", "", "a" * 250])
async def test_the_homeserver_is_not_asked_about_a_bad_name(name: str) -> None:
    names = Names(False, Availability.TAKEN)
    with pytest.raises(FieldErrors) as raised:
        await check(sign_ups(names), {**GOOD, "userName": name, "password": "short"})
    assert set(raised.value.errors) == {"userName", "password"}
    assert raised.value.errors["userName"] != "is already taken"
    assert names.asked == []


def test_the_applicants_user_id() -> None:
    assert sign_ups().user_id("ann") == "@ann:example.org"


# What a browser's form cannot send: a field that is not text, a language not offered.
NOT_FROM_A_FORM = ("must be a string", "must be one of en, de", "must be valid Unicode text")


@pytest.mark.parametrize("language", ["en", "de"])
async def test_every_problem_a_page_can_show_is_a_sentence(language: str) -> None:
    """The API keeps its short messages; pages show each as a sentence of its own."""
    problems = set(errors_of({}, require_reason=True).items())
    for change, _, _ in CASES:
        problems |= set(errors_of({**GOOD, **change}).items())
    for availability in (Availability.TAKEN, Availability.RESERVED, Availability.INVALID):
        with pytest.raises(FieldErrors) as raised:
            await check(sign_ups(Names(False, availability)), GOOD)
        problems |= set(raised.value.errors.items())
    catalogue = Catalogue()
    for field, message in problems:
        if message in NOT_FROM_A_FORM:
            continue
        sentence = catalogue.field_error(language, field, message)
        assert sentence != catalogue.text(language, "error.other", problem=message), message
        assert sentence[0].isupper(), sentence
        assert sentence.endswith("."), sentence
