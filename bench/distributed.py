"""Distributed mode under load: gateway + Redis + workers against the embedded gateway.

1. A mixed-domain load (math, code, stem, reasoning_gym, ifeval) of ``total`` requests, sent
   on one gRPC stream with a bounded window, as a trainer does: once to ``serve`` with its
   embedded workers, once to ``serve --redis-url`` with a ``worker`` process of the same size.
   Every request must come back ``ok`` (no loss) with the same reward in both modes.
2. The fixed cost per request: sequential unary calls of a no-op verifier in both modes.
3. Scaling: a CPU-bound domain (spin, math, code) with one worker process and with two, in
   turns; and the same work called directly in one process and in two (the host's ceiling).
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import random
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import humaneval
from bench.domains import (
    ifeval_samples,
    pool_pass,
    rg_samples,
    score_batches,
    stem_samples,
    verifier_direct,
    warm_verifier,
)
from bench.gateway import percentile
from bench.math_data import iter_math_samples, math_samples
from bench.redis_server import RedisServer
from bench.service import ServiceProcess
from trainer.client import AsyncRewardClient, RewardClient, build_request

# Shares of the mixed load (roughly the reference recipe's training mix, by samples).
MIX = {"math": 0.25, "code": 0.10, "stem": 0.15, "reasoning_gym": 0.35, "ifeval": 0.15}
WINDOW = 4096  # requests in flight, as a trainer streaming a rollout batch would have
# CPU time each request of the benchmark's ``spin`` verifier burns: a verifier whose cost is
# fixed in CPU time, so its scaling row does not move with the host's speed as math's does.
SPIN_MS = 10.0
# Scaling passes: one worker, two, one, two, ..., one (SCALING_ROUNDS two-worker passes).
SCALING_ROUNDS = 3
# The mixed load is sent in this many slices, each to embedded and to distributed mode in turns.
MIXED_SLICES = 10

_Pass = tuple[float, float]  # (requests/s, busy cores of the whole machine)
_Requests = Callable[[], list[dict[str, Any]]]  # the requests of the next pass


def queue_keys() -> dict[str, str]:
    """The environment that gives a gateway and its workers one fresh queue key: distributed
    mode signs jobs and results, and the benchmark measures that cost too."""
    return {"REWARD_SERVICE_QUEUE_KEYS": f"bench={secrets.token_hex(32)}"}


def mixed_requests(total: int, seed: int) -> list[dict[str, Any]]:
    """``total`` requests in a shuffled domain mix; distinct where the domain caches."""
    rng = random.Random(seed)
    counts = {domain: int(total * share) for domain, share in MIX.items()}
    counts["reasoning_gym"] += total - sum(counts.values())
    requests: list[dict[str, Any]] = []
    for response, truth in math_samples(counts["math"], seed):
        requests.append(
            {"domain": "math", "response": response, "reference": {"ground_truth": truth}}
        )
    code = [humaneval.canonical(p) for p in humaneval.problems()]
    code += [humaneval.broken(p) for p in humaneval.problems()]
    requests += [dict(code[i % len(code)]) for i in range(counts["code"])]
    for response, reference in stem_samples(counts["stem"], seed):
        requests.append({"domain": "stem", "response": response, "reference": reference})
    logic = rg_samples(per_task=40, seed=seed)
    for i in range(counts["reasoning_gym"]):
        task, answer, entry = logic[i % len(logic)]
        requests.append(
            {
                "domain": "reasoning_gym",
                "response": f"<think>...</think><answer>{answer}</answer>",
                "reference": {"dataset": task, "entry": entry},
            }
        )
    instructions = ifeval_samples()
    for i in range(counts["ifeval"]):
        response, reference = instructions[i % len(instructions)]
        requests.append({"domain": "ifeval", "response": response, "reference": reference})
    rng.shuffle(requests)
    for index, request in enumerate(requests):
        request["id"] = str(index)
    return requests


async def run_load(target: str, requests: list[dict[str, Any]], run: str) -> _Load:
    """Stream ``requests`` with at most ``WINDOW`` in flight; seconds, latencies, results. Ids
    get the prefix ``run``: a request sent again under the same id would be answered from the
    result Redis keeps for retries, not scored."""
    sent = [0.0] * len(requests)
    latency = [0.0] * len(requests)
    results: list[Any] = [None] * len(requests)
    gate = asyncio.Semaphore(WINDOW)
    async with AsyncRewardClient(target) as client, client.session() as session:
        started = time.perf_counter()

        def done(index: int, future: asyncio.Future[Any]) -> None:
            latency[index] = time.perf_counter() - sent[index]
            results[index] = future.result()
            gate.release()

        for index, request in enumerate(requests):
            await gate.acquire()
            sent[index] = time.perf_counter()
            future = session.submit(
                request["domain"],
                request["response"],
                request["reference"],
                id=f"{run}/{request['id']}",
            )
            future.add_done_callback(lambda f, i=index: done(i, f))
    elapsed = time.perf_counter() - started
    return _Load(elapsed, latency, results, [len(requests) / elapsed])


@dataclass
class _Load:
    """What one or more loads through the same service took and gave, in request order."""

    seconds: float
    latency_s: list[float]
    results: list[Any]
    part_rates: list[float]  # requests/s of each load that was added up

    def __add__(self, other: _Load) -> _Load:
        return _Load(
            self.seconds + other.seconds,
            self.latency_s + other.latency_s,
            self.results + other.results,
            self.part_rates + other.part_rates,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "per_s": len(self.results) / self.seconds,
            "slices_per_s": self.part_rates,
            "seconds": self.seconds,
            "latency_ms": {
                q: 1e3 * percentile(self.latency_s, p)
                for q, p in (("p50", 50), ("p90", 90), ("p99", 99))
            },
            "statuses": dict(Counter(r.status for r in self.results)),
            "failures": [
                f"{r.id}: {r.status} {r.detail}" for r in self.results if r.status != "ok"
            ][:5],
        }


def _unary_latencies_s(target: str, calls: int) -> list[float]:
    """``calls`` sequential unary calls of the no-op verifier, each one's time."""
    with RewardClient(target) as client:
        for _ in range(20):  # a new channel: connect and warm up first
            client.score("noop", "x", {})
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            client.score("noop", "x", {})
            times.append(time.perf_counter() - started)
    return times


