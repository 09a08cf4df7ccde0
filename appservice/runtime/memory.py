"""The process's memory: glibc's malloc tuned for the threads that hash and read SQLite."""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("gatekeeper.memory")

# glibc's mallopt() parameter (malloc.h), with the environment variable that sets it at
# start-up: an operator's own setting wins.
M_ARENA_MAX = -8
TUNING = (
    # Each thread that allocates gets an arena of its own (up to eight per core), and
    # memory freed in one is not reused by the others: with the SQLite readers and the
    # hashing threads that raised peak RSS under load by about 30 MB.
    ("MALLOC_ARENA_MAX", M_ARENA_MAX, 2),
    # Not the mmap threshold. An argon2id hash allocates 19 MiB, which glibc maps apart
    # once and then keeps in the arenas when freed (its threshold rises above it): about
    # 20 MB more at the peak of a login burst. A fixed threshold returns each block, but
    # every hash then faults its 19 MiB in afresh: logins/s fell from 0.83 to 0.55 of the
    # argon2id ceiling in the bench. Throughput under a wave of logins matters more.
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
