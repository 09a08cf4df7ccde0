"""Does the answer time tell a known email from an unknown one? Run by hand:

    python -m bench.enumeration http://127.0.0.1:29331 ann@example.org [rounds]

against a running Gatekeeper (e.g. `make demo`) and an email with an account there.
Prints the median time of each kind of request. Every attempt is a failure, so the
account may lock; the demo's limits are generous enough for the default rounds.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import aiohttp


async def timed(session: aiohttp.ClientSession, url: str, body: dict[str, str], csrf: str) -> float:
    start = time.perf_counter()
    async with session.post(url, json=body, headers={"X-CSRF-Token": csrf}) as response:
        await response.read()
        assert response.status == 200, await response.text()
    return time.perf_counter() - start


async def main(base: str, known: str, rounds: int) -> None:
    unknown = "nobody-at-all@example.org"
    cases = {
        "login, unknown email": ("/api/auth/login", {"email": unknown, "password": "wrong pass 1"}),
        "login, wrong password": ("/api/auth/login", {"email": known, "password": "wrong pass 1"}),
        "reset, unknown email": ("/api/auth/request-password-reset", {"email": unknown}),
        "reset, known email": ("/api/auth/request-password-reset", {"email": known}),
    }
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.get(f"{base}/api/csrf") as response:
            csrf = (await response.json())["csrfToken"]
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):  # interleaved, so drift hits every case alike
            for name, (path, body) in cases.items():
                times[name].append(await timed(session, base + path, body, csrf))
    print(f"{'request':<24} {'median ms':>10} {'p90 ms':>8}   ({rounds} rounds)")
    for name, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:<24} {statistics.median(values) * 1000:>10.1f} {p90 * 1000:>8.1f}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 10))
