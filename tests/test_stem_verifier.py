"""The stem domain through the running service: rule-based matching, and the LLM judge against
a local server that speaks the OpenAI chat-completions protocol (scripted verdicts, slow
answers, 429s and 500s)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.fake_openai import FakeOpenAI, Reply, fake_openai, verdict
from trainer.client import RewardClient


@pytest.fixture(scope="module")
def judge() -> Iterator[FakeOpenAI]:
    with fake_openai() as server:
        yield server


@pytest.fixture(scope="module")
def client(judge: FakeOpenAI) -> Iterator[RewardClient]:
    from tests.conftest import running_server

    with (
        running_server(
            domains=["stem"],
            judge_base_url=judge.base_url,
            judge_model="judge-model",
            judge_timeout_s=0.5,
            judge_max_retries=2,
        ) as server,
        RewardClient(server.grpc_target) as c,
    ):
        yield c


@pytest.fixture(autouse=True)
def fresh_judge(judge: FakeOpenAI) -> None:
    judge.requests.clear()
    judge.script = lambda body: verdict(True)


def boxed(answer: str) -> str:
    return f"<think>Let me see... \\boxed{{0}}</think> So the result is \\boxed{{{answer}}}."


CHOICES = ["Mitochondria", "Nucleus", "Ribosome", "Golgi apparatus"]
RULE_CASES = [
    ("letter vs letter", boxed("B"), {"ground_truth": "B", "choices": CHOICES}, 1.0),
    ("(b) vs letter", boxed("(b)"), {"ground_truth": "B", "choices": CHOICES}, 1.0),
    ("option text vs letter", boxed("nucleus"), {"ground_truth": "B", "choices": CHOICES}, 1.0),
    ("wrong option", boxed("C"), {"ground_truth": "B", "choices": CHOICES}, 0.0),
    ("within 1%", boxed("9.81"), {"ground_truth": "9.8"}, 1.0),
    ("beyond 1%", boxed("10.2"), {"ground_truth": "9.8"}, 0.0),
    ("units ignored", boxed("9.8\\ \\text{m/s}^2"), {"ground_truth": "9.8"}, 1.0),
    ("scientific", boxed("3.00 \\times 10^{8}"), {"ground_truth": "3e8 m/s"}, 1.0),
    ("thousands", boxed("1,200"), {"ground_truth": "1200"}, 1.0),
    ("fraction", boxed("\\frac{3}{4}"), {"ground_truth": "0.75"}, 1.0),
    ("symbolic", boxed("(x+1)^2"), {"ground_truth": "x^2+2x+1"}, 1.0),
    (
        "normalised text",
        boxed("\\text{Adenosine Triphosphate}"),
        {"ground_truth": "adenosine triphosphate."},
        1.0,
    ),
    ("answer tag", "<answer>42</answer>", {"ground_truth": "42"}, 1.0),
    ("answer line", "We find it.\nFinal answer: 0.5 mol", {"ground_truth": "0.5"}, 1.0),
    ("answer mid-line", "It settles, so the answer is 7.2 s.", {"ground_truth": "7.2"}, 1.0),
    ("emphasis, math", "Work...\n**Final answer:** $\\frac{1}{4}$", {"ground_truth": "0.25"}, 1.0),
    ("answer on next line", "Answer:\n\n  12 J", {"ground_truth": "12"}, 1.0),
    ("different text, no judge", boxed("osmosis"), {"ground_truth": "diffusion"}, 0.0),
    ("no answer", "I am not sure.", {"ground_truth": "1"}, 0.0),
]


@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    [c[1:] for c in RULE_CASES],
    ids=[c[0] for c in RULE_CASES],
)
def test_rules(
    client: RewardClient, judge: FakeOpenAI, response: str, reference: dict, expected: float
) -> None:
    result = client.score("stem", response, reference)
    assert (result.reward, result.status) == (expected, "ok"), result.detail
    assert judge.requests == []  # rules settled it (or judging was not asked for)


def test_numbers_that_differ_are_settled_without_the_judge(
    client: RewardClient, judge: FakeOpenAI
) -> None:
    result = client.score("stem", boxed("12"), {"ground_truth": "9.8", "judge": True})
    assert result.reward == 0.0 and judge.requests == []


def test_judge_decides_free_text(client: RewardClient, judge: FakeOpenAI) -> None:
    judge.script = lambda body: verdict(True, "both name passive transport")
    reference = {"ground_truth": "passive diffusion", "judge": True, "question": "How?"}
    result = client.score("stem", boxed("diffusion down the gradient"), reference)
    assert result.reward == 1.0 and result.metrics["judged"] is True
    assert result.metrics["judge_reason"] == "both name passive transport"
    [request] = judge.requests
    assert request["model"] == "judge-model"
    assert "passive diffusion" in request["messages"][-1]["content"]
    judge.script = lambda body: verdict(False, "different process")
    result = client.score("stem", boxed("active transport"), reference)
    assert result.reward == 0.0 and result.metrics["judge_reason"] == "different process"


def test_judge_verdicts_are_cached(client: RewardClient, judge: FakeOpenAI) -> None:
    reference = {"ground_truth": "a catalyst", "judge": True}
    results = [
        client.score("stem", boxed("an enzyme acting as catalyst"), reference) for _ in range(3)
    ]
    assert [r.reward for r in results] == [1.0, 1.0, 1.0]
    assert len(judge.requests) <= 2  # one per worker process at most


def test_judge_retries_429_and_500(client: RewardClient, judge: FakeOpenAI) -> None:
    replies = itertools.chain(
        [Reply("slow down", 429, {"retry-after": "0.1"}), Reply("oops", 500)],
        itertools.repeat(verdict(True)),
    )
    judge.script = lambda body: next(replies)
    result = client.score(
        "stem", boxed("photosynthesis"), {"ground_truth": "light reactions", "judge": True}
    )
    assert (result.reward, result.status) == (1.0, "ok")
    assert len(judge.requests) == 3


def test_unreachable_or_failing_judge_gives_error(client: RewardClient, judge: FakeOpenAI) -> None:
    judge.script = lambda body: Reply("down", 503)
    result = client.score("stem", boxed("entropy"), {"ground_truth": "disorder", "judge": True})
    assert (result.reward, result.status) == (0.0, "error")
    assert "judge unavailable after 3 attempts: HTTP 503" in result.detail
    assert not result.valid  # the trainer masks it


def test_slow_judge_times_out_into_error(client: RewardClient, judge: FakeOpenAI) -> None:
    judge.script = lambda body: Reply(delay_s=1.0)
    result = client.score("stem", boxed("inertia"), {"ground_truth": "mass", "judge": True})
    assert (result.reward, result.status) == (0.0, "error")
    assert "no answer within 0.5 s" in result.detail


def test_judge_reply_that_cannot_be_parsed_is_an_error(
    client: RewardClient, judge: FakeOpenAI
) -> None:
    judge.script = lambda body: Reply("I would rather not say.")
    result = client.score("stem", boxed("gravity"), {"ground_truth": "weight", "judge": True})
    assert result.status == "error" and "unparsable judge reply" in result.detail
