"""Per-domain throughput through the service against the underlying scoring called directly
in the same number of processes: reasoning_gym (whose scorers take microseconds, so this
measures the service's own per-request cost) and ifeval."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import time
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


def _direct(samples: list[tuple[str, str, dict[str, Any]]], workers: int) -> float:
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        pool.map(_direct_score, samples, chunksize=256)  # warm-up: scorers built, caches
        rates = []
        for _ in range(3):
            started = time.perf_counter()
            pool.map(_direct_score, samples, chunksize=256)
            rates.append(len(samples) / (time.perf_counter() - started))
        return statistics.median(rates)


async def _through_service(target: str, requests: list[Any], batch: int, rounds: int = 3) -> float:
    """Steady-state rewards/s: one full pass to warm up (worker cost estimates, caches,
    allocator), then the median of ``rounds`` timed passes."""
    chunks = [requests[i : i + batch] for i in range(0, len(requests), batch)]
    async with AsyncRewardClient(target) as client:
        gate = asyncio.Semaphore(2)

        async def send(chunk: list[Any]) -> None:
            async with gate:
                results = await client.score_batch(chunk)
            failed = [r for r in results if r.status != "ok"]
            if failed:
                raise RuntimeError(f"{len(failed)} reasoning_gym requests failed: {failed[0]}")

        await asyncio.gather(*(send(c) for c in chunks))  # warm-up
        rates = []
        for _ in range(rounds):
            started = time.perf_counter()
            await asyncio.gather(*(send(c) for c in chunks))
            rates.append(len(requests) / (time.perf_counter() - started))
        return statistics.median(rates)


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
    with ServiceProcess(workers=workers, extra_args=["--domains", "reasoning_gym"]) as service:
        service_rate = asyncio.run(_through_service(service.grpc_target, requests, 256))
    direct_rate = _direct(samples, workers)
    return {
        "workers": workers,
        "requests": len(requests),
        "tasks": len(RG_TASKS),
        "batch": 256,
        "service_per_s": service_rate,
        "direct_per_s": direct_rate,
    }


# ------------------------------------------------------------------------------- ifeval

IFEVAL_DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "ifeval"
_ifeval: Any = None


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


def _ifeval_direct(item: tuple[str, dict[str, Any]]) -> float:
    global _ifeval
    from reward_service.verifiers.base import VerifierOptions
    from reward_service.verifiers.ifeval import IfevalReference, IfevalVerifier

    if _ifeval is None:
        _ifeval = IfevalVerifier()
        _ifeval.setup()
    response, reference = item
    return _ifeval.verify(
        response, IfevalReference.model_validate(reference), VerifierOptions()
    ).reward


def bench_ifeval(workers: int, quick: bool) -> dict[str, Any]:
    """The published GPT-4 responses (540 prompts) through the service, batches of 256, vs the
    verifier's own function in a process pool of the same size. Each pass goes over them four
    times: a pass of under half a second left the medians at the mercy of the host's noise."""
    samples = ifeval_samples() * (1 if quick else 4)
    requests = [build_request("ifeval", response, ref) for response, ref in samples]
    with ServiceProcess(workers=workers, extra_args=["--domains", "ifeval"]) as service:
        service_rate = asyncio.run(_through_service(service.grpc_target, requests, 256))
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        pool.map(_ifeval_direct, samples, chunksize=16)  # warm-up, as for the service
        rates = []
        for _ in range(3):
            started = time.perf_counter()
            pool.map(_ifeval_direct, samples, chunksize=16)
            rates.append(len(samples) / (time.perf_counter() - started))
        direct_rate = statistics.median(rates)
    return {
        "workers": workers,
        "requests": len(requests),
        "batch": 256,
        "service_per_s": service_rate,
        "direct_per_s": direct_rate,
    }
