"""HumanEval through the running service: every canonical solution scores 1.0, and a broken
variant of each (same shape, wrong result) scores below 1.0."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import humaneval
from tests.conftest import ServerThread, running_server
from trainer.client import RewardClient


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with running_server(domains=["code"]) as running:
        yield running


def test_all_canonical_solutions_score_one(server: ServerThread) -> None:
    problems = humaneval.problems()
    assert len(problems) == 164
    with RewardClient(server.grpc_target) as client:
        results = client.score_batch([humaneval.canonical(p) for p in problems])
    failures = [(r.id, r.reward, r.status, r.detail) for r in results if r.reward != 1.0]
    assert failures == []
    assert all(r.metrics["tests_passed"] == r.metrics["tests_total"] > 0 for r in results)


def test_every_broken_variant_scores_below_one(server: ServerThread) -> None:
    problems = humaneval.problems()
    with RewardClient(server.grpc_target) as client:
        results = client.score_batch([humaneval.broken(p) for p in problems])
    assert [r.status for r in results] == ["ok"] * len(problems)
    too_high = [(r.id, r.reward) for r in results if r.reward >= 1.0]
    assert too_high == []


def test_canonical_solutions_pass_their_call_based_conversion(server: ServerThread) -> None:
    converted = [(p, humaneval.call_tests(p)) for p in humaneval.problems()]
    requests = [humaneval.call_request(p, tests) for p, tests in converted if tests]
    assert len(requests) > 130
    with RewardClient(server.grpc_target) as client:
        results = client.score_batch(requests)
    assert [(r.id, r.detail) for r in results if r.reward != 1.0] == []
