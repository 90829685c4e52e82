"""The gRPC front end: RewardService (Score, ScoreBatch, ScoreStream, ListDomains), the
standard health service, and server reflection, on grpc.aio.

Access (see :mod:`reward_service.gateway.access`): :class:`AccessInterceptor` authenticates
every call (``authorization: Bearer <token>`` metadata, or a verified client certificate under
mutual TLS) before any handler runs; without valid credentials every method, unknown ones
included, answers UNAUTHENTICATED with the same words. Unary and batch calls over their
client's limits get RESOURCE_EXHAUSTED; a stream waits for room instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from reward_service.gateway.access import UNAUTHENTICATED_DETAIL, AccessControl
from reward_service.gateway.auth import Client
from reward_service.gateway.scoring import (
    InvalidRequestError,
    Scorer,
    ScoreRequest,
    ScoreResult,
    parse_json_object,
)
from reward_service.settings import Settings
from reward_service.v1 import reward_pb2, reward_pb2_grpc
from reward_service.verifiers.base import Status

log = logging.getLogger(__name__)
SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
STATUS_TO_PROTO = {
    Status.OK: reward_pb2.STATUS_OK,
    Status.INVALID: reward_pb2.STATUS_INVALID,
    Status.TIMEOUT: reward_pb2.STATUS_TIMEOUT,
    Status.ERROR: reward_pb2.STATUS_ERROR,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}
STREAM_RESULTS_PER_MESSAGE = 256
# Struct (and JSON) numbers are doubles; integers round-trip exactly below 2**53.
_JSON_SAFE_INT = 2**53


def message_to_dict(message: Message) -> dict[str, Any]:
    """Set fields of a typed reference message as plain Python values (ints stay ints)."""
    result: dict[str, Any] = {}
    for descriptor, value in message.ListFields():
        if descriptor.message_type is not None and descriptor.message_type.full_name == (
            "google.protobuf.Struct"
        ):
            if descriptor.is_repeated:
                result[descriptor.name] = [struct_to_dict(v) for v in value]
            else:
                result[descriptor.name] = struct_to_dict(value)
        elif descriptor.message_type is not None:
            if descriptor.is_repeated:
                result[descriptor.name] = [message_to_dict(v) for v in value]
            else:
                result[descriptor.name] = message_to_dict(value)
        elif descriptor.is_repeated:
            result[descriptor.name] = list(value)
        else:
            result[descriptor.name] = value
    return result


def struct_to_dict(struct: Struct) -> dict[str, Any]:
    """A Struct as a dict, with whole-number doubles turned back into ints."""
    return _restore_ints(json_format.MessageToDict(struct))


def _restore_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < _JSON_SAFE_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: _restore_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_ints(v) for v in value]
    return value


def request_from_proto(message: reward_pb2.ScoreRequest, client: str = "") -> ScoreRequest:
    """Translate a wire request of ``client``; :class:`InvalidRequestError` for an unparsable
    reference."""
    try:
        return _request_from_proto(message, client)
    except InvalidRequestError:
        raise
    except (ValueError, RecursionError) as exc:  # NaN/infinity in a Struct, absurd nesting
        raise InvalidRequestError(f"request {message.id!r} cannot be read: {exc}") from None


def _request_from_proto(message: reward_pb2.ScoreRequest, client: str) -> ScoreRequest:
    which = message.WhichOneof("reference")
    if which is None:
        reference: dict[str, Any] = {}
    elif which == "json":
        reference = parse_json_object(message.json, "reference json")
    else:
        if which != message.domain:
            raise InvalidRequestError(
                f"reference is a {which!r} message but the domain is {message.domain!r}"
            )
        reference = message_to_dict(getattr(message, which))
    options = struct_to_dict(message.options) if message.HasField("options") else {}
    return ScoreRequest(
        domain=message.domain,
        response=message.response,
        reference=reference,
        options=options,
        truncated=message.truncated,
        id=message.id,
        client=client,
    )


def result_to_proto(result: ScoreResult) -> reward_pb2.ScoreResult:
    message = reward_pb2.ScoreResult(
        id=result.id,
        reward=result.reward,
        status=STATUS_TO_PROTO[result.status],
        detail=result.detail or "",
    )
    if result.metrics:
        message.metrics.update(result.metrics)
    return message


def _client_deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


# The client of the call being handled, set by AccessInterceptor for the servicer.
_CALLER: contextvars.ContextVar[Client] = contextvars.ContextVar("reward_service_caller")


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates each call before its handler runs (see the module docstring). The
    checking handler of each method is built once and kept: a refused call costs the least."""

    def __init__(self, access: AccessControl) -> None:
        self.access = access
        self._checked: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if not self.access.enabled:  # every caller is the anonymous client: nothing to check
            return await continuation(handler_call_details)
        method: str = handler_call_details.method
        checked = self._checked.get(method)
        if checked is not None:
            return checked
        handler = await continuation(handler_call_details)
        if self.access.open_health and method.startswith(f"/{HEALTH_SERVICE_NAME}/"):
            return handler
        if handler is None:  # not cached: the names of unknown methods are the caller's choice
            return _unknown_method_handler(self.access)
        checked = self._checked[method] = _authenticated(handler, self.access)
        return checked


