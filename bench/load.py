"""The load generator: closed loop (N clients back to back) or open loop (a fixed offered
rate), always in a process of its own so it does not share an event loop or a GIL with
what it measures."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import statistics
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import cycle, islice
from multiprocessing import get_context
from typing import Any

import aiohttp

CSRF_COOKIE = "CSRF-Token"
CSRF_HEADER = "X-CSRF-Token"
FORWARDED_FOR = "X-Forwarded-For"
_CLIENTS = itertools.count(1)


def new_client_address() -> str:
    """An address (in 10.0.0.0/8) no other call of this run has used: the bench's load is
    many people, each within the per-address limits, as a real crowd would be."""
    return str(ipaddress.IPv4Address("10.0.0.0") + next(_CLIENTS))


@dataclass(frozen=True)
class Call:
    """One HTTP request; POSTs carry a CSRF token fetched once per load run. With `client`,
    the request says it comes from that address through the trusted proxy."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    cookies: dict[str, str] = field(default_factory=dict)
    client: str | None = None


@dataclass(frozen=True)
class Load:
    base_url: str
    calls: tuple[Call, ...]
    # Closed loop: `concurrency` clients; each call once, or cycled for `seconds` if set.
    concurrency: int = 8
    seconds: float | None = None
    # Open loop: calls start at this many per second for `seconds`, however slow answers are.
    offered_rate: float | None = None


@dataclass(frozen=True)
class LoadResult:
    requests: int
    started_at: float  # wall clock (time.time()), to line up with other processes' events
    elapsed: float
    statuses: dict[int, int]
    latencies_ms: tuple[float, ...]

    @property
    def per_second(self) -> float:
        return self.requests / self.elapsed

    @property
    def finished_at(self) -> float:
        return self.started_at + self.elapsed

    @property
    def failures(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    def percentile(self, p: int) -> float:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[p - 1]


async def _anonymous_csrf_token(session: aiohttp.ClientSession, base_url: str) -> str:
    async with session.get(base_url + "/api/csrf") as response:
        return str((await response.json())["csrfToken"])


async def _drive(load: Load) -> LoadResult:
    connector = aiohttp.TCPConnector(limit=load.concurrency if load.offered_rate is None else 512)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        needs_csrf = any(call.method != "GET" for call in load.calls)
        csrf = await _anonymous_csrf_token(session, load.base_url) if needs_csrf else ""
        statuses: Counter[int] = Counter()
        latencies: list[float] = []

        async def send(call: Call, started: float) -> None:
            cookies = dict(call.cookies)
            headers = {}
            if call.method != "GET":
                cookies[CSRF_COOKIE] = csrf
                headers[CSRF_HEADER] = csrf
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
            if call.client is not None:
                headers[FORWARDED_FOR] = call.client
            try:
                async with session.request(
                    call.method, load.base_url + call.path, json=call.body, headers=headers
                ) as response:
                    await response.read()
                    statuses[response.status] += 1
            except aiohttp.ClientError:
                statuses[0] += 1  # a refused or broken connection counts as a failure
            latencies.append((time.perf_counter() - started) * 1000)

        started_at, begin = time.time(), time.perf_counter()
        if load.offered_rate is None:
            await _closed_loop(load, send)
        else:
            await _open_loop(load, send)
        elapsed = time.perf_counter() - begin
    return LoadResult(sum(statuses.values()), started_at, elapsed, dict(statuses), tuple(latencies))


Send = Callable[[Call, float], Coroutine[Any, Any, None]]


async def _closed_loop(load: Load, send: Send) -> None:
    calls: Iterator[Call] = cycle(load.calls) if load.seconds else iter(load.calls)
    deadline = time.perf_counter() + (load.seconds or float("inf"))

    async def client() -> None:
        while time.perf_counter() < deadline:
            call = next(calls, None)
            if call is None:
                return
            await send(call, time.perf_counter())

    await asyncio.gather(*(client() for _ in range(load.concurrency)))


async def _open_loop(load: Load, send: Send) -> None:
    """Each request starts at its scheduled time and its latency counts from then, so a
    slow server cannot hide its queueing (no coordinated omission)."""
    assert load.offered_rate is not None
    assert load.seconds is not None
    total = int(load.offered_rate * load.seconds)
    interval = 1 / load.offered_rate
    begin = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    for index, call in enumerate(islice(cycle(load.calls), total)):
        scheduled = begin + index * interval
        # Sleeping even when late lets the requests already started make progress.
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.create_task(send(call, scheduled)))
    await asyncio.gather(*tasks)


def _run(load: Load) -> LoadResult:
    return asyncio.run(_drive(load))


async def run_load(load: Load) -> LoadResult:
    """Drive `load` from a fresh process and return what it saw."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return await asyncio.wrap_future(pool.submit(_run, load))
