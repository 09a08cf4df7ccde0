"""Times are stored as UTC milliseconds since the epoch, the same on every backend."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
