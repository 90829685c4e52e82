"""Per-domain throughput through the service against the underlying scoring called directly
in the same number of processes: reasoning_gym (whose scorers take microseconds, so this
measures the service's own per-request cost) and ifeval."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.service import ServiceProcess
from trainer.client import AsyncRewardClient, build_request

# Cheap, deterministic scorers that run in-process (the eval-based ones go to the sandbox and
# are measured by the code benchmark's machinery instead).
RG_TASKS = [
    "basic_arithmetic", "leg_counting", "letter_counting", "word_sorting", "chain_sum",
    "gcd", "lcm", "fraction_simplification", "number_sorting", "spell_backward",
    "caesar_cipher", "count_bits", "decimal_arithmetic", "family_relationships",
    "number_filtering", "palindrome_generation", "base_conversion", "time_intervals",
    "word_ladder", "sentence_reordering",
]  # fmt: skip
_datasets: dict[str, Any] = {}


def rg_samples(per_task: int, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(task, answer, entry) triples: the gold answer for two thirds, a wrong one otherwise."""
    from reasoning_gym.factory import create_dataset

    samples = []
    for task in RG_TASKS:
        dataset = create_dataset(task, size=per_task, seed=seed)
        for index in range(per_task):
            entry = dataset[index]
            answer = str(entry["answer"]) if index % 3 else "wrong"
            samples.append((task, answer, json.loads(json.dumps(entry, default=str))))
    return samples


def _direct_score(item: tuple[str, str, dict[str, Any]]) -> float:
    from reasoning_gym.factory import create_dataset

    task, answer, entry = item
    if task not in _datasets:
        _datasets[task] = create_dataset(task, size=1)
    return float(_datasets[task].score_answer(answer, entry))


async def score_batches(client: AsyncRewardClient, requests: list[Any], batch: int) -> float:
    """Rewards/s of one pass over ``requests``: batches of ``batch``, two in flight."""
    chunks = [requests[i : i + batch] for i in range(0, len(requests), batch)]
    gate = asyncio.Semaphore(2)

    async def send(chunk: list[Any]) -> None:
        async with gate:
            results = await client.score_batch(chunk)
        failed = [r for r in results if r.status != "ok"]
        if failed:
            raise RuntimeError(f"{len(failed)} requests failed, e.g. {failed[0]}")

    started = time.perf_counter()
    await asyncio.gather(*(send(c) for c in chunks))
    return len(requests) / (time.perf_counter() - started)


def pool_pass(pool: Any, function: Callable[[Any], float], items: list[Any], chunk: int) -> float:
    """Items/s of one pass of ``function`` over ``items`` in ``pool``."""
    started = time.perf_counter()
    pool.map(function, items, chunksize=chunk)
    return len(items) / (time.perf_counter() - started)


async def interleaved(
    service_pass: Callable[[], Awaitable[float]], direct_pass: Callable[[], float], rounds: int
) -> dict[str, Any]:
    """One warm-up pass of each (caches, cost estimates, allocators), then ``rounds`` timed
    passes of the service and of the direct calls in turn. Taking turns matters here: this
    virtual machine's speed drifts by tens of percent within seconds, so passes measured a
    minute apart compare the host's moods, not the two paths. Medians of the rates, and the
    median of the per-round ratios. (A direct pass blocks the event loop: the service's
    client has nothing in flight meanwhile.)"""
    await service_pass()
    direct_pass()
    service, direct = [], []
    for _ in range(rounds):
        service.append(await service_pass())
        direct.append(direct_pass())
    return {
        "service_per_s": statistics.median(service),
        "direct_per_s": statistics.median(direct),
        "ratio": statistics.median(s / d for s, d in zip(service, direct, strict=True)),
        "service_rounds_per_s": service,
        "direct_rounds_per_s": direct,
    }


_verifiers: dict[str, Any] = {}


def warm_verifier(domain: str) -> Any:
    """This process's verifier of ``domain``, made and set up on first use (also a pool
    initializer, so that no timed pass pays for a set-up, a sandbox start included)."""
    verifier = _verifiers.get(domain)
    if verifier is None:
        from reward_service.verifiers.registry import get_verifier_class, load_verifiers

        load_verifiers(["bench.noop_verifier"])
        verifier = _verifiers[domain] = get_verifier_class(domain)()
        verifier.setup()
    return verifier


def verifier_direct(request: dict[str, Any]) -> float:
    """The reward of ``request`` (a request body) from its domain's verifier called in this
    process, as a worker would call it but without the service: the "direct" path."""
    verifier = warm_verifier(request["domain"])
    reference = verifier.reference_model.model_validate(request["reference"])
    options = verifier.options_model.model_validate(request.get("options") or {})
    return verifier.verify(request["response"], reference, options).reward


