"""The ``reward-service`` command line.

Every field of :class:`reward_service.settings.Settings` is a flag of ``serve`` and ``score``
(``--grpc-port``, ``--workers``, ...); a flag left out falls back to the environment variable
``REWARD_SERVICE_<FIELD>``, then to the default.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from pydantic import ValidationError

from reward_service.settings import ENV_ONLY, Settings

log = logging.getLogger("reward_service")


def _add_settings_flags(
    parser: argparse.ArgumentParser, renamed: dict[str, tuple[str, str]] | None = None
) -> None:
    """One flag per settings field; ``renamed`` maps a field to (flag, help) for commands
    where the field has a better name (``worker --concurrency`` for ``workers``)."""
    group = parser.add_argument_group("service settings (also REWARD_SERVICE_<NAME> variables)")
    for name, info in Settings.model_fields.items():
        if info.json_schema_extra == ENV_ONLY:
            continue  # a secret: never on the command line
        flag = "--" + name.replace("_", "-")
        if renamed and name in renamed:
            flag, text = renamed[name]
            group.add_argument(flag, dest=name, default=None, metavar="N", help=text)
            continue
        default = info.get_default(call_default_factory=False)
        shown = "" if info.default_factory is not None else f" (default: {default})"
        group.add_argument(flag, dest=name, default=None, help=f"{info.description}{shown}")


def _settings_from(args: argparse.Namespace) -> Settings:
    given = {
        n: getattr(args, n) for n in Settings.model_fields if getattr(args, n, None) is not None
    }
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise SystemExit(f"reward-service: invalid settings: {problems}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reward-service",
        description="Verifiable rewards for RL of reasoning models, over gRPC and HTTP.",
    )
    parser.add_argument("--log-level", default="INFO", help="Logging level (default: INFO).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="Run the gateway (gRPC 50051, HTTP 8000), with embedded workers or onto Redis.",
        description="Run the gateway: gRPC and HTTP APIs in front of a local pool of verifier "
        "worker processes (embedded mode, no Redis needed), or, with --redis-url, in front of "
        "Redis Streams served by `reward-service worker` processes (distributed mode).",
    )
    _add_settings_flags(serve)

    worker = commands.add_parser(
        "worker",
        help="Run distributed verifier workers that take jobs from Redis.",
        description="Take jobs of the given domains (--domains, default all) from Redis "
        "Streams and answer them with a local pool of verifier processes; HTTP /metrics, "
        "/healthz and /readyz on --metrics-port. SIGTERM drains: no new jobs, the held ones "
        "finish (up to --drain-timeout-s) or go back to the stream.",
    )
    _add_settings_flags(
        worker,
        renamed={
            "workers": (
                "--concurrency",
                "Verifier processes of this worker (default: one per CPU; REWARD_SERVICE_WORKERS).",
            )
        },
    )

    score = commands.add_parser(
        "score",
        help="Score a JSONL file of requests, in-process or against a running service.",
        description="Read requests (one JSON object per line, as for POST /v1/score) and write "
        "one result per line, in input order. Without --target the requests are scored "
        "in-process by an embedded worker pool (or, with --redis-url, by the `worker` "
        "processes of a distributed deployment).",
    )
    score.add_argument("file", type=Path, help="JSONL file of requests ('-' for stdin).")
    score.add_argument("-o", "--output", type=Path, help="Where to write results (stdout).")
    score.add_argument("--target", help="gRPC address of a running service, e.g. localhost:50051.")
    score.add_argument(
        "--chunk-size", type=int, default=256, help="Requests sent per batch (default: 256)."
    )
    _add_settings_flags(score)

    check = commands.add_parser(
        "sandbox-check",
        help="Report which sandbox backends work here and what isolation each achieves.",
        description="Start each sandbox backend and run a probe program in it that tries to "
        "reach the network, read a host file and the host's environment, write the system, "
        "see host processes, and exceed the process and memory limits. Exit code 0 when at "
        "least one checked backend is available and every available one is isolated.",
    )
    check.add_argument("--backend", action="append", help="Check only this backend (repeatable).")

    bench = commands.add_parser(
        "bench",
        help="Run the benchmarks and write docs/benchmarks.md.",
        description="Run the benchmarks (math throughput vs direct math-verify, gateway "
        "overhead over gRPC unary, gRPC stream and HTTP, code sandbox throughput and overhead "
        "on HumanEval, reasoning_gym, ifeval and stem throughput vs direct scoring, distributed "
        "mode "
        "under a 100,000-request mixed load and its scaling, how much reward time a "
        "training step still waits for when responses are streamed, and how much one client "
        "flooding at 10x its rate limit slows another) and write the results as a Markdown "
        "table and a JSON file.",
    )
    bench.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    bench.add_argument("--json", type=Path, default=Path("docs/benchmarks.json"))
    bench.add_argument(
        "--workers", type=int, default=None, help="Worker processes (default: CPU count)."
    )
    bench.add_argument("--quick", action="store_true", help="Fewer repetitions (smoke test).")
    bench.add_argument(
        "--only",
        help="Comma-separated benchmarks to run (math, overhead, code, reasoning_gym, ifeval, "
        "stem, distributed, overlap, fairness); default: all.",
    )
    bench.add_argument(
        "--verl-python",
        help="A Python interpreter with verl installed: adds verl's prime_code scorer to the "
        "code benchmark (verl stays out of the service's environment).",
    )

    keygen = commands.add_parser(
        "keygen",
        help="Make the secrets of a deployment: queue keys, API clients with their tokens.",
        description="Create what is missing, keep what exists (safe to run at every start, as "
        "docker-compose.yml does): --queue-keys writes a queue key file (NAME=SECRET, mode "
        "0600) for signing jobs and results in distributed mode; --client NAME adds a client "
        "with a new random token to --clients-file (which holds only its SHA-256) and writes "
        "the token to --token-file (mode 0600) for the trainer. Nothing secret is printed.",
    )
    keygen.add_argument("--queue-keys", type=Path, help="Queue key file to create.")
    keygen.add_argument("--client", help="Name of an API client to add.")
    keygen.add_argument("--clients-file", type=Path, help="Clients file to add it to (TOML).")
    keygen.add_argument("--token-file", type=Path, help="Where to write the new client's token.")

    stem = commands.add_parser(
        "filter-stem",
        help="Keep the STEM rows whose reference response an LLM judge finds consistent.",
        description="The data filter of the reference recipe: for each row (problem, "
        "ground-truth solution, reference model response) extract both final answers and ask "
        "an OpenAI-compatible judge whether they agree; write consistent rows to OUT and the "
        "others, with a reject_reason, to the rejected file. Verdicts are journaled as they "
        "come (OUT.journal.jsonl): an interrupted run resumes without asking again. API key "
        "from OPENAI_API_KEY. Exit code 1 when some rows could not be judged (run again).",
    )
    stem.add_argument("input", type=Path, help="JSONL file of rows.")
    stem.add_argument("output", type=Path, help="Where to write the kept rows (JSONL).")
    stem.add_argument(
        "--rejected", type=Path, help="Where to write rejected rows (OUT.rejected.jsonl)."
    )
    stem.add_argument("--journal", type=Path, help="The verdict journal (OUT.journal.jsonl).")
    for name, default in (
        ("problem", "problem"),
        ("solution", "solution"),
        ("response", "response"),
        ("id", "id"),
    ):
        stem.add_argument(
            f"--{name}-field", default=default, help=f"Row field of the {name} ({default})."
        )
    stem.add_argument(
        "--judge-base-url", help="OpenAI-compatible base URL (REWARD_SERVICE_JUDGE_BASE_URL)."
    )
    stem.add_argument("--judge-model", help="Judge model name (REWARD_SERVICE_JUDGE_MODEL).")
    stem.add_argument(
        "--judge-timeout-s", type=float, default=30.0, help="Per-attempt timeout (30)."
    )
    stem.add_argument(
        "--judge-max-retries", type=int, default=4, help="Retries per judge request (4)."
    )
    stem.add_argument(
        "--judge-backoff-s", type=float, default=0.5, help="First retry backoff (0.5)."
    )
    stem.add_argument("--concurrency", type=int, default=16, help="Judge requests in flight (16).")
    return parser


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    stream: IO[str] = sys.stdin if str(path) == "-" else path.open(encoding="utf-8")
    with stream:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                yield number, line


def _request_from_line(number: int, line: str) -> dict[str, Any] | str:
    """The request object of one line, or the reason it is not one."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"line {number}: malformed JSON: {exc}"
    if not isinstance(value, dict):
        return f"line {number}: expected a JSON object, got {type(value).__name__}"
    for key in ("domain", "response"):
        if not isinstance(value.get(key), str):
            kind = "missing" if key not in value else type(value[key]).__name__
            return f"line {number}: {key} must be a string ({kind})"
    return value


