"""The transport-neutral core of the gateway: validate, route by domain, await, account.

The gRPC and HTTP front ends translate their wire formats into :class:`ScoreRequest` and
call :meth:`Scorer.score` / :meth:`Scorer.score_many`; everything that must behave the same on
both transports (validation messages, budgets, deadlines, the termination penalty, metrics)
lives here.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from reward_service.metrics import ServiceMetrics
from reward_service.settings import Settings
from reward_service.verifiers.base import MetricValue, Status, Verdict, Verifier

if TYPE_CHECKING:
    from reward_service.queue import JobQueue
from reward_service.workers.pool import Job

# Time kept between answering a request and its client's deadline, for the answer to arrive.
ANSWER_TRAVEL_S = 0.05


class InvalidRequestError(ValueError):
    """A request the service cannot score; the message says what is wrong with it."""


@dataclass(slots=True)
class ScoreRequest:
    """One sample to score, as both transports hand it to the :class:`Scorer`."""

    domain: str
    response: str
    reference: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    truncated: bool = False
    id: str = ""
    # The authenticated client that sent it (set by the front end): queues are fair across
    # clients.
    client: str = ""


@dataclass(slots=True)
class ScoreResult:
    """The answer to one :class:`ScoreRequest` (the public result object)."""

    id: str
    reward: float
    status: Status
    detail: str | None = None
    metrics: dict[str, MetricValue] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "reward": self.reward, "status": self.status.value}
        if self.detail:
            data["detail"] = self.detail
        if self.metrics:
            data["metrics"] = self.metrics
        return data


def describe_validation_error(prefix: str, error: ValidationError) -> str:
    """``reference.ground_truth: Field required; ...``: every problem, each with its place."""
    problems = []
    for item in error.errors(include_url=False):
        place = ".".join(str(part) for part in (prefix, *item["loc"]))
        problems.append(f"{place}: {item['msg']}")
    return "; ".join(problems)


class _DomainMetrics:
    """Labelled metric children of one domain, looked up once instead of per request."""

    def __init__(self, metrics: ServiceMetrics, domain: str) -> None:
        self.statuses = {s: metrics.requests.labels(domain, s.value) for s in Status}
        self.latency = metrics.latency.labels(domain)
        self.inflight = metrics.inflight.labels(domain)


class Scorer:
    """Validates requests, sends them to a job queue (the embedded worker pool, or Redis in
    distributed mode), and records what happened."""

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        verifiers: Mapping[str, type[Verifier]],
        metrics: ServiceMetrics,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.verifiers = dict(verifiers)
        self.metrics = metrics
        self._domain_metrics = {d: _DomainMetrics(metrics, d) for d in self.verifiers}
        self._unknown_domain_metrics = _DomainMetrics(metrics, "unknown")

    # ----------------------------------------------------------------------------- validation

    def prepare(self, request: ScoreRequest, deadline: float) -> Job:
        """Turn ``request`` into a :class:`Job`, or raise :class:`InvalidRequestError`."""
        verifier = self.verifiers.get(request.domain)
        if verifier is None:
            known = ", ".join(sorted(self.verifiers))
            raise InvalidRequestError(f"unknown domain {request.domain!r} (served here: {known})")
        if not isinstance(request.response, str):
            kind = type(request.response).__name__
            raise InvalidRequestError(f"response must be a string, got {kind}")
        if not isinstance(request.reference, Mapping):
            raise InvalidRequestError(
                f"reference must be an object, got {type(request.reference).__name__}"
            )
        try:
            reference = verifier.reference_model.model_validate(request.reference)
        except ValidationError as exc:
            raise InvalidRequestError(describe_validation_error("reference", exc)) from None
        try:
            options = verifier.options_model.model_validate(request.options or {})
        except ValidationError as exc:
            raise InvalidRequestError(describe_validation_error("options", exc)) from None
        budget = verifier.worker_budget_s(reference, options, self.settings.max_timeout_s)
        return Job(
            request.domain,
            request.response,
            reference,
            options,
            budget,
            deadline,
            client=request.client,
        )

    def deadline_for(self, client_deadline: float | None) -> float:
        """The request's deadline: the client's (less the time an answer takes to reach it,
        so that a request that runs out of time gets its ``error``, not DEADLINE_EXCEEDED),
        but never later than the server's default."""
        server_deadline = time.monotonic() + self.settings.request_timeout_s
        if client_deadline is None:
            return server_deadline
        return min(client_deadline - ANSWER_TRAVEL_S, server_deadline)

    # ----------------------------------------------------------------------------- scoring

    def submit(
        self, request: ScoreRequest, deadline: float | None = None
    ) -> asyncio.Future[ScoreResult]:
        """Start scoring ``request``; the future resolves to its result, never to an exception
        (a bad request resolves at once with status ``invalid``). Cancelling the future (the
        caller went away) withdraws the job if it is still queued."""
        future: asyncio.Future[ScoreResult] = asyncio.get_running_loop().create_future()
        queued: list[Job] = []

        def withdraw(_: asyncio.Future[ScoreResult]) -> None:
            for job in queued:
                job.resolve(_cancelled())

        def deliver(result: ScoreResult) -> None:
            if not future.done():
                future.remove_done_callback(withdraw)  # answered: nothing left to withdraw
                future.set_result(result)

        job = self.start(request, self.deadline_for(deadline), deliver)
        if job is not None and not future.done():
            queued.append(job)
            future.add_done_callback(withdraw)
        return future

    def start(
        self,
        request: ScoreRequest,
        deadline: float,
        deliver: Callable[[ScoreResult], None],
        started: float | None = None,
    ) -> Job | None:
        """Validate and queue ``request`` (``deadline`` on the ``time.monotonic`` clock);
        ``deliver`` gets its result exactly once (at once for a bad or truncated request, which
        returns None; else when its job is answered). ``started`` is when the request arrived,
        for the latency metric (default: now)."""
        if started is None:
            started = time.monotonic()
        if not request.id:
            request.id = uuid.uuid4().hex
        domain_metrics = self._domain_metrics.get(request.domain, self._unknown_domain_metrics)
        domain_metrics.inflight.inc()

        def finish(result: ScoreResult) -> None:
            domain_metrics.inflight.dec()
            domain_metrics.statuses[result.status].inc()
            domain_metrics.latency.observe(time.monotonic() - started)
            deliver(result)

        if request.truncated and self.settings.truncated_reward is not None:
            finish(
                ScoreResult(
                    request.id,
                    self.settings.truncated_reward,
                    Status.OK,
                    "truncated response: termination penalty applied",
                )
            )
            return None
        try:
            job = self.prepare(request, deadline)
        except InvalidRequestError as exc:
            finish(ScoreResult(request.id, 0.0, Status.INVALID, str(exc)))
            return None

        def on_verdict(verdict: Verdict) -> None:
            finish(
                ScoreResult(
                    request.id, verdict.reward, verdict.status, verdict.detail, verdict.metrics
                )
            )

        job.on_verdict = on_verdict
        job.request = request
        self.queue.enqueue(job)
        return job

    async def score(self, request: ScoreRequest, deadline: float | None = None) -> ScoreResult:
        """Score one request; never raises for a bad request (status ``invalid`` instead)."""
        return await self.submit(request, deadline)

    async def score_many(
        self, requests: Sequence[ScoreRequest], deadline: float | None = None
    ) -> list[ScoreResult]:
        """Score requests concurrently under one deadline; results in request order. One
        future for the whole batch (a future per request costs more than a cheap verifier)."""
        started = time.monotonic()
        effective_deadline = self.deadline_for(deadline)
        results: list[ScoreResult | None] = [None] * len(requests)
        remaining = len(requests)
        all_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def deliverer(index: int) -> Callable[[ScoreResult], None]:
            def deliver(result: ScoreResult) -> None:
                nonlocal remaining
                results[index] = result
                remaining -= 1
                if remaining == 0 and not all_done.done():
                    all_done.set_result(None)

            return deliver

        jobs = [
            self.start(request, effective_deadline, deliverer(index), started)
            for index, request in enumerate(requests)
        ]
        if remaining == 0 and not all_done.done():
            all_done.set_result(None)
        try:
            await all_done
        except asyncio.CancelledError:  # the caller went away: withdraw what is still queued
            for job in jobs:
                if job is not None:
                    job.resolve(_cancelled())
            raise
        return [result for result in results if result is not None]

    # ----------------------------------------------------------------------------- discovery

    def domain_info(self) -> list[dict[str, Any]]:
        """What ``GET /v1/domains`` and ``ListDomains`` report for each served domain."""
        return [
            {
                "name": name,
                "description": verifier.description,
                "default_timeout_s": verifier.default_timeout_s,
                "reference_schema": verifier.reference_model.model_json_schema(),
                "options_schema": verifier.options_model.model_json_schema(),
            }
            for name, verifier in sorted(self.verifiers.items())
        ]


def _cancelled() -> Verdict:
    return Verdict(0.0, Status.ERROR, "the caller cancelled the request")


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """Parse JSON text that must hold an object; :class:`InvalidRequestError` names ``what``."""
    try:
        # orjson is several times faster on the large references (entries, prompts) that
        # dominate the gateway's parsing; the stdlib covers what it refuses (huge integers).
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"{what} is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidRequestError(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
