"""What every scenario gets: the running stack, the sizes of this run, and the limits that
several scenarios compare with."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import aiohttp

from bench.load import (
    CSRF_HEADER,
    FORWARDED_FOR,
    Call,
    Load,
    LoadResult,
    new_client_address,
    run_load,
)
from bench.report import Figure
from bench.stack import Stack
from gatekeeper.appservice.config import load_config
from gatekeeper.appservice.domain.passwords import PasswordHasher
from gatekeeper.appservice.homeserver.backends import account_backend
from harness.net import free_port

RSS_TARGET_MB = 120.0
CEILING_SECONDS = 4.0
HELLO_CALLS = (Call("GET", "/api/user-info"),)
READ_CLIENTS = 16
PASSWORD = "a benchmark passphrase 42"  # noqa: S105 (throwaway accounts)


@dataclass(frozen=True)
class Sizes:
    signups: int
    logins: int
    read_seconds: float
    offered_rate: float
    approvals: int
    pending: int
    burst: int
    command_repeats: int
    scale: tuple[int, int]  # requests in the database at the scale scenario's two points


FULL = Sizes(
    signups=400,
    logins=400,
    read_seconds=8,
    offered_rate=1000,
    approvals=30,
    pending=10_000,
    burst=1000,
    command_repeats=7,
    scale=(10_000, 100_000),
)
QUICK = Sizes(
    signups=80,
    logins=80,
    read_seconds=3,
    offered_rate=1000,
    approvals=8,
    pending=2000,
    burst=200,
    command_repeats=3,
    scale=(2_000, 20_000),
)


def _hashes_in(seconds: float) -> int:
    hasher = PasswordHasher.argon2_hasher()
    deadline = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < deadline:
        hasher.hash(PASSWORD)
        count += 1
    return count


class _NoSecrets:
    """The account backend's secret store, which a name check never opens."""

    async def get(self, key: str) -> str | None:
        return None

    async def set(self, key: str, value: str) -> None:
        pass


async def _sign_up_work_in(config_path: Path, seconds: float) -> int:
    """What a sign-up must do besides the database: one argon2id hash and Gatekeeper's own
    check that the name is free on the homeserver (its account backend, so the same calls).
    One hash at a time on this process's core; two workers, so that the core hashes on
    while the other's check waits for the homeserver."""
    backend = account_backend(load_config(config_path), _NoSecrets())
    await backend.start()
    hasher = PasswordHasher.argon2_hasher()
    loop = asyncio.get_running_loop()
    names = (f"ceiling-{os.getpid()}-{n}" for n in itertools.count())
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker(hashing: ThreadPoolExecutor) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await loop.run_in_executor(hashing, hasher.hash, PASSWORD)
            await backend.username_available(next(names))
            done += 1

    try:
        with ThreadPoolExecutor(1) as hashing:
            await asyncio.gather(worker(hashing), worker(hashing))
    finally:
        await backend.close()
    return done


def _sign_up_work(config_path: Path, seconds: float) -> int:
    return asyncio.run(_sign_up_work_in(config_path, seconds))


async def _per_second_on_all_cores(work: Callable[..., int], *args: object) -> float:
    """`work(*args, seconds)` in one process per core at once: what they did per second."""
    seconds = CEILING_SECONDS
    cores = os.cpu_count() or 1
    with ProcessPoolExecutor(cores, mp_context=get_context("spawn")) as pool:
        loop = asyncio.get_running_loop()
        job = functools.partial(work, *args, seconds)
        counts = await asyncio.gather(*(loop.run_in_executor(pool, job) for _ in range(cores)))
    return sum(counts) / seconds


@dataclass(frozen=True)
class ReadFigures:
    """Requests/s with N clients back to back, and latency at a fixed offered rate."""

    closed: LoadResult
    open: LoadResult


@dataclass
class Bench:
    stack: Stack
    sizes: Sizes
    idle_rss_mb: float
    figures: list[Figure] = field(default_factory=list)

    async def argon2_ceiling(self) -> float:
        """Hashes per second of the configured parameters on every core, in processes of
        this bench. Measured anew around each scenario that compares with it, so that both
        see the machine in the same state."""
        return await _per_second_on_all_cores(_hashes_in)

    async def sign_up_ceiling(self) -> float:
        """Sign-ups per second if a sign-up were only its hash and its homeserver name
        check, on every core (see _sign_up_work_in); measured as argon2_ceiling is."""
        return await _per_second_on_all_cores(_sign_up_work, self.stack.config_path)

    async def read_figures(self, base_url: str, calls: tuple[Call, ...]) -> ReadFigures:
        sizes = self.sizes
        closed = await run_load(
            Load(base_url, calls, concurrency=READ_CLIENTS, seconds=sizes.read_seconds)
        )
        offered = await run_load(
            Load(base_url, calls, seconds=sizes.read_seconds, offered_rate=sizes.offered_rate)
        )
        return ReadFigures(closed, offered)

    async def hello_world(self) -> ReadFigures:
        """The read loads against an aiohttp hello-world in a process of its own, measured
        anew by each scenario: on a shared machine, a limit measured minutes earlier may
        have seen another load."""
        async with _hello_world() as url:
            return await self.read_figures(url, HELLO_CALLS)

    async def hello_world_per_second(self) -> float:
        """Requests/s of the hello-world with READ_CLIENTS clients (the closed loop alone)."""
        async with _hello_world() as url:
            load = Load(url, HELLO_CALLS, concurrency=READ_CLIENTS, seconds=self.sizes.read_seconds)
            return (await run_load(load)).per_second

    def peak_rss(self, scenario: str) -> Figure:
        """The Gatekeeper process's peak RSS since the scenario began, against idle."""
        peak = self.stack.rss_mb("VmHWM")
        return Figure(
            scenario,
            "peak RSS of Gatekeeper",
            peak,
            "MB",
            "idle",
            self.idle_rss_mb,
            f"< {RSS_TARGET_MB:.0f} MB",
            peak < RSS_TARGET_MB,
        )


@contextlib.asynccontextmanager
async def _hello_world() -> AsyncIterator[str]:
    """The hello-world (bench/hello.py) running; its URL."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.hello", str(port))
    try:
        await _wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        await server.wait()


async def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise RuntimeError(f"nothing listens on port {port}")


async def log_in(base_url: str, email: str) -> str:
    """Log in through the API as a browser would; returns the LOGIN_TOKEN cookie."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(base_url + "/api/csrf") as response:
            csrf = str((await response.json())["csrfToken"])
        async with session.post(
            base_url + "/api/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={CSRF_HEADER: csrf, FORWARDED_FOR: new_client_address()},
        ) as response:
            answer = await response.json()
            if answer != {"status": "logged-in"}:
                raise RuntimeError(f"login of {email} failed: {answer}")
            return response.cookies["LOGIN_TOKEN"].value
