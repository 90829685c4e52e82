"""``reward-service worker``: verifier processes fed from Redis, run anywhere.

A :class:`WorkerNode` is a local :class:`~reward_service.workers.pool.WorkerPool` (the same one
the embedded gateway uses, so deadlines, kills and restarts behave the same), a
:class:`~reward_service.queue.consumer.StreamConsumer` that feeds it, and a small HTTP server
for operators: ``/healthz`` (the process runs), ``/readyz`` (Redis reachable and verifier
processes ready) and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reward_service.gateway.scoring import Scorer
from reward_service.gateway.server import build_pool, served_verifiers
from reward_service.metrics import QueueMetrics, ServiceMetrics
from reward_service.queue.consumer import StreamConsumer
from reward_service.queue.security import load_keyring
from reward_service.queue.streams import RedisOptions
from reward_service.settings import Settings

log = logging.getLogger(__name__)


class WorkerNode:
    """One distributed worker process. ``await start()``, then ``await stop()``."""

    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise ValueError("a worker needs --redis-url (REWARD_SERVICE_REDIS_URL)")
        self.settings = settings
        self.redis_options = RedisOptions.from_settings(settings)
        keyring = load_keyring(settings)  # before anything starts: no keys, no worker
        self.metrics = ServiceMetrics("worker")
        self.queue_metrics = QueueMetrics(self.metrics.registry)
        self.verifiers = served_verifiers(settings)
        self.pool = build_pool(settings, self.verifiers, self.metrics)
        self.scorer = Scorer(settings, self.pool, self.verifiers, self.metrics)
        self.consumer = StreamConsumer(
            redis=self.redis_options,
            keyring=keyring,
            prefix=settings.redis_prefix,
            domains=list(self.verifiers),
            scorer=self.scorer,
            pool=self.pool,
            visibility_timeout_s=settings.visibility_timeout_s,
            max_deliveries=settings.max_deliveries,
            result_ttl_s=settings.result_ttl_s,
            metrics=self.queue_metrics,
        )
        self.metrics_port = settings.metrics_port
        self._uvicorn: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self.pool.start()
            if self.pool.unavailable:
                # Taking jobs would answer every one of them `error`: fail loudly instead.
                problems = "; ".join(f"{d}: {why}" for d, why in self.pool.unavailable.items())
                raise RuntimeError(
                    f"cannot serve {', '.join(self.pool.unavailable)} on this host ({problems}); "
                    "`reward-service sandbox-check` shows what the sandbox lacks"
                )
            await self.consumer.start()
            await self._start_http()
        except BaseException:
            await self.stop(drain_s=0)
            raise
        log.info(
            "worker %s ready: %d processes, domains %s, Redis %s, HTTP %s:%d",
            self.consumer.name,
            self.settings.workers,
            ", ".join(self.verifiers),
            self.redis_options.redacted(),
            self.settings.host,
            self.metrics_port,
        )

    async def _start_http(self) -> None:
        async def healthz(_: Request) -> Response:
            return JSONResponse({"status": "ok"})

        async def readyz(_: Request) -> Response:
            ready = self.consumer.is_ready()
            return JSONResponse(
                {"ready": ready, "held_jobs": self.consumer.held}, status_code=200 if ready else 503
            )

        async def metrics(_: Request) -> Response:
            return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4")

        app = Starlette(
            routes=[
                Route("/healthz", healthz),
                Route("/readyz", readyz),
                Route("/metrics", metrics),
            ]
        )
        host = self.settings.host
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, self.settings.metrics_port))
        self.metrics_port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._uvicorn = uvicorn.Server(config)
        self._http_task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)

    async def stop(self, drain_s: float | None = None) -> None:
        """Drain (stop taking jobs, finish or hand back those held), then stop everything."""
        drain_s = self.settings.drain_timeout_s if drain_s is None else drain_s
        if self.consumer.held:
            log.info("draining: %d jobs held, up to %g s", self.consumer.held, drain_s)
        await self.consumer.drain(drain_s)
        await self.consumer.stop()
        await self.pool.stop()
        if self._uvicorn is not None and self._uvicorn.started:
            self._uvicorn.should_exit = True
        if self._http_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, 5)