def _caller(access: AccessControl, context: grpc.aio.ServicerContext) -> Client | None:
    authorization = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization = value if isinstance(value, str) else None
            break
    certificate_cn = None
    if access.clients.any_certificate or access.clients.has_certificate_clients:
        names = context.auth_context().get("x509_common_name")
        if names:
            certificate_cn = names[0].decode("utf-8", "replace")
    return access.authenticate(authorization, certificate_cn)


# (request streaming, response streaming) -> (behaviour attribute, handler constructor)
_HANDLER_KINDS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _authenticated(handler: grpc.RpcMethodHandler, access: AccessControl) -> grpc.RpcMethodHandler:
    """``handler`` behind a credentials check that also names the caller (``_CALLER``)."""
    attribute, build = _HANDLER_KINDS[(handler.request_streaming, handler.response_streaming)]
    inner = getattr(handler, attribute)

    async def admitted(context: grpc.aio.ServicerContext) -> None:
        client = _caller(access, context)
        if client is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAIL)
        _CALLER.set(client)  # type: ignore[arg-type]

    if handler.response_streaming and inspect.isasyncgenfunction(inner):

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await admitted(context)
            async for reply in inner(request, context):
                yield reply

    else:  # a unary answer, or a stream written with context.write() (health's Watch)

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[misc]
            await admitted(context)
            return await inner(request, context)

    return build(behaviour, handler.request_deserializer, handler.response_serializer)


