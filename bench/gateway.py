"""Benchmarks of the service itself: math throughput against direct calls, and the gateway's
own overhead with a no-op verifier over gRPC unary, gRPC stream and HTTP."""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from typing import Any

import httpx

from bench.domains import pool_pass, verifier_direct, warm_verifier
from bench.math_data import math_samples
from bench.service import ServiceProcess
from trainer.client import AsyncRewardClient, RewardClient


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ------------------------------------------------------------------------------- direct calls


def _init_math_verify() -> None:
    import math_verify

    math_verify.verify(math_verify.parse("$1$"), math_verify.parse("$1$"))


def _bare_math_verify(sample: tuple[str, str]) -> float:
    import math_verify

    response, truth = sample
    gold = math_verify.parse(f"${truth}$")
    return 1.0 if math_verify.verify(gold, math_verify.parse(response)) else 0.0


def direct_throughput(kind: str, samples: list[tuple[str, str]], workers: int) -> float:
    """Samples per second of ``kind`` in a plain process pool: "verifier" (the math
    verifier's own function) or "math-verify" (bare ``parse`` + ``verify``)."""
    items: list[Any]
    if kind == "verifier":
        items = [
            {"domain": "math", "response": r, "reference": {"ground_truth": t}} for r, t in samples
        ]
        function, initializer, initargs = verifier_direct, warm_verifier, ("math",)
    else:
        items, function, initializer, initargs = samples, _bare_math_verify, _init_math_verify, ()
    context = multiprocessing.get_context("forkserver")
    with context.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pool.map(function, items[:workers], chunksize=1)  # all processes up
        return pool_pass(pool, function, items, 16)


# ------------------------------------------------------------------------- through the service


async def _service_throughput(
    target: str, samples: list[tuple[str, str]], batch: int, in_flight: int
) -> tuple[float, list[float]]:
    requests = [
        {"domain": "math", "response": r, "reference": {"ground_truth": t}} for r, t in samples
    ]
    chunks = [requests[i : i + batch] for i in range(0, len(requests), batch)]
    rewards: list[float] = []
    async with AsyncRewardClient(target) as client:
        gate = asyncio.Semaphore(in_flight)

        async def send(chunk: list[dict[str, Any]]) -> list[float]:
            async with gate:
                results = await client.score_batch(chunk)
            bad = [r for r in results if r.status != "ok"]
            if bad:
                raise RuntimeError(f"{len(bad)} math requests failed, e.g. {bad[0]}")
            return [r.reward for r in results]

        started = time.perf_counter()
        for part in await asyncio.gather(*(send(c) for c in chunks)):
            rewards.extend(part)
        elapsed = time.perf_counter() - started
    return len(samples) / elapsed, rewards


def bench_math(workers: int, quick: bool) -> dict[str, Any]:
    count = 512 if quick else 2048
    rounds = 1 if quick else 3
    warmup = math_samples(256, seed=1)
    results: dict[str, list[float]] = {"service": [], "verifier": [], "math-verify": []}
    with ServiceProcess(workers=workers) as service:
        asyncio.run(_service_throughput(service.grpc_target, warmup, 256, 2))
        # Each round's three paths run in turn, on the same samples: the host's speed drifts
        # within minutes, so rounds of one path measured apart from the others' would compare
        # the host's moods.
        for round_index in range(rounds):
            samples = math_samples(count, seed=100 + round_index)
            rate, _ = asyncio.run(_service_throughput(service.grpc_target, samples, 256, 2))
            results["service"].append(rate)
            results["verifier"].append(direct_throughput("verifier", samples, workers))
            results["math-verify"].append(direct_throughput("math-verify", samples, workers))
    medians = {k: statistics.median(v) for k, v in results.items()}

    def ratio(direct: str) -> float:
        pairs = zip(results["service"], results[direct], strict=True)
        return statistics.median(service / other for service, other in pairs)

    return {
        "samples_per_round": count,
        "rounds": rounds,
        "workers": workers,
        "batch": 256,
        "service_per_s": medians["service"],
        "direct_verifier_per_s": medians["verifier"],
        "direct_math_verify_per_s": medians["math-verify"],
        "ratio_vs_direct_verifier": ratio("verifier"),
        "ratio_vs_direct_math_verify": ratio("math-verify"),
    }


# ------------------------------------------------------------------------------- overhead


def bench_overhead(workers: int, quick: bool) -> dict[str, Any]:
    calls = 300 if quick else 3000
    streams = 5 if quick else 30
    out: dict[str, Any] = {"workers": workers, "calls": calls, "streams": streams}
    with ServiceProcess(workers=workers) as service:
        with RewardClient(service.grpc_target) as client:
            for _ in range(200):
                client.score("noop", "x")
            latencies = []
            for _ in range(calls):
                started = time.perf_counter()
                result = client.score("noop", "x")
                latencies.append(time.perf_counter() - started)
                assert result.status == "ok", result
            out["grpc_unary_p50_ms"] = percentile(latencies, 50) * 1e3
            out["grpc_unary_p99_ms"] = percentile(latencies, 99) * 1e3

            durations = []
            for round_index in range(streams + 2):
                started = time.perf_counter()
                with client.session() as session:
                    futures = [session.submit("noop", "x") for _ in range(1024)]
                elapsed = time.perf_counter() - started
                assert all(f.result().status == "ok" for f in futures)
                if round_index >= 2:  # the first two warm the stream path up
                    durations.append(elapsed)
            out["grpc_stream_1024_p50_ms"] = percentile(durations, 50) * 1e3
            out["grpc_stream_1024_p99_ms"] = percentile(durations, 99) * 1e3
            out["grpc_stream_1024_max_ms"] = max(durations) * 1e3

        with httpx.Client(base_url=service.http_url) as http:
            body = {"domain": "noop", "response": "x"}
            for _ in range(200):
                http.post("/v1/score", json=body)
            latencies = []
            for _ in range(calls):
                started = time.perf_counter()
                reply = http.post("/v1/score", json=body)
                latencies.append(time.perf_counter() - started)
                assert reply.status_code == 200, reply.text
            out["http_p50_ms"] = percentile(latencies, 50) * 1e3
            out["http_p99_ms"] = percentile(latencies, 99) * 1e3
    return out