def _in_turns(modes: Sequence[str], rounds: int, measure: Callable[[str, int], None]) -> None:
    """``measure(mode, round)`` for every mode in every round, in the order A B, B A, A B, ...:
    a drift of the host's speed over the rounds falls on every mode alike."""
    for index in range(rounds):
        for mode in modes if index % 2 == 0 else list(reversed(modes)):
            measure(mode, index)


def _mixed(workers: int, total: int, calls: int) -> dict[str, Any]:
    """Embedded and distributed mode, both running, take turns at slices of the load (and of
    the unary calls): measured one after the other, they would also measure how the host's
    speed changed in between, which on this virtual machine is tens of percent."""
    requests = mixed_requests(total, seed=11)
    warmup = requests[: min(len(requests), 3000)]
    size = -(-len(requests) // MIXED_SLICES)
    slices = [requests[i : i + size] for i in range(0, len(requests), size)]
    loads: dict[str, _Load] = {}
    unary: dict[str, list[float]] = {}
    keys = queue_keys()
    with RedisServer() as redis_server:
        url = ["--redis-url", redis_server.url]
        with (
            ServiceProcess(workers=workers) as embedded,
            ServiceProcess(workers=1, extra_args=url, env=keys) as gateway,
            ServiceProcess(workers=workers, extra_args=url, command="worker", env=keys),
        ):
            targets = {"embedded": embedded.grpc_target, "distributed": gateway.grpc_target}
            for target in targets.values():
                asyncio.run(run_load(target, warmup, "warm-up"))

            def load(mode: str, index: int) -> None:
                outcome = asyncio.run(run_load(targets[mode], slices[index], "timed"))
                loads[mode] = loads[mode] + outcome if mode in loads else outcome

            def unary_calls(mode: str, index: int) -> None:
                unary.setdefault(mode, []).extend(
                    _unary_latencies_s(targets[mode], calls // MIXED_SLICES)
                )

            _in_turns(list(targets), len(slices), load)
            _in_turns(list(targets), MIXED_SLICES, unary_calls)
            client = redis_server.client()
            leftovers = {
                key.decode(): client.xlen(key)
                for pattern in ("reward:jobs:*", "reward:dead:*")
                for key in client.scan_iter(pattern)
                if client.xlen(key)
            }
    differing = sum(
        1
        for a, b in zip(loads["embedded"].results, loads["distributed"].results, strict=True)
        if a.reward != b.reward
    )
    return {
        "requests": total,
        "mix": MIX,
        "window": WINDOW,
        "workers": workers,
        "slices": len(slices),
        "embedded": loads["embedded"].summary(),
        "distributed": loads["distributed"].summary(),
        "rewards_differing": differing,
        "redis_leftovers": leftovers,
        "unary_noop_p50_ms": {
            mode: 1e3 * statistics.median(times) for mode, times in unary.items()
        },
    }


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _busy_while(run: Callable[[], float]) -> _Pass:
    """(what ``run`` returns: a rate, CPU cores kept busy on the whole machine meanwhile)."""
    busy_before, total_before = _cpu_jiffies()
    rate = run()
    busy_after, total_after = _cpu_jiffies()
    cores = (os.cpu_count() or 1) * (busy_after - busy_before) / (total_after - total_before)
    return rate, cores


def _batch_pass(target: str, requests: list[dict[str, Any]], run: str) -> _Pass:
    """(requests/s, busy cores) of one pass of ``requests`` as ``ScoreBatch`` calls of 256,
    two in flight, as a trainer scoring whole batches sends them. Ids get the prefix ``run``:
    a request sent again under the same id would be answered from the result Redis keeps for
    retries, not scored."""
    bodies = [
        build_request(r["domain"], r["response"], r["reference"], id=f"{run}/{r['id']}")
        for r in requests
    ]

    async def one_pass() -> float:
        async with AsyncRewardClient(target) as client:
            return await score_batches(client, bodies, 256)

    return _busy_while(lambda: asyncio.run(one_pass()))


def _alternate(one: Callable[[], _Pass], two: Callable[[], _Pass]) -> dict[str, Any]:
    """Passes with one process and with two, taking turns (one, two, one, ... one), so that
    a drift of the host's speed, which on this virtual machine is tens of percent within a
    minute, falls on both sides of the ratio instead of on one."""
    ones: list[_Pass] = []
    twos: list[_Pass] = []
    for _ in range(SCALING_ROUNDS):
        ones.append(one())
        twos.append(two())
    ones.append(one())
    one_rate = statistics.fmean(rate for rate, _ in ones)
    two_rate = statistics.fmean(rate for rate, _ in twos)
    return {
        "one_per_s": one_rate,
        "two_per_s": two_rate,
        "one_passes_per_s": [rate for rate, _ in ones],
        "two_passes_per_s": [rate for rate, _ in twos],
        "ratio": two_rate / one_rate,
        "one_busy_cores": statistics.fmean(cores for _, cores in ones),
        "two_busy_cores": statistics.fmean(cores for _, cores in twos),
    }


def _direct_pass(domain: str, requests: list[dict[str, Any]], processes: int) -> _Pass:
    """(requests/s, busy cores) of ``domain``'s verifier called directly in ``processes``
    processes (each with its own sandbox, for code): no gateway, no Redis, no worker main
    process."""
    context = multiprocessing.get_context("forkserver")
    with context.Pool(processes, initializer=warm_verifier, initargs=(domain,)) as pool:
        pool.map(verifier_direct, requests[: 4 * processes], chunksize=1)
        return _busy_while(lambda: pool_pass(pool, verifier_direct, requests, 4))


def _direct_scaling(domain: str, next_pass: _Requests) -> dict[str, Any]:
    """What this machine itself gives when the same work runs in two processes instead of
    one: the ceiling of any service's scaling here (two busy cores of a virtual machine do not
    each run as fast as one alone, and code's sandbox processes run beside their caller)."""
    return _alternate(
        lambda: _direct_pass(domain, next_pass(), 1), lambda: _direct_pass(domain, next_pass(), 2)
    )


def _new_math_passes(size: int) -> _Requests:
    """Math passes of ``size`` samples that no earlier pass sent: math-verify caches what it
    parsed, so a process that has seen a pass's inputs before (the first worker, which runs
    every pass) would score them faster than one that has not (the second)."""
    samples = enumerate(iter_math_samples(seed=21))
    return lambda: [
        {"id": str(i), "domain": "math", "response": r, "reference": {"ground_truth": t}}
        for i, (r, t) in itertools.islice(samples, size)
    ]


def _scaling(domain: str, next_pass: _Requests) -> dict[str, Any]:
    """Rates with one worker process and with a second one started beside it (same consumer
    group), taking turns (see :func:`_alternate`); then the direct ceiling of the same work.
    ``next_pass`` gives the requests of each pass."""
    with RedisServer() as redis_server:
        extra = ["--redis-url", redis_server.url, "--domains", domain]
        keys = queue_keys()
        with (
            ServiceProcess(workers=1, extra_args=extra, env=keys) as gateway,
            ServiceProcess(workers=1, extra_args=extra, command="worker", env=keys),
        ):
            target = gateway.grpc_target
            passes = itertools.count()
            _batch_pass(target, next_pass(), "warm-up")

            def one() -> _Pass:
                return _batch_pass(target, next_pass(), f"pass-{next(passes)}")

            def two() -> _Pass:
                with ServiceProcess(workers=1, extra_args=extra, command="worker", env=keys):
                    warm_up = next_pass()
                    _batch_pass(target, warm_up[: len(warm_up) // 4], f"pass-{next(passes)}")
                    return _batch_pass(target, next_pass(), f"pass-{next(passes)}")

            service = _alternate(one, two)
    return {**service, "direct": _direct_scaling(domain, next_pass)}


def bench_distributed(workers: int, quick: bool) -> dict[str, Any]:
    total = 10_000 if quick else 100_000
    result = _mixed(workers, total, calls=200 if quick else 1000)
    code = [
        {**humaneval.canonical(p), "id": f"{i}-{p['task_id']}"}
        for i in range(2 if quick else 20)
        for p in humaneval.problems()
    ]
    spin = [
        {"id": str(i), "domain": "spin", "response": "x", "reference": {"ms": SPIN_MS}}
        for i in range(500 if quick else 1500)
    ]
    result["spin_ms"] = SPIN_MS
    result["scaling"] = {
        "spin": _scaling("spin", lambda: spin),
        "math": _scaling("math", _new_math_passes(1000 if quick else 4000)),
        # The code verifier keeps nothing between submissions: its passes may repeat.
        "code": _scaling("code", lambda: code),
    }
    return result
