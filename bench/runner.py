"""``reward-service bench``: run the benchmarks, write docs/benchmarks.md and a JSON file."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench.code import bench_code
from bench.distributed import bench_distributed
from bench.domains import bench_ifeval, bench_reasoning_gym, bench_stem
from bench.fairness import bench_fairness
from bench.gateway import bench_math, bench_overhead
from bench.overlap import bench_overlap


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpu_reference_s() -> float:
    """Seconds a fixed pure-Python loop takes now (best of 3): how fast this machine is at the
    moment, since a shared virtual machine's speed varies from day to day."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for number in range(5_000_000):
            total += number
        best = min(best, time.perf_counter() - started)
    return best


def _stamp(cpu_model: str) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model,
        "cpu_reference_s": _cpu_reference_s(),
    }


def _heading(title: str, section: dict[str, Any]) -> list[str]:
    """A section's heading and, for sections that carry it, when it ran and how fast the
    machine was then."""
    lines = [f"## {title}", ""]
    run = section.get("run")
    if run:
        lines += [
            f"*Run {run['date']} on {run['cpu_model']}, where a reference pure-Python loop "
            f"(5 million additions) took {run['cpu_reference_s']:.3f} s: the virtual machine's "
            f"host and speed vary from day to day, so compare sections run on other days with "
            f"that in mind.*",
            "",
        ]
    return lines


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _rate_of_passes(rates: list[float]) -> str:
    """The mean rate of some passes, with their range: ``137/s (122-148)``."""
    return f"{sum(rates) / len(rates):.0f}/s ({min(rates):.0f}-{max(rates):.0f})"


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `reward-service bench` (do not edit by hand); raw numbers in "
        "`docs/benchmarks.json`.",
        "",
        f"Machine of the latest run ({machine['date']}): {machine['cpus']} CPUs "
        f"({machine['cpu_model']}), Python {machine['python']}, {machine['platform']}. "
        f"`--only` redoes some sections and keeps the others, so each section says when and on "
        f"what it ran.",
        "",
    ]
    math = results.get("math")
    if math:
        lines += [
            *_heading("Math throughput: service vs direct calls", math),
            f"{math['samples_per_round']} distinct samples per round (a third of them wrong "
            f"answers), {math['rounds']} rounds, {math['workers']} worker processes. "
            f"The service is a separate `reward-service serve` process; the client sends "
            f"gRPC `ScoreBatch` calls of {math['batch']} requests, two in flight. *Direct* runs "
            f"the same inputs in a `multiprocessing` pool of the same size, chunks of 16: "
            f"once the math verifier's own function (math-verify OR the PRM800K grader, what "
            f"the service runs), once bare math-verify `parse`+`verify` on the response. In "
            f"each round the three paths run in turn on the same samples; rates are medians "
            f"over the rounds, percentages the median of the rounds' ratios.",
            "",
            "| path | samples/s | service as % of it | target |",
            "|---|---:|---:|---|",
            f"| service (gRPC, batch {math['batch']}) | {math['service_per_s']:.0f} | | |",
            f"| direct: math verifier function | {math['direct_verifier_per_s']:.0f} | "
            f"{100 * math['ratio_vs_direct_verifier']:.0f}% | >= 90%: "
            f"{_verdict(math['ratio_vs_direct_verifier'] >= 0.9)} |",
            f"| direct: bare math-verify | {math['direct_math_verify_per_s']:.0f} | "
            f"{100 * math['ratio_vs_direct_math_verify']:.0f}% | >= 90%: "
            f"{_verdict(math['ratio_vs_direct_math_verify'] >= 0.9)} |",
            "",
        ]
    overhead = results.get("overhead")
    if overhead:
        lines += [
            *_heading("Gateway overhead (no-op verifier)", overhead),
            f"A verifier that returns at once (`bench/noop_verifier.py`, registered only by "
            f"the benchmark), so the times are the service's own: transport, validation, "
            f"queue, the round trip to a worker process and back. Sequential calls from one "
            f"client process over loopback ({overhead['calls']} timed calls after 200 warm-up "
            f"calls); streams: {overhead['streams']} timed streams of 1024 requests, each "
            f"submitted at once and gathered.",
            "",
            "| path | p50 | p99 | target |",
            "|---|---:|---:|---|",
            f"| gRPC unary `Score` | {overhead['grpc_unary_p50_ms']:.2f} ms | "
            f"{overhead['grpc_unary_p99_ms']:.2f} ms | p50 <= 1 ms: "
            f"{_verdict(overhead['grpc_unary_p50_ms'] <= 1.0)} |",
            f"| gRPC `ScoreStream`, 1024 requests | {overhead['grpc_stream_1024_p50_ms']:.1f} ms "
            f"| {overhead['grpc_stream_1024_p99_ms']:.1f} ms | <= 100 ms: "
            f"{_verdict(overhead['grpc_stream_1024_p50_ms'] <= 100.0)} (p50) |",
            f"| HTTP `POST /v1/score` | {overhead['http_p50_ms']:.2f} ms | "
            f"{overhead['http_p99_ms']:.2f} ms | |",
            "",
        ]
    code = results.get("code")
    if code:
        verl = code.get("verl", {})
        speedup = code.get("speedup_vs_verl")
        lines += [
            *_heading("Code: HumanEval canonical solutions through the service", code),
            f"All {code['problems']} HumanEval canonical solutions, {code['rounds']} rounds, "
            f"submitted at once on one gRPC stream to a `reward-service serve --domains code` "
            f"process with {code['workers']} workers, each running its submissions in its own "
            f"bubblewrap sandbox (all of a submission's tests inside it). *Assertion format*: "
            f"the original `check(candidate)` code: where every check is a literal call "
            f"({code.get('literal_check_problems', 0)} problems) the calls are made to the "
            f"solution and compared outside the sandbox, the others run in a checker process "
            f"apart from the solution. *Call format*: the {code['converted_problems']} "
            f"problems whose checks are all `assert candidate(args) == value`, converted to "
            f"call-based tests (verl `prime_code`'s input/output format). Every solution "
            f"scored 1.0. Latency is sequential single `Score` calls; overhead is that latency "
            f"minus the tests' own run time without a sandbox in one warm interpreter (all "
            f"{code['problems']} together: {code['own_run_time_total_s'] * 1e3:.0f} ms).",
            "",
            "| measure | value | target |",
            "|---|---:|---|",
            f"| throughput, assertion format | {code['assert_per_s']:.0f} submissions/s | "
            f">= 250/s: {_verdict(code['assert_per_s'] >= 250)} |",
            f"| throughput, call format | {code['call_per_s']:.0f} submissions/s | |",
            f"| latency under that load, p50 / p99 | {code['loaded_latency_p50_ms']:.0f} / "
            f"{code['loaded_latency_p99_ms']:.0f} ms | |",
            f"| latency, one at a time, p50 / p99 | {code['latency_p50_ms']:.1f} / "
            f"{code['latency_p99_ms']:.1f} ms | |",
            f"| sandbox + service overhead per submission, p50 / p99 | "
            f"{code['overhead_p50_ms']:.1f} / {code['overhead_p99_ms']:.1f} ms | p50 <= 5 ms: "
            f"{_verdict(code['overhead_p50_ms'] <= 5.0)} |",
        ]
        if "per_s" in verl:
            lines.append(
                f"| verl {verl['verl_version']} `prime_code`, same {verl['problems']} problems "
                f"(call format), same process count | {verl['per_s']:.1f} submissions/s | "
                f"service >= 10x: {_verdict(bool(speedup and speedup >= 10))} "
                f"({speedup:.1f}x) |"
            )
        else:
            lines.append(f"| verl `prime_code` | {verl.get('error')} | >= 10x: not measured |")
        lines.append("")
    rg = results.get("reasoning_gym")
    if rg:
        lines += [
            *_heading("reasoning_gym throughput: service vs the package called directly", rg),
            f"{rg['requests']} distinct entries of {rg['tasks']} tasks with in-process scorers "
            f"(a third wrong answers), {rg['workers']} worker processes. Service: gRPC "
            f"`ScoreBatch` of {rg['batch']}, two in flight, to a `reward-service serve --domains "
            f"reasoning_gym` process. Direct: each task's `score_answer` in a `multiprocessing` "
            f"pool of the same size, chunks of 256. Both: one warm-up pass over all entries, "
            f"then {rg.get('rounds', 3)} timed passes of each, taking turns (the host's speed "
            f"drifts within seconds); medians. The scorers take microseconds, so this is the "
            f"service's own cost per request.",
            "",
            "| path | rewards/s | target |",
            "|---|---:|---|",
            f"| service | {rg['service_per_s']:.0f} | >= 10,000/s: "
            f"{_verdict(rg['service_per_s'] >= 10_000)} |",
            f"| direct | {rg['direct_per_s']:.0f} | |",
            "",
        ]
    ifeval = results.get("ifeval")
    if ifeval:
        ratio = ifeval.get("ratio", ifeval["service_per_s"] / ifeval["direct_per_s"])
        lines += [
            *_heading("ifeval throughput: service vs the verifier called directly", ifeval),
            f"Google's published GPT-4 responses to the IFEval prompts ({ifeval['requests']} "
            f"requests), {ifeval['workers']} worker processes. Service: gRPC `ScoreBatch` of "
            f"{ifeval['batch']}, two in flight. Direct: the verifier's own function in a "
            f"`multiprocessing` pool of the same size, chunks of 16. Both: one warm-up pass, then "
            f"{ifeval.get('rounds', 3)} timed passes of each, taking turns (the host's speed "
            f"drifts within seconds); rates are medians, the percentage the median of the "
            f"passes' ratios.",
            "",
            "| path | rewards/s | service as % of it | target |",
            "|---|---:|---:|---|",
            f"| service | {ifeval['service_per_s']:.0f} | | |",
            f"| direct | {ifeval['direct_per_s']:.0f} | {100 * ratio:.0f}% | >= 90%: "
            f"{_verdict(ratio >= 0.9)} |",
            "",
        ]
    stem = results.get("stem")
    if stem:
        lines += [
            *_heading("stem throughput: service vs the verifier called directly", stem),
            f"{stem['requests']} answers settled by the rules (numbers with units, a third off "
            f"by 20%; multiple-choice letters), no judge, {stem['workers']} worker processes. "
            f"Service: gRPC `ScoreBatch` of {stem['batch']}, two in flight. Direct: the "
            f"verifier's own function in a `multiprocessing` pool of the same size, chunks of "
            f"64. Both: one warm-up pass, then {stem['rounds']} timed passes of each, taking "
            f"turns; rates are medians, the percentage the median of the passes' ratios.",
            "",
            "| path | rewards/s | service as % of it |",
            "|---|---:|---:|",
            f"| service | {stem['service_per_s']:.0f} | |",
            f"| direct | {stem['direct_per_s']:.0f} | {100 * stem['ratio']:.0f}% |",
            "",
        ]
    lines += _render_distributed(results.get("distributed"))
    lines += _render_overlap(results.get("overlap"))
    lines += _render_fairness(results.get("fairness"))
    return "\n".join(lines)


