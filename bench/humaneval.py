"""The HumanEval problems (tests/data/humaneval, MIT) as code-domain requests, for the tests
and the benchmarks."""

from __future__ import annotations

import ast
import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

DATA = (
    Path(__file__).resolve().parent.parent / "tests" / "data" / "humaneval" / "HumanEval.jsonl.gz"
)


@cache
def problems() -> list[dict]:
    with gzip.open(DATA, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def request(problem: dict, completion: str) -> dict:
    """A /v1/score body: the model's answer is the full function in a fenced block."""
    return {
        "id": problem["task_id"],
        "domain": "code",
        "response": f"<think>...</think>\n```python\n{problem['prompt']}{completion}```\n",
        "reference": {
            "assert_code": problem["test"],
            "fn_name": problem["entry_point"],
        },
    }


def canonical(problem: dict) -> dict:
    return request(problem, problem["canonical_solution"])


def broken(problem: dict) -> dict:
    """The canonical solution with its result replaced by a wrong one of the same shape."""
    body = problem["canonical_solution"]
    name = problem["entry_point"]
    wrapper = (
        f"\n\n_original_{name} = {name}\n\n"
        f"def {name}(*args, **kwargs):\n"
        f"    result = _original_{name}(*args, **kwargs)\n"
        f"    return _corrupt(result)\n\n"
        "def _corrupt(value):\n"
        "    if isinstance(value, bool):\n"
        "        return not value\n"
        "    if isinstance(value, (int, float)):\n"
        "        return value + 1\n"
        "    if isinstance(value, str):\n"
        "        return value + 'x'\n"
        "    if isinstance(value, (list, tuple)):\n"
        "        return type(value)(list(value) + [None])\n"
        "    return 'wrong'\n"
    )
    return request(problem, body + wrapper)


def call_tests(problem: dict) -> list[dict[str, Any]] | None:
    """The problem's ``assert candidate(ARGS) == EXPECTED`` checks as call-based tests
    (``{"input": JSON args, "output": JSON value}``), the format of APPS/PRIME data; None when
    any check has another shape (about a tenth of HumanEval)."""
    tree = ast.parse(problem["test"])
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    tests = []
    for node in check.body:
        if not any(isinstance(n, ast.Name) and n.id == "candidate" for n in ast.walk(node)):
            continue
        if not isinstance(node, ast.Assert) or not isinstance(node.test, ast.Compare):
            return None
        compare = node.test
        call = compare.left
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "candidate"
            and len(compare.ops) == 1
            and isinstance(compare.ops[0], ast.Eq)
            and not call.keywords
        ):
            return None
        try:
            args = [ast.literal_eval(a) for a in call.args]
            expected = ast.literal_eval(compare.comparators[0])
            tests.append({"input": json.dumps(args), "output": json.dumps(expected)})
        except (ValueError, TypeError, SyntaxError):
            return None
    return tests or None


def call_request(problem: dict, tests: list[dict[str, Any]]) -> dict:
    """The canonical solution against ``call_tests`` instead of the assertion code."""
    body = request(problem, problem["canonical_solution"])
    body["reference"] = {"tests": tests, "fn_name": problem["entry_point"]}
    return body
