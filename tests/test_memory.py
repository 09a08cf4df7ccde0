"""The process's malloc arenas stay few however many threads allocate."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Six threads allocate (100 KB: malloc's heap, under its mmap threshold) at the same time,
# then glibc's malloc_stats() prints one "Arena N:" block per arena to stderr.
THREADS_ALLOCATE = """
import ctypes, sys, threading
from gatekeeper.appservice.runtime.memory import limit_malloc_arenas
if sys.argv[1] == "limit":
    assert limit_malloc_arenas()
start = threading.Barrier(6)
def allocate():
    start.wait()
    kept = [bytearray(100_000) for _ in range(50)]
    start.wait()
threads = [threading.Thread(target=allocate) for _ in range(6)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_ARENA_MAX from the caller
    done = subprocess.run(
        [sys.executable, "-c", THREADS_ALLOCATE, mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


def test_threads_share_two_arenas() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc arenas are glibc's")
    assert _arenas("free") > 2  # the test can tell: without the limit, threads take more
    assert _arenas("limit") <= 2