def _render_fairness(fair: dict[str, Any] | None) -> list[str]:
    if not fair:
        return []
    phases = fair["phases"]
    lines = [
        *_heading("One client flooding at 10x its rate limit", fair),
        f"Two clients of one service ({fair['workers']} worker processes, a verifier that burns "
        f"{fair['spin_ms']:g} ms of CPU per sample). `steady` sends {fair['steady_rate']:g} "
        f"unary calls/s on a fixed schedule; `flood` is limited to {fair['flood_limit']:g} "
        f"requests/s and sends {fair['flood_rate']:g}/s from another process. Phases alternate "
        f"over {fair['rounds']} rounds of {fair['phase_s']:g} s each and their samples are "
        "pooled. *flood*: the flooding process at nice 10, standing in for a trainer on "
        "another machine (on this 2-core machine it otherwise takes CPU from the service "
        "itself); *same priority*: the flooding process at normal priority (this machine's "
        "worst case); *unlimited*: the same flood against a service that does not limit "
        "`flood` (what the limit prevents). See `bench/fairness.py`.",
        "",
        "| phase | steady p50 ms | steady p99 ms | p99 vs alone | flood calls: answered / "
        "refused | target |",
        "|---|---:|---:|---:|---|---|",
    ]
    names = {
        "alone": "alone",
        "flood": "flood",
        "flood_same_priority": "flood, same priority",
        "flood_unlimited": "flood, unlimited",
    }
    for key, label in names.items():
        phase = phases[key]
        increase = fair["p99_increase"].get(key)
        change = "" if increase is None else f"{100 * increase:+.0f}%"
        flood = phase["flood_outcomes"]
        calls = f"{flood.get('ok', 0)} / {flood.get('RESOURCE_EXHAUSTED', 0)}" if flood else ""
        target = ""
        if key == "flood":
            target = f"<= +20%: {_verdict(increase is not None and increase <= 0.2)}"
        lines.append(
            f"| {label} | {phase['steady_p50_ms']:.1f} | {phase['steady_p99_ms']:.1f} | "
            f"{change} | {calls} | {target} |"
        )
    lines.append("")
    return lines


