"""The asyncio streaming session's window, per-request deadlines and retries of `error`
results, against the real service."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.conftest import ServerThread
from trainer.client import AsyncRewardClient


def _errors_of(server: ServerThread, domain: str) -> float:
    text = httpx.get(f"{server.http_url}/metrics").text
    prefix = f'reward_service_requests_total{{domain="{domain}",status="error"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


async def test_window_bounds_requests_at_the_service(server: ServerThread) -> None:
    async with AsyncRewardClient(server.grpc_target) as client:
        async with client.session(max_in_flight=3) as session:
            futures = [
                session.submit("test_sleep", "", {"seconds": 0.05}, id=f"w{i}") for i in range(12)
            ]
            peak = 0
            while not all(f.done() for f in futures):
                peak = max(peak, session.in_flight)
                assert session.in_flight <= 3
                await asyncio.sleep(0.005)
        assert peak == 3
        assert [f.result().status for f in futures] == ["ok"] * 12


async def test_request_deadline_answers_error_and_the_session_goes_on(
    server: ServerThread,
) -> None:
    async with (
        AsyncRewardClient(server.grpc_target) as client,
        client.session(request_timeout_s=0.3, max_in_flight=1) as session,
    ):
        started = time.monotonic()
        slow = session.submit("test_sleep", "", {"seconds": 2.0}, id="slow")
        result = await slow
        assert time.monotonic() - started < 1.0
        assert (result.status, result.valid) == ("error", False)
        assert "no result within 0.3 s" in result.detail
        # Its window slot is free again (the window is 1): the next request goes out at once.
        assert (await session.submit("test_echo", "", {"reward": 0.5})).reward == 0.5


async def test_error_results_are_retried_with_backoff(server: ServerThread) -> None:
    before = _errors_of(server, "test_crash")
    async with AsyncRewardClient(server.grpc_target) as client:
        async with client.session(retries=2, retry_backoff_s=0.1) as session:
            started = time.monotonic()
            crashed = await session.submit("test_crash", "", {}, id="crash")
            fine = await session.submit("test_echo", "", {"reward": 1.0}, id="fine")
        elapsed = time.monotonic() - started
    assert crashed.status == "error" and not crashed.valid  # the last answer stands
    assert fine.status == "ok"
    assert _errors_of(server, "test_crash") - before == 3  # sent three times
    assert elapsed >= 0.1 + 0.2  # backoff doubles


def test_threaded_session_has_the_same_window_deadline_and_retries(server: ServerThread) -> None:
    from trainer.client import RewardClient

    with RewardClient(server.grpc_target) as client:
        with client.session(max_in_flight=2, request_timeout_s=1.0) as session:
            echoes = [session.submit("test_echo", "", {"reward": i / 8}) for i in range(8)]
            assert session.in_flight <= 2
            slow = session.submit("test_sleep", "", {"seconds": 3.0})
            assert [f.result(timeout=10).reward for f in echoes] == [i / 8 for i in range(8)]
            assert "no result within 1 s" in slow.result(timeout=10).detail
        before = _errors_of(server, "test_crash")
        with client.session(retries=1, retry_backoff_s=0.05) as session:
            assert session.submit("test_crash", "", {}).result(timeout=30).status == "error"
        assert _errors_of(server, "test_crash") - before == 2  # sent twice


def test_threaded_session_refuses_a_duplicate_id_in_flight(server: ServerThread) -> None:
    import pytest

    from trainer.client import RewardClient

    with RewardClient(server.grpc_target) as client, client.session() as session:
        slow = session.submit("test_sleep", "", {"seconds": 0.5}, id="same")
        with pytest.raises(ValueError, match="'same' is already in flight"):
            session.submit("test_echo", "", {"reward": 1.0}, id="same")
        many = [session.submit("test_echo", "", {"reward": 0.5}) for _ in range(500)]
        assert {f.result(timeout=30).reward for f in many} == {0.5}
        assert slow.result(timeout=30).status == "ok"
        # Answered: the id may be used again.
        assert session.submit("test_echo", "", {"reward": 1.0}, id="same").result(10).reward == 1
