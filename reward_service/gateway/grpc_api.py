"""The gRPC front end: RewardService (Score, ScoreBatch, ScoreStream, ListDomains), the
standard health service, and server reflection, on grpc.aio."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from reward_service.gateway.scoring import (
    InvalidRequestError,
    Scorer,
    ScoreRequest,
    ScoreResult,
    parse_json_object,
)
from reward_service.v1 import reward_pb2, reward_pb2_grpc
from reward_service.verifiers.base import Status

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name
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


def request_from_proto(message: reward_pb2.ScoreRequest) -> ScoreRequest:
    """Translate a wire request; :class:`InvalidRequestError` for an unparsable reference."""
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


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Implements the RewardService RPCs on top of a :class:`Scorer`."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.max_request_bytes = scorer.settings.max_request_bytes
        self.max_batch_size = scorer.settings.max_batch_size
        self.stream_window = scorer.settings.max_queued

    def _check_size(self, message: Message) -> None:
        size = message.ByteSize()
        if size > self.max_request_bytes:
            raise InvalidRequestError(
                f"request is {size} bytes, above the limit of {self.max_request_bytes} "
                "(max_request_bytes)"
            )

    async def Score(  # noqa: N802 - gRPC method names are fixed by the .proto
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreResult:
        result = await self._submit_one(request, _client_deadline(context))
        if result.status is Status.INVALID:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, result.detail or "invalid")
        return result_to_proto(result)

    async def ScoreBatch(  # noqa: N802
        self, request: reward_pb2.ScoreBatchRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreBatchResponse:
        count = len(request.requests)
        if count == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "batch is empty")
        if count > self.max_batch_size:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch has {count} requests, above the limit of {self.max_batch_size} "
                "(max_batch_size)",
            )
        requests: list[ScoreRequest] = []
        early: dict[int, ScoreResult] = {}
        for index, message in enumerate(request.requests):
            try:
                self._check_size(message)
                requests.append(request_from_proto(message))
            except InvalidRequestError as exc:
                early[index] = ScoreResult(message.id, 0.0, Status.INVALID, str(exc))
        scored = iter(await self.scorer.score_many(requests, _client_deadline(context)))
        results = [early[i] if i in early else next(scored) for i in range(count)]
        return reward_pb2.ScoreBatchResponse(results=[result_to_proto(r) for r in results])

    async def ScoreStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[reward_pb2.ScoreStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[reward_pb2.ScoreStreamResponse]:
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
            window.release()
            wake.set()

        async def read_requests() -> None:
            try:
                async for message in request_iterator:
                    for item in message.requests:
                        await window.acquire()
                        state["in_flight"] += 1
                        self._submit_one(item, deadline).add_done_callback(deliver)
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
                if not state["reading"] and state["in_flight"] == 0 and not ready:
                    break
            await reader  # surfaces a broken request stream as an RPC error
        finally:
            reader.cancel()

    def _submit_one(
        self, message: reward_pb2.ScoreRequest, deadline: float | None
    ) -> asyncio.Future[ScoreResult]:
        try:
            self._check_size(message)
            request = request_from_proto(message)
        except InvalidRequestError as exc:
            future: asyncio.Future[ScoreResult] = asyncio.get_running_loop().create_future()
            future.set_result(ScoreResult(message.id, 0.0, Status.INVALID, str(exc)))
            return future
        return self.scorer.submit(request, deadline)

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


def build_grpc_server(
    scorer: Scorer, health_servicer: health.aio.HealthServicer, address: str
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with the reward, health and reflection services; returns its port."""
    # Oversized messages up to twice the limit reach our handler, which names the limit;
    # beyond that gRPC itself refuses them with RESOURCE_EXHAUSTED.
    limit = 2 * scorer.settings.max_request_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    reward_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(scorer), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    return server, port
