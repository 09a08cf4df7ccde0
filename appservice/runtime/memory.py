"""The process's memory: glibc's malloc tuned for threads that hash and read SQLite."""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("gatekeeper.memory")

# glibc's mallopt() parameters (malloc.h), each with the environment variable that sets it
# at start-up: an operator's own setting wins.
M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
TUNING = (
    # Each thread that allocates gets an arena of its own (up to eight per core), and
    # memory freed in one is not reused by the others: with the SQLite readers and the
    # hashing threads that raised peak RSS under load by about 30 MB.
    ("MALLOC_ARENA_MAX", M_ARENA_MAX, 2),
    # An argon2id hash allocates 19 MiB. glibc maps such a block apart and unmaps it when
    # freed, but then raises its threshold above it, so later hashes' blocks stay in the
    # arenas once freed: about 40 MB more after a burst of logins. A fixed threshold keeps
    # them mapped and returned (about 2 % of a hash's time, for the page faults).
    ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, 4 * 1024 * 1024),
)


def tune_malloc() -> list[str]:
    """Apply TUNING where the operator has not set it; returns the settings applied (none
    without glibc's mallopt, e.g. musl or macOS)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return []
    applied = []
    for variable, parameter, value in TUNING:
        if variable in os.environ:
            continue
        if mallopt(parameter, value):
            applied.append(variable)
        else:
            log.debug("This C library does not take %s", variable)
    return applied
