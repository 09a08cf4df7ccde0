"""What an operator watches: Prometheus metrics and the health check.

Counts of requests, decisions and provisioning come from the database at scrape time,
so every process reports the same figures and they survive restarts; only the HTTP
latencies are this process's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from mautrix.util.async_db import Database
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.registration_request import STATE_OF, State
from gatekeeper.appservice.runtime.leadership import Leadership

log = logging.getLogger("gatekeeper.monitoring")

HEALTH_TIMEOUT_SECONDS = 5.0


class DatabaseFigures(Collector):
    """The figures read at the last scrape, in Prometheus's shape."""

    def __init__(self, leadership: Leadership) -> None:
        self.leadership = leadership
        self.requests_by_state: dict[str, int] = {}
        self.decisions: dict[str, int] = {}
        self.provisioning_attempts = 0
        self.provisioning_failures = 0
        self.outbox_depth = 0

    async def refresh(self, db: Database) -> None:
        by_state = dict.fromkeys((state.value for state in State), 0)
        rows = await db.fetch(
            "SELECT status, matrix_status, COUNT(*) AS n FROM registration_request"
            " GROUP BY status, matrix_status"
        )
        for row in rows:
            state = STATE_OF.get((row["status"], row["matrix_status"]))
            if state is not None:
                by_state[state.value] += int(row["n"])
        self.requests_by_state = by_state
        # Each state change has an audit row: decisions and provisioning rounds are counted there.
        transitions = await db.fetch(
            "SELECT from_state, to_state, COUNT(*) AS n FROM registration_audit"
            " WHERE to_state IN ($1, $2, $3, $4, $5) GROUP BY from_state, to_state",
            State.APPROVED.value,
            State.REJECTED.value,
            State.PROVISIONING.value,
            State.FAILED.value,
            State.ACTIVE.value,
        )
        counts = {(row["from_state"], row["to_state"]): int(row["n"]) for row in transitions}
        pending = State.PENDING.value
        self.decisions = {
            "approve": counts.get((pending, State.APPROVED.value), 0),
            "reject": counts.get((pending, State.REJECTED.value), 0),
        }
        provisioning = State.PROVISIONING.value
        self.provisioning_attempts = sum(n for (_, to), n in counts.items() if to == provisioning)
        self.provisioning_failures = counts.get((provisioning, State.APPROVED.value), 0) + (
            counts.get((provisioning, State.FAILED.value), 0)
        )
        self.outbox_depth = int(
            await db.fetchval("SELECT COUNT(*) FROM mail_outbox WHERE sent_at IS NULL")
        )

    def collect(self) -> Iterator[Metric]:
        requests = GaugeMetricFamily(
            "gatekeeper_requests", "Registration requests by state", labels=["state"]
        )
        for state, count in self.requests_by_state.items():
            requests.add_metric([state], count)
        yield requests
        decisions = CounterMetricFamily(
            "gatekeeper_decisions", "Admin decisions on pending requests", labels=["decision"]
        )
        for decision, count in self.decisions.items():
            decisions.add_metric([decision], count)
        yield decisions
        yield CounterMetricFamily(
            "gatekeeper_provisioning_attempts",
            "Attempts to create an account on the homeserver",
            value=self.provisioning_attempts,
        )
        yield CounterMetricFamily(
            "gatekeeper_provisioning_failures",
            "Attempts that did not create the account (retried or given up)",
            value=self.provisioning_failures,
        )
        yield GaugeMetricFamily(
            "gatekeeper_mail_outbox_depth", "Mails waiting to be sent", value=self.outbox_depth
        )
        yield GaugeMetricFamily(
            "gatekeeper_active",
            "1 on the process that runs the bot, appservice listener and workers",
            value=1 if self.leadership.active else 0,
        )


class Monitoring:
    def __init__(self, config: Config, db: Database, leadership: Leadership) -> None:
        self.config = config
        self.db = db
        self.leadership = leadership
        self.registry = CollectorRegistry(auto_describe=False)
        self.figures = DatabaseFigures(leadership)
        self.registry.register(self.figures)
        self.http_latency = Histogram(
            "gatekeeper_http_request_duration_seconds",
            "Time to answer a web request, by route",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        # This process's sweeps (only the active process sweeps).
        self.erased = Counter(
            "gatekeeper_retention_erased",
            "Records whose personal data the retention sweep erased, by kind",
            ["kind"],
            registry=self.registry,
        )
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @web.middleware
    async def measure(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            # The route's pattern, never the raw path: one series per route, not per token.
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            self.http_latency.labels(request.method, route).observe(time.perf_counter() - started)

    async def health(self, _: web.Request) -> web.Response:
        """200 when the database and the homeserver answer, 503 naming what does not."""
        database, homeserver = await asyncio.gather(self._database_ok(), self._homeserver_ok())
        body: dict[str, Any] = {
            "status": "ok" if database and homeserver else "unavailable",
            "database": "ok" if database else "unreachable",
            "homeserver": "ok" if homeserver else "unreachable",
            "role": self.leadership.role,
        }
        return web.json_response(body, status=200 if database and homeserver else 503)

    async def metrics(self, _: web.Request) -> web.Response:
        await self.figures.refresh(self.db)
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    def app(self) -> web.Application:
        """The monitoring listener's routes."""
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        return app

    async def _database_ok(self) -> bool:
        try:
            await asyncio.wait_for(self.db.fetchval("SELECT 1"), HEALTH_TIMEOUT_SECONDS)
        except Exception as error:
            log.warning("Health check: the database does not answer: %s", error)
            return False
        return True

    async def _homeserver_ok(self) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_SECONDS)
            )
        url = self.config.homeserver.address + "/_matrix/client/versions"
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError) as error:
            log.warning("Health check: the homeserver does not answer: %s", error)
            return False