async def _score_file(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from reward_service.gateway.scoring import ScoreRequest
    from reward_service.gateway.server import embedded_scorer
    from trainer.client import AsyncRewardClient

    lines = list(_read_lines(args.file))
    out: IO[str] = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    counts: dict[str, int] = {}
    progress = tqdm(total=len(lines), unit="req", file=sys.stderr, desc="scoring")

    def emit(result: dict[str, Any]) -> None:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
        out.write(json.dumps(result) + "\n")

    async def run(score_chunk: Any) -> None:
        for start in range(0, len(lines), args.chunk_size):
            chunk = lines[start : start + args.chunk_size]
            parsed = [_request_from_line(n, line) for n, line in chunk]
            good = [p for p in parsed if isinstance(p, dict)]
            scored = iter(await score_chunk(good) if good else [])
            for item in parsed:
                if isinstance(item, str):
                    emit({"id": "", "reward": 0.0, "status": "invalid", "detail": item})
                else:
                    emit(next(scored))
            progress.update(len(chunk))

    try:
        if args.target:
            async with AsyncRewardClient(args.target) as client:

                async def via_grpc(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
                    results = await client.score_batch(items)
                    return [
                        {
                            "id": r.id,
                            "reward": r.reward,
                            "status": r.status,
                            **({"detail": r.detail} if r.detail else {}),
                            **({"metrics": r.metrics} if r.metrics else {}),
                        }
                        for r in results
                    ]

                await run(via_grpc)
        else:
            async with embedded_scorer(settings) as scorer:

                async def in_process(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
                    requests = [
                        ScoreRequest(
                            domain=i["domain"],
                            response=i["response"],
                            reference=i.get("reference", {}),
                            options=i.get("options", {}),
                            truncated=bool(i.get("truncated", False)),
                            id=str(i.get("id", "")),
                        )
                        for i in items
                    ]
                    return [r.to_json() for r in await scorer.score_many(requests)]

                await run(in_process)
    finally:
        progress.close()
        if args.output:
            out.close()
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(f"scored {len(lines)} requests ({summary})", file=sys.stderr)
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from reward_service.gateway.auth import add_client
    from reward_service.queue.security import create_key_file

    if args.queue_keys is None and args.client is None:
        raise SystemExit("reward-service keygen: nothing to make: give --queue-keys or --client")
    if args.queue_keys is not None:
        made = create_key_file(args.queue_keys)
        print(f"{args.queue_keys}: {'wrote a new queue key' if made else 'exists, kept'}")
    if args.client is not None:
        if args.clients_file is None or args.token_file is None:
            raise SystemExit(
                "reward-service keygen: --client needs --clients-file and --token-file"
            )
        try:
            made = add_client(args.clients_file, args.client, args.token_file)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"reward-service keygen: {exc}") from None
        if made:
            print(
                f"added client {args.client!r} to {args.clients_file}; token in {args.token_file}"
            )
        else:
            print(f"client {args.client!r} is in {args.clients_file} already: kept")
    return 0


def _loop_factory(command: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if command != "worker":
        return None
    try:
        import uvloop
    except ImportError:  # an optional speed-up (uvicorn[standard] brings it)
        return None
    return uvloop.new_event_loop


def freeze_startup_heap() -> None:
    """Move everything allocated so far (modules, libraries, settings) out of the garbage
    collector's reach. A long-lived service otherwise rescans those hundreds of thousands of
    objects in every full collection: measured here, about half a millisecond of the gateway's
    CPU per code request went to the collector."""
    gc.collect()
    gc.freeze()


class _Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def _run_until_signalled(build: Callable[[], _Service]) -> None:
    """Build and start a service, run until SIGINT or SIGTERM, then stop it gracefully."""
    service = build()
    await service.start()
    freeze_startup_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await service.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if args.command in ("serve", "worker"):
        from reward_service.gateway.server import RewardServer
        from reward_service.workers.node import WorkerNode

        service_class = RewardServer if args.command == "serve" else WorkerNode
        settings = _settings_from(args)
        try:
            # uvloop where nothing stops it: a worker's event loop is all Redis and pipe I/O,
            # which uvloop does at a fraction of the CPU. The gateway keeps asyncio's loop,
            # which is the one grpc.aio supports.
            with asyncio.Runner(loop_factory=_loop_factory(args.command)) as runner:
                runner.run(_run_until_signalled(lambda: service_class(settings)))
        except (OSError, RuntimeError, ValueError) as exc:
            raise SystemExit(f"reward-service: {exc}") from None
        return 0
    if args.command == "score":
        return asyncio.run(_score_file(args, _settings_from(args)))
    if args.command == "sandbox-check":
        from sandboxes.check import check_backends, render

        reports = check_backends(args.backend)
        print(render(reports))
        available = [r for r in reports if r.available]
        return 0 if available and all(r.isolated for r in available) else 1
    if args.command == "bench":
        from bench.runner import run_benchmarks

        return run_benchmarks(args)
    if args.command == "keygen":
        return _keygen(args)
    if args.command == "filter-stem":
        from reward_service.stem_filter import run_from_args

        return run_from_args(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