def service_vs_direct(
    domain: str,
    workers: int,
    requests: list[Any],
    function: Callable[[Any], float],
    samples: list[Any],
    chunk: int,
    rounds: int,
) -> dict[str, Any]:
    """:func:`interleaved` passes of ``requests`` through a ``serve --domains domain`` process
    (batches of 256) and of ``function`` over ``samples`` in a pool, both of ``workers``."""

    async def run(target: str, pool: Any) -> dict[str, Any]:
        async with AsyncRewardClient(target) as client:  # one channel for every pass
            return await interleaved(
                lambda: score_batches(client, requests, 256),
                lambda: pool_pass(pool, function, samples, chunk),
                rounds,
            )

    with (
        ServiceProcess(workers=workers, extra_args=["--domains", domain]) as service,
        multiprocessing.get_context("forkserver").Pool(workers) as pool,
    ):
        return asyncio.run(run(service.grpc_target, pool))


def bench_reasoning_gym(workers: int, quick: bool) -> dict[str, Any]:
    samples = rg_samples(per_task=50 if quick else 200, seed=5)
    requests = [
        build_request(
            "reasoning_gym",
            f"<think>...</think><answer>{answer}</answer>",
            {"dataset": task, "entry": entry},
        )
        for task, answer, entry in samples
    ]
    rounds = 3 if quick else 5
    rates = service_vs_direct(
        "reasoning_gym", workers, requests, _direct_score, samples, 256, rounds
    )
    return {
        "workers": workers,
        "requests": len(requests),
        "tasks": len(RG_TASKS),
        "batch": 256,
        "rounds": rounds,
        **rates,
    }


# ------------------------------------------------------------------------------- ifeval

IFEVAL_DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "ifeval"


def ifeval_samples() -> list[tuple[str, dict[str, Any]]]:
    """(response, reference) pairs: Google's published GPT-4 responses to the IFEval prompts."""
    prompts = {}
    with (IFEVAL_DATA / "input_data.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            prompts[row["prompt"]] = row
    samples = []
    with (IFEVAL_DATA / "input_response_data_gpt4_20231107_145030.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            source = prompts.get(row["prompt"])
            if source is None:
                continue
            reference = {
                "instruction_id_list": source["instruction_id_list"],
                "kwargs": source["kwargs"],
                "prompt": source["prompt"],
            }
            samples.append((row["response"], reference))
    return samples


def bench_ifeval(workers: int, quick: bool) -> dict[str, Any]:
    """The published GPT-4 responses (540 prompts) through the service, batches of 256, vs the
    verifier's own function in a process pool of the same size. Each pass goes over them four
    times: a pass of under half a second left the medians at the mercy of the host's noise."""
    samples = ifeval_samples() * (1 if quick else 4)
    requests = [build_request("ifeval", response, ref) for response, ref in samples]
    rounds = 3 if quick else 5
    direct = [{"domain": "ifeval", "response": r, "reference": ref} for r, ref in samples]
    rates = service_vs_direct("ifeval", workers, requests, verifier_direct, direct, 16, rounds)
    return {"workers": workers, "requests": len(requests), "batch": 256, "rounds": rounds, **rates}


# ------------------------------------------------------------------------------- stem


def stem_samples(count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """Numeric answers with units (some off by 20%) and multiple-choice letters."""
    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        wrong = rng.random() < 0.33
        if rng.random() < 0.5:
            value = rng.uniform(0.1, 1000) * 10 ** rng.randint(-6, 6)
            shown = value * (1.2 if wrong else 1.001)
            unit = rng.choice(["m/s", "J", "mol", "kg", ""])
            samples.append(
                (
                    f"<think>units check out</think>The result is \\boxed{{{shown:.5g}}} {unit}",
                    {"ground_truth": f"{value:.5g} {unit}".strip()},
                )
            )
        else:
            choices = [f"option {rng.randint(0, 10**6)}" for _ in range(4)]
            truth = rng.randrange(4)
            answer = (truth + 1) % 4 if wrong else truth
            samples.append(
                (
                    f"<think>eliminate the others</think>Answer: {'ABCD'[answer]}",
                    {"ground_truth": "ABCD"[truth], "choices": choices},
                )
            )
    return samples


def bench_stem(workers: int, quick: bool) -> dict[str, Any]:
    """Rule-matched STEM answers (numbers with units, multiple choice; no judge) through the
    service, batches of 256, vs the verifier's own function in a pool of the same size."""
    samples = stem_samples(1000 if quick else 4000, seed=31)
    requests = [build_request("stem", response, ref) for response, ref in samples]
    rounds = 3 if quick else 5
    direct = [{"domain": "stem", "response": r, "reference": ref} for r, ref in samples]
    rates = service_vs_direct("stem", workers, requests, verifier_direct, direct, 64, rounds)
    return {"workers": workers, "requests": len(requests), "batch": 256, "rounds": rounds, **rates}
