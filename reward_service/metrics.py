"""Prometheus metrics of one service instance.

Each instance owns its own :class:`~prometheus_client.CollectorRegistry` (no process-global
state), so several servers can run in one process, as they do in the tests.
"""

from __future__ import annotations

import importlib.metadata
from typing import Literal

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

# The *_created series double the exposition size and tell operators nothing here.
prometheus_client.disable_created_metrics()

# Rewards take from microseconds (reasoning_gym) to seconds (code), so the buckets span both.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


Role = Literal["gateway", "worker", "score"]


def _version() -> str:
    try:
        return importlib.metadata.version("reward-service")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


class ServiceMetrics:
    """The counters, gauges and histograms that operators scrape from ``GET /metrics``.

    ``role`` tells the processes apart in Prometheus: a gateway and a distributed worker both
    count requests and their durations (answered to clients vs scored), and dashboards and
    alerts pick the gateways' series by joining on ``reward_service_build_info{role=...}``.
    """

    def __init__(self, role: Role) -> None:
        self.registry = CollectorRegistry()
        Info(
            "reward_service_build",
            "The process's role (gateway, worker, score) and the service's version.",
            registry=self.registry,
        ).info({"role": role, "version": _version()})
        self.requests = Counter(
            "reward_service_requests",
            "Scoring requests answered, by domain and status.",
            ["domain", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "reward_service_request_duration_seconds",
            "Time from receiving a scoring request to answering it, by domain.",
            ["domain"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "reward_service_inflight_requests",
            "Scoring requests received and not yet answered, by domain.",
            ["domain"],
            registry=self.registry,
        )
        self.queued = Gauge(
            "reward_service_queued_jobs",
            "Jobs waiting for a worker process, by domain.",
            ["domain"],
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "reward_service_worker_restarts",
            "Worker processes replaced, by reason (deadline kill, crash, startup failure).",
            ["reason"],
            registry=self.registry,
        )
        self.refused = Counter(
            "reward_service_refused_requests",
            "Requests refused before scoring, by client (empty: not authenticated) and reason "
            "(unauthenticated, rate, in_flight, too_large).",
            ["client", "reason"],
            registry=self.registry,
        )
        self.workers_alive = Gauge(
            "reward_service_workers_ready",
            "Worker processes started and ready to take work.",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


class QueueMetrics:
    """Metrics of distributed mode, on the registry of a :class:`ServiceMetrics` (gateways and
    workers each fill in the ones they observe)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.redis_up = Gauge(
            "reward_service_redis_up",
            "1 when Redis answered this process's last call (a gateway's poll, a worker's read "
            "or heartbeat).",
            registry=registry,
        )
        # Observed by gateways (they poll Redis).
        self.stream_length = Gauge(
            "reward_service_stream_length",
            "Jobs in a domain's stream, waiting or running (the backlog autoscalers watch).",
            ["domain"],
            registry=registry,
        )
        self.stream_pending = Gauge(
            "reward_service_stream_pending",
            "Jobs of a domain handed to a worker and not yet answered.",
            ["domain"],
            registry=registry,
        )
        self.dead_letters = Gauge(
            "reward_service_dead_letters",
            "Entries in a domain's dead-letter stream.",
            ["domain"],
            registry=registry,
        )
        self.workers_live = Gauge(
            "reward_service_workers_live",
            "Worker processes of a domain whose heartbeat is recent.",
            ["domain"],
            registry=registry,
        )
        self.dropped_results = Counter(
            "reward_service_dropped_results",
            "Results a gateway dropped, by reason: forged (bad or missing signature, or an "
            "unknown queue key), not_waited_for (late, duplicate or replayed: the request is not "
            "waited for), unreadable.",
            ["reason"],
            registry=registry,
        )
        self.republished = Counter(
            "reward_service_republished_jobs",
            "Jobs a gateway sent again because Redis lost its data (a restart without "
            "persistence).",
            registry=registry,
        )
        self.reused_results = Counter(
            "reward_service_reused_results",
            "Requests answered from the stored result of an identical earlier request, not run.",
            ["domain"],
            registry=registry,
        )
        # Observed by workers.
        self.redeliveries = Counter(
            "reward_service_redeliveries",
            "Jobs a worker reclaimed from another that stopped renewing its claim.",
            ["domain"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "reward_service_dead_lettered",
            "Jobs a worker moved to the dead-letter stream, by reason.",
            ["domain", "reason"],
            registry=registry,
        )
        self.rejected_jobs = Counter(
            "reward_service_rejected_jobs",
            "Jobs a worker refused to run, by reason (forged: bad or missing signature, or an "
            "unknown queue key); they are dead-lettered and not answered.",
            ["domain", "reason"],
            registry=registry,
        )
        self.results_per_post = Histogram(
            "reward_service_results_per_post",
            "Results a worker posted to Redis in one round trip: a busy worker lets a finished "
            "result wait briefly for others (never a lone one).",
            buckets=(1, 2, 4, 8, 16, 64, 256, 512),
            registry=registry,
        )
        self.duplicate_results = Counter(
            "reward_service_duplicate_results",
            "Results a worker computed for a job another worker had already answered.",
            ["domain"],
            registry=registry,
        )
