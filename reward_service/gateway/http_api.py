"""The HTTP/JSON front end (FastAPI): scoring routes, probes, metrics and the OpenRLHF route.

Every failure to understand a request (malformed JSON, wrong types, an oversized body, an
empty batch) is answered with a 4xx whose body has ``"status": "invalid"`` and a ``detail``
that says what is wrong, in the same shape as a scoring result.

When authentication is on, every route but the open probes needs ``Authorization: Bearer
<token>``; anything else gets the same bare 401, whatever the path (unknown routes included).
A client over its rate or in-flight limit gets 429 with ``Retry-After`` and ``"status":
"error"`` (the request was not scored: retry it later, or mask the sample).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_service.gateway.access import UNAUTHENTICATED_DETAIL, AccessControl
from reward_service.gateway.auth import Client
from reward_service.gateway.limits import Refusal, retry_after_header
from reward_service.gateway.scoring import (
    InvalidRequestError,
    Scorer,
    ScoreRequest,
    ScoreResult,
    describe_validation_error,
)
from reward_service.verifiers.base import Status


class ScoreRequestBody(BaseModel):
    """Body of ``POST /v1/score`` and each item of a batch."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="Caller's id, echoed back (generated if absent).")
    domain: str = Field(description="Which verifier scores it: see GET /v1/domains.")
    response: str = Field(description="The model's full response text.")
    reference: dict[str, Any] = Field(
        default_factory=dict, description="The domain's reference object (e.g. ground_truth)."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Domain options.")
    truncated: bool = Field(False, description="Generation hit its length limit (no EOS).")

    def to_request(self, client: str = "") -> ScoreRequest:
        return ScoreRequest(
            self.domain,
            self.response,
            self.reference,
            self.options,
            self.truncated,
            self.id or "",
            client,
        )


class ScoreResultBody(BaseModel):
    id: str
    reward: float
    status: Status
    detail: str | None = None
    metrics: dict[str, Any] | None = None


class BatchRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Any, not dict: an item that is not even an object gets its own `invalid` result.
    requests: list[Any] = Field(description="Score requests, as for /v1/score.")


class BatchResultBody(BaseModel):
    results: list[ScoreResultBody]


class OpenRLHFRequestBody(BaseModel):
    """OpenRLHF's remote reward model call (``--remote_rm_url``)."""

    query: list[str] = Field(description="Prompt plus response, as OpenRLHF sends it.")
    prompts: list[str] = Field(default_factory=list)
    labels: list[str] = Field(
        default_factory=list,
        description="Per sample: a JSON object {domain, reference, options?} or a plain "
        "string, taken as the ground truth of the default domain.",
    )


_ITEM = TypeAdapter(ScoreRequestBody)
OPEN_HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
# Where AccessMiddleware leaves the authenticated Client for the routes.
CLIENT_SCOPE_KEY = "reward_service.client"


def invalid(detail: str, status_code: int = 400, request_id: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": Status.INVALID.value, "detail": detail}
    if request_id is not None:
        body = {"id": request_id, "reward": 0.0, **body}
    return JSONResponse(body, status_code=status_code)


def refused(refusal: Refusal, request_id: str | None = None) -> JSONResponse:
    """429 for a call over its client's rate or in-flight limit."""
    body: dict[str, Any] = {"status": Status.ERROR.value, "detail": refusal.detail}
    if request_id is not None:
        body = {"id": request_id, "reward": 0.0, **body}
    return JSONResponse(body, status_code=429, headers={"Retry-After": retry_after_header(refusal)})


class AccessMiddleware:
    """Authenticate every request before routing (so that an unauthenticated caller cannot
    even tell which paths exist) and leave the :class:`Client` in the scope for the routes."""

    def __init__(self, app: ASGIApp, access: AccessControl) -> None:
        self.app = app
        self.access = access

    def _is_open(self, path: str) -> bool:
        return (self.access.open_health and path in OPEN_HEALTH_PATHS) or (
            self.access.open_metrics and path == "/metrics"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no route speaks it: refuse before anything runs
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        if not self.access.enabled or self._is_open(scope["path"]):
            client: Client | None = self.access.clients.anonymous
        else:
            header = dict(scope["headers"]).get(b"authorization")
            client = self.access.authenticate(
                header.decode("latin-1") if header is not None else None
            )
        if client is None:
            response = JSONResponse(
                {"status": Status.INVALID.value, "detail": UNAUTHENTICATED_DETAIL},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="reward-service"'},
            )
            await response(scope, receive, send)
            return
        scope[CLIENT_SCOPE_KEY] = client
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies above the client's ``max_request_bytes`` (``default_limit`` for
    a request without a client) with 413, before anything parses them."""

    def __init__(
        self, app: ASGIApp, default_limit: int, access: AccessControl | None = None
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get(CLIENT_SCOPE_KEY)
        limit = client.limits.max_request_bytes if client is not None else self.default_limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, int(declared), limit)
            return
        # Read the body here, within the limit, and replay it to the app: FastAPI would turn
        # an exception raised from receive() into a generic 400.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, receive, send, size, limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, size: int, limit: int
    ) -> None:
        client = scope.get(CLIENT_SCOPE_KEY)
        if self.access is not None and client is not None:
            self.access.refuse_too_large(client)
        detail = (
            f"request body is at least {size} bytes, above the limit of {limit} (max_request_bytes)"
        )
        await invalid(detail, 413)(scope, receive, send)


def build_http_app(
    scorer: Scorer,
    is_ready: Callable[[], bool],
    access: AccessControl | None = None,
    openrlhf_domain: str = "math",
) -> ASGIApp:
    """The ASGI application of the HTTP API; ``access`` defaults to what the scorer's
    settings configure."""
    settings = scorer.settings
    if access is None:
        access = AccessControl.from_settings(settings, scorer.metrics)
    app = FastAPI(
        title="reward-service",
        summary="Verifiable rewards for RL of reasoning models: math, code, STEM, "
        "reasoning_gym, ifeval.",
        version="0.1.0",
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if content_type and "json" not in content_type:
            return invalid(
                f"expected a JSON body (Content-Type: application/json), got "
                f"Content-Type {content_type!r}"
            )
        problems = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":
                return invalid(f"malformed JSON: {error.get('ctx', {}).get('error', error['msg'])}")
            place = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
            problems.append(f"{place}: {error['msg']}")
        request_id = None
        if request.url.path == "/v1/score":
            request_id = ""
        return invalid("; ".join(problems), 400, request_id)

    def deadline_from(request: Request) -> float | None:
        """The ``X-Request-Timeout`` deadline; :class:`InvalidRequestError` if malformed (a NaN
        deadline would otherwise reach the event loop's timer heap)."""
        header = request.headers.get("x-request-timeout")
        if header is None:
            return None
        try:
            seconds = float(header)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise InvalidRequestError(
                f"X-Request-Timeout must be a positive number of seconds, got {header!r}"
            )
        return time.monotonic() + seconds

    @app.post(
        "/v1/score",
        response_model=ScoreResultBody,
        response_model_exclude_none=True,
        responses={400: {"description": "Invalid request"}},
    )
    async def score(body: ScoreRequestBody, request: Request) -> JSONResponse:
        """Score one response. An ``X-Request-Timeout`` header (seconds) sets its deadline."""
        try:
            deadline = deadline_from(request)
        except InvalidRequestError as exc:
            return invalid(str(exc), 400, body.id or "")
        client = client_of(request)
        if (refusal := access.admit(client, 1)) is not None:
            return refused(refusal, body.id or "")
        try:
            result = await scorer.score(body.to_request(client.name), deadline)
        finally:
            access.release(client)
        status_code = 400 if result.status is Status.INVALID else 200
        return JSONResponse(result.to_json(), status_code=status_code)

    def client_of(request: Request) -> Client:
        return request.scope[CLIENT_SCOPE_KEY]  # type: ignore[no-any-return]

    def batch_size_problem(client: Client, count: int) -> str | None:
        if count == 0:
            return "batch is empty"
        limit, setting = client.limits.largest_batch
        if count > limit:
            return f"batch has {count} requests, above the limit of {limit} ({setting})"
        return None

    async def score_admitted(
        client: Client, requests: list[ScoreRequest], deadline: float | None = None
    ) -> list[ScoreResult] | Refusal:
        """Score ``requests`` of ``client`` within its limits (the whole call, or a refusal)."""
        if (refusal := access.admit(client, len(requests))) is not None:
            return refusal
        try:
            return await scorer.score_many(requests, deadline)
        finally:
            access.release(client, len(requests))

    @app.post("/v1/score/batch", response_model=BatchResultBody)
    async def score_batch(body: BatchRequestBody, request: Request) -> JSONResponse:
        """Score many responses; ``results`` are in request order. A malformed item gets an
        ``invalid`` result in its place."""
        count = len(body.requests)
        try:
            deadline = deadline_from(request)
        except InvalidRequestError as exc:
            return invalid(str(exc))
        client = client_of(request)
        if (problem := batch_size_problem(client, count)) is not None:
            return invalid(problem)
        requests: list[ScoreRequest] = []
        early: dict[int, ScoreResult] = {}
        for index, item in enumerate(body.requests):
            try:
                requests.append(_ITEM.validate_python(item).to_request(client.name))
            except ValidationError as exc:
                item_id = ""
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    item_id = item["id"]
                detail = describe_validation_error(f"requests[{index}]", exc)
                early[index] = ScoreResult(item_id, 0.0, Status.INVALID, detail)
        outcome = await score_admitted(client, requests, deadline)
        if isinstance(outcome, Refusal):
            return refused(outcome)
        scored = iter(outcome)
        results = [early[i] if i in early else next(scored) for i in range(count)]
        return JSONResponse({"results": [r.to_json() for r in results]})

    @app.post("/get_reward")
    async def openrlhf_get_reward(body: OpenRLHFRequestBody, request: Request) -> JSONResponse:
        """OpenRLHF-compatible scoring: ``{query, prompts, labels}`` -> ``{rewards, scores,
        extra_logs}``. Samples that could not be scored get reward 0 and ``valid`` 0."""
        if len(body.labels) != len(body.query):
            return invalid(f"labels has {len(body.labels)} items but query has {len(body.query)}")
        client = client_of(request)
        if (problem := batch_size_problem(client, len(body.query))) is not None:
            return invalid(problem)
        requests = []
        for index, (query, label) in enumerate(zip(body.query, body.labels, strict=True)):
            prompt = body.prompts[index] if index < len(body.prompts) else ""
            response = query[len(prompt) :] if prompt and query.startswith(prompt) else query
            requests.append(_openrlhf_request(response, label, openrlhf_domain, client.name))
        results = await score_admitted(client, requests)
        if isinstance(results, Refusal):
            return refused(results)
        rewards = [r.reward for r in results]
        return JSONResponse(
            {
                "rewards": rewards,
                "scores": rewards,
                "extra_logs": {
                    "valid": [
                        1.0 if r.status in (Status.OK, Status.TIMEOUT) else 0.0 for r in results
                    ],
                },
            }
        )

    @app.get("/v1/domains")
    async def domains() -> dict[str, Any]:
        """The served domains with the JSON schemas of their reference and options."""
        return {"domains": scorer.domain_info()}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the gateway's event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: worker processes are up and can take work."""
        ready = is_ready()
        return JSONResponse(
            {"status": "ready" if ready else "not ready"}, status_code=200 if ready else 503
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(scorer.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return AccessMiddleware(BodyLimitMiddleware(app, settings.max_request_bytes, access), access)


def _openrlhf_request(response: str, label: str, default_domain: str, client: str) -> ScoreRequest:
    try:
        parsed = json.loads(label)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and "domain" in parsed:
        return ScoreRequest(
            domain=str(parsed["domain"]),
            response=response,
            reference=parsed.get("reference", {}),
            options=parsed.get("options", {}),
            client=client,
        )
    return ScoreRequest(
        domain=default_domain, response=response, reference={"ground_truth": label}, client=client
    )
