"""The reasoning_gym domain through the running service: every registered task scores its
entries (after the JSON round trip of a request) exactly as the package scores the original
entries, and the scorers that evaluate answers as code are contained."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from reasoning_gym.composite import DatasetSpec
from reasoning_gym.factory import DATASETS, create_dataset

from tests.conftest import running_server
from trainer.client import RewardClient

WRONG = "definitely wrong"
# Tasks where the package does not give its own gold answer 1.0, or gives any answer full
# credit: the reason, checked below so that this table stays true.
QUIRKS = {
    "boxnet": "no reference solution: the entry's answer is None",
    "graph_color": "answer is None: many colourings are valid, the scorer checks the one given",
    "propositional_logic": "answer is None: the scorer checks the formula given",
    "rubiks_cube": "answer is None: the scorer simulates the moves given",
    "rush_hour": "no reference solution: the entry's answer is None",
    "game_of_life_halting": "the scorer gives 1.0 to any non-empty answer",
}


@pytest.fixture(scope="module")
def client() -> Iterator[RewardClient]:
    with running_server(domains=["reasoning_gym"]) as server, RewardClient(server.grpc_target) as c:
        yield c


def own_score(dataset, answer, entry) -> float:
    try:
        return float(dataset.score_answer(answer, entry))
    except Exception:  # the service answers 0 with the reason
        return 0.0


def request(name: str, entry: dict, answer: str, config: dict | None) -> dict:
    return {
        "domain": "reasoning_gym",
        "response": f"<think>maybe <answer>{WRONG}</answer></think><answer>{answer}</answer>",
        "reference": {
            "dataset": name,
            "entry": json.loads(json.dumps(entry, default=str)),
            "config": config,
        },
    }


def config_of(dataset) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(dataset.config), default=str))


def test_every_task_scores_like_the_package(client: RewardClient) -> None:
    cases = []
    for name in sorted(DATASETS):
        if name == "composite":
            continue
        dataset = create_dataset(name, size=2, seed=11)
        for index in range(2):
            entry = dataset[index]
            answers = [WRONG] if entry["answer"] is None else [str(entry["answer"]), WRONG]
            for answer in answers:
                expected = own_score(dataset, answer, entry)
                cases.append(
                    (name, answer, expected, request(name, entry, answer, config_of(dataset)))
                )
    results = client.score_batch([c[3] for c in cases])
    mismatches = [
        (name, answer[:30], expected, result.reward, result.detail)
        for (name, answer, expected, _), result in zip(cases, results, strict=True)
        if result.reward != expected or result.status != "ok"
    ]
    assert mismatches == []
    by_task: dict[str, dict[str, float]] = {}
    for (name, answer, _, _), result in zip(cases, results, strict=True):
        by_task.setdefault(name, {})["wrong" if answer == WRONG else "gold"] = result.reward
    for name, scores in by_task.items():
        if name in QUIRKS:
            assert "gold" not in scores or scores["wrong"] == 1.0, (name, scores)
        else:
            assert scores["gold"] == 1.0 and scores["wrong"] < 1.0, (name, scores)


def test_composite_entries_are_scored_by_their_source_task(client: RewardClient) -> None:
    specs = [DatasetSpec("leg_counting", 1, {}), DatasetSpec("basic_arithmetic", 1, {})]
    composite = create_dataset("composite", size=6, seed=3, datasets=specs)
    entries = [composite[i] for i in range(6)]
    results = client.score_batch([request("composite", e, str(e["answer"]), None) for e in entries])
    assert [r.reward for r in results] == [1.0] * 6


def test_unknown_task_and_missing_answer(client: RewardClient) -> None:
    [bad, none] = client.score_batch(
        [
            request("no_such_task", {"question": "q", "answer": "1", "metadata": {}}, "1", None),
            {
                "domain": "reasoning_gym",
                "response": "I think it is 4",
                "reference": {"dataset": "basic_arithmetic", "entry": {"question": "2+2"}},
            },
        ]
    )
    assert bad.status == "invalid" and "unknown reasoning-gym task 'no_such_task'" in bad.detail
    assert (none.reward, none.detail) == (0.0, "no <answer>...</answer> found")


@pytest.fixture(scope="module")
def binary_matrix() -> tuple[dict, list]:
    dataset = create_dataset("binary_matrix", size=1, seed=5)
    entry = dataset[0]
    gold = [[int(x) for x in row.split()] for row in entry["answer"].splitlines()]
    return entry, gold


def hostile(entry: dict, expression: str) -> dict:
    return request("binary_matrix", entry, expression, None)


def test_eval_based_scorers_are_sandboxed(client: RewardClient, binary_matrix) -> None:
    entry, gold = binary_matrix
    # A host folder the worker can write (the repository), unlike the sandbox's own /tmp.
    marker = str(Path(__file__).resolve().parent / f"rg-breach-{uuid.uuid4().hex}")
    os.environ["REWARD_SERVICE_RG_SECRET"] = secret = uuid.uuid4().hex
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    # Each evaluates to the gold matrix (0.1 from this scorer) only if the attack worked.
    os_ = "__import__('os')"
    environ_has_secret = (
        f"{secret!r} in str({os_}.environ) or any({secret!r} in open(f'/proc/{{p}}/environ')"
        f".read() for p in {os_}.listdir('/proc') if p.isdigit())"
    )
    attacks = {
        "write a host file": f"[open({marker!r}, 'w').write('x'), {gold}][1]",
        "connect to the host": (
            f"[__import__('socket').create_connection(('127.0.0.1', {port}), 1), {gold}][1]"
        ),
        "read the environment": f"{gold} if {environ_has_secret} else 0",
        "see the host": f"{gold} if {os_}.path.exists('/work') or {os_}.path.exists('/root') "
        "else 0",
    }
    try:
        results = client.score_batch([hostile(entry, a) for a in attacks.values()])
        for name, result in zip(attacks, results, strict=True):
            assert (name, result.reward) == (name, 0.0), result.detail
        assert not os.path.exists(marker)
        honest = client.score_batch([hostile(entry, str(gold))])[0]
        assert honest.reward == 0.1 and honest.metrics.get("sandboxed") is True
    finally:
        listener.close()
        os.environ.pop("REWARD_SERVICE_RG_SECRET", None)


def test_an_answer_that_sleeps_forever_times_out_and_the_worker_stays(
    client: RewardClient, binary_matrix
) -> None:
    entry, _ = binary_matrix
    [result] = client.score_batch(
        [dict(hostile(entry, "__import__('time').sleep(1000)"), options={"timeout_s": 1})]
    )
    assert (result.reward, result.status) == (0.0, "timeout")
    [after] = client.score_batch([request("binary_matrix", entry, entry["answer"], None)])
    assert after.reward == 1.0
