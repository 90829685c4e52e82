"""Where the gateway's jobs wait for a verifier: the interface both queues implement.

- Embedded mode: :class:`reward_service.workers.pool.WorkerPool`, an in-process queue in front
  of local worker processes.
- Distributed mode: :class:`reward_service.queue.dispatcher.RedisDispatcher` on the gateway
  puts jobs on Redis Streams; :class:`reward_service.queue.consumer.StreamConsumer` in each
  ``reward-service worker`` takes them off and posts results back.
"""

from __future__ import annotations

from typing import Protocol

from reward_service.workers.pool import Job


class JobQueue(Protocol):
    """What the :class:`~reward_service.gateway.scoring.Scorer` needs from a queue."""

    running: bool

    async def start(self) -> None:
        """Start; after this, :meth:`enqueue` accepts jobs."""

    async def stop(self) -> None:
        """Stop; every job not yet answered is answered ``error``."""

    def enqueue(self, job: Job) -> None:
        """Queue ``job``: its ``on_verdict`` is called exactly once, by its deadline plus the
        kill grace, whatever fails on the way."""

    def is_ready(self) -> bool:
        """Whether jobs enqueued now can be served (the readiness probe)."""
