"""The worker's side of distributed mode: jobs off Redis Streams, into a local pool, results
back to the gateway that asked.

Delivery is at least once; results are made exactly-once by :data:`streams.COMPLETE_SCRIPT`
(the first answer of a job wins, a late duplicate is dropped). In detail:

- One reader per domain takes new jobs (XREADGROUP) while the local pool has room: about
  ``PREFETCH_S`` of estimated work per process, so that cheap domains travel in large batches
  and expensive ones (code) stay in the stream for other workers to take.
- A job whose deadline passed is answered ``error`` without being run. (A retried request whose
  result is already stored never gets here: the gateway's publish script answers it.)
- With queue keys (:mod:`reward_service.queue.security`), a job runs only if its signature
  verifies; any other is dead-lettered (reason ``forged``) and counted, and not answered: an
  answer would be a signed result for a token the forger chose. Each result goes back signed,
  bound to its job (replies stream, token, idempotency key), and the stored copy that answers
  retries is signed over the idempotency key.
- Claims are leases: the worker renews those it holds every third of ``visibility_timeout_s``;
  a worker that dies stops renewing, and after the visibility timeout another worker reclaims
  its jobs (XAUTOCLAIM). A job delivered more than ``max_deliveries`` times is dead-lettered and
  answered ``error``.
- Redis outages are retried with backoff; a stream or group that vanished (Redis lost its
  data) is created again, and gateways republish their jobs.
- :meth:`StreamConsumer.drain` (SIGTERM) stops taking jobs, waits for the ones held, then hands
  back what is left so that other workers take it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from reward_service.gateway.scoring import Scorer, ScoreRequest, ScoreResult
from reward_service.metrics import QueueMetrics
from reward_service.queue import streams
from reward_service.queue.security import Keyring, Throttled
from reward_service.queue.streams import JobMessage, Keys, RedisOptions
from reward_service.verifiers.base import Status
from reward_service.workers.pool import WorkerPool

log = logging.getLogger(__name__)

PREFETCH_S = 0.1
MAX_READ = 512
MAX_HELD_PER_DOMAIN = 2048
READ_BLOCK_MS = 1000
HEARTBEAT_INTERVAL_S = 2.0
COMPLETE_BATCH = 512
# How long a finished result may wait for others before it is posted, while this worker still
# runs more jobs: see StreamConsumer._linger. Measured with two workers of a 10 ms verifier on
# two cores (runs in turns): 20 ms gave 160 requests/s, 60 ms 168/s, and 120 ms no more than
# 1% over 60 ms. What is traded is a result's wait under load, small beside a training step.
COMPLETE_LINGER_S = 0.06


@dataclass(eq=False, slots=True)
class _Held:
    """A job this worker has taken and not yet answered in Redis."""

    domain: str
    entry_id: bytes
    message: JobMessage | None  # None: undecodable or forged, dead-lettered
    raw: bytes = b""


@dataclass(slots=True)
class _Completion:
    held: _Held
    result: bytes
    store: bool
    dead_letter_reason: str = ""


class StreamConsumer:
    """Feeds a local :class:`Scorer` (over a :class:`WorkerPool`) from the domain streams."""

    def __init__(
        self,
        *,
        redis: RedisOptions,
        keyring: Keyring | None,
        prefix: str,
        domains: Sequence[str],
        scorer: Scorer,
        pool: WorkerPool,
        visibility_timeout_s: float,
        max_deliveries: int,
        result_ttl_s: float,
        metrics: QueueMetrics,
        name: str | None = None,
    ) -> None:
        self.redis_options = redis
        self.keyring = keyring
        self.keys = Keys(prefix)
        self.domains = list(domains)
        self.scorer = scorer
        self.pool = pool
        self.visibility_ms = max(1, int(visibility_timeout_s * 1000))
        self.max_deliveries = max_deliveries
        self.result_ttl_ms = max(1, int(result_ttl_s * 1000))
        self.metrics = metrics
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.redis: Redis | None = None
        self._held: dict[tuple[str, bytes], _Held] = {}
        self._running_count: dict[str, int] = defaultdict(int)
        self._room = {d: asyncio.Event() for d in self.domains}
        self._completions: list[_Completion] = []
        self._completions_ready = asyncio.Event()
        self._all_answered = asyncio.Event()  # set when nothing is held (for drain)
        self._accepting = False
        self._releasing = False
        self._redis_ok = False
        self._readers: list[asyncio.Task[None]] = []
        self._background: list[asyncio.Task[None]] = []
        self._forged_log = Throttled(log)

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect and start taking jobs. A Redis that is not reachable yet is not an error
        (the readers retry); one that refuses these credentials or whose certificate does not
        verify is: RuntimeError."""
        self.redis = streams.connect(self.redis_options)
        await streams.first_contact(self.redis.ping(), self.redis_options)
        self._accepting = True
        for domain in self.domains:
            self._room[domain].set()
            reader = asyncio.create_task(self._read_loop(domain), name=f"read-{domain}")
            self._readers.append(reader)
        loops = (self._complete_loop, self._renew_loop, self._reclaim_loop, self._heartbeat_loop)
        for loop in loops:
            self._background.append(asyncio.create_task(loop(), name=loop.__name__))

    def is_ready(self) -> bool:
        return self._accepting and self._redis_ok and self.pool.is_ready()

    @property
    def held(self) -> int:
        return len(self._held)

    async def drain(self, timeout_s: float) -> None:
        """Stop taking jobs; wait up to ``timeout_s`` for those held; hand back the rest."""
        self._accepting = False
        await streams.cancel_tasks(self._readers)
        if self._held:
            self._all_answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_answered.wait(), timeout_s)
        if self._held:
            await self._release()

    async def stop(self) -> None:
        """Drop everything at once (after :meth:`drain` for a graceful stop)."""
        self._accepting = False
        self._releasing = True
        await streams.cancel_tasks(self._readers)
        await streams.cancel_tasks(self._background)
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                pipe = self.redis.pipeline(transaction=False)
                for domain in self.domains:
                    pipe.zrem(self.keys.heartbeats(domain), self.name)
                await pipe.execute()
            await self.redis.aclose()

    async def _release(self) -> None:
        """Hand the jobs still held back: set their idle time past the visibility timeout, so
        the next reclaim by any worker takes them."""
        self._releasing = True  # results that still arrive are not posted
        assert self.redis is not None
        by_stream: dict[str, list[bytes]] = defaultdict(list)
        for held in self._held.values():
            by_stream[self.keys.jobs(held.domain)].append(held.entry_id)
        with contextlib.suppress(RedisError, OSError):
            pipe = self.redis.pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xclaim(
                    stream, streams.GROUP, self.name, 0, ids,
                    idle=self.visibility_ms * 2, justid=True,
                )  # fmt: skip
            await pipe.execute()
            log.info("handed back %d jobs", len(self._held))
        self._held.clear()

    # ----------------------------------------------------------------------------- taking jobs

    def _capacity(self, domain: str) -> int:
        workers = self.pool.size
        per_process = PREFETCH_S / max(self.pool.cost_estimate(domain), 1e-6)
        return max(2 * workers, min(MAX_HELD_PER_DOMAIN, math.ceil(workers * per_process)))

    async def _read_loop(self, domain: str) -> None:
        assert self.redis is not None
        stream = self.keys.jobs(domain)
        failures = 0
        while True:
            capacity = self._capacity(domain)
            room = capacity - self._running_count[domain]
            # Refill in chunks, not one job per verdict: one read (a round trip) per chunk.
            if room < max(1, capacity // 2):
                self._room[domain].clear()
                await self._room[domain].wait()
                continue
            try:
                response = await self.redis.xreadgroup(
                    streams.GROUP,
                    self.name,
                    {stream: ">"},
                    count=min(room, MAX_READ),
                    block=READ_BLOCK_MS,
                )
                self._set_redis_ok(True)
                failures = 0
            except ResponseError as exc:
                if streams.is_nogroup(exc):
                    await self._recreate_group(stream)
                    continue
                failures += 1  # e.g. NOPERM (an ACL too narrow): logged, retried
                await self._backoff(f"read {stream}", exc, failures)
                continue
            except (RedisError, OSError) as exc:
                failures += 1
                await self._backoff(f"read {stream}", exc, failures)
                continue
            for _stream, entries in response or []:
                self._accept(domain, entries)

    async def _recreate_group(self, stream: str) -> None:
        assert self.redis is not None
        log.warning("stream %s or its group is gone (Redis lost its data?); creating it", stream)
        with contextlib.suppress(RedisError, OSError):
            await streams.ensure_group(self.redis, stream)
        await asyncio.sleep(0.05)

    def _accept(self, domain: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Take ``entries`` (new or reclaimed): expire them, or start scoring them."""
        fresh: list[_Held] = []
        for entry_id, fields in entries:
            if (domain, entry_id) in self._held:
                continue  # reclaimed our own entry: it is running here already
            if fields is None:  # deleted while pending (answered by someone): nothing to do
                continue
            held = self._decode(domain, entry_id, fields)
            self._held[(domain, entry_id)] = held
            if held.message is not None:
                fresh.append(held)
        for held in fresh:
            message = held.message
            assert message is not None
            if message.remaining_s() <= 0:
                self._answer_error(held, "deadline passed before a worker could start the job")
            else:
                self._start(held, message)

    def _decode(self, domain: str, entry_id: bytes, fields: dict[bytes, bytes]) -> _Held:
        raw = fields.get(streams.JOB_FIELD, b"")
        if self.keyring is not None and not self.keyring.verify_job(
            raw, fields.get(streams.SIGNATURE_FIELD)
        ):
            held = _Held(domain, entry_id, None, raw)
            self._forged_log.warning(
                "dead-lettering job %s of %s: bad, missing or unknown-key signature (forged, or "
                "do the gateways and this worker not share queue keys?)",
                entry_id,
                domain,
            )
            self.metrics.rejected_jobs.labels(domain, "forged").inc()
            self.metrics.dead_lettered.labels(domain, "forged").inc()
            self._queue_completion(
                _Completion(
                    held,
                    b"",
                    store=False,
                    dead_letter_reason="forged: bad, missing or unknown-key signature",
                )
            )
            return held
        try:
            message = JobMessage.decode(raw)
            if message.domain != domain:
                raise ValueError(f"a {message.domain!r} job in the {domain!r} stream")
        except (KeyError, ValueError, TypeError) as exc:
            held = _Held(domain, entry_id, None, raw)
            log.error("dead-lettering undecodable entry %s of %s: %s", entry_id, domain, exc)
            self.metrics.dead_lettered.labels(domain, "undecodable").inc()
            self._queue_completion(
                _Completion(held, b"", store=False, dead_letter_reason=f"undecodable job: {exc}")
            )
            return held
        return _Held(domain, entry_id, message, raw)

    def _start(self, held: _Held, message: JobMessage) -> None:
        self._running_count[held.domain] += 1
        request = ScoreRequest(
            domain=message.domain,
            response=message.response,
            reference=message.reference,
            options=message.options,
            id=message.id,
            client=message.client,
        )
        deadline = time.monotonic() + message.remaining_s()

        def deliver(result: ScoreResult) -> None:
            self._running_count[held.domain] -= 1
            self._room[held.domain].set()
            if self._releasing:
                return  # handed back to the stream: another worker answers it
            value = streams.encode_result(
                result.reward, result.status.value, result.detail, result.metrics
            )
            self._queue_completion(_Completion(held, value, store=result.status != Status.ERROR))

        self.scorer.start(request, deadline, deliver)

    def _answer_error(self, held: _Held, detail: str, dead_letter_reason: str = "") -> None:
        value = streams.encode_result(0.0, Status.ERROR.value, detail, {})
        self._queue_completion(
            _Completion(held, value, store=False, dead_letter_reason=dead_letter_reason)
        )

    # ----------------------------------------------------------------------------- answering

    def _queue_completion(self, completion: _Completion) -> None:
        self._completions.append(completion)
        self._completions_ready.set()

    async def _complete_loop(self) -> None:
        assert self.redis is not None
        failures = 0
        while True:
            if not self._completions:
                self._completions_ready.clear()
                await self._completions_ready.wait()
                continue
            await self._linger()
            batch = self._completions[:COMPLETE_BATCH]
            del self._completions[:COMPLETE_BATCH]
            self.metrics.results_per_post.observe(len(batch))
            pipe = self.redis.pipeline(transaction=False)
            for completion in batch:
                self._add_completion(pipe, completion)
            try:
                outcomes = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                outcomes = [exc] * len(batch)
            retry: list[_Completion] = []
            error: BaseException | None = None
            noscript = False
            for completion, outcome in zip(batch, outcomes, strict=True):
                held = completion.held
                if isinstance(outcome, ResponseError) and streams.is_nogroup(outcome):
                    self._held.pop((held.domain, held.entry_id), None)  # its stream is gone
                elif isinstance(outcome, ResponseError) and streams.is_noscript(outcome):
                    retry.append(completion)  # Redis restarted: load the scripts, retry
                    noscript = True
                elif isinstance(outcome, (RedisError, OSError)):
                    error = outcome
                    if held.message is None or held.message.remaining_s() > 0:
                        retry.append(completion)
                    else:  # its gateway has answered it by now: give up
                        self._held.pop((held.domain, held.entry_id), None)
                else:
                    self._held.pop((held.domain, held.entry_id), None)
                    if outcome == 0:
                        self.metrics.duplicate_results.labels(held.domain).inc()
            if not self._held:
                self._all_answered.set()
            if retry:
                self._completions[:0] = retry
                if noscript:
                    with contextlib.suppress(RedisError, OSError):
                        await streams.load_scripts(self.redis)
                    if error is None:
                        continue
                failures += 1
                await self._backoff("post results", error, failures)
            else:
                failures = 0

    async def _linger(self) -> None:
        """Let results gather before they are posted, so that one pipeline (one Redis round
        trip, one wake-up of each gateway's reply reader) carries several: a process that
        finishes a math or code job every few milliseconds would otherwise post them one by
        one, and those per-result costs are CPU taken from the verifiers on the same node.

        Waits up to ``COMPLETE_LINGER_S`` after the first pending result, and not at all once
        nothing else runs here (no more results are coming: a lone request pays no delay), a
        full batch is pending, or a pending result's deadline is near."""
        flush_by = time.monotonic() + COMPLETE_LINGER_S
        seen = 0
        while len(self._completions) < COMPLETE_BATCH and any(self._running_count.values()):
            now = time.monotonic()
            for completion in self._completions[seen:]:
                message = completion.held.message
                if message is not None:  # posted while its gateway still waits for it
                    flush_by = min(flush_by, now + message.remaining_s() - COMPLETE_LINGER_S)
            seen = len(self._completions)
            wait = flush_by - now
            if wait <= 0:
                return
            self._completions_ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._completions_ready.wait()

    def _add_completion(self, pipe: Any, completion: _Completion) -> None:
        held = completion.held
        message = held.message
        signature, stored = b"", completion.result
        if message is not None and self.keyring is not None:
            result = completion.result
            signature = self.keyring.sign_result(
                message.replies, message.token, message.key, result
            )
            if completion.store:
                stored = streams.encode_stored(
                    self.keyring.sign_stored(message.key, result), result
                )
        streams.COMPLETE.queue(
            pipe,
            [
                self.keys.jobs(held.domain),
                self.keys.done(message.key if message else "-"),
                message.replies if message else self.keys.replies("-"),
                self.keys.dead(held.domain),
            ],
            [
                streams.GROUP,
                held.entry_id,
                completion.result,
                message.token if message else "",
                1 if completion.store else 0,
                self.result_ttl_ms,
                streams.REPLIES_TTL_MS,
                held.raw if completion.dead_letter_reason else "",
                completion.dead_letter_reason,
                streams.DEAD_LETTER_MAXLEN,
                signature,
                stored,
            ],
        )

    # ----------------------------------------------------------------------------- leases

    async def _renew_loop(self) -> None:
        """Renew the claims on held jobs, so that no other worker reclaims them."""
        assert self.redis is not None
        while True:
            await asyncio.sleep(self.visibility_ms / 3000)
            by_stream: dict[str, list[bytes]] = defaultdict(list)
            for held in list(self._held.values()):
                by_stream[self.keys.jobs(held.domain)].append(held.entry_id)
            try:
                for stream, ids in by_stream.items():
                    for start in range(0, len(ids), 500):
                        chunk = ids[start : start + 500]
                        await streams.RENEW(
                            self.redis, [stream], [streams.GROUP, self.name, *chunk]
                        )
            except (RedisError, OSError) as exc:
                log.debug("lease renewal failed: %s", exc)

    async def _reclaim_loop(self) -> None:
        """Take over jobs whose worker stopped renewing them (it died)."""
        assert self.redis is not None
        while True:
            await asyncio.sleep(max(0.1, self.visibility_ms / 4000))
            if not self._accepting:
                continue
            for domain in self.domains:
                try:
                    await self._reclaim(domain)
                except ResponseError as exc:
                    if not streams.is_nogroup(exc):
                        log.warning("reclaiming %s jobs failed: %s", domain, exc)
                except (RedisError, OSError) as exc:
                    log.debug("reclaiming %s jobs failed: %s", domain, exc)

    async def _reclaim(self, domain: str) -> None:
        assert self.redis is not None
        stream = self.keys.jobs(domain)
        room = self._capacity(domain) - self._running_count[domain]
        if room <= 0:
            return
        _next, claimed, *_deleted = await self.redis.xautoclaim(
            stream, streams.GROUP, self.name, self.visibility_ms, "0-0", count=min(room, MAX_READ)
        )
        claimed = [(entry_id, fields) for entry_id, fields in claimed if fields is not None]
        if not claimed:
            return
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, _fields in claimed:
            pipe.xpending_range(stream, streams.GROUP, entry_id, entry_id, 1)
        deliveries = await pipe.execute()
        accepted = []
        for (entry_id, fields), info in zip(claimed, deliveries, strict=True):
            times = info[0]["times_delivered"] if info else 1
            if times > self.max_deliveries and (domain, entry_id) not in self._held:
                held = self._decode(domain, entry_id, fields)
                self._held[(domain, entry_id)] = held
                if held.message is not None:
                    log.error(
                        "dead-lettering job %s of %s: delivered %d times", entry_id, domain, times
                    )
                    self.metrics.dead_lettered.labels(domain, "max_deliveries").inc()
                    self._answer_error(
                        held,
                        f"the job was handed to a worker {times - 1} times and never answered "
                        "(workers died?); dead-lettered",
                        dead_letter_reason=f"delivered {times} times",
                    )
            else:
                accepted.append((entry_id, fields))
        if accepted:
            self.metrics.redeliveries.labels(domain).inc(len(accepted))
            log.info("reclaimed %d %s jobs from a worker that stopped", len(accepted), domain)
            self._accept(domain, accepted)

    async def _heartbeat_loop(self) -> None:
        assert self.redis is not None
        while True:
            if self.keyring is not None:
                self.keyring.refresh()
            try:
                pipe = self.redis.pipeline(transaction=False)
                now = time.time()
                for domain in self.domains:
                    pipe.zadd(self.keys.heartbeats(domain), {self.name: now})
                    pipe.zremrangebyscore(self.keys.heartbeats(domain), "-inf", now - 3600)
                await pipe.execute()
                self._set_redis_ok(True)
            except (RedisError, OSError) as exc:
                self._set_redis_ok(False)
                log.debug("heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    def _set_redis_ok(self, ok: bool) -> None:
        if ok != self._redis_ok:  # called on every read: the gauge only on a change
            self._redis_ok = ok
            self.metrics.redis_up.set(1 if ok else 0)

    async def _backoff(self, what: str, exc: object, failures: int) -> None:
        self._set_redis_ok(False)
        await streams.backoff(what, exc, failures)
