"""Python clients of the reward service over gRPC: sync and asyncio.

Both clients offer unary :meth:`score`, :meth:`score_batch`, and a streaming session whose
``submit()`` returns a future at once: submit each response the moment it finishes
generating, do other work, then gather the results. A result's :attr:`ScoreResult.valid` is
False for ``error`` and ``invalid`` results: mask those samples out of the loss instead of
training on a fake 0.

Authentication and TLS come from a :class:`~trainer.credentials.Credentials` (``credentials=``),
by default read from ``REWARD_CLIENT_*`` environment variables.

Example::

    with RewardClient("localhost:50051") as client:
        result = client.score("math", "... \\\\boxed{2}", {"ground_truth": "2"})
        with client.session() as session:
            futures = [session.submit("math", r, {"ground_truth": gt}) for r, gt in pairs]
        rewards = [f.result().reward for f in futures]
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import json
import threading
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from google.protobuf import json_format

from reward_service.v1 import reward_pb2, reward_pb2_grpc
from trainer.credentials import Credentials

_STATUS_NAMES = {
    reward_pb2.STATUS_OK: "ok",
    reward_pb2.STATUS_INVALID: "invalid",
    reward_pb2.STATUS_TIMEOUT: "timeout",
    reward_pb2.STATUS_ERROR: "error",
}
_RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE,)


class RewardServiceError(RuntimeError):
    """The call failed as a whole (transport failure, or a request the service refused)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """The service's answer for one sample."""

    id: str
    reward: float
    status: str  # "ok" | "invalid" | "timeout" | "error"
    detail: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        """Whether the trainer may learn from this reward (False: mask the sample)."""
        return self.status in ("ok", "timeout")


def _to_json(value: dict[str, Any]) -> str:
    # orjson is several times faster than json on large references; integer keys become
    # strings as with json, and what orjson refuses (integers beyond 64 bits) falls back.
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


def build_request(
    domain: str,
    response: str,
    reference: Mapping[str, Any] | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    truncated: bool = False,
    id: str | None = None,
) -> reward_pb2.ScoreRequest:
    """A wire request. The reference travels as JSON text, which keeps every value exact."""
    message = reward_pb2.ScoreRequest(
        id=id or uuid.uuid4().hex,
        domain=domain,
        response=response,
        json=_to_json(dict(reference or {})),
        truncated=truncated,
    )
    if options:
        message.options.update(dict(options))
    return message


def _as_request(item: reward_pb2.ScoreRequest | Mapping[str, Any]) -> reward_pb2.ScoreRequest:
    if isinstance(item, reward_pb2.ScoreRequest):
        return item
    for key in ("domain", "response"):
        if not isinstance(item.get(key), str):
            kind = type(item.get(key)).__name__
            raise TypeError(f"request {item.get('id', '')!r}: {key} must be a string, got {kind}")
    return build_request(
        item["domain"],
        item["response"],
        item.get("reference"),
        options=item.get("options"),
        truncated=bool(item.get("truncated", False)),
        id=item.get("id"),
    )


def _from_proto(message: reward_pb2.ScoreResult) -> ScoreResult:
    metrics = json_format.MessageToDict(message.metrics) if message.HasField("metrics") else {}
    return ScoreResult(
        id=message.id,
        reward=message.reward,
        status=_STATUS_NAMES.get(message.status, "error"),
        detail=message.detail,
        metrics=metrics,
    )


