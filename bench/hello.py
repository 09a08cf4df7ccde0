"""The reference point of the read scenarios: an aiohttp hello-world, served the way
Gatekeeper serves its web endpoint (one process, AppRunner, no access log).

    python -m bench.hello PORT
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


async def hello(_: web.Request) -> web.Response:
    return web.json_response({"hello": "world"})


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/api/user-info", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
