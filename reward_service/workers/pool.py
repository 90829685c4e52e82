"""The embedded queue and the pool of verifier worker processes that drains it.

The gateway (or, in distributed mode, a worker node) calls :meth:`WorkerPool.submit` with a
:class:`Job`; the returned future always resolves to a :class:`Verdict` by the job's deadline
(plus the kill grace), whatever happens to the processes:

- Jobs wait in one queue per domain, bounded by ``max_queued`` (beyond it ``submit`` answers
  ``error`` at once instead of growing without bound). A job still queued at its deadline is
  answered ``error``: the sample did nothing wrong, the service was too slow. Within a domain
  the queue is fair across clients (:class:`FairQueue`: round robin, FIFO per client), so one
  client's flood does not starve another's requests.
- An idle worker gets a batch of one domain's jobs sized to take about ``batch_target_s`` of
  estimated verifier time, so cheap verifiers (microseconds) do not pay a process round trip
  per item while expensive ones (math, code) are still spread over all workers.
- Each item runs under a budget (the request's, capped by its deadline, also for an item
  that waits behind others in its batch; one still waiting at its deadline plus the kill
  grace is answered ``error`` like an item expired in the queue). The worker enforces
  it with a signal; if the item is still running ``kill_grace_s`` after its budget, the pool
  kills the process, answers that item ``timeout``, puts the rest of the batch back at the head
  of its queue, and starts a replacement. A worker that dies on its own (segfault, OOM killer)
  gets the same treatment, with an ``error`` for the item it was running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reward_service.metrics import ServiceMetrics
from reward_service.verifiers.base import Status, StrictModel, Verdict, VerifierOptions
from reward_service.workers import child
from reward_service.workers.fair_queue import FairQueue

log = logging.getLogger(__name__)

WATCHDOG_INTERVAL_S = 0.02
REAP_INTERVAL_S = 1.0
MAX_BATCH_ITEMS = 256
INITIAL_COST_ESTIMATE_S = 0.001
COST_EWMA_WEIGHT = 0.2
WORKER_START_TIMEOUT_S = 60.0
MAX_RESTART_DELAY_S = 5.0


@dataclass(eq=False, slots=True)
class Job:
    """One sample to score. ``deadline`` is on the ``time.monotonic`` clock."""

    domain: str
    response: str
    reference: StrictModel
    options: VerifierOptions
    budget_s: float
    deadline: float
    on_verdict: Callable[[Verdict], None] | None = None
    # Who asked (an authenticated client's name): the queue is fair across clients.
    client: str = ""
    # The ScoreRequest it was built from: what a queue that crosses processes sends as is.
    request: Any = None
    future: asyncio.Future[Verdict] | None = field(init=False, default=None)
    expiry: asyncio.TimerHandle | None = field(init=False, default=None)
    done: bool = field(init=False, default=False)

    def resolve(self, verdict: Verdict) -> None:
        """Answer the job, once: through ``on_verdict`` (called at once, no event-loop hop:
        the gateway's hot path) or else its future."""
        if self.done:
            return
        self.done = True
        if self.on_verdict is not None:
            self.on_verdict(verdict)
        elif self.future is not None and not self.future.done():
            self.future.set_result(verdict)


@dataclass(eq=False)
class _Batch:
    id: int
    jobs: list[Job]
    dispatched_at: float
    answered: set[int] = field(default_factory=set)


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, pool: WorkerPool, slot: int) -> None:
        self.pool = pool
        self.slot = slot
        self.conn, child_conn = multiprocessing.Pipe(duplex=True)
        self.progress: Any = pool.context.RawArray("d", 2)
        self.progress[0] = -1.0
        self.process = pool.context.Process(
            target=child.main,
            args=(
                child_conn,
                self.progress,
                pool.domains,
                pool.verifier_modules,
                pool.configs,
                pool.memory_mb,
            ),
            name=f"reward-worker-{slot}",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        self.ready = False
        self.batch: _Batch | None = None
        self.started_at = time.monotonic()
        self.closed = False
        pool.loop.add_reader(self.conn.fileno(), self._on_readable)

    @property
    def idle(self) -> bool:
        return self.ready and self.batch is None and not self.closed

    def send(self, batch: _Batch) -> None:
        self.batch = batch
        items = [
            (job.domain, job.response, job.reference, job.options, job.budget_s, job.deadline)
            for job in batch.jobs
        ]
        self.conn.send((batch.id, items))

    def running_item(self) -> tuple[int, float] | None:
        """(index in the batch, start time) of the item the process is running, if any."""
        index = int(self.progress[0])
        started = self.progress[1]
        if self.batch is None or index < 0 or index >= len(self.batch.jobs):
            return None
        return index, started

    def _on_readable(self) -> None:
        # One message per readiness event: the loop calls again while more are waiting, and
        # Connection.poll() (a fresh selector and a poll syscall each time) is not free.
        try:
            self.pool._on_message(self, self.conn.recv())
        except (EOFError, OSError):
            self.pool._on_worker_lost(self, killed=False)

    def close(self, kill: bool) -> None:
        """Stop watching the process; kill it, or ask it to exit after its current batch."""
        if self.closed:
            return
        self.closed = True
        self.pool.loop.remove_reader(self.conn.fileno())
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        self.conn.close()


class WorkerPool:
    """A fixed number of verifier processes behind per-domain queues (see module docstring)."""

    def __init__(
        self,
        *,
        workers: int,
        domains: list[str],
        verifier_modules: list[str] | None = None,
        configs: Mapping[str, dict[str, Any]] | None = None,
        max_queued: int = 65536,
        kill_grace_s: float = 0.5,
        batch_target_s: float = 0.01,
        memory_mb: int = 0,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a worker pool needs at least 1 process, got workers={workers}")
        self.size = workers
        self.domains = list(domains)
        self.verifier_modules = list(verifier_modules or [])
        self.configs = dict(configs or {})
        self.max_queued = max_queued
        self.kill_grace_s = kill_grace_s
        self.batch_target_s = batch_target_s
        self.memory_mb = memory_mb
        self.metrics = metrics
        # Forkserver, not fork: the gateway process runs gRPC threads, which must not be forked.
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(
            ["reward_service.workers.child", *self._verifier_module_names()]
        )
        self._queues: dict[str, FairQueue[Job]] = {d: FairQueue() for d in self.domains}
        self._round_robin = itertools.cycle(self.domains)
        self._queued = 0
        self._batch_ids = itertools.count()
        self._cost: dict[str, float] = {d: INITIAL_COST_ESTIMATE_S for d in self.domains}
        self._workers: list[_Worker | None] = [None] * workers
        self._restart_failures = 0
        self._queued_gauges = (
            {d: metrics.queued.labels(d) for d in self.domains} if metrics is not None else {}
        )
        self._watchdog: asyncio.Task[None] | None = None
        self._ready_event: asyncio.Event | None = None
        self._startup_error: str | None = None
        # Domains whose verifier cannot score on this host, with the reason (from setup()).
        self.unavailable: dict[str, str] = {}
        self.loop: asyncio.AbstractEventLoop
        self.running = False

    def _verifier_module_names(self) -> list[str]:
        from reward_service.verifiers.registry import get_verifier_class

        return sorted({get_verifier_class(d).__module__ for d in self.domains})

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self, timeout_s: float = WORKER_START_TIMEOUT_S) -> None:
        """Start the processes and wait until each has loaded its verifiers."""
        self.loop = asyncio.get_running_loop()
        self.running = True
        self._ready_event = asyncio.Event()
        for slot in range(self.size):
            self._workers[slot] = _Worker(self, slot)
        self._watchdog = asyncio.create_task(self._watch(), name="worker-pool-watchdog")
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise RuntimeError(
                f"worker processes did not become ready within {timeout_s:g} s"
                + (f": {self._startup_error}" if self._startup_error else "")
            ) from None
        if self._startup_error and not self.ready_workers:
            await self.stop()
            raise RuntimeError(f"worker processes failed to start: {self._startup_error}")

    async def stop(self) -> None:
        """Stop all processes; queued and running jobs are answered ``error``."""
        self.running = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for worker in self._workers:
            if worker is not None:
                if worker.batch is not None:
                    for job in worker.batch.jobs:
                        job.resolve(Verdict(0.0, Status.ERROR, "service shutting down"))
                worker.close(kill=worker.batch is not None)
        for queue in self._queues.values():
            while queue:
                queue.popleft().resolve(Verdict(0.0, Status.ERROR, "service shutting down"))
        self._queued = 0
        for worker in self._workers:
            if worker is not None:
                await asyncio.to_thread(worker.process.join, 5)
                if worker.process.is_alive():
                    worker.process.kill()
        self._workers = [None] * self.size

    def is_ready(self) -> bool:
        return self.running and self.ready_workers > 0

    def cost_estimate(self, domain: str) -> float:
        """Recent verifier time of one ``domain`` item, in seconds (an moving average)."""
        return self._cost[domain]

    @property
    def ready_workers(self) -> int:
        return sum(1 for w in self._workers if w is not None and w.ready and not w.closed)

    @property
    def queued(self) -> int:
        return self._queued

    # ----------------------------------------------------------------------------- submitting

    def submit(self, job: Job) -> asyncio.Future[Verdict]:
        """Queue ``job``; the future resolves to its verdict by its deadline (plus grace).
        Cancelling the future withdraws a job still queued."""
        future: asyncio.Future[Verdict] = self.loop.create_future()
        job.future = future

        def withdraw(done: asyncio.Future[Verdict]) -> None:
            if done.cancelled():
                job.done = True  # _take skips it

        future.add_done_callback(withdraw)
        self.enqueue(job)
        return future

    def enqueue(self, job: Job) -> None:
        """Queue ``job``, whose ``on_verdict`` is called with its verdict by its deadline
        (plus grace); setting ``job.done`` withdraws it while it is queued."""
        if not self.running:
            job.resolve(Verdict(0.0, Status.ERROR, "worker pool is not running"))
        elif self._queued >= self.max_queued and self._sweep() >= self.max_queued:
            job.resolve(
                Verdict(
                    0.0,
                    Status.ERROR,
                    f"server overloaded: {self._queued} jobs already queued "
                    f"(max_queued={self.max_queued})",
                )
            )
        else:
            self._enqueue(job, at_head=False)
            self._dispatch()

    def _sweep(self) -> int:
        """Drop jobs already answered (expired, or cancelled by their caller) from the queues,
        which otherwise keep them until a worker pops them; returns the live count. O(queued),
        so only run when the queue looks full."""
        self._queued = sum(queue.drop_done() for queue in self._queues.values())
        return self._queued

    def _enqueue(self, job: Job, *, at_head: bool) -> None:
        queue = self._queues[job.domain]
        queue.appendleft(job) if at_head else queue.append(job)
        self._queued += 1
        # loop.time() is time.monotonic(), the clock of job.deadline.
        job.expiry = self.loop.call_at(job.deadline, _expire_in_queue, job)

    # ----------------------------------------------------------------------------- dispatching

    def _dispatch(self) -> None:
        idle = [w for w in self._workers if w is not None and w.idle]
        while idle and self._queued:
            domain = self._next_domain()
            queue = self._queues[domain]
            share = math.ceil(len(queue) / len(idle))
            by_cost = int(self.batch_target_s / max(self._cost[domain], 1e-7))
            size = max(1, min(share, by_cost, MAX_BATCH_ITEMS))
            jobs = self._take(queue, size)
            if jobs:
                worker = idle.pop()
                batch = _Batch(next(self._batch_ids), jobs, time.monotonic())
                try:
                    worker.send(batch)
                except OSError:
                    # It requeues the batch and dispatches again with a fresh idle list; going
                    # on with ours would send a second batch over one just sent, losing it.
                    self._on_worker_lost(worker, killed=False)
                    return
        for domain, gauge in self._queued_gauges.items():
            gauge.set(len(self._queues[domain]))

    def _next_domain(self) -> str:
        while True:
            domain = next(self._round_robin)
            if self._queues[domain]:
                return domain

    def _take(self, queue: FairQueue[Job], size: int) -> list[Job]:
        """Pop up to ``size`` live jobs; jobs already expired are answered on the way."""
        now = time.monotonic()
        jobs: list[Job] = []
        while queue and len(jobs) < size:
            job = queue.popleft()
            self._queued -= 1
            if job.expiry is not None:
                job.expiry.cancel()
            if job.done:
                continue
            remaining = job.deadline - now
            if remaining <= 0:
                job.resolve(_expired_in_queue())
                continue
            job.budget_s = min(job.budget_s, remaining)
            jobs.append(job)
        return jobs

    # ----------------------------------------------------------------------------- results

    def _on_message(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            self.unavailable = message[2]
            self._restart_failures = 0
            self._update_alive()
            if self._ready_event is not None and self.ready_workers == self.size:
                self._ready_event.set()
            self._dispatch()
        elif kind == "failed":
            self._startup_error = message[1]
            log.error("worker process failed to start:\n%s", message[1])
            if self._ready_event is not None:
                self._ready_event.set()  # let start() report it instead of waiting it out
            self._on_worker_lost(worker, killed=False, reason="startup_failure")
        elif kind in ("results", "done"):
            _, batch_id, results = message
            batch = worker.batch
            if batch is None or batch.id != batch_id:
                return  # a batch we already gave up on (the worker was being replaced)
            for index, (reward, status, detail, metrics, run_time) in results:
                job = batch.jobs[index]
                batch.answered.add(index)
                cost = self._cost[job.domain]
                self._cost[job.domain] = cost + COST_EWMA_WEIGHT * (run_time - cost)
                job.resolve(Verdict(reward, Status(status), detail, metrics))
            if kind == "done":
                worker.batch = None
                self._dispatch()

    def _on_worker_lost(
        self,
        worker: _Worker,
        *,
        killed: bool,
        reason: str = "crash",
        running_verdict: Verdict | None = None,
    ) -> None:
        """Answer or requeue the jobs of a dead (or killed) worker, and replace it."""
        if worker.closed:
            return
        running = worker.running_item()
        worker.close(kill=True)
        batch = worker.batch
        worker.batch = None
        if batch is not None:
            requeue: list[Job] = []
            for index, job in enumerate(batch.jobs):
                if index in batch.answered or job.done:
                    continue
                if running is not None and index == running[0]:
                    job.resolve(
                        running_verdict
                        or Verdict(
                            0.0, Status.ERROR, "worker process died while scoring this sample"
                        )
                    )
                else:
                    requeue.append(job)
            for job in reversed(requeue):
                self._enqueue(job, at_head=True)
        if self.metrics is not None:
            self.metrics.worker_restarts.labels(reason).inc()
        self._update_alive()
        if self.running:
            delay = 0.0 if killed else min(0.1 * 2**self._restart_failures, MAX_RESTART_DELAY_S)
            if not killed:
                self._restart_failures += 1
            self.loop.call_later(delay, self._replace, worker.slot)
        self._dispatch()

    def _replace(self, slot: int, attempt: int = 0) -> None:
        if not self.running:
            return
        try:
            self._workers[slot] = _Worker(self, slot)
        except Exception:  # e.g. the forkserver is gone: keep trying, the slot must not stay empty
            delay = min(0.1 * 2**attempt, MAX_RESTART_DELAY_S)
            log.exception("could not start worker %d; retrying in %.1f s", slot, delay)
            if self.metrics is not None:
                self.metrics.worker_restarts.labels("startup_failure").inc()
            self.loop.call_later(delay, self._replace, slot, attempt + 1)

    def _update_alive(self) -> None:
        if self.metrics is not None:
            self.metrics.workers_alive.set(self.ready_workers)

    # ----------------------------------------------------------------------------- watchdog

    async def _watch(self) -> None:
        """Kill processes whose running item is past its hard deadline; replace dead ones."""
        last_reap = time.monotonic()
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = time.monotonic()
            # A process that dies is noticed at once by the EOF on its pipe; asking each one
            # for its exit code (a poll on its sentinel) is only the backstop, so not every tick.
            reap = now - last_reap >= REAP_INTERVAL_S
            if reap:
                last_reap = now
                self.context.active_children()  # reaps the processes we killed or lost
            for worker in list(self._workers):
                if worker is None or worker.closed:
                    continue
                if not worker.ready:
                    if now - worker.started_at > WORKER_START_TIMEOUT_S:
                        log.error("worker %d did not start in time; replacing it", worker.slot)
                        self._on_worker_lost(worker, killed=False, reason="startup_failure")
                    continue
                if reap and worker.process.exitcode is not None:
                    self._on_worker_lost(worker, killed=False)
                    continue
                running = worker.running_item()
                if running is None or worker.batch is None:
                    continue
                index, started = running
                # The items behind the running one wait in the process: answer those whose
                # deadline (plus grace) passed, as if they had expired in the queue.
                for waiting in worker.batch.jobs[index + 1 :]:
                    if now > waiting.deadline + self.kill_grace_s:
                        waiting.resolve(Verdict(0.0, Status.ERROR, child.EXPIRED_IN_BATCH))
                job = worker.batch.jobs[index]
                budget_s = max(0.0, min(job.budget_s, job.deadline - started))  # as in the child
                if now > started + budget_s + self.kill_grace_s:
                    log.warning(
                        "killing worker %d: a %s item ran %.2f s, budget %g s",
                        worker.slot,
                        job.domain,
                        now - started,
                        budget_s,
                    )
                    verdict = Verdict(
                        0.0,
                        Status.TIMEOUT,
                        f"scoring exceeded its budget of {budget_s:g} s and was killed",
                    )
                    self._on_worker_lost(
                        worker, killed=True, reason="deadline", running_verdict=verdict
                    )


def _expired_in_queue() -> Verdict:
    return Verdict(
        0.0, Status.ERROR, "deadline passed while waiting for a worker (service overloaded)"
    )


def _expire_in_queue(job: Job) -> None:
    # The job stays in its queue (removal would be O(n)); _take skips it as already answered.
    job.resolve(_expired_in_queue())
