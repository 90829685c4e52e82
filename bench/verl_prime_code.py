"""Run verl's ``prime_code`` scorer on HumanEval (run by ``bench/code.py`` with a Python that
has verl installed; prints one JSON line). Stand-alone on purpose: verl and its torch stay out
of the service's environment."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import humaneval


def _score(item: tuple[str, dict]) -> float:
    from verl.utils.reward_score import prime_code

    completion, tests = item
    score, _ = prime_code.compute_score(completion, tests, continuous=True)
    return float(score)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    items = []
    for problem in humaneval.problems():
        tests = humaneval.call_tests(problem)
        if not tests:
            continue
        completion = humaneval.canonical(problem)["response"]
        items.append(
            (
                completion,
                json.dumps(
                    {
                        "fn_name": problem["entry_point"],
                        # APPS call-based format: one JSON argument per line, JSON output
                        "inputs": [
                            "\n".join(json.dumps(a) for a in json.loads(t["input"])) for t in tests
                        ],
                        "outputs": [t["output"] for t in tests],
                    }
                ),
            )
        )
    import verl

    # prime_code starts a process per check, which multiprocessing.Pool's daemonic workers may
    # not do; ProcessPoolExecutor's workers may.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        list(pool.map(_score, items[: args.workers]))  # imports and warm-up
        started = time.perf_counter()
        scores = list(pool.map(_score, items * args.rounds))
        elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "verl_version": verl.__version__,
                "problems": len(items),
                "per_s": len(scores) / elapsed,
                "mean_score": sum(scores) / len(scores),
            }
        )
    )


if __name__ == "__main__":
    main()
