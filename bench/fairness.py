"""One client floods the service at 10x its rate limit: how much slower does another get?

The service runs as its own process (gateway and ``workers`` verifier processes) with two
clients in its clients file: ``steady`` (no limit) and ``flood`` (``FLOOD_LIMIT`` requests/s).
``steady`` sends unary calls on a fixed schedule (open loop: a slow answer does not slow the
sender) and records each call's latency, in these phases:

- ``alone``: the baseline;
- ``flood``: while ``flood``, from another process, sends ten times its rate limit on the same
  kind of schedule (the service refuses what is over the limit with RESOURCE_EXHAUSTED and
  queues the rest fairly). The flooding process runs at a lower CPU priority (nice 10): it
  stands in for a trainer on another machine, which in production does not take CPU from the
  service; on this 2-core machine it otherwise competes with the service and both clients;
- ``flood_same_priority``: the same, with the flooding process at normal priority (the worst
  case of this machine, reported too);
- ``flood_unlimited``: the flood against a service where ``flood`` has no limit (what the limit
  prevents).

The first three alternate in rounds (alone, flood, flood at same priority, alone, ...) and
their samples are pooled, so that slow drifts of a shared VM hit them alike. The verifier is
``spin`` (``SPIN_MS`` of CPU per sample) so that the work per request is the same in every
phase and only the service's scheduling differs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.gateway import percentile
from bench.service import ServiceProcess
from trainer.client import AsyncRewardClient, RewardServiceError
from trainer.credentials import Credentials

STEADY_TOKEN = "bench-steady-token-0123456789"
FLOOD_TOKEN = "bench-flood-token-0123456789ab"
SPIN_MS = 4.0
STEADY_RATE = 40.0  # requests/s
FLOOD_LIMIT = 40.0  # requests/s
FLOOD_FACTOR = 10


def _clients_file(directory: Path, flood_limited: bool) -> Path:
    path = directory / f"clients-{'limited' if flood_limited else 'open'}.toml"
    limit = f"rate = {FLOOD_LIMIT}\nburst = {int(FLOOD_LIMIT)}\n" if flood_limited else ""
    path.write_text(
        f'[clients.steady]\ntoken = "{STEADY_TOKEN}"\n\n'
        f'[clients.flood]\ntoken = "{FLOOD_TOKEN}"\n{limit}'
    )
    return path


async def _open_loop(
    target: str, token: str, rate: float, duration_s: float
) -> tuple[list[float], dict[str, int]]:
    """Unary calls every 1/rate s for duration_s; (latencies of answered calls, outcomes)."""
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    request = {"domain": "spin", "response": "", "reference": {"ms": SPIN_MS}}
    async with AsyncRewardClient(
        target, credentials=Credentials(token=token), retries=0, timeout_s=30
    ) as client:

        async def one() -> None:
            started = time.perf_counter()
            try:
                result = await client.score(request["domain"], "", request["reference"])
                key = result.status
                if result.status == "ok":
                    latencies.append(time.perf_counter() - started)
            except RewardServiceError as exc:
                key = exc.code.name
            outcomes[key] = outcomes.get(key, 0) + 1

        await client.score("spin", "", {"ms": 0.0})  # connected before the clock starts
        tasks = []
        began = time.perf_counter()
        for n in range(int(rate * duration_s)):
            delay = began + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies, outcomes


def _flood(target: str, rate: float, duration_s: float, niceness: int, queue: Any) -> None:
    os.nice(niceness)
    _, outcomes = asyncio.run(_open_loop(target, FLOOD_TOKEN, rate, duration_s))
    queue.put(outcomes)


def _phase(target: str, duration_s: float, flood: bool, niceness: int = 0) -> dict[str, Any]:
    """One phase: the steady client's latencies, and what each client's calls came to."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    flooder = None
    if flood:
        rate = FLOOD_LIMIT * FLOOD_FACTOR
        flooder = context.Process(
            target=_flood, args=(target, rate, duration_s + 1.0, niceness, queue)
        )
        flooder.start()
        time.sleep(1.0)  # the flood is running before the steady client starts
    latencies, outcomes = asyncio.run(_open_loop(target, STEADY_TOKEN, STEADY_RATE, duration_s))
    flood_outcomes: dict[str, int] = {}
    if flooder is not None:
        flood_outcomes = queue.get(timeout=120)
        flooder.join(30)
    return {"latencies": latencies, "steady": outcomes, "flood": flood_outcomes}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for run in runs for x in run["latencies"]]
    merged: dict[str, dict[str, int]] = {"steady": {}, "flood": {}}
    for run in runs:
        for who in merged:
            for key, count in run[who].items():
                merged[who][key] = merged[who].get(key, 0) + count
    return {
        "steady_p50_ms": 1000 * percentile(latencies, 50),
        "steady_p99_ms": 1000 * percentile(latencies, 99),
        "steady_outcomes": merged["steady"],
        "flood_outcomes": merged["flood"],
    }


def bench_fairness(workers: int, quick: bool) -> dict[str, Any]:
    rounds, phase_s = (1, 8.0) if quick else (3, 15.0)
    runs: dict[str, list[dict[str, Any]]] = {
        "alone": [],
        "flood": [],
        "flood_same_priority": [],
        "flood_unlimited": [],
    }
    with tempfile.TemporaryDirectory() as directory:
        for limited in (True, False):
            clients = _clients_file(Path(directory), flood_limited=limited)
            args = ["--clients-file", str(clients), "--domains", "spin"]
            with ServiceProcess(workers=workers, extra_args=args) as service:
                target = service.grpc_target
                if not limited:
                    runs["flood_unlimited"].append(_phase(target, phase_s, True, niceness=10))
                    continue
                for _ in range(rounds):
                    runs["alone"].append(_phase(target, phase_s, False))
                    runs["flood"].append(_phase(target, phase_s, True, niceness=10))
                    runs["flood_same_priority"].append(_phase(target, phase_s, True))
    phases = {name: _summary(phase_runs) for name, phase_runs in runs.items()}
    alone = phases["alone"]["steady_p99_ms"]
    return {
        "workers": workers,
        "phase_s": phase_s,
        "rounds": rounds,
        "spin_ms": SPIN_MS,
        "steady_rate": STEADY_RATE,
        "flood_limit": FLOOD_LIMIT,
        "flood_rate": FLOOD_LIMIT * FLOOD_FACTOR,
        "phases": phases,
        "p99_increase": {
            name: phases[name]["steady_p99_ms"] / alone - 1.0
            for name in ("flood", "flood_same_priority", "flood_unlimited")
        },
    }
