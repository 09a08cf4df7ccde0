"""glibc's malloc, tuned: however many threads allocate, they share two arenas."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Two threads allocate as argon2id hashes do (a 19 MiB block, touched, freed; five times)
# among small allocations; then the RSS the process kept, in MiB, and glibc's
# malloc_stats() (one "Arena N:" block per arena) on stderr.
HASH_LIKE_THREADS = """
import ctypes, sys, threading
from gatekeeper.appservice.runtime.memory import tune_malloc
def rss_mib():
    status = open("/proc/self/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024
if sys.argv[1] == "tuned":
    assert tune_malloc() == ["MALLOC_ARENA_MAX"]
before = rss_mib()
start = threading.Barrier(6)
def hash_like():
    start.wait()
    for _ in range(5):
        block = bytearray(19 * 1024 * 1024)
        block[::4096] = bytes(len(block[::4096]))
        del block
        kept = [bytearray(100_000) for _ in range(20)]
    start.wait()
threads = [threading.Thread(target=hash_like) for _ in range(6)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(rss_mib() - before)
ctypes.CDLL(None).malloc_stats()
"""


def _run(mode: str) -> tuple[int, int]:
    """(MiB kept after the threads ended, arenas)."""
    done = subprocess.run(
        [sys.executable, "-c", HASH_LIKE_THREADS, mode],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},  # none of the caller's MALLOC_* settings
        check=True,
        timeout=60,
    )
    arenas = sum(line.startswith("Arena ") for line in done.stderr.splitlines())
    return int(done.stdout), arenas


def test_threads_share_two_arenas() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("these are glibc's malloc settings")
    untuned, arenas = _run("default")
    assert arenas > 2  # the test can tell: untuned, the threads take arenas of their own
    tuned, arenas = _run("tuned")
    assert arenas <= 2
    assert tuned < untuned
