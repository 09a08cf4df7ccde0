"""Command options: `--uses 3 --expires 7d --note some words`, and durations."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from gatekeeper.appservice.timeutil import now_ms

DURATION_RE = re.compile(r"^(\d+)([mhdw])$")
UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_options(args: list[str], defaults: dict[str, str]) -> dict[str, str]:
    """Options by name; a value runs until the next --option (so notes may have spaces)."""
    options = dict(defaults)
    name: str | None = None
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:]
            if name not in defaults:
                raise ValueError(f"unknown option --{name}")
            options[name] = ""
        elif name is None:
            raise ValueError(f"unexpected {arg!r}")
        else:
            options[name] = f"{options[name]} {arg}".strip()
    return options


def expiry(duration: str) -> int:
    """The time `duration` (30m, 12h, 7d, 2w) from now, in ms."""
    match = DURATION_RE.match(duration.strip())
    if not match:
        raise ValueError(f"{duration!r} is not a duration like 30m, 12h, 7d or 2w")
    return now_ms() + int(match.group(1)) * UNIT_MS[match.group(2)]


def when(ms: int | None) -> str:
    if ms is None:
        return "never"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
