"""Command declarations and parsing: each command carries its permission and help text."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from mautrix.types import EventID, RoomID, UserID

COMMAND_SPEC_ATTR = "__gatekeeper_command__"


@dataclass(frozen=True)
class CommandSpec:
    name: str
    help: str
    args: str = ""
    needs_admin: bool = True

    def usage(self, prefix: str) -> str:
        return f"{prefix}{self.name} {self.args}".strip()


@dataclass(frozen=True)
class CommandContext:
    sender: UserID
    room_id: RoomID
    event_id: EventID
    args: list[str]
    raw_args: str
    # `Usage: !approve <id>`, from the command's declaration: the answer to wrong arguments.
    usage: str = ""


@dataclass(frozen=True)
class Reply:
    """What the bot answers: plain text, and optional HTML for clients that render it."""

    text: str
    html: str | None = None


CommandHandler = Callable[[CommandContext], Awaitable[Reply]]
F = TypeVar("F", bound=Callable[..., Awaitable[Reply]])


def command(name: str, *, help: str, args: str = "", needs_admin: bool = True) -> Callable[[F], F]:
    """Mark a bot method as the handler of `<prefix><name>`."""

    def decorate(func: F) -> F:
        setattr(func, COMMAND_SPEC_ATTR, CommandSpec(name, help, args, needs_admin))
        return func

    return decorate


@dataclass(frozen=True)
class BoundCommand:
    spec: CommandSpec
    handler: CommandHandler


def declared_commands(cls: type) -> dict[str, CommandSpec]:
    """The specs declared with @command on `cls`'s methods, by method name."""
    found: dict[str, CommandSpec] = {}
    for attribute in dir(cls):
        spec = getattr(getattr(cls, attribute), COMMAND_SPEC_ATTR, None)
        if isinstance(spec, CommandSpec):
            found[attribute] = spec
    return found


def collect_commands(*owners: object) -> dict[str, BoundCommand]:
    """The commands declared with @command on the owners' methods, by name; each name once."""
    found: dict[str, BoundCommand] = {}
    for owner in owners:
        for attribute, spec in declared_commands(type(owner)).items():
            if spec.name in found:
                raise ValueError(f"Command {spec.name} is declared twice")
            found[spec.name] = BoundCommand(spec, getattr(owner, attribute))
    return found


@dataclass(frozen=True)
class ParsedCommand:
    name: str
    args: list[str]
    raw_args: str


def parse_command(body: str, prefix: str) -> ParsedCommand | None:
    """`!reject 12 spam bot` → name 'reject', args ['12', 'spam', 'bot']; None if not a command."""
    if not body.startswith(prefix):
        return None
    rest = body[len(prefix) :].strip()
    if not rest:
        return None
    name, _, raw_args = rest.partition(" ")
    return ParsedCommand(name.lower(), raw_args.split(), raw_args.strip())
