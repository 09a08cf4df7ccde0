"""The `/_matrix/app/*` listener: token checks and transactions handled once."""

from __future__ import annotations

import aiohttp
import pytest
from mautrix.types import RoomID

from gatekeeper.appservice.runtime.program import Gatekeeper
from harness.matrix_user import MatrixUser
from tests.conftest import StartGatekeeper
from tests.flows import BOT, fake_event, room_caught_up, started_with_room

ROUTES = [
    ("PUT", "/_matrix/app/v1/transactions/t1", {"events": []}),
    ("GET", "/_matrix/app/v1/users/@someone:gatekeeper.test", None),
    ("GET", "/_matrix/app/v1/rooms/%23room:gatekeeper.test", None),
    ("POST", "/_matrix/app/v1/ping", {"transaction_id": "p1"}),
    ("PUT", "/transactions/t2", {"events": []}),
]


def base_url(gatekeeper: Gatekeeper) -> str:
    return f"http://127.0.0.1:{gatekeeper.config.appservice.port}"


def hs_token(gatekeeper: Gatekeeper) -> str:
    return gatekeeper.config.appservice.hs_token.get_secret_value()


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_every_route_checks_the_hs_token(
    start_gatekeeper: StartGatekeeper, method: str, path: str, body: object
) -> None:
    gatekeeper = await start_gatekeeper()
    url = base_url(gatekeeper) + path
    right = hs_token(gatekeeper)
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, json=body) as response:
            assert response.status == 401
            assert (await response.json())["errcode"] == "M_UNAUTHORIZED"
        for wrong in (
            {"Authorization": "Bearer " + right[:-1] + "x"},
            {"Authorization": "Bearer "},
        ):
            async with session.request(method, url, json=body, headers=wrong) as response:
                assert response.status in (401, 403)
                if wrong["Authorization"] != "Bearer ":
                    assert response.status == 403
                    assert (await response.json())["errcode"] == "M_FORBIDDEN"
        async with session.request(
            method, url, json=body, params={"access_token": "wrong"}
        ) as response:
            assert response.status == 403
        async with session.request(
            method, url, json=body, headers={"Authorization": f"Bearer {right}"}
        ) as response:
            assert response.status in (200, 404)  # 404: no such user/alias, but authorised


def command_event(room_id: RoomID, sender: str, body: str) -> dict[str, object]:
    return fake_event("m.room.message", room_id, sender, {"msgtype": "m.text", "body": body})


async def push_transaction(gatekeeper: Gatekeeper, txn_id: str, events: list[object]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"{base_url(gatekeeper)}/_matrix/app/v1/transactions/{txn_id}",
            json={"events": events},
            headers={"Authorization": f"Bearer {hs_token(gatekeeper)}"},
        ) as response,
    ):
        assert response.status == 200


def answers_to(user: MatrixUser, room_id: RoomID, text: str) -> list[str]:
    return [
        e["content"]["body"]
        for e in user.timeline
        if e["room_id"] == room_id and e["sender"] == BOT and text in e["content"].get("body", "")
    ]


async def answers_in_the_end(user: MatrixUser, room_id: RoomID, text: str) -> list[str]:
    """The bot's answers containing `text`, once it has handled all that came before: any
    duplicate answer would be in by then."""
    await room_caught_up(user, room_id)
    return answers_to(user, room_id, text)


async def test_repeated_transaction_is_handled_once_even_after_restart(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)
    events = [command_event(room_id, alice.user_id, "!dedupcheck")]

    await push_transaction(gatekeeper, "retried-txn", events)
    await push_transaction(gatekeeper, "retried-txn", events)
    await gatekeeper.stop()
    gatekeeper = await start_gatekeeper()
    await push_transaction(gatekeeper, "retried-txn", events)

    assert await answers_in_the_end(alice, room_id, "!dedupcheck") == [
        "Unknown command !dedupcheck. Send !help for the list."
    ]


async def test_a_reused_transaction_id_with_new_events_is_handled(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    """Synapse on SQLite restarts its transaction counter; new events must still count."""
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)

    await push_transaction(gatekeeper, "7", [command_event(room_id, alice.user_id, "!firstone")])
    await push_transaction(gatekeeper, "7", [command_event(room_id, alice.user_id, "!secondone")])
    await room_caught_up(alice, room_id)

    assert len(answers_to(alice, room_id, "!firstone")) == 1
    assert len(answers_to(alice, room_id, "!secondone")) == 1


async def test_one_bad_event_does_not_stop_the_others(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)
    broken = {"type": "m.room.message", "room_id": room_id, "content": None}
    events = [broken, command_event(room_id, alice.user_id, "!aftertheBadOne")]

    await push_transaction(gatekeeper, "with-a-bad-event", events)

    assert await answers_in_the_end(alice, room_id, "!afterthebadone") == [
        "Unknown command !afterthebadone. Send !help for the list."
    ]
