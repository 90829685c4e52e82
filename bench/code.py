"""Code-domain benchmark: the 164 HumanEval canonical solutions through the running service
(throughput, latency, sandbox overhead), side by side with verl's in-process ``prime_code``
scorer on the same problems in its input/output format (when a verl install is given)."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import humaneval
from bench.gateway import percentile
from bench.service import ServiceProcess
from reward_service.verifiers._literal_checks import literal_checks
from trainer.client import AsyncRewardClient, RewardClient

VERL_SCRIPT = Path(__file__).with_name("verl_prime_code.py")


def own_run_time(problem: dict) -> float:
    """Seconds the problem's tests take in this process, without any sandbox (median of 3)."""
    source = problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"]
    times = []
    for _ in range(3):
        namespace: dict[str, Any] = {"__name__": "humaneval"}
        started = time.perf_counter()
        exec(compile(source, problem["task_id"], "exec"), namespace)
        namespace["check"](namespace[problem["entry_point"]])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _throughput(target: str, requests: list[dict]) -> tuple[float, list[float]]:
    """Submit everything on one stream at once; rate and per-request latencies."""
    async with AsyncRewardClient(target) as client:
        started = time.perf_counter()
        submitted: dict[str, float] = {}
        finished: dict[str, float] = {}
        async with client.session() as session:
            futures = []
            for index, body in enumerate(requests):
                request_id = f"{body['id']}#{index}"
                submitted[request_id] = time.perf_counter()
                future = session.submit(
                    body["domain"], body["response"], body["reference"], id=request_id
                )
                future.add_done_callback(
                    lambda f, rid=request_id: finished.__setitem__(rid, time.perf_counter())
                )
                futures.append(future)
        elapsed = time.perf_counter() - started
        bad = [f.result() for f in futures if f.result().reward != 1.0]
        if bad:
            raise RuntimeError(f"{len(bad)} canonical solutions did not score 1.0: {bad[0]}")
    latencies = [finished[r] - submitted[r] for r in submitted]
    return len(requests) / elapsed, latencies


def _verl(verl_python: str, workers: int, rounds: int) -> dict[str, Any]:
    done = subprocess.run(
        [verl_python, str(VERL_SCRIPT), "--workers", str(workers), "--rounds", str(rounds)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_code(workers: int, quick: bool, verl_python: str | None = None) -> dict[str, Any]:
    problems = humaneval.problems()
    rounds = 1 if quick else 5
    assert_requests = [humaneval.canonical(p) for p in problems]
    converted = [(p, humaneval.call_tests(p)) for p in problems]
    call_requests = [humaneval.call_request(p, t) for p, t in converted if t]
    own = {p["task_id"]: own_run_time(p) for p in problems}
    out: dict[str, Any] = {
        "workers": workers,
        "rounds": rounds,
        "problems": len(problems),
        "converted_problems": len(call_requests),
        "literal_check_problems": sum(literal_checks(p["test"]) is not None for p in problems),
        "own_run_time_total_s": sum(own.values()),
    }
    with ServiceProcess(workers=workers, extra_args=["--domains", "code"]) as service:
        asyncio.run(_throughput(service.grpc_target, assert_requests))  # warm-up
        rate, latencies = asyncio.run(_throughput(service.grpc_target, assert_requests * rounds))
        out["assert_per_s"] = rate
        out["loaded_latency_p50_ms"] = percentile(latencies, 50) * 1e3
        out["loaded_latency_p99_ms"] = percentile(latencies, 99) * 1e3
        rate, _ = asyncio.run(_throughput(service.grpc_target, call_requests * rounds))
        out["call_per_s"] = rate
        sequential, overheads = [], []
        with RewardClient(service.grpc_target) as client:
            for body, problem in zip(assert_requests, problems, strict=True):
                started = time.perf_counter()
                client.score(body["domain"], body["response"], body["reference"])
                latency = time.perf_counter() - started
                sequential.append(latency)
                overheads.append(latency - own[problem["task_id"]])
        out["latency_p50_ms"] = percentile(sequential, 50) * 1e3
        out["latency_p99_ms"] = percentile(sequential, 99) * 1e3
        out["overhead_p50_ms"] = percentile(overheads, 50) * 1e3
        out["overhead_p99_ms"] = percentile(overheads, 99) * 1e3
    if verl_python:
        out["verl"] = _verl(verl_python, workers, rounds)
        if "per_s" in out["verl"]:
            out["speedup_vs_verl"] = out["call_per_s"] / out["verl"]["per_s"]
    else:
        out["verl"] = {"error": "not run: pass --verl-python (a Python with verl installed)"}
    print(json.dumps(out), file=sys.stderr)
    return out
