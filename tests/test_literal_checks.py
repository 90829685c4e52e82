"""Assertion tests that are literal calls run as calls (no checker process): which test code
qualifies, and that the reward is the same as through the checker for every HumanEval problem
and for solutions that try to tell the two paths apart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import humaneval
from reward_service.verifiers import code as code_module
from reward_service.verifiers._literal_checks import LiteralCheck, literal_checks
from reward_service.verifiers.code import CodeOptions, CodeReference, CodeVerifier


def test_humaneval_shaped_checks_become_calls() -> None:
    checks = literal_checks(
        'METADATA = {"author": "jt"}\n\n'
        "def check(candidate):\n"
        '    """Simple cases."""\n'
        "    assert candidate([1, 2], (3,)) == (1, 2, 3)\n"
        "    assert -1.5 == candidate({1: 'a'}, None)\n"
        "    assert candidate('x') is True\n"
        "    assert not candidate('')\n"
        "    assert candidate(set())\n"
        '    assert True, "This prints if this assert fails (good for debugging!)"\n'
    )
    assert checks is not None
    assert [c.kind for c in checks] == ["equals", "equals", "is", "falsy", "truthy"]
    assert checks[0].expected == (1, 2, 3) and checks[1].expected == -1.5


@pytest.mark.parametrize(
    "test_code",
    [
        "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == x\n",
        "import math\ndef check(candidate):\n    assert candidate(1) == 1\n",
        "def helper(x):\n    return x\ndef check(candidate):\n    assert candidate(1) == 1\n",
        "def check(candidate):\n    assert abs(candidate(1.0) - 0.5) < 1e-6\n",
        "def check(candidate):\n    assert candidate(x=1) == 1\n",
        "def check(candidate):\n    assert candidate(...) == 1\n",  # no plain-data form
        "def check(candidate):\n    assert candidate(3 + 5) == 8\n",
        "def check(candidate):\n    assert candidate(1) == 1, str(candidate(1))\n",
        "def check(candidate):\n    assert candidate(1) is 1\n",
        "def check(candidate):\n    assert candidate(1) < 2\n",
        "def check(candidate):\n    print('checking')\n    assert candidate(1) == 1\n",
        # no counted statement: the checker scores that as one passed test, so it keeps it
        "def check(candidate):\n    assert True\n",
        "def check(f):\n    assert f(1) == 1\n",
        "assert remove_Occ('hello', 'l') == 'heo'\n",  # MBPP style: the checker's
        "def check(candidate):\n    assert candidate(1) == 1\nassert check\n",
        "def check(candidate:\n",
    ],
)
def test_anything_else_stays_with_the_checker(test_code: str) -> None:
    assert literal_checks(test_code) is None


def test_a_check_compares_plain_values_as_the_checker_does() -> None:
    assert LiteralCheck("[]", "equals", (1, 2)).passed((1, 2))
    assert not LiteralCheck("[]", "equals", (1, 2)).passed([1, 2])  # a list is not a tuple
    assert LiteralCheck("[]", "equals", 1).passed(1.0) and LiteralCheck("[]", "equals", 1).passed(
        True
    )
    assert not LiteralCheck("[]", "is", True).passed(1)
    assert LiteralCheck("[]", "falsy").passed([]) and not LiteralCheck("[]", "truthy").passed(0)


@pytest.fixture(scope="module")
def verifier() -> Iterator[CodeVerifier]:
    verifier = CodeVerifier()
    verifier.setup()
    assert verifier.sandbox is not None, verifier.unavailable
    yield verifier
    verifier.sandbox.close()


def both_paths(
    verifier: CodeVerifier, monkeypatch: pytest.MonkeyPatch, response: str, reference: dict
) -> tuple[float, float]:
    """(reward as calls, reward through the checker process) of one submission."""
    parsed = CodeReference.model_validate(reference)
    assert code_module._literal_checks_of(parsed) is not None, "not a literal check"
    as_calls = verifier.verify(response, parsed, CodeOptions()).reward
    with monkeypatch.context() as patch:
        patch.setattr(code_module, "_literal_checks_of", lambda reference: None)
        in_checker = verifier.verify(response, parsed, CodeOptions()).reward
    return as_calls, in_checker


def test_humaneval_rewards_do_not_depend_on_the_path(
    verifier: CodeVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    problems = [p for p in humaneval.problems() if literal_checks(p["test"]) is not None]
    assert len(problems) >= 130
    differ = []
    for problem in problems:
        for body in (humaneval.canonical(problem), humaneval.broken(problem)):
            rewards = both_paths(verifier, monkeypatch, body["response"], body["reference"])
            if rewards[0] != rewards[1]:
                differ.append((problem["task_id"], rewards))
    assert differ == []


TESTS = (
    "def check(candidate):\n"
    "    assert candidate([1, 2]) == (1, 2)\n"
    "    assert candidate([3]) == (3,)\n"
    "    assert candidate([]) == ()\n"
)


@pytest.mark.parametrize(
    ("solution", "reward"),
    [
        ("def f(xs):\n    return tuple(xs)\n", 1.0),
        ("def f(xs):\n    return list(xs)\n", 0.0),  # a list never equals a tuple
        (  # an object claiming to equal anything cannot travel as plain data
            "class Any:\n    def __eq__(self, other):\n        return True\n"
            "def f(xs):\n    return Any()\n",
            0.0,
        ),
        (  # the process dies on the second call: the tests after it fail too
            "import os\ncalls = []\ndef f(xs):\n    calls.append(1)\n"
            "    if len(calls) == 2:\n        os._exit(0)\n    return tuple(xs)\n",
            1 / 3,
        ),
        (  # only a top-level function is the candidate, not a Solution method
            "class Solution:\n    def f(self, xs):\n        return tuple(xs)\n",
            0.0,
        ),
        ("print('all tests passed')\nraise SystemExit(0)\ndef f(xs):\n    return ()\n", 0.0),
        ("def f(xs):\n    raise ValueError(xs)\n", 0.0),
        ("def f(xs:\n", 0.0),
    ],
)
def test_tricky_solutions_score_the_same_on_both_paths(
    verifier: CodeVerifier, monkeypatch: pytest.MonkeyPatch, solution: str, reward: float
) -> None:
    reference = {"assert_code": TESTS, "fn_name": "f"}
    response = f"```python\n{solution}```"
    assert both_paths(verifier, monkeypatch, response, reference) == (
        pytest.approx(reward),
        pytest.approx(reward),
    )


def test_long_test_code_is_converted_too() -> None:
    """Longer than what is cached: parsed each time, with the same result."""
    test_code = "def check(candidate):\n" + "".join(
        f"    assert candidate({i}) == {i + 1}\n" for i in range(4000)
    )
    assert len(test_code) > 64 * 1024
    checks = literal_checks(test_code)
    assert checks is not None and len(checks) == 4000 and checks[-1].expected == 4000
    assert literal_checks(test_code) == checks