def _channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class RewardClient:
    """Blocking client. Thread-safe; use one per process and close it (or use ``with``)."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout_s: float | None = 120.0,
        retries: int = 2,
        retry_backoff_s: float = 0.5,
        max_message_bytes: int = 64 * 1024 * 1024,
        credentials: Credentials | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self._target = target
        self._credentials = credentials if credentials is not None else Credentials.from_env()
        self._metadata = self._credentials.metadata()
        self._channel_options = _channel_options(max_message_bytes)
        self._channel = self._credentials.channel(target, self._channel_options)
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)

    def _call(self, method: Any, request: Any, timeout_s: float | None) -> Any:
        attempt = 0
        while True:
            try:
                return method(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                if code in _RETRYABLE_CODES and attempt < self.retries:
                    attempt += 1
                    threading.Event().wait(self.retry_backoff_s * 2 ** (attempt - 1))
                    continue
                raise RewardServiceError(code, exc.details() or "") from None

    def score(
        self,
        domain: str,
        response: str,
        reference: Mapping[str, Any] | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        truncated: bool = False,
        id: str | None = None,
        timeout_s: float | None = None,
    ) -> ScoreResult:
        """Score one response; :class:`RewardServiceError` (INVALID_ARGUMENT) if malformed."""
        request = build_request(
            domain, response, reference, options=options, truncated=truncated, id=id
        )
        return _from_proto(self._call(self._stub.Score, request, timeout_s))

    def score_batch(
        self,
        requests: Sequence[reward_pb2.ScoreRequest | Mapping[str, Any]],
        *,
        timeout_s: float | None = None,
    ) -> list[ScoreResult]:
        """Score many requests (dicts with the HTTP API's fields); results in order."""
        batch = reward_pb2.ScoreBatchRequest(requests=[_as_request(r) for r in requests])
        reply = self._call(self._stub.ScoreBatch, batch, timeout_s)
        return [_from_proto(r) for r in reply.results]

    def domains(self) -> list[str]:
        reply = self._call(self._stub.ListDomains, reward_pb2.ListDomainsRequest(), None)
        return [d.name for d in reply.domains]

    def session(
        self,
        *,
        timeout_s: float | None = None,
        max_in_flight: int | None = 4096,
        request_timeout_s: float | None = None,
        retries: int = 0,
        retry_backoff_s: float = 0.5,
    ) -> ScoreSession:
        """A streaming session (use as a context manager). ``timeout_s`` bounds the whole
        stream (default: none; each request still has the server's deadline); the other
        arguments are :class:`AsyncScoreSession`'s."""
        return ScoreSession(
            self._target,
            self._channel_options,
            self._credentials,
            timeout_s,
            max_in_flight=max_in_flight,
            request_timeout_s=request_timeout_s,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END = object()
# Requests submitted while the previous stream message was being sent travel together, up to
# this many per message: a stream costs per message far more than per request.
MAX_REQUESTS_PER_MESSAGE = 256


def _coalesce(first: reward_pb2.ScoreRequest, more: list[Any]) -> tuple[Any, bool]:
    """(stream message, whether the end marker was among ``more``)."""
    requests = [first]
    ended = False
    for item in more:
        if item is _END:
            ended = True
            break
        requests.append(item)
    return reward_pb2.ScoreStreamRequest(requests=requests), ended


def _drain_nowait(get_nowait: Any, empty: type[Exception]) -> list[Any]:
    items: list[Any] = []
    while len(items) < MAX_REQUESTS_PER_MESSAGE - 1:
        try:
            item = get_nowait()
        except empty:
            break
        items.append(item)
        if item is _END:
            break
    return items


class ScoreSession:
    """A bidirectional stream for threaded code: :meth:`submit` returns a
    ``concurrent.futures.Future``. It is an :class:`AsyncScoreSession` (window, per-request
    deadlines, retries of ``error`` results: the same arguments) run on a private event loop
    thread, so both sessions behave the same.

    Leaving the ``with`` block waits for every submitted result. If the stream breaks, every
    unresolved future gets the :class:`RewardServiceError`.
    """

    def __init__(
        self,
        target: str,
        channel_options: list[tuple[str, Any]],
        credentials: Credentials,
        timeout_s: float | None,
        **session_options: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="reward-session", daemon=True
        )
        self._thread.start()
        self._closed = False
        # Ids submitted and not yet answered (a duplicate is refused in the caller's thread),
        # and requests submitted that the loop has not taken yet: they are handed over
        # together, so that they also travel together.
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._handover: list[tuple[reward_pb2.ScoreRequest, concurrent.futures.Future[Any]]] = []

        async def open_stream() -> tuple[grpc.aio.Channel, AsyncScoreSession]:
            channel = credentials.aio_channel(target, channel_options)
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            session = AsyncScoreSession(
                stub, timeout_s, metadata=credentials.metadata(), **session_options
            )
            await session.__aenter__()
            return channel, session

        self._channel, self._session = self._run(open_stream())

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def in_flight(self) -> int:
        return self._session.in_flight

    def submit(
        self,
        domain: str,
        response: str,
        reference: Mapping[str, Any] | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        truncated: bool = False,
        id: str | None = None,
    ) -> concurrent.futures.Future[ScoreResult]:
        """Send one request now (or when the window has room); the future resolves when its
        result arrives. Returns at once: the request is handed to the session's thread without
        waiting for it (a round trip per request would cost more than the request)."""
        request = build_request(
            domain, response, reference, options=options, truncated=truncated, id=id
        )
        result: concurrent.futures.Future[ScoreResult] = concurrent.futures.Future()
        with self._lock:
            if request.id in self._ids:
                raise ValueError(f"request id {request.id!r} is already in flight")
            self._ids.add(request.id)
            self._handover.append((request, result))
            first = len(self._handover) == 1
        if first:  # else the loop is already due to take this one with the others
            self._loop.call_soon_threadsafe(self._take_handover)
        return result

    def _take_handover(self) -> None:
        with self._lock:
            handover, self._handover = self._handover, []
        for request, result in handover:
            self._session.submit_request(request).add_done_callback(
                functools.partial(self._copy, request.id, result)
            )

    def _copy(
        self,
        request_id: str,
        result: concurrent.futures.Future[ScoreResult],
        done: asyncio.Future[ScoreResult],
    ) -> None:
        with self._lock:
            self._ids.discard(request_id)
        if done.exception() is not None:
            result.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            result.set_result(done.result())

    def close(self) -> None:
        """Wait until every submitted request is answered, end the stream, stop the thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._session.close())
        finally:
            self._run(self._channel.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> ScoreSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRewardClient:
    """asyncio client; the same calls as :class:`RewardClient`, awaitable."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout_s: float | None = 120.0,
        retries: int = 2,
        retry_backoff_s: float = 0.5,
        max_message_bytes: int = 64 * 1024 * 1024,
        credentials: Credentials | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        credentials = credentials if credentials is not None else Credentials.from_env()
        self._metadata = credentials.metadata()
        self._channel = credentials.aio_channel(target, _channel_options(max_message_bytes))
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)

    async def _call(self, method: Any, request: Any, timeout_s: float | None) -> Any:
        attempt = 0
        while True:
            try:
                return await method(
                    request, timeout=timeout_s or self.timeout_s, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _RETRYABLE_CODES and attempt < self.retries:
                    attempt += 1
                    await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
                    continue
                raise RewardServiceError(exc.code(), exc.details() or "") from None

    async def score(
        self,
        domain: str,
        response: str,
        reference: Mapping[str, Any] | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        truncated: bool = False,
        id: str | None = None,
        timeout_s: float | None = None,
    ) -> ScoreResult:
        request = build_request(
            domain, response, reference, options=options, truncated=truncated, id=id
        )
        return _from_proto(await self._call(self._stub.Score, request, timeout_s))

    async def score_batch(
        self,
        requests: Sequence[reward_pb2.ScoreRequest | Mapping[str, Any]],
        *,
        timeout_s: float | None = None,
    ) -> list[ScoreResult]:
        batch = reward_pb2.ScoreBatchRequest(requests=[_as_request(r) for r in requests])
        reply = await self._call(self._stub.ScoreBatch, batch, timeout_s)
        return [_from_proto(r) for r in reply.results]

    async def domains(self) -> list[str]:
        reply = await self._call(self._stub.ListDomains, reward_pb2.ListDomainsRequest(), None)
        return [d.name for d in reply.domains]

    def session(
        self,
        *,
        timeout_s: float | None = None,
        max_in_flight: int | None = 4096,
        request_timeout_s: float | None = None,
        retries: int = 0,
        retry_backoff_s: float = 0.5,
    ) -> AsyncScoreSession:
        """A streaming session (use with ``async with``); ``timeout_s`` as for
        :meth:`RewardClient.session`; the other arguments are :class:`AsyncScoreSession`'s
        (a window of 4096 requests by default, no per-request deadline, no retries)."""
        return AsyncScoreSession(
            self._stub,
            timeout_s,
            metadata=self._metadata,
            max_in_flight=max_in_flight,
            request_timeout_s=request_timeout_s,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
        )

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncScoreSession:
    """asyncio counterpart of :class:`ScoreSession`; ``submit()`` returns an asyncio future,
    with what a trainer streaming a rollout batch needs on top:

    - ``max_in_flight``: at most this many requests at the service at once; later submissions
      wait in the session and go out as results come back (the service is never flooded);
    - ``request_timeout_s``: a request without a result this long after its submission is
      answered ``error`` by the session (a masked sample, not a hung step);
    - ``retries`` / ``retry_backoff_s``: an ``error`` result (an infrastructure failure) is sent
      again after ``retry_backoff_s * 2**attempt`` seconds, up to ``retries`` times; the last
      answer stands. ``ok``, ``timeout`` and ``invalid`` results are final.
    """

    def __init__(
        self,
        stub: reward_pb2_grpc.RewardServiceStub,
        timeout_s: float | None,
        *,
        metadata: tuple[tuple[str, str], ...] = (),
        max_in_flight: int | None = None,
        request_timeout_s: float | None = None,
        retries: int = 0,
        retry_backoff_s: float = 0.5,
    ) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._stub = stub
        self._metadata = metadata
        self._timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.request_timeout_s = request_timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._futures: dict[str, asyncio.Future[ScoreResult]] = {}
        self._requests: dict[str, reward_pb2.ScoreRequest] = {}  # for retries
        self._attempts: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._waiting: collections.deque[reward_pb2.ScoreRequest] = collections.deque()
        self._sent: set[str] = set()  # at the service now
        self._all_answered = asyncio.Event()
        self._all_answered.set()
        self._reader: asyncio.Task[None] | None = None
        # Set once the stream is over: later submits fail at once instead of waiting forever.
        self._error: Exception | None = None

    async def __aenter__(self) -> AsyncScoreSession:
        opened: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        call = self._stub.ScoreStream(
            self._stream(opened), timeout=self._timeout_s, metadata=self._metadata
        )
        opened.set_result(call)
        self._reader = asyncio.create_task(self._read(call))
        return self

    @property
    def in_flight(self) -> int:
        """Requests at the service now (not counting those waiting for room)."""
        return len(self._sent)

    async def _stream(
        self, opened: asyncio.Future[Any]
    ) -> AsyncIterator[reward_pb2.ScoreStreamRequest]:
        # Write only once the server has accepted the stream (it sends its headers then): a
        # write racing a refusal (UNAUTHENTICATED) would make grpc report INTERNAL instead.
        await (await opened).initial_metadata()
        while (item := await self._outbox.get()) is not _END:
            more = _drain_nowait(self._outbox.get_nowait, asyncio.QueueEmpty)
            message, ended = _coalesce(item, more)
            yield message
            if ended:
                return

    async def _read(self, call: Any) -> None:
        error: Exception = RewardServiceError(
            grpc.StatusCode.INTERNAL, "stream ended before all results arrived"
        )
        try:
            async for message in call:
                for result in message.results:
                    self._on_result(_from_proto(result))
        except grpc.aio.AioRpcError as exc:
            error = RewardServiceError(exc.code(), exc.details() or "")
        finally:
            self._error = error
            pending = list(self._futures.values())
            for request_id in list(self._futures):
                self._forget(request_id)
            self._waiting.clear()
            for future in pending:
                if not future.done():
                    future.set_exception(error)
            self._all_answered.set()

    def _on_result(self, result: ScoreResult) -> None:
        if result.id not in self._sent:
            return  # answered already (the session's deadline passed first)
        self._sent.discard(result.id)
        attempt = self._attempts.get(result.id, 0)
        if result.status == "error" and attempt < self.retries and result.id in self._futures:
            self._attempts[result.id] = attempt + 1
            delay = self.retry_backoff_s * 2**attempt
            asyncio.get_running_loop().call_later(delay, self._resend, result.id)
        else:
            self._finish(result)
        self._fill_window()

    def _resend(self, request_id: str) -> None:
        request = self._requests.get(request_id)
        if request is not None and self._error is None:
            self._send_or_wait(request)

    def _send_or_wait(self, request: reward_pb2.ScoreRequest) -> None:
        if self.max_in_flight is not None and len(self._sent) >= self.max_in_flight:
            self._waiting.append(request)
        else:
            self._sent.add(request.id)
            self._outbox.put_nowait(request)

    def _fill_window(self) -> None:
        while self._waiting and (
            self.max_in_flight is None or len(self._sent) < self.max_in_flight
        ):
            request = self._waiting.popleft()
            if request.id in self._futures:  # else answered by its deadline while waiting
                self._sent.add(request.id)
                self._outbox.put_nowait(request)

    def _finish(self, result: ScoreResult) -> None:
        future = self._futures.get(result.id)
        self._forget(result.id)
        if future is not None and not future.done():
            future.set_result(result)
        if not self._futures:
            self._all_answered.set()

    def _forget(self, request_id: str) -> None:
        self._futures.pop(request_id, None)
        self._requests.pop(request_id, None)
        self._attempts.pop(request_id, None)
        timer = self._timers.pop(request_id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, request_id: str) -> None:
        self._timers.pop(request_id, None)
        if request_id in self._futures:
            self._sent.discard(request_id)  # a late answer is ignored, and frees no room
            self._finish(
                ScoreResult(
                    request_id,
                    0.0,
                    "error",
                    f"no result within {self.request_timeout_s:g} s (the session's "
                    "request_timeout_s)",
                )
            )
            self._fill_window()

    def submit(
        self,
        domain: str,
        response: str,
        reference: Mapping[str, Any] | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        truncated: bool = False,
        id: str | None = None,
    ) -> asyncio.Future[ScoreResult]:
        """Send one request now (or as soon as the window has room); the future resolves to
        its result. It raises only if the stream itself broke (:class:`RewardServiceError`)."""
        return self.submit_request(
            build_request(domain, response, reference, options=options, truncated=truncated, id=id)
        )

    def submit_request(self, request: reward_pb2.ScoreRequest) -> asyncio.Future[ScoreResult]:
        """:meth:`submit` for a request already built (:func:`build_request`)."""
        if self._reader is None:
            raise RuntimeError("use the session as `async with client.session() as session`")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ScoreResult] = loop.create_future()
        if self._error is not None:  # the stream is over: nobody would resolve it
            future.set_exception(self._error)
            return future
        if request.id in self._futures:
            raise ValueError(f"request id {request.id!r} is already in flight")
        self._futures[request.id] = future
        self._all_answered.clear()
        if self.retries:
            self._requests[request.id] = request
        if self.request_timeout_s is not None:
            self._timers[request.id] = loop.call_later(
                self.request_timeout_s, self._expire, request.id
            )
        self._send_or_wait(request)
        return future

    async def close(self) -> None:
        """Wait until every submitted request is answered, then end the stream."""
        await self._all_answered.wait()
        self._outbox.put_nowait(_END)
        if self._reader is not None:
            await self._reader

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
