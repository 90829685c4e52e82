"""How much reward time a training step still waits for: streaming vs scoring after generation.

A simulated step with verl-like timings against the running service: ``responses`` rollout
responses finish over ``generation_s`` seconds (most spread over the window, a fifth at its end:
the ones that hit the length limit); then the GPU computes old- and reference-policy log-probs
for ``logprob_s`` seconds (a sleep here: that work is the GPU's, not these CPUs'); then the
advantage step needs every reward.

- *after generation* (verl's default): all responses are sent when generation ends, and the
  log-prob stages start once the rewards are in; the step waits for the whole reward time.
- *streamed*: each response is submitted the moment it finishes (``AsyncScoreSession``), the
  log-prob stages run while the service scores, and the rewards are gathered just before the
  advantage step; the step waits only for what is left after the log-prob stages.

The exposed reward time is reported as a fraction of the serial reward time (the first mode's
wait).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.distributed import mixed_requests
from bench.service import ServiceProcess
from trainer.client import AsyncRewardClient

TRUNCATED_SHARE = 0.2


def finish_times(count: int, generation_s: float, seed: int) -> list[float]:
    """When each response finishes, in seconds from the start of generation: skewed towards
    the end of the window, and a fifth exactly at its end (hit the length limit)."""
    rng = random.Random(seed)
    times = []
    for _ in range(count):
        if rng.random() < TRUNCATED_SHARE:
            times.append(generation_s)
        else:
            times.append(generation_s * rng.betavariate(2.0, 1.2))
    return sorted(times)


async def _after_generation(
    client: AsyncRewardClient, requests: list[dict[str, Any]], generation_s: float, logprob_s: float
) -> dict[str, float]:
    started = time.perf_counter()
    await asyncio.sleep(generation_s)  # generation: nothing is scored meanwhile
    generated = time.perf_counter()
    async with client.session() as session:
        futures = [
            session.submit(r["domain"], r["response"], r["reference"], id=f"serial/{r['id']}")
            for r in requests
        ]
        results = await asyncio.gather(*futures)
    rewarded = time.perf_counter()
    await asyncio.sleep(logprob_s)
    return {
        "step_s": time.perf_counter() - started,
        "reward_wait_s": rewarded - generated,
        "ok": sum(r.status == "ok" for r in results),
    }


async def _streamed(
    client: AsyncRewardClient,
    requests: list[dict[str, Any]],
    times: list[float],
    generation_s: float,
    logprob_s: float,
) -> dict[str, float]:
    started = time.perf_counter()
    async with client.session() as session:
        futures = []
        for request, finish in zip(requests, times, strict=True):
            delay = started + finish - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            futures.append(
                session.submit(
                    request["domain"],
                    request["response"],
                    request["reference"],
                    id=f"streamed/{request['id']}",
                )
            )
        await asyncio.sleep(max(0.0, started + generation_s - time.perf_counter()))
        generated = time.perf_counter()
        pending_at_generation_end = sum(not f.done() for f in futures)
        await asyncio.sleep(logprob_s)  # the GPU's log-prob stages, overlapping the scoring
        logprobs_done = time.perf_counter()
        pending_at_logprob_end = sum(not f.done() for f in futures)
        results = await asyncio.gather(*futures)
        rewarded = time.perf_counter()
    return {
        "step_s": rewarded - started,
        "exposed_s": rewarded - logprobs_done,
        "pending_at_generation_end": pending_at_generation_end,
        "pending_at_logprob_end": pending_at_logprob_end,
        "generation_end_s": generated - started,
        "ok": sum(r.status == "ok" for r in results),
    }


def tiny_example_timeline(steps: int) -> dict[str, Any]:
    """Run ``trainer/examples/tiny_grpo.py --embedded`` and sum its timeline: the reward wait
    left after its own log-prob passes vs the span of the rewards' scoring (first submit to
    last answer, per sampling round)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "timeline.json"
        subprocess.run(
            [sys.executable, "-m", "trainer.examples.tiny_grpo", "--embedded", "--quiet",
             "--steps", str(steps), "--timeline", str(path)],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        timeline = json.loads(path.read_text())
    rounds = [r for step in timeline["steps"] for r in step["rounds"]]
    exposed = sum(r["exposed_reward_wait_s"] for r in rounds)
    span = sum(r["last_answer"] - r["first_submit"] for r in rounds)
    rewards = [step["mean_reward"] for step in timeline["steps"]]
    tenth = max(1, len(rewards) // 10)
    return {
        "steps": steps,
        "rounds": len(rounds),
        "requests": timeline["requests_sent"],
        "wall_s": timeline["wall_s"],
        "reward_span_s": span,
        "exposed_s": exposed,
        "exposed_fraction": exposed / span if span else 0.0,
        "mean_reward_first": sum(rewards[:tenth]) / tenth,
        "mean_reward_last": sum(rewards[-tenth:]) / tenth,
    }


def bench_overlap(workers: int, quick: bool) -> dict[str, Any]:
    responses = 1024 if quick else 4096
    generation_s, logprob_s = (4.0, 4.0) if quick else (12.0, 12.0)
    requests = mixed_requests(responses, seed=31)
    times = finish_times(responses, generation_s, seed=31)
    with ServiceProcess(workers=workers) as service:

        async def run() -> tuple[dict[str, float], dict[str, float]]:
            async with AsyncRewardClient(service.grpc_target) as client:
                async with client.session() as session:  # warm-up: workers, sandboxes, caches
                    await asyncio.gather(
                        *(
                            session.submit(r["domain"], r["response"], r["reference"])
                            for r in requests[:512]
                        )
                    )
                serial = await _after_generation(client, requests, generation_s, logprob_s)
                streamed = await _streamed(client, requests, times, generation_s, logprob_s)
            return serial, streamed

        serial, streamed = asyncio.run(run())
    tiny = tiny_example_timeline(20 if quick else 150)
    return {
        "tiny_example": tiny,
        "responses": responses,
        "workers": workers,
        "generation_s": generation_s,
        "logprob_s": logprob_s,
        "after_generation": serial,
        "streamed": streamed,
        "exposed_fraction": streamed["exposed_s"] / serial["reward_wait_s"],
    }
