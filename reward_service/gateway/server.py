"""Assembles and runs the gateway: job queue (embedded worker pool, or Redis in distributed
mode), scorer, gRPC and HTTP on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Mapping

import uvicorn
from grpc_health.v1 import health, health_pb2

from reward_service.gateway.access import AccessControl
from reward_service.gateway.grpc_api import SERVICE_NAME, build_grpc_server
from reward_service.gateway.http_api import build_http_app
from reward_service.gateway.scoring import Scorer
from reward_service.metrics import QueueMetrics, ServiceMetrics
from reward_service.queue import JobQueue
from reward_service.queue.dispatcher import RedisDispatcher
from reward_service.queue.security import load_keyring
from reward_service.queue.streams import RedisOptions, redacted
from reward_service.settings import Settings
from reward_service.verifiers.base import Verifier
from reward_service.verifiers.registry import load_verifiers
from reward_service.workers.pool import WorkerPool

log = logging.getLogger(__name__)


def served_verifiers(settings: Settings) -> dict[str, type[Verifier]]:
    """The registry, restricted to ``settings.domains`` when that is set."""
    registry = load_verifiers(settings.verifier_modules)
    if not settings.domains:
        return registry
    unknown = sorted(set(settings.domains) - set(registry))
    if unknown:
        raise ValueError(
            f"unknown domain(s) in --domains: {', '.join(unknown)} "
            f"(registered: {', '.join(sorted(registry))})"
        )
    return {d: registry[d] for d in settings.domains}


def build_pool(
    settings: Settings, verifiers: Mapping[str, type[Verifier]], metrics: ServiceMetrics
) -> WorkerPool:
    """The embedded worker pool for ``verifiers``, configured from ``settings``."""
    return WorkerPool(
        workers=settings.workers,
        domains=list(verifiers),
        verifier_modules=settings.verifier_modules,
        configs=settings.verifier_configs(),
        max_queued=settings.max_queued,
        kill_grace_s=settings.kill_grace_s,
        batch_target_s=settings.batch_target_s,
        memory_mb=settings.worker_memory_mb,
        metrics=metrics,
    )


def build_queue(
    settings: Settings, verifiers: Mapping[str, type[Verifier]], metrics: ServiceMetrics
) -> JobQueue:
    """Redis Streams when ``settings.redis_url`` is set (distributed mode), else the embedded
    worker pool. Distributed mode needs queue keys (or ``allow_unsigned_queue``): ValueError."""
    if settings.redis_url:
        return RedisDispatcher(
            redis=RedisOptions.from_settings(settings),
            keyring=load_keyring(settings),
            prefix=settings.redis_prefix,
            domains=list(verifiers),
            max_queued=settings.max_queued,
            max_stream_length=settings.max_stream_length,
            metrics=QueueMetrics(metrics.registry),
        )
    return build_pool(settings, verifiers, metrics)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: loopback only if every address it resolves to is
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_bind_safety(settings: Settings, access: AccessControl) -> None:
    """Refuse to serve a non-loopback address to anyone who can reach it, unless told to."""
    if access.enabled or settings.allow_unauthenticated or is_loopback(settings.host):
        return
    raise ValueError(
        f"refusing to serve {settings.host} without authentication: anyone who can reach "
        "it could score and steer training. Configure clients (--clients-file, "
        "REWARD_SERVICE_API_TOKENS or --tls-client-ca-file; see docs/security.md), bind "
        "127.0.0.1, or pass --allow-unauthenticated true if the network itself is trusted"
    )


def check_tls_settings(settings: Settings) -> None:
    """Certificate files that are incomplete or unreadable fail at start, by name."""
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ValueError("--tls-cert-file and --tls-key-file go together: give both or neither")
    if settings.tls_client_ca_file is not None and settings.tls_cert_file is None:
        raise ValueError(
            "--tls-client-ca-file (mutual TLS) needs --tls-cert-file and --tls-key-file"
        )
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ValueError(f"--{name.replace('_', '-')}: no such file: {path}")


class RewardServer:
    """One gateway instance: embedded workers, or a router onto Redis when
    ``settings.redis_url`` is set. ``await start()``, then ``await stop()``.

    After :meth:`start`, :attr:`grpc_port` and :attr:`http_port` hold the bound ports (useful
    when the settings asked for port 0).
    """

    def __init__(self, settings: Settings) -> None:
        check_tls_settings(settings)
        self.settings = settings
        self.metrics = ServiceMetrics("gateway")
        self.access = AccessControl.from_settings(settings, self.metrics)
        check_bind_safety(settings, self.access)
        self.verifiers = served_verifiers(settings)
        self.queue = build_queue(settings, self.verifiers, self.metrics)
        self.scorer = Scorer(settings, self.queue, self.verifiers, self.metrics)
        self.health = health.aio.HealthServicer()
        self.grpc_port = settings.grpc_port
        self.http_port = settings.http_port
        self._uvicorn: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc = None
        self._reload_task: asyncio.Task[None] | None = None

    def is_ready(self) -> bool:
        return self.queue.is_ready()

    async def start(self) -> None:
        """Start the queue, then gRPC and HTTP; on any failure, undo what was started."""
        try:
            await self._start()
        except BaseException:
            await self.stop(grace_s=0)
            raise

    async def _start(self) -> None:
        await self.queue.start()
        host = self.settings.host
        self._grpc, self.grpc_port = build_grpc_server(
            self.scorer, self.health, f"{_grpc_host(host)}:{self.settings.grpc_port}", self.access
        )
        await self._grpc.start()
        # Bind the HTTP socket ourselves so that port 0 resolves before uvicorn starts.
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says
        # TCP, and without it every response waits 40 ms for the client's delayed ACK.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, self.settings.http_port))
        self.http_port = sock.getsockname()[1]
        tls = self.settings.tls_cert_file is not None
        config = uvicorn.Config(
            build_http_app(self.scorer, self.is_ready, self.access),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            ssl_certfile=str(self.settings.tls_cert_file) if tls else None,
            ssl_keyfile=str(self.settings.tls_key_file) if tls else None,
        )
        self._uvicorn = uvicorn.Server(config)
        self._http_task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._http_task.done():
                self._http_task.result()  # raises what stopped it
            await asyncio.sleep(0.01)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._reload_task = asyncio.create_task(self.access.reload_forever())
        workers = (
            f"jobs to Redis at {redacted(self.settings.redis_url)}"
            if self.settings.redis_url
            else f"{self.settings.workers} worker processes"
        )
        log.info(
            "reward service ready: gRPC %s:%d, HTTP%s %s:%d, %s, domains %s, %s",
            host,
            self.grpc_port,
            "S" if tls else "",
            host,
            self.http_port,
            workers,
            ", ".join(self.verifiers),
            f"{self.access.clients.count} API clients" if self.access.enabled else "no auth",
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking requests, let in-flight ones finish (up to ``grace_s``), then stop."""
        if self._reload_task is not None:
            self._reload_task.cancel()
        await self.health.enter_graceful_shutdown()
        if self._uvicorn is not None and self._uvicorn.started:
            self._uvicorn.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(grace_s)
        if self._http_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, max(grace_s, 1.0))
        await self.queue.stop()


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@contextlib.asynccontextmanager
async def embedded_scorer(settings: Settings) -> AsyncIterator[Scorer]:
    """A :class:`Scorer` without network servers (``score``): over a started worker pool, or
    over Redis and its workers when ``settings.redis_url`` is set."""
    metrics = ServiceMetrics("score")
    verifiers = served_verifiers(settings)
    queue = build_queue(settings, verifiers, metrics)
    await queue.start()
    try:
        yield Scorer(settings, queue, verifiers, metrics)
    finally:
        await queue.stop()
