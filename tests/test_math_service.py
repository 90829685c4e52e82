"""Math through the running service: real rewards over gRPC and HTTP, and deadlines that hold
against answers built to make sympy hang."""

from __future__ import annotations

import threading
import time

import httpx

from tests.conftest import ServerThread
from trainer.client import RewardClient

# 9^(9^9) is a 370-million-digit integer that sympy sets out to compute exactly.
POWER_TOWER = "The answer is \\boxed{9^{9^{9}}}"
# Symbolic integration that sympy grinds through for minutes.
HARD_INTEGRAL = "The answer is \\boxed{\\int_0^1 e^{-x^{17}} \\sin(x^{13}) dx}"
# (Code stuck where no signal handler runs, which only a kill stops, is covered with a
# verifier that blocks SIGALRM in tests/test_worker_pool.py.)


def math_requests(count: int, offset: int = 0) -> list[dict]:
    requests = []
    for i in range(offset, offset + count):
        wrong = i % 3 == 0
        requests.append(
            {
                "id": f"m{i}",
                "domain": "math",
                "response": "<think>scratch \\boxed{0}</think> so "
                f"\\boxed{{\\frac{{{i + wrong}}}{{4}}}}",
                "reference": {"ground_truth": f"{i / 4}"},
            }
        )
    return requests


def expected_reward(request: dict) -> float:
    return 0.0 if int(request["id"][1:]) % 3 == 0 else 1.0


def test_math_rewards_over_grpc_and_http(server: ServerThread) -> None:
    requests = math_requests(30)
    with RewardClient(server.grpc_target) as client:
        results = client.score_batch(requests)
    assert [r.reward for r in results] == [expected_reward(r) for r in requests]
    assert all(r.status == "ok" for r in results)
    assert results[1].metrics["extracted"] == "\\frac{1}{4}"
    reply = httpx.post(f"{server.http_url}/v1/score", json=requests[2], timeout=30).json()
    assert reply["reward"] == 1.0 and reply["status"] == "ok"


def test_no_boxed_answer_scores_zero_with_a_reason(server: ServerThread) -> None:
    with RewardClient(server.grpc_target) as client:
        result = client.score("math", "I think it is 5.", {"ground_truth": "5"})
    assert (result.reward, result.status) == (0.0, "ok")
    assert "boxed" in result.detail


def test_sympy_hang_is_cut_off_at_its_deadline_and_others_keep_flowing(
    server: ServerThread,
) -> None:
    budget = 1.0
    outcome: dict = {}

    def send_hang() -> None:
        with RewardClient(server.grpc_target) as client:
            started = time.monotonic()
            outcome["result"] = client.score(
                "math", POWER_TOWER, {"ground_truth": "1"}, options={"timeout_s": budget}
            )
            outcome["elapsed"] = time.monotonic() - started

    hang = threading.Thread(target=send_hang)
    hang.start()
    time.sleep(0.2)  # the hang now occupies one worker
    with RewardClient(server.grpc_target) as client:
        started = time.monotonic()
        during = client.score_batch(math_requests(60))
        during_elapsed = time.monotonic() - started
        assert "result" not in outcome, "the normal batch should finish while the hang runs"
        hang.join(30)
        after = client.score_batch(math_requests(60, offset=60))

    result = outcome["result"]
    assert result.status == "timeout" and result.reward == 0.0
    assert "budget of 1 s" in result.detail
    kill_grace = server.settings.kill_grace_s
    assert budget <= outcome["elapsed"] < budget + kill_grace + 1.0
    assert during_elapsed < budget
    assert [r.reward for r in during] == [expected_reward(r) for r in math_requests(60)]
    assert [r.reward for r in after] == [expected_reward(r) for r in math_requests(60, 60)]
    assert server.server is not None
    assert server.server.queue.ready_workers == server.settings.workers


def test_hard_integral_times_out_without_losing_the_worker(server: ServerThread) -> None:
    with RewardClient(server.grpc_target) as client:
        started = time.monotonic()
        result = client.score(
            "math", HARD_INTEGRAL, {"ground_truth": "0.1"}, options={"timeout_s": 1}
        )
        elapsed = time.monotonic() - started
    assert result.status == "timeout" and result.reward == 0.0
    assert elapsed < 1.0 + server.settings.kill_grace_s + 1.0
