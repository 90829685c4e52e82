"""trainer/examples/tiny_grpo.py against a service started here: it trains, its rewards are
the service's, and (the slow test) its mean reward rises."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("torch")

from tests.conftest import ServerThread, running_server
from trainer.examples import tiny_grpo


@pytest.fixture(scope="module")
def service() -> Iterator[ServerThread]:
    with running_server() as running:
        yield running


def math_requests_answered(server: ServerThread) -> dict[str, float]:
    """The service's own count of answered math requests, by status (GET /metrics)."""
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    pattern = r'^reward_service_requests_total\{domain="math",status="(\w+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M)}


def run_example(server: ServerThread, tmp_path: Path, *args: str) -> dict[str, Any]:
    timeline = tmp_path / "timeline.json"
    argv = ["--target", server.grpc_target, "--seed", "0", "--timeline", str(timeline), *args]
    assert tiny_grpo.main(argv) == 0
    return json.loads(timeline.read_text())


@pytest.mark.timeout(120)
def test_runs_and_its_rewards_come_from_the_service(
    service: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sum(math_requests_answered(service).values())
    timeline = run_example(service, tmp_path, "--steps", "3", "--eval-every", "2")
    after = math_requests_answered(service)

    steps = timeline["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    printed = capsys.readouterr().out
    assert len(re.findall(r"^step +\d+ +mean reward \d\.\d{3}", printed, re.M)) == 3
    # Every sample (and every validation answer) was scored by this service, and nothing
    # else asked it for math rewards meanwhile.
    samples = sum(s["samples"] for s in steps)
    assert samples >= 3 * 16 * 16
    assert sum(after.values()) - before == timeline["requests_sent"] > samples
    assert all(s["statuses"] == {"ok": s["samples"]} for s in steps)
    # The rewards are the math verifier's verdicts on the text the model wrote: where that
    # is a plain number in a closed box, 1 exactly when it is the sum. (The verifier also
    # reads less plain answers, `\boxed{+9}` is 9, so those are only checked to be 0 or 1.)
    examples = [e for s in steps for e in s["examples"]]
    plain = 0
    for e in examples:
        assert e["reward"] in (0.0, 1.0), e
        answer = re.fullmatch(r"\\boxed\{([1-9]?\d)\}", e["response"])
        if answer:
            plain += 1
            assert e["reward"] == (1.0 if answer[1] == e["ground_truth"] else 0.0), e
    assert plain > 0, examples
    for s in steps:
        assert 0.0 <= s["mean_reward"] <= 1.0
        assert {"generation_s", "logprob_s", "exposed_reward_wait_s", "update_s"} <= s.keys()
        for r in s["rounds"]:
            # Responses went out while the batch was still decoding (or as it finished), and
            # the log-probs were computed before the gather.
            assert r["gen_start"] <= r["first_submit"] <= r["last_submit"] <= r["gen_end"]
            assert r["gen_end"] <= r["old_logprob_end"] <= r["ref_logprob_end"]
            assert r["ref_logprob_end"] <= r["gather_end"]
            assert r["last_answer"] <= r["gather_end"] + 1e-6
    assert "val_score" in steps[1] and "val_score" in steps[2]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_mean_reward_rises(service: ServerThread, tmp_path: Path) -> None:
    # 25 problems (operands 0-4): about 15 s on two cores. Seed 0 goes from ~0.05 to ~0.7.
    timeline = run_example(
        service,
        tmp_path,
        "--steps",
        "40",
        "--max-operand",
        "4",
        "--eval-every",
        "0",
        "--reset-every",
        "20",
        "--quiet",
    )
    rewards = [s["mean_reward"] for s in timeline["steps"]]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, rewards
    assert [s["step"] for s in timeline["steps"] if s["reset"]] == [20, 40]