def _render_overlap(overlap: dict[str, Any] | None) -> list[str]:
    if not overlap:
        return []
    serial, streamed = overlap["after_generation"], overlap["streamed"]
    fraction = overlap["exposed_fraction"]
    fits = serial["reward_wait_s"] <= overlap["logprob_s"]
    return [
        *_heading("Reward overlap: what a training step still waits for", overlap),
        f"A simulated step with verl-like timings against `reward-service serve` with "
        f"{overlap['workers']} workers (`bench/overlap.py`): {overlap['responses']:,} responses "
        f"of the distributed benchmark's domain mix finish over {overlap['generation_s']:g} s of "
        f"generation (skewed to the end, a fifth at the length limit), then "
        f"{overlap['logprob_s']:g} s of old- and reference-policy log-prob stages (GPU work, "
        f"simulated by waiting), then "
        f"the advantage step needs every reward. *After generation* is verl's default order "
        f"(score everything when generation ends, then the log-prob stages); *streamed* submits "
        f"each response the moment it finishes and gathers just before the advantage step.",
        "",
        "| order | step time | reward time the step waits for | rewards still pending |",
        "|---|---:|---:|---|",
        f"| after generation | {serial['step_s']:.1f} s | {serial['reward_wait_s']:.2f} s (all "
        f"of it: the serial reward time) | |",
        f"| streamed | {streamed['step_s']:.1f} s | {streamed['exposed_s']:.2f} s "
        f"({100 * fraction:.1f}% of the serial reward time) | "
        f"{streamed['pending_at_generation_end']:,} when generation ended, "
        f"{streamed['pending_at_logprob_end']:,} when the log-prob stages ended |",
        "",
        f"Target: exposed reward time <= 5% of the serial reward time when the reward work is "
        f"shorter than the log-prob stages (here {serial['reward_wait_s']:.1f} s vs "
        f"{overlap['logprob_s']:g} s): "
        + (_verdict(fraction <= 0.05) if fits else "not applicable (reward work is longer)")
        + ".",
        "",
        *_render_tiny(overlap.get("tiny_example")),
    ]


