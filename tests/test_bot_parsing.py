"""Admin-room commands and their options, parsed without a room or a homeserver."""

from __future__ import annotations

import pytest
from mautrix.types import EventID, RoomID, UserID

from gatekeeper.appservice.timeutil import now_ms
from gatekeeper.bot.commands import (
    CommandContext,
    CommandSpec,
    ParsedCommand,
    Reply,
    collect_commands,
    command,
    parse_command,
)
from gatekeeper.bot.options import expiry, parse_options, when

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000


# --- commands ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "parsed"),
    [
        ("!reject 12 spam bot", ParsedCommand("reject", ["12", "spam", "bot"], "12 spam bot")),
        ("!help", ParsedCommand("help", [], "")),
        ("!APPROVE abcd", ParsedCommand("approve", ["abcd"], "abcd")),
        (
            "!note abcd   keeps   inner  spaces ",
            ParsedCommand(
                "note", ["abcd", "keeps", "inner", "spaces"], "abcd   keeps   inner  spaces"
            ),
        ),
        ("!  pending", ParsedCommand("pending", [], "")),
    ],
)
def test_a_command_is_split_into_name_and_arguments(body: str, parsed: ParsedCommand) -> None:
    assert parse_command(body, "!") == parsed


@pytest.mark.parametrize("body", ["", "!", "!   ", "help", " !help", "hello !help", "?help"])
def test_anything_else_is_not_a_command(body: str) -> None:
    assert parse_command(body, "!") is None


def test_the_prefix_is_configurable() -> None:
    assert parse_command("gk: stats", "gk: ") == ParsedCommand("stats", [], "")
    assert parse_command("!stats", "gk: ") is None


def test_usage_shows_the_prefix_and_arguments() -> None:
    assert CommandSpec("reject", "…", "<id> [reason]").usage("!") == "!reject <id> [reason]"
    assert CommandSpec("help", "…").usage("!") == "!help"


class Commands:
    def __init__(self) -> None:
        self.calls: list[CommandContext] = []

    @command("approve", help="approve a request", args="<id>")
    async def approve(self, ctx: CommandContext) -> Reply:
        self.calls.append(ctx)
        return Reply(f"approved {ctx.args[0]}")

    @command("help", help="this list", needs_admin=False)
    async def help(self, ctx: CommandContext) -> Reply:
        return Reply("help")

    async def not_a_command(self, ctx: CommandContext) -> Reply:
        return Reply("hidden")


async def test_declared_commands_are_collected_with_their_permission() -> None:
    owner = Commands()
    found = collect_commands(owner)
    assert set(found) == {"approve", "help"}
    assert found["approve"].spec == CommandSpec("approve", "approve a request", "<id>", True)
    assert found["help"].spec.needs_admin is False
    ctx = CommandContext(
        UserID("@alice:example.org"), RoomID("!room:example.org"), EventID("$e"), ["abcd"], "abcd"
    )
    assert await found["approve"].handler(ctx) == Reply("approved abcd")
    assert owner.calls == [ctx]  # bound to the instance


# --- options -----------------------------------------------------------------------------

DEFAULTS = {"uses": "1", "expires": "7d", "note": ""}


def test_options_keep_their_defaults() -> None:
    assert parse_options([], DEFAULTS) == DEFAULTS


def test_an_option_runs_until_the_next_one() -> None:
    args = ["--uses", "3", "--note", "for", "the", "book", "club", "--expires", "2w"]
    assert parse_options(args, DEFAULTS) == {
        "uses": "3",
        "expires": "2w",
        "note": "for the book club",
    }


def test_defaults_are_not_changed() -> None:
    defaults = dict(DEFAULTS)
    parse_options(["--uses", "5"], defaults)
    assert defaults == DEFAULTS


def test_an_option_given_twice_takes_the_last_value() -> None:
    assert parse_options(["--uses", "2", "--uses", "4"], DEFAULTS)["uses"] == "4"


def test_an_option_without_a_value_is_empty() -> None:
    assert parse_options(["--expires"], DEFAULTS)["expires"] == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--colour", "red"], "unknown option --colour"),
        (["3", "--uses", "2"], "unexpected '3'"),
        (["--", "x"], "unknown option --"),
    ],
)
def test_bad_options_are_named(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_options(args, DEFAULTS)


@pytest.mark.parametrize(
    ("duration", "ms"),
    [("30m", 30 * MINUTE), ("12h", 12 * HOUR), ("7d", 7 * DAY), ("2w", 14 * DAY), (" 1d ", DAY)],
)
def test_expiry_is_that_long_from_now(duration: str, ms: int) -> None:
    before = now_ms()
    at = expiry(duration)
    assert before + ms <= at <= now_ms() + ms


@pytest.mark.parametrize("duration", ["", "7", "d", "7y", "-1d", "1.5h", "7 d", "7D", "seven d"])
def test_a_bad_duration_is_refused(duration: str) -> None:
    with pytest.raises(ValueError, match="is not a duration like 30m, 12h, 7d or 2w"):
        expiry(duration)


def test_when_is_utc_to_the_minute() -> None:
    assert when(None) == "never"
    assert when(0) == "1970-01-01 00:00 UTC"
    assert when(1_700_000_059_999) == "2023-11-14 22:14 UTC"
