"""The gateway's side of distributed mode: jobs onto Redis Streams, results back.

Each gateway instance has an id and its own replies stream; a job carries the gateway's token
for it and the name of that stream, so results come back to the instance that owns the
request. What the gateway promises (:class:`~reward_service.queue.JobQueue`): every job is
answered exactly once, by its deadline (workers get a slightly earlier one, so that their
answer has time to come back):

- Jobs go out through an outbox (one pipeline per batch; a script per job that answers a
  retried request from its stored result instead of publishing it again). While Redis is
  unreachable they wait there and go out when it is back; a job whose deadline passes first
  is answered ``error``, like any job that no worker answered in time.
- Tokens are random (64 bits), one per job. A result whose token is no longer waited for
  (answered already: late, duplicate, or replayed) is dropped and counted ``not_waited_for``.
- With queue keys (:mod:`reward_service.queue.security`) each job goes out signed, and a
  result counts only if its signature verifies: one computed for this job (bound to this
  gateway's replies stream, the token and the request's idempotency key), or one stored for an
  identical request (bound to the same idempotency key: same id and content). Anything else is
  dropped and counted ``forged``, and the request keeps waiting for a genuine result (or its
  deadline: then its ``error`` says that forged results came). A stored result that does not
  verify (its key was revoked since) is not an answer: the job is published again to be run.
- If Redis loses its data (a restart without persistence: the epoch key vanished), every job
  still waited for is published again; workers' idempotency keys make that safe.
- Backpressure: a domain whose stream holds ``max_stream_length`` jobs, or a gateway already
  waiting for ``max_queued``, answers new jobs ``error`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from reward_service.metrics import QueueMetrics
from reward_service.queue import streams
from reward_service.queue.security import Keyring, Throttled
from reward_service.queue.streams import JobMessage, Keys, RedisOptions
from reward_service.verifiers.base import Status, Verdict
from reward_service.workers.pool import Job

log = logging.getLogger(__name__)

PUBLISH_BATCH = 512
READ_BATCH = 1024
READ_BLOCK_MS = 1000
TRIM_EVERY = 512
MONITOR_INTERVAL_S = 0.5
# Workers get a deadline this much earlier than the request's (at most this fraction of the
# time left), so that their answer (a timeout, at worst) crosses Redis before the caller gives up.
DEADLINE_MARGIN_S = 0.2
DEADLINE_MARGIN_FRACTION = 0.2
# A worker whose last heartbeat is older than this is not counted as live.
HEARTBEAT_TIMEOUT_S = 10.0


@dataclass(eq=False, slots=True)
class _Pending:
    """A job this gateway waits for."""

    job: Job
    stream: str
    key: str  # the idempotency key
    message: bytes
    signature: bytes  # of message; b"" when unsigned
    published: bool = False
    reuse: bool = True  # may be answered from a stored result (see PUBLISH_SCRIPT)
    forged: int = 0  # results for it dropped as forged


class RedisDispatcher:
    """Routes jobs onto ``<prefix>:jobs:<domain>`` streams and delivers the results."""

    def __init__(
        self,
        *,
        redis: RedisOptions,
        keyring: Keyring | None,
        prefix: str,
        domains: Sequence[str],
        max_queued: int,
        max_stream_length: int,
        metrics: QueueMetrics,
    ) -> None:
        self.redis_options = redis
        self.keyring = keyring
        self.keys = Keys(prefix)
        self.domains = list(domains)
        self.max_queued = max_queued
        self.max_stream_length = max_stream_length
        self.metrics = metrics
        self.gateway_id = uuid.uuid4().hex[:16]
        self.replies = self.keys.replies(self.gateway_id)
        self.running = False
        self.redis: Redis | None = None
        self._pending: dict[str, _Pending] = {}
        self._outbox: deque[str] = deque()
        self._forged_log = Throttled(log)
        self._backlog = dict.fromkeys(self.domains, 0)
        self._live_workers = dict.fromkeys(self.domains, 0)
        self._last_reply_id: bytes | str = "0-0"
        self._epoch: bytes | None = None
        self._redis_ok = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect and start the publisher, reader and monitor. A Redis that is not reachable
        yet is not an error: the gateway reports not ready until it is. One that refuses these
        credentials, this user's commands or whose certificate does not verify is: RuntimeError.
        """
        self.loop = asyncio.get_running_loop()
        self.redis = streams.connect(self.redis_options)
        self.running = True
        await streams.first_contact(self._check_epoch(), self.redis_options)
        for name, loop in (
            ("publisher", self._publish_loop),
            ("reader", self._read_loop),
            ("monitor", self._monitor_loop),
        ):
            self._tasks.append(asyncio.create_task(loop(), name=f"redis-{name}"))

    async def stop(self) -> None:
        self.running = False
        await streams.cancel_tasks(self._tasks)
        pending, self._pending = self._pending, {}
        self._outbox.clear()
        for entry in pending.values():
            self._answer(entry, Verdict(0.0, Status.ERROR, "service shutting down"))
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(self.replies)
            await self.redis.aclose()

    def is_ready(self) -> bool:
        return self.running and self._redis_ok

    # ----------------------------------------------------------------------------- submitting

    def enqueue(self, job: Job) -> None:
        if not self.running:
            job.resolve(Verdict(0.0, Status.ERROR, "the gateway is not running"))
            return
        if len(self._pending) >= self.max_queued:
            job.resolve(
                Verdict(
                    0.0,
                    Status.ERROR,
                    f"server overloaded: {len(self._pending)} requests already waiting "
                    f"(max_queued={self.max_queued})",
                )
            )
            return
        stream = self.keys.jobs(job.domain)
        if self._backlog[job.domain] >= self.max_stream_length:
            job.resolve(
                Verdict(
                    0.0,
                    Status.ERROR,
                    f"server overloaded: stream {stream} holds {self._backlog[job.domain]} "
                    f"jobs (max_stream_length={self.max_stream_length})",
                )
            )
            return
        request = job.request
        token = secrets.token_hex(8)
        while token in self._pending:  # 1 in 2**64: but never two requests on one token
            token = secrets.token_hex(8)
        remaining = job.deadline - time.monotonic()
        margin = min(DEADLINE_MARGIN_S, DEADLINE_MARGIN_FRACTION * remaining)
        key = streams.idempotency_key(
            request.id, job.domain, job.response, request.reference, request.options
        )
        message = JobMessage(
            key=key,
            token=token,
            replies=self.replies,
            deadline=time.time() + remaining - margin,
            domain=job.domain,
            id=request.id,
            response=job.response,
            reference=dict(request.reference),
            options=dict(request.options or {}),
            client=request.client,
        )
        payload = message.encode()
        signature = self.keyring.sign_job(payload) if self.keyring is not None else b""
        self._pending[token] = _Pending(job, stream, key, payload, signature)
        self._backlog[job.domain] += 1
        job.expiry = self.loop.call_at(job.deadline, self._expire, token)
        self._outbox.append(token)
        self._wake.set()

    def _answer(self, entry: _Pending, verdict: Verdict) -> None:
        if entry.job.expiry is not None:
            entry.job.expiry.cancel()
        entry.job.resolve(verdict)

    def _expire(self, token: str) -> None:
        entry = self._pending.pop(token, None)
        if entry is None:
            return
        domain = entry.job.domain
        if not entry.published:
            why = "Redis was unreachable until the deadline"
        elif self._live_workers.get(domain, 0) == 0:
            why = f"no worker for domain {domain!r} is running"
        else:
            why = f"workers of domain {domain!r} did not answer in time (overloaded?)"
        if entry.forged:
            why += (
                f"; {entry.forged} result(s) for it were dropped: bad, missing or unknown-key "
                "signature (do the gateway and its workers share queue keys?)"
            )
        entry.job.resolve(Verdict(0.0, Status.ERROR, f"deadline passed: {why}"))

    # ----------------------------------------------------------------------------- loops

    async def _publish_loop(self) -> None:
        assert self.redis is not None
        failures = 0
        while True:
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            tokens: list[str] = []
            domains: list[str] = []
            pipe = self.redis.pipeline(transaction=False)
            while self._outbox and len(tokens) < PUBLISH_BATCH:
                token = self._outbox.popleft()
                entry = self._pending.get(token)
                if entry is not None:  # else answered meanwhile (expired): nothing to send
                    tokens.append(token)
                    domains.append(entry.job.domain)
                    streams.PUBLISH.queue(
                        pipe,
                        [entry.stream, self.keys.done(entry.key), self.replies],
                        [
                            entry.message,
                            token,
                            streams.REPLIES_TTL_MS,
                            entry.signature,
                            1 if entry.reuse else 0,
                        ],
                    )
            if not tokens:
                continue
            try:
                outcomes = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                outcomes = [exc] * len(tokens)
            retry = []
            error: BaseException | None = None
            for token, domain, outcome in zip(tokens, domains, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    retry.append(token)
                    error = outcome
                    continue
                if outcome == 0:  # an identical request was answered: its result is posted
                    self.metrics.reused_results.labels(domain).inc()
                entry = self._pending.get(token)  # None if that result is in already
                if entry is None:
                    continue
                if outcome == 0 and not entry.reuse:
                    # The stored result was posted, read and found unverifiable before this
                    # outcome came back (see _drop_forged): publish the job to be run.
                    self._outbox.append(token)
                else:
                    entry.published = True
            if retry:
                self._outbox.extendleft(reversed(retry))
                assert error is not None
                if streams.is_noscript(error):  # Redis restarted: load and go on at once
                    with contextlib.suppress(RedisError, OSError):
                        await streams.load_scripts(self.redis)
                    continue
                failures += 1
                await self._backoff("publish", error, failures)
                continue
            failures = 0

    async def _read_loop(self) -> None:
        assert self.redis is not None
        failures = 0
        read_since_trim, trimmed_at = 0, time.monotonic()
        while True:
            try:
                response = await self.redis.xread(
                    {self.replies: self._last_reply_id}, count=READ_BATCH, block=READ_BLOCK_MS
                )
                read = 0
                for _stream, entries in response or []:
                    for entry_id, fields in entries:
                        self._last_reply_id = entry_id
                        self._on_reply(fields)
                        read += 1
                read_since_trim += read
                # Trim what was read now and then, not after every read: a round trip saved.
                if read_since_trim and (
                    read_since_trim >= TRIM_EVERY or time.monotonic() - trimmed_at > 0.5
                ):
                    await self.redis.xtrim(self.replies, minid=self._last_reply_id)
                    read_since_trim, trimmed_at = 0, time.monotonic()
                failures = 0
            except (RedisError, OSError) as exc:
                failures += 1
                await self._backoff("read replies", exc, failures)

    def _on_reply(self, fields: dict[bytes, bytes]) -> None:
        try:
            token = fields[streams.TOKEN_FIELD].decode()
        except (KeyError, UnicodeDecodeError):
            self._drop_unreadable(fields)
            return
        entry = self._pending.get(token)
        if entry is None:
            self.metrics.dropped_results.labels("not_waited_for").inc()
            return
        value = self._accepted_value(token, entry, fields)
        if value is None:
            self._drop_forged(token, entry, fields)
            return
        try:
            reward, status, detail, metrics = streams.decode_result(value)
            verdict = Verdict(reward, Status(status), detail, metrics)
        except (KeyError, ValueError, TypeError):
            self._drop_unreadable(fields)
            return
        del self._pending[token]
        self._answer(entry, verdict)

    def _accepted_value(
        self, token: str, entry: _Pending, fields: dict[bytes, bytes]
    ) -> bytes | None:
        """The result that ``fields`` answer ``entry`` with: the stored one (an identical
        request's, which wins so that retries agree) if it verifies, else the one just computed
        if it verifies; None if neither does. Unsigned mode takes them as they come."""
        stored = fields.get(streams.STORED_FIELD)
        if stored is not None:
            signature, value = streams.decode_stored(stored)
            if self.keyring is None or self.keyring.verify_stored(entry.key, value, signature):
                return value
        value = fields.get(streams.VALUE_FIELD)
        if value is None:
            return None
        if self.keyring is None or self.keyring.verify_result(
            self.replies, token, entry.key, value, fields.get(streams.SIGNATURE_FIELD)
        ):
            return value
        return None

    def _drop_forged(self, token: str, entry: _Pending, fields: dict[bytes, bytes]) -> None:
        self.metrics.dropped_results.labels("forged").inc()
        entry.forged += 1
        if streams.VALUE_FIELD not in fields and entry.reuse:
            # A stored result alone, and it does not verify (its key was revoked, or it was
            # written by someone without a key): run the job instead.
            entry.reuse = False
            if entry.published:
                entry.published = False
                self._outbox.append(token)
                self._wake.set()
        self._forged_log.warning(
            "dropped a result for request %r (%s) in %s: bad, missing or unknown-key "
            "signature (do the gateway and its workers share queue keys?)",
            entry.job.request.id,
            entry.job.domain,
            self.replies,
        )

    def _drop_unreadable(self, fields: dict[bytes, bytes]) -> None:
        self.metrics.dropped_results.labels("unreadable").inc()
        log.warning("dropped an unreadable entry of %s: %.200r", self.replies, fields)

    async def _monitor_loop(self) -> None:
        """Poll the epoch (data loss), stream lengths and heartbeats; keep metrics current."""
        assert self.redis is not None
        while True:
            if self.keyring is not None:
                self.keyring.refresh()
            try:
                await self._check_epoch()
                await self._poll_streams()
                self._redis_ok = True
                self.metrics.redis_up.set(1)
            except (RedisError, OSError) as exc:
                if self._redis_ok:
                    log.warning(
                        "lost Redis at %s: %s",
                        self.redis_options.redacted(),
                        streams.describe(exc, self.redis_options),
                    )
                self._redis_ok = False
                self.metrics.redis_up.set(0)
            await asyncio.sleep(MONITOR_INTERVAL_S)

    async def _check_epoch(self) -> None:
        assert self.redis is not None
        await self.redis.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
        epoch = await self.redis.get(self.keys.epoch)
        if self._epoch is not None and epoch != self._epoch:
            self._republish()
        if epoch != self._epoch:
            for domain in self.domains:
                await streams.ensure_group(self.redis, self.keys.jobs(domain))
        self._epoch = epoch

    def _republish(self) -> None:
        """Redis lost its data: send again every job still waited for."""
        lost = [token for token, entry in self._pending.items() if entry.published]
        log.warning("Redis lost its data (restarted?); publishing %d jobs again", len(lost))
        queued = set(self._outbox)
        for token in lost:
            self._pending[token].published = False
            if token not in queued:
                self._outbox.appendleft(token)
        self._last_reply_id = "0-0"
        self.metrics.republished.inc(len(lost))
        self._wake.set()

    async def _poll_streams(self) -> None:
        assert self.redis is not None
        cutoff = time.time() - HEARTBEAT_TIMEOUT_S
        pipe = self.redis.pipeline(transaction=False)
        for domain in self.domains:
            pipe.xlen(self.keys.jobs(domain))
            pipe.xpending(self.keys.jobs(domain), streams.GROUP)
            pipe.xlen(self.keys.dead(domain))
            pipe.zcount(self.keys.heartbeats(domain), cutoff, "+inf")
        results = await pipe.execute(raise_on_error=False)
        unpublished = dict.fromkeys(self.domains, 0)
        for token in self._outbox:
            entry = self._pending.get(token)
            if entry is not None:
                unpublished[entry.job.domain] += 1
        for index, domain in enumerate(self.domains):
            length, pending, dead, live = results[4 * index : 4 * index + 4]
            for value in (length, dead, live):
                if isinstance(value, (RedisError, OSError)):
                    raise value
            self._backlog[domain] = int(length) + unpublished[domain]
            self._live_workers[domain] = int(live)
            self.metrics.stream_length.labels(domain).set(int(length))
            if isinstance(pending, dict):  # else NOGROUP: no worker group yet
                self.metrics.stream_pending.labels(domain).set(pending["pending"])
            self.metrics.dead_letters.labels(domain).set(int(dead))
            self.metrics.workers_live.labels(domain).set(int(live))

    async def _backoff(self, what: str, exc: BaseException, failures: int) -> None:
        self._redis_ok = False
        self.metrics.redis_up.set(0)
        await streams.backoff(what, exc, failures)
