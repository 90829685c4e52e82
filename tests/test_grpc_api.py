"""The gRPC API over real gRPC on loopback, through the project's own clients."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from reward_service.v1 import reward_pb2, reward_pb2_grpc
from tests.conftest import ServerThread
from trainer.client import AsyncRewardClient, RewardClient, RewardServiceError, build_request


@pytest.fixture(scope="module")
def client(server: ServerThread) -> RewardClient:
    with RewardClient(server.grpc_target) as c:
        yield c


def test_unary_score(client: RewardClient) -> None:
    result = client.score("test_echo", "hello", {"reward": 0.75}, id="u1")
    assert (result.id, result.reward, result.status, result.valid) == ("u1", 0.75, "ok", True)
    assert result.metrics["length"] == 5


def test_invalid_unary_request_fails_with_invalid_argument(client: RewardClient) -> None:
    with pytest.raises(RewardServiceError) as info:
        client.score("nope", "x")
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown domain 'nope'" in info.value.message
    with pytest.raises(RewardServiceError) as info:
        client.score("math", "x", {"answer": "1"})
    assert "reference.ground_truth: Field required" in info.value.message


def test_typed_reference_messages(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        request = reward_pb2.ScoreRequest(
            id="t1",
            domain="math",
            response="so \\boxed{\\frac{1}{2}}",
            math=reward_pb2.MathReference(ground_truth="0.5"),
        )
        assert stub.Score(request).reward == 1.0
        mismatched = reward_pb2.ScoreRequest(
            domain="test_echo", response="x", math=reward_pb2.MathReference(ground_truth="1")
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(mismatched)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "reference is a 'math' message but the domain is 'test_echo'" in info.value.details()
        bad_json = reward_pb2.ScoreRequest(domain="test_echo", response="x", json="{not json")
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(bad_json)
        assert "reference json is not valid JSON" in info.value.details()
        oversized = reward_pb2.ScoreRequest(domain="test_echo", response="x" * 70_000)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(oversized)
        assert "above the limit of 65536 (max_request_bytes)" in info.value.details()


def test_batch_in_order_with_per_item_invalid(client: RewardClient) -> None:
    requests = [
        {"id": "0", "domain": "test_echo", "response": "", "reference": {"reward": 0.1}},
        {"id": "1", "domain": "nope", "response": ""},
        {"id": "2", "domain": "math", "response": "\\boxed{4}", "reference": {"ground_truth": "4"}},
    ]
    results = client.score_batch(requests)
    assert [(r.id, r.status, r.reward) for r in results] == [
        ("0", "ok", 0.1),
        ("1", "invalid", 0.0),
        ("2", "ok", 1.0),
    ]
    assert not results[1].valid
    with pytest.raises(RewardServiceError) as info:
        client.score_batch([])
    assert (
        info.value.code is grpc.StatusCode.INVALID_ARGUMENT
        and "batch is empty" in info.value.message
    )


def test_stream_answers_out_of_order_keyed_by_id(client: RewardClient) -> None:
    with client.session() as session:
        slow = session.submit("test_sleep", "", {"seconds": 0.5}, id="slow")
        fast = [session.submit("test_echo", "", {"reward": 1.0}, id=f"f{i}") for i in range(20)]
        # every fast result arrives while the slow one is still running
        for future in fast:
            assert future.result(timeout=0.4).status == "ok"
        assert not slow.done()
    assert slow.result().id == "slow" and slow.result().reward == 1.0


def test_stream_reports_invalid_items_without_breaking(client: RewardClient) -> None:
    with client.session() as session:
        bad = session.submit("nope", "x")
        good = session.submit("test_echo", "x")
    assert bad.result().status == "invalid" and good.result().status == "ok"


async def test_async_client_unary_batch_and_stream(server: ServerThread) -> None:
    async with AsyncRewardClient(server.grpc_target) as client:
        assert (await client.score("test_echo", "x", {"reward": 0.5})).reward == 0.5
        results = await client.score_batch([{"domain": "test_echo", "response": "y"}] * 3)
        assert [r.reward for r in results] == [1.0, 1.0, 1.0]
        async with client.session() as session:
            futures = [session.submit("test_echo", "z", {"reward": i / 4}) for i in range(4)]
        assert [f.result().reward for f in futures] == [0, 0.25, 0.5, 0.75]
        assert "math" in await client.domains()


def test_client_deadline_caps_the_budget(client: RewardClient) -> None:
    # The server caps the sample's budget at the call's deadline, so the caller hears
    # "timeout" (or, if the answer loses the race, DEADLINE_EXCEEDED), never a hang.
    started = time.monotonic()
    try:
        result = client.score("test_sleep", "", {"seconds": 5}, timeout_s=0.5)
        assert result.status == "timeout"
    except RewardServiceError as exc:
        assert exc.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2


def test_health_and_reflection(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "reward_service.v1.RewardService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert "reward_service.v1.RewardService" in names


def test_list_domains_has_schemas(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = reward_pb2_grpc.RewardServiceStub(channel).ListDomains(
            reward_pb2.ListDomainsRequest()
        )
    math = next(d for d in reply.domains if d.name == "math")
    assert "ground_truth" in json.loads(math.reference_schema_json)["properties"]
    assert math.default_timeout_s > 0


async def test_options_struct_reaches_the_verifier(server: ServerThread) -> None:
    async with AsyncRewardClient(server.grpc_target) as client:
        result = await client.score("test_sleep", "", {"seconds": 2}, options={"timeout_s": 0.3})
    assert result.status == "timeout" and result.reward == 0.0
    assert "budget of 0.3 s" in result.detail
    await asyncio.sleep(0)


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_session_futures_fail_when_the_stream_breaks_even_if_submitted_later() -> None:
    # Nothing listens on the port: the stream fails at once, possibly before the first submit.
    with RewardClient(f"127.0.0.1:{_unused_port()}", timeout_s=5) as client:
        session = client.session()
        first = session.submit("test_echo", "x")
        with pytest.raises(RewardServiceError):
            first.result(timeout=10)
        later = session.submit("test_echo", "y")
        with pytest.raises(RewardServiceError, match="UNAVAILABLE"):
            later.result(timeout=2)
        session.close()


async def test_async_session_futures_fail_when_the_stream_breaks() -> None:
    target = f"127.0.0.1:{_unused_port()}"
    async with AsyncRewardClient(target, timeout_s=5) as client, client.session() as session:
        first = session.submit("test_echo", "x")
        with pytest.raises(RewardServiceError):
            await asyncio.wait_for(first, 10)
        later = session.submit("test_echo", "y")
        with pytest.raises(RewardServiceError, match="UNAVAILABLE"):
            await asyncio.wait_for(later, 2)


def test_cancelled_calls_are_answered_quietly(server: ServerThread) -> None:
    # A call the client cancels still gets its verdict from the pool later; recording it must
    # not blow up in an event-loop callback (one logged error per cancelled request).
    errors: list[dict] = []
    server.loop.call_soon_threadsafe(
        server.loop.set_exception_handler, lambda loop, context: errors.append(context)
    )
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            request = build_request("test_sleep", "", {"seconds": 0.3})
            calls = [
                stub.Score.future(request),
                stub.ScoreBatch.future(reward_pb2.ScoreBatchRequest(requests=[request])),
            ]
            time.sleep(0.1)
            for call in calls:
                call.cancel()
            time.sleep(0.6)
    finally:
        server.loop.call_soon_threadsafe(server.loop.set_exception_handler, None)
    assert errors == []
    exposition = server.server.metrics.exposition().decode()
    assert 'reward_service_inflight_requests{domain="test_sleep"} 0.0' in exposition
