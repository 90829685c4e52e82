"""The HumanEval problems (tests/data/humaneval, MIT) as code-domain requests."""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

DATA = Path(__file__).parent / "data" / "humaneval" / "HumanEval.jsonl.gz"


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