def _render_tiny(tiny: dict[str, Any] | None) -> list[str]:
    if not tiny:
        return []
    return [
        f"The CPU example `trainer/examples/tiny_grpo.py --embedded` ({tiny['steps']} steps, "
        f"{tiny['rounds']} sampling rounds, {tiny['requests']:,} requests to the service, "
        f"{tiny['wall_s']:.0f} s): each response is submitted as it finishes while the example "
        f"computes its old- and reference-policy log-probs. Summed over the rounds, the "
        f"scoring spanned {tiny['reward_span_s']:.2f} s (first submit to last answer) and the "
        f"update waited {tiny['exposed_s']:.2f} s for rewards after its log-prob passes "
        f"({100 * tiny['exposed_fraction']:.1f}% of that span: most responses were scored "
        f"while the rest of their round was still being generated). Mean reward rose from "
        f"{tiny['mean_reward_first']:.2f} (first tenth of the steps) to "
        f"{tiny['mean_reward_last']:.2f} (last tenth).",
        "",
    ]


def _change(value: float, base: float) -> str:
    """``value`` against ``base`` in words: "13% lower" or "6% higher"."""
    change = 100 * (value / base - 1)
    return f"{abs(change):.0f}% {'lower' if change < 0 else 'higher'}"


def _render_distributed(dist: dict[str, Any] | None) -> list[str]:
    if not dist:
        return []
    emb, rem = dist["embedded"], dist["distributed"]
    mix = ", ".join(f"{domain} {100 * share:.0f}%" for domain, share in dist["mix"].items())
    lost = dist["requests"] - rem["statuses"].get("ok", 0)
    lines = [
        *_heading("Distributed mode: gateway + Redis + workers", dist),
        f"{dist['requests']:,} requests ({mix}; code: HumanEval canonical and broken "
        f"solutions, the rest distinct or cycled samples), shuffled and streamed on one gRPC "
        f"`ScoreStream` with {dist['window']} in flight, after a warm-up pass. *Embedded*: "
        f"`reward-service serve` with {dist['workers']} worker processes. *Distributed*: "
        f"`serve --redis-url` (no workers of its own), a `redis-server`, and one "
        f"`reward-service worker --concurrency {dist['workers']}`; all on this machine, so "
        f"the gateway, Redis and the workers share its {dist['workers']} cores. Both modes "
        f"run side by side and take turns at {dist['slices']} slices of the load (embedded, "
        f"distributed; distributed, embedded; ...), and likewise at the unary calls, so that "
        f"the host's drift of speed falls on both; the idle one waits on its sockets. The "
        f"load is offered faster than it is served, so the latencies are mostly waiting in "
        f"the window (which each slice starts by filling): the slow domains (math, code) "
        f"fill it while the fast ones pass through. Requests/s: over the whole load, and in "
        f"brackets the range of its slices.",
        "",
        "| mode | requests/s | p50 | p90 | p99 | statuses |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, run in (("embedded", emb), ("distributed", rem)):
        latency = run["latency_ms"]
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(run["statuses"].items()))
        rates = run["slices_per_s"]
        lines.append(
            f"| {name} | {run['per_s']:.0f} ({min(rates):.0f}-{max(rates):.0f}) "
            f"| {latency['p50']:.0f} ms | {latency['p90']:.0f} ms "
            f"| {latency['p99']:.0f} ms | {statuses} |"
        )
    unary = dist["unary_noop_p50_ms"]
    spin_ms = dist["spin_ms"]
    spin = dist["scaling"]["spin"]
    turns = ", ".join(["one, two"] * len(spin["two_passes_per_s"]) + ["one"])
    # What the service adds to a request's CPU (gateway, Redis, the worker's main process, the
    # gRPC client): the whole machine's CPU per request, less that of the direct calls.
    overhead_ms = 1000 * (
        spin["one_busy_cores"] / spin["one_per_s"]
        - spin["direct"]["one_busy_cores"] / spin["direct"]["one_per_s"]
    )
    lines += [
        "",
        f"- No loss: {_verdict(lost == 0)}; {lost} of {dist['requests']:,} requests not `ok`, "
        f"{dist['rewards_differing']} rewards differ from embedded mode's, jobs left in Redis "
        f"streams or dead letters: {dist['redis_leftovers'] or 'none'}.",
        f"- Overhead of distributed over embedded on the same work: throughput "
        f"{_change(rem['per_s'], emb['per_s'])}; sequential unary calls of a no-op verifier "
        f"p50 {unary['distributed']:.2f} ms vs {unary['embedded']:.2f} ms "
        f"({unary['distributed'] - unary['embedded']:+.2f} ms for the two Redis hops).",
        "",
        "Scaling out: the gateway and Redis, then one `reward-service worker --concurrency 1` "
        f"alone and with a second one beside it (same consumer group), in turns: {turns}; each "
        "rate is the mean of its passes (their range in brackets), so that the host's drift "
        "falls on both sides of the ratio. Math sends new samples in every pass (math-verify "
        "caches what it parsed, and the first worker would have seen them all). The client "
        "sends `ScoreBatch` calls of "
        "256, two in flight (as in the math section). *Busy cores*: CPU time of the whole "
        "machine (gateway, Redis, workers, sandboxes, client) over the passes, from "
        "`/proc/stat`. *Direct*: the same "
        "requests scored by the verifier called in one process and in two (each with its own "
        "sandbox for code), in the same turns, with no service at all: what this machine "
        "itself gives a second process, the ceiling of the service's ratio here; *of direct* "
        "is the service's ratio over that ceiling (taken as 2x where the direct ratio came "
        "out above it). "
        f"*spin*: the benchmark's verifier that burns {spin_ms:g} ms of CPU time per "
        "request; its cost is fixed in CPU time, so its row shows the service's own "
        "scaling, which the host's changes of speed (see the reference loop) hide in the "
        "math row. The service adds "
        f"{overhead_ms:.1f} ms of CPU per request (gateway, Redis, the worker's main "
        "process, the gRPC client: the spin row's busy cores over its rate, less the "
        "direct calls'); with one worker that runs on the second core, with two it is "
        "taken from the verifiers. "
        "Code runs in sandbox processes beside its worker (the candidate and the checker "
        "are separate processes, forked per submission), so one code worker already keeps "
        "more than one core busy, and on 2 shared cores a second cannot double the rate: its "
        "direct ratio shows that ceiling. On separate nodes, where distributed mode puts "
        "them, each worker process adds its full rate.",
        "",
        "| domain | 1 worker process | 2 worker processes | ratio | busy cores (1 / 2) "
        "| direct: 1 / 2 processes, ratio | of direct | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    above_two = False
    for domain, scaling in dist["scaling"].items():
        direct = scaling["direct"]
        above_two |= scaling["ratio"] > 2.0
        lines.append(
            f"| {domain} | {_rate_of_passes(scaling['one_passes_per_s'])} "
            f"| {_rate_of_passes(scaling['two_passes_per_s'])} | {scaling['ratio']:.2f}x "
            f"| {scaling['one_busy_cores']:.2f} / {scaling['two_busy_cores']:.2f} "
            f"| {direct['one_per_s']:.0f}/s / {direct['two_per_s']:.0f}/s, "
            f"{direct['ratio']:.2f}x | {scaling['ratio'] / min(direct['ratio'], 2.0):.0%} "
            f"| >= 1.8x: {_verdict(scaling['ratio'] >= 1.8)} |"
        )
    if above_two:
        lines += [
            "",
            "A ratio above 2x: two processes on two cores do no more than twice the CPU work "
            "of one, but one worker does not keep its core quite busy (its rate is below one "
            "direct process's: its verifier process waits while the worker's main process "
            "posts a result and hands it the next job), and with two workers each one's waits "
            "are filled by the other's work. The host's drift can add to it too: the ranges "
            "of the passes show how much.",
        ]
    lines.append("")
    return lines


BENCHMARKS = {
    "math": lambda args, workers: bench_math(workers, args.quick),
    "overhead": lambda args, workers: bench_overhead(workers, args.quick),
    "code": lambda args, workers: bench_code(workers, args.quick, args.verl_python),
    "reasoning_gym": lambda args, workers: bench_reasoning_gym(workers, args.quick),
    "ifeval": lambda args, workers: bench_ifeval(workers, args.quick),
    "stem": lambda args, workers: bench_stem(workers, args.quick),
    "distributed": lambda args, workers: bench_distributed(workers, args.quick),
    "overlap": lambda args, workers: bench_overlap(workers, args.quick),
    "fairness": lambda args, workers: bench_fairness(workers, args.quick),
}


def run_benchmarks(args: argparse.Namespace) -> int:
    workers = args.workers or os.cpu_count() or 1
    selected = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [name for name in selected if name not in BENCHMARKS]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    results: dict[str, Any] = {"machine": _machine()}
    if args.json.exists():  # keep sections that this run does not redo
        previous = json.loads(args.json.read_text())
        results.update({k: v for k, v in previous.items() if k in BENCHMARKS})
    for name in selected:
        print(f"running {name} ...", file=sys.stderr)
        stamp = _stamp(results["machine"]["cpu_model"])
        results[name] = BENCHMARKS[name](args, workers)
        results[name]["run"] = stamp
        print(json.dumps(results[name], indent=2), file=sys.stderr)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    args.output.write_text(render(results).rstrip("\n") + "\n")
    print(f"wrote {args.output} and {args.json}", file=sys.stderr)
    return 0
