"""A background loop that runs a step when woken, when due, or every so often."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("gatekeeper.worker")

# The step returns how many seconds until it has work again (None: only when woken).
Step = Callable[[], Awaitable[float | None]]


class Worker:
    def __init__(self, name: str, step: Step, idle_seconds: float = 30.0) -> None:
        self.name = name
        self.step = step
        self.idle_seconds = idle_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            # A cancel that lands just as the idle wait times out can be lost (asyncio's
            # wait_for in Python 3.11): the flag and the wake end the loop all the same.
            self._stopping = True
            self._wake.set()
            task.cancel()
            await asyncio.wait([task])

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                due = await self.step()
            except Exception:
                # The loop must outlive one bad round; the next one retries.
                log.exception("%s failed; trying again later", self.name)
                due = None
            wait = self.idle_seconds if due is None else min(max(due, 0.0), self.idle_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
