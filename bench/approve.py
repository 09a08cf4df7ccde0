"""Approve → account usable on Synapse, against Synapse's own shared-secret registration."""

from __future__ import annotations

import asyncio
import hmac
import secrets
import statistics
import time
from typing import Any

import aiohttp

from bench.context import PASSWORD, Bench
from bench.hashing import sign_up_calls
from bench.load import Load, run_load
from bench.report import Figure
from bench.stack import ADMIN_API_TOKEN, Stack

OVERHEAD_TARGET_MS = 50.0
POLL_SECONDS = 0.005  # adds at most this much (half of it on average) to each approval


async def _approve_until_active(
    session: aiohttp.ClientSession, base: str, request_id: str
) -> float:
    """Seconds from the approve call until Gatekeeper reports the account created."""
    url = f"{base}/api/admin/registrations/{request_id}"
    started = time.perf_counter()
    async with session.post(url + "/approve") as response:
        if response.status != 200:
            raise RuntimeError(f"approve {request_id}: {await response.text()}")
    while True:
        async with session.get(url) as response:
            state = (await response.json())["state"]
        if state == "active":
            return time.perf_counter() - started
        if state == "failed":
            raise RuntimeError(f"the account of {request_id} could not be created")
        await asyncio.sleep(POLL_SECONDS)


async def _shared_secret_registration(
    session: aiohttp.ClientSession, synapse_url: str, secret: str, localpart: str
) -> float:
    """The same two calls Gatekeeper makes (nonce, then register without a login), timed."""
    endpoint = f"{synapse_url}/_synapse/admin/v1/register"
    started = time.perf_counter()
    async with session.get(endpoint) as response:
        nonce = (await response.json())["nonce"]
    mac = hmac.new(
        secret.encode(), "\x00".join((nonce, localpart, PASSWORD, "notadmin")).encode(), "sha1"
    )
    body: dict[str, Any] = {
        "nonce": nonce,
        "username": localpart,
        "password": PASSWORD,
        "admin": False,
        "mac": mac.hexdigest(),
        "inhibit_login": True,
        "displayname": localpart,
    }
    async with session.post(endpoint, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"registering {localpart}: {await response.text()}")
    return time.perf_counter() - started


async def _print_breakdown(stack: Stack, ids: list[str]) -> None:
    """Where an approval's time goes, from the audit log's timestamps (ms)."""
    steps: dict[str, list[int]] = {"approved → provisioning": [], "provisioning → active": []}
    for request_id in ids:
        at = {
            row["to_state"]: row["at"]
            for row in await stack.db.fetch(
                "SELECT to_state, at FROM registration_audit WHERE request_id=$1", request_id
            )
        }
        steps["approved → provisioning"].append(at["provisioning"] - at["approved"])
        steps["provisioning → active"].append(at["active"] - at["provisioning"])
    medians = ", ".join(f"{step} {statistics.median(ms):.0f} ms" for step, ms in steps.items())
    print(f"  median {medians}")


async def approve(bench: Bench) -> list[Figure]:
    stack = bench.stack
    prefix = f"ap{secrets.token_hex(2)}"
    count = bench.sizes.approvals
    signed_up = await run_load(Load(stack.web_url, sign_up_calls(prefix, count), concurrency=4))
    if signed_up.failures:
        raise RuntimeError(f"{signed_up.failures} sign-ups for the approvals failed")
    await stack.settle()  # their notices posted: only the approvals' own work is measured
    rows = await stack.db.fetch(
        "SELECT id FROM registration_request WHERE localpart LIKE $1", f"{prefix}-%"
    )
    ids = [row["id"] for row in rows]
    headers = {"Authorization": f"Bearer {ADMIN_API_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        gatekeeper, alone = [], []
        for n, request_id in enumerate(ids):  # interleaved, so drift hits both alike
            gatekeeper.append(await _approve_until_active(session, stack.web_url, request_id))
            alone.append(
                await _shared_secret_registration(
                    session, stack.synapse.url, stack.synapse.shared_secret, f"{prefix}-alone-{n}"
                )
            )
    await _print_breakdown(stack, ids)
    approve_ms = statistics.median(gatekeeper) * 1000
    alone_ms = statistics.median(alone) * 1000
    overhead = approve_ms - alone_ms
    return [
        Figure(
            "approve",
            f"approve → account created, median of {len(ids)}",
            approve_ms,
            "ms",
            "Synapse registration alone",
            alone_ms,
            f"overhead {overhead:+.0f} ms ≤ {OVERHEAD_TARGET_MS:.0f} ms",
            overhead <= OVERHEAD_TARGET_MS,
        )
    ]
