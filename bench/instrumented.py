"""Gatekeeper as the bench runs it: unchanged, but counting the argon2 hashes it computes
(every hash and every verify) and the HTTP requests it sends (all of them go to the
homeserver: messages sent into rooms apart, the rest), so that a scenario can prove a
refusal cost neither.

    python -m bench.instrumented COUNTS_FILE -c gatekeeper.yaml

The counts live in COUNTS_FILE, memory-mapped (see `Counts`): counting is an increment
under a lock, far below the cost of what it counts.
"""

from __future__ import annotations

import functools
import mmap
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

COUNTERS = ("hashes", "synapse_calls", "room_messages")
# What a message into a room is sent by: PUT /_matrix/client/v3/rooms/{room}/send/{type}/{txn}.
ROOM_MESSAGE = "/send/"
_LAYOUT = struct.Struct("<" + "Q" * len(COUNTERS))

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Counts:
    hashes: int = 0
    synapse_calls: int = 0  # every request to the homeserver but a message into a room
    room_messages: int = 0

    @classmethod
    def read(cls, path: Path) -> Counts:
        return cls(*_LAYOUT.unpack(path.read_bytes()[: _LAYOUT.size]))

    def __sub__(self, earlier: Counts) -> Counts:
        return Counts(*(a - b for a, b in zip(astuple(self), astuple(earlier), strict=True)))

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


class _Counter:
    def __init__(self, path: Path) -> None:
        path.write_bytes(bytes(_LAYOUT.size))
        with path.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), _LAYOUT.size)
        self._lock = threading.Lock()  # hashes run in a thread pool

    def add(self, index: int) -> None:
        offset = index * 8
        with self._lock:
            (value,) = struct.unpack_from("<Q", self._map, offset)
            struct.pack_into("<Q", self._map, offset, value + 1)

    def counting(self, index: Callable[..., int], method: Callable[P, R]) -> Callable[P, R]:
        """`method`, counting each call in the counter that `index` picks from its arguments."""

        @functools.wraps(method)
        def counted(*args: P.args, **kwargs: P.kwargs) -> R:
            self.add(index(*args, **kwargs))
            return method(*args, **kwargs)

        return counted


def _instrument(path: Path) -> None:
    import aiohttp
    import argon2

    counter = _Counter(path)

    def hashes(*_: object, **__: object) -> int:
        return COUNTERS.index("hashes")

    def request_kind(_: object, method: str, url: object, *__: object, **___: object) -> int:
        kind = "room_messages" if ROOM_MESSAGE in str(url) else "synapse_calls"
        return COUNTERS.index(kind)

    # Gatekeeper's hasher is an argon2.PasswordHasher: its two methods are all the hashing.
    hasher: Any = argon2.PasswordHasher
    hasher.hash = counter.counting(hashes, hasher.hash)
    hasher.verify = counter.counting(hashes, hasher.verify)
    # mautrix and Gatekeeper's Synapse client both send through aiohttp's ClientSession.
    session: Any = aiohttp.ClientSession
    session._request = counter.counting(request_kind, session._request)


def main() -> None:
    counts_file = Path(sys.argv.pop(1))
    _instrument(counts_file)
    from gatekeeper.appservice.cli import main as gatekeeper

    sys.exit(gatekeeper())


if __name__ == "__main__":
    main()