def _unknown_method_handler(access: AccessControl) -> grpc.RpcMethodHandler:
    """UNAUTHENTICATED for a caller without credentials (who must not learn which methods
    exist), UNIMPLEMENTED for an authenticated one."""

    async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if _caller(access, context) is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAIL)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        return b""

    return grpc.unary_unary_rpc_method_handler(answer)


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Implements the RewardService RPCs on top of a :class:`Scorer`, within the limits of
    each caller (``access``)."""

    def __init__(self, scorer: Scorer, access: AccessControl) -> None:
        self.scorer = scorer
        self.access = access
        self.stream_window = scorer.settings.max_queued

    def _caller(self) -> Client:
        # Unset only when the servicer runs without AccessInterceptor (never in the server).
        return _CALLER.get(self.access.clients.anonymous)

    def _check_size(self, message: Message, client: Client) -> None:
        size = message.ByteSize()
        limit = client.limits.max_request_bytes
        if size > limit:
            self.access.refuse_too_large(client)
            raise InvalidRequestError(
                f"request is {size} bytes, above the limit of {limit} (max_request_bytes)"
            )

    def _refused(self, client: Client, count: int, context: grpc.aio.ServicerContext) -> bool:
        """Whether ``count`` requests of ``client`` are over its limits; if so the call's
        status is set to RESOURCE_EXHAUSTED (set and returned, not raised through abort():
        a flooding client's refusals must cost the gateway as little as possible)."""
        refusal = self.access.admit(client, count)
        if refusal is None:
            return False
        context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
        context.set_details(refusal.detail)
        return True

    async def Score(  # noqa: N802 - gRPC method names are fixed by the .proto
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreResult:
        client = self._caller()
        if self._refused(client, 1, context):
            return reward_pb2.ScoreResult()
        try:
            result = await self._submit_one(request, _client_deadline(context), client)
        finally:
            self.access.release(client)
        if result.status is Status.INVALID:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, result.detail or "invalid")
        return result_to_proto(result)

    async def ScoreBatch(  # noqa: N802
        self, request: reward_pb2.ScoreBatchRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreBatchResponse:
        client = self._caller()
        count = len(request.requests)
        if count == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "batch is empty")
        limit, setting = client.limits.largest_batch
        if count > limit:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch has {count} requests, above the limit of {limit} ({setting})",
            )
        requests: list[ScoreRequest] = []
        early: dict[int, ScoreResult] = {}
        for index, message in enumerate(request.requests):
            try:
                self._check_size(message, client)
                requests.append(request_from_proto(message, client.name))
            except InvalidRequestError as exc:
                early[index] = ScoreResult(message.id, 0.0, Status.INVALID, str(exc))
        if self._refused(client, len(requests), context):
            return reward_pb2.ScoreBatchResponse()
        try:
            scored = iter(await self.scorer.score_many(requests, _client_deadline(context)))
        finally:
            self.access.release(client, len(requests))
        results = [early[i] if i in early else next(scored) for i in range(count)]
        return reward_pb2.ScoreBatchResponse(results=[result_to_proto(r) for r in results])

    async def ScoreStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[reward_pb2.ScoreStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[reward_pb2.ScoreStreamResponse]:
        client = self._caller()
        # Headers at once tell the client that the stream was accepted before it writes (ours
        # waits for them: a write racing a refusal such as UNAUTHENTICATED surfaces as
        # INTERNAL in grpc's client).
        await context.send_initial_metadata(())
        deadline = _client_deadline(context)
        ready: list[ScoreResult] = []
        wake = asyncio.Event()
        # Bounds what one stream may hold; reading pauses (and HTTP/2 flow control pushes
        # back on the client) while the window is full.
        window = asyncio.Semaphore(self.stream_window)
        state = {"in_flight": 0, "reading": True}

        def deliver(future: asyncio.Future[ScoreResult]) -> None:
            ready.append(future.result())
            state["in_flight"] -= 1
            self.access.release(client)
            wake.set()

        async def read_requests() -> None:
            try:
                async for message in request_iterator:
                    for item in message.requests:
                        await window.acquire()
                        await self.access.wait(client)  # the client's rate and in-flight room
                        state["in_flight"] += 1
                        self._submit_one(item, deadline, client).add_done_callback(deliver)
            finally:
                state["reading"] = False
                wake.set()

        reader = asyncio.create_task(read_requests())
        try:
            while True:
                await wake.wait()
                wake.clear()
                while ready:  # in bounded messages: results carry metrics and details
                    results, ready[:] = (
                        ready[:STREAM_RESULTS_PER_MESSAGE],
                        ready[STREAM_RESULTS_PER_MESSAGE:],
                    )
                    yield reward_pb2.ScoreStreamResponse(
                        results=[result_to_proto(r) for r in results]
                    )
                    # Room again only once sent: a client that does not read its results
                    # cannot make the stream hold more than the window.
                    for _ in results:
                        window.release()
                if not state["reading"] and state["in_flight"] == 0 and not ready:
                    break
            await reader  # surfaces a broken request stream as an RPC error
        finally:
            reader.cancel()

    def _submit_one(
        self, message: reward_pb2.ScoreRequest, deadline: float | None, client: Client
    ) -> asyncio.Future[ScoreResult]:
        try:
            self._check_size(message, client)
            request = request_from_proto(message, client.name)
        except InvalidRequestError as exc:
            detail = str(exc)
        except Exception as exc:  # a bug must not leak the client's in-flight room
            log.exception("could not read request %r", message.id)
            detail = f"request could not be read: {type(exc).__name__}"
        else:
            return self.scorer.submit(request, deadline)
        future: asyncio.Future[ScoreResult] = asyncio.get_running_loop().create_future()
        future.set_result(ScoreResult(message.id, 0.0, Status.INVALID, detail))
        return future

    async def ListDomains(  # noqa: N802
        self, request: reward_pb2.ListDomainsRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ListDomainsResponse:
        return reward_pb2.ListDomainsResponse(
            domains=[
                reward_pb2.DomainInfo(
                    name=info["name"],
                    description=info["description"],
                    default_timeout_s=info["default_timeout_s"],
                    reference_schema_json=json.dumps(info["reference_schema"]),
                    options_schema_json=json.dumps(info["options_schema"]),
                )
                for info in self.scorer.domain_info()
            ]
        )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' certificate files (None: plaintext); with
    ``tls_client_ca_file``, clients must present a certificate signed by that CA."""
    if settings.tls_cert_file is None:
        return None
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def build_grpc_server(
    scorer: Scorer,
    health_servicer: health.aio.HealthServicer,
    address: str,
    access: AccessControl | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with the reward, health and reflection services, behind ``access``
    (default: what the scorer's settings configure) and over TLS when the settings give a
    certificate; returns its port."""
    settings = scorer.settings
    if access is None:
        access = AccessControl.from_settings(settings, scorer.metrics)
    # Oversized messages up to twice the limit reach our handler, which names the limit;
    # beyond that gRPC itself refuses them with RESOURCE_EXHAUSTED.
    limit = 2 * settings.max_request_bytes
    server = grpc.aio.server(
        interceptors=[AccessInterceptor(access)],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    reward_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(scorer, access), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            HEALTH_SERVICE_NAME,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    credentials = server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    return server, port
