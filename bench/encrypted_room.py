"""Gatekeeper's memory with an end-to-end encrypted admin room: an admin whose client
encrypts (matrix-nio, harness/encrypted_user.py) makes the room, Gatekeeper restarts with
it as its admin room, then commands and a burst of sign-ups whose notices the admin must
decrypt. The peak RSS (reported for every scenario) is what this one is for; it runs last,
since Gatekeeper keeps that room afterwards."""

from __future__ import annotations

import asyncio
import statistics
import time

from nio import MegolmEvent, RoomMessageNotice, RoomMessagesResponse, RoomMessageText

from bench.admin_room import all_notices_posted_at
from bench.context import Bench
from bench.hashing import sign_up_calls
from bench.load import Load, run_load
from bench.report import Figure
from bench.stack import ADMIN, ADMIN_PASSWORD
from gatekeeper.appservice.timeutil import now_ms
from harness.encrypted_user import EncryptedUser

BURST_CLIENTS = 16
SYNC_SECONDS = 2.0
PREFIX = "en"


async def _notices_in_history(admin: EncryptedUser, room_id: str, bot: str) -> tuple[set[str], int]:
    """The burst's distinct notices the admin's client decrypts in the room's history, and
    how many of the bot's events there it could not decrypt. Read back, not from /sync:
    a sync's timeline holds a few events per room, and a burst outruns it."""
    decrypted: set[str] = set()
    undecryptable = 0
    token = admin.client.next_batch
    while True:
        page = await admin.client.room_messages(room_id, start=token, limit=1000)
        if not isinstance(page, RoomMessagesResponse):
            raise RuntimeError(f"reading the encrypted room's history failed: {page}")
        for event in page.chunk:
            if event.sender != bot:
                continue
            if isinstance(event, MegolmEvent):
                undecryptable += 1
            elif isinstance(event, RoomMessageNotice | RoomMessageText):
                first_line = event.body.split("\n", 1)[0]
                if first_line.startswith("Sign-up request") and f"@{PREFIX}-" in first_line:
                    decrypted.add(first_line)
        if not page.chunk or page.end is None:
            return decrypted, undecryptable
        token = page.end


async def encrypted_room(bench: Bench) -> list[Figure]:
    stack, sizes = bench.stack, bench.sizes
    store = stack.directory / "admin-nio"
    store.mkdir(exist_ok=True)
    admin = await EncryptedUser.login(stack.synapse.url, ADMIN, ADMIN_PASSWORD, store)
    try:
        room_id = await admin.create_encrypted_room([], "Gatekeeper admins (encrypted)")
        await stack.restart_gatekeeper({"room": room_id, "encryption": True})
        await admin.invite(room_id, stack.bot)
        await admin.wait_for_devices(room_id, stack.bot)
        times: dict[str, list[float]] = {"!help": [], "!pending": []}
        for _ in range(sizes.command_repeats):
            for command, answers in times.items():
                started = time.perf_counter()
                answer = await admin.reply_to(room_id, command, stack.bot)
                if not answer.encrypted:
                    raise RuntimeError(f"the answer to {command} was not encrypted")
                answers.append((time.perf_counter() - started) * 1000)

        since_ms = now_ms()
        burst = asyncio.create_task(
            run_load(
                Load(stack.web_url, sign_up_calls(PREFIX, sizes.burst), concurrency=BURST_CLIENTS)
            )
        )
        posted_at = await all_notices_posted_at(stack, since_ms, sizes.burst)
        signed_up = await burst
        await asyncio.sleep(SYNC_SECONDS)  # the admin's client syncs past the last notice
        decrypted, undecryptable = await _notices_in_history(admin, room_id, stack.bot)
    finally:
        await admin.close()
    lost = sizes.burst - len(decrypted)
    return [
        Figure(
            "encrypted-room",
            f"!pending in the encrypted room, answer decrypted (median of {sizes.command_repeats})",
            statistics.median(times["!pending"]),
            "ms",
            "!help there",
            statistics.median(times["!help"]),
            "",
            None,
        ),
        Figure(
            "encrypted-room",
            f"burst of {sizes.burst:,} sign-ups: all notices posted"
            f" ({lost} not decrypted, {undecryptable} undecryptable)",
            posted_at - signed_up.started_at,
            "s",
            "the sign-ups themselves",
            signed_up.elapsed,
            f"lag {posted_at - signed_up.finished_at:.1f} s",
            lost == 0 and undecryptable == 0 and signed_up.failures == 0,
        ),
    ]
