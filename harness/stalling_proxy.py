"""A TCP proxy in front of a real server that can be told to stop answering.

`hang()`: connections are still accepted and read, but nothing reaches the server and no
byte comes back, as from a homeserver stuck on a lock or behind a dead load balancer.
`lose_answers_to(prefix)`: requests that start with `prefix` reach the server and are
carried out, but their answers never come back, as when the link dies right after.
`forward()` restores normal service. Every switch applies to open connections too,
so a client's pooled keep-alive connection is no way around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum

CHUNK = 65536


class Mode(enum.Enum):
    FORWARD = "forward"
    HANG = "hang"
    LOSE_ANSWERS = "lose-answers"


class _Link:
    """One client connection and its connection to the server."""

    def __init__(self) -> None:
        # Set once the client sent a request whose answer is to be lost; for good, since a
        # client that never got its answer will not reuse the connection for another.
        self.answers_lost = False


class StallingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = Mode.FORWARD
        self._lost_prefix = b""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def forward(self) -> None:
        self.mode = Mode.FORWARD

    def hang(self) -> None:
        self.mode = Mode.HANG

    def lose_answers_to(self, request_prefix: bytes) -> None:
        """E.g. b"POST /_synapse/admin/v1/register": that call is made, its answer lost."""
        self._lost_prefix = request_prefix
        self.mode = Mode.LOSE_ANSWERS

    async def _accept(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_in, server_out = await asyncio.open_connection(*self.target)
        except OSError:
            client_out.close()
            return
        link = _Link()
        try:
            await asyncio.gather(
                self._requests(link, client_in, server_out),
                self._answers(link, server_in, client_out),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_out, server_out):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            self._tasks.discard(task)

    async def _requests(
        self, link: _Link, source: asyncio.StreamReader, target: asyncio.StreamWriter
    ) -> None:
        while chunk := await source.read(CHUNK):
            if self.mode is Mode.HANG:
                continue  # read and dropped: the client waits for an answer that never comes
            if self.mode is Mode.LOSE_ANSWERS and chunk.startswith(self._lost_prefix):
                link.answers_lost = True
            target.write(chunk)
            await target.drain()
        if target.can_write_eof():
            target.write_eof()

    async def _answers(
        self, link: _Link, source: asyncio.StreamReader, target: asyncio.StreamWriter
    ) -> None:
        while chunk := await source.read(CHUNK):
            if self.mode is Mode.HANG or link.answers_lost:
                continue
            target.write(chunk)
            await target.drain()
        if self.mode is not Mode.HANG and not link.answers_lost:
            target.close()
        # Else the client is left waiting, as for a server that is stuck: its timeout ends it.
