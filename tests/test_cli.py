"""The command line: `score` in-process and against a running service, `serve` as a process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import TEST_VERIFIERS, ServerThread

REPO = Path(__file__).resolve().parent.parent


def write_requests(path: Path) -> None:
    lines = [
        json.dumps(
            {"id": "a", "domain": "test_echo", "response": "x", "reference": {"reward": 0.5}}
        ),
        json.dumps({"id": "b", "domain": "nope", "response": "x"}),
        "{broken json",
        "",
        json.dumps({"id": "d", "domain": "test_echo", "response": None}),
        json.dumps(
            {
                "id": "c",
                "domain": "math",
                "response": "\\boxed{3}",
                "reference": {"ground_truth": "3"},
            }
        ),
    ]
    path.write_text("\n".join(lines) + "\n")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "reward_service.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def check_results(path: Path) -> None:
    results = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["status"] for r in results] == ["ok", "invalid", "invalid", "invalid", "ok"]
    assert [r["id"] for r in results] == ["a", "b", "", "", "c"]
    assert results[0]["reward"] == 0.5 and results[4]["reward"] == 1.0
    assert "line 3: malformed JSON" in results[2]["detail"]
    assert "line 5: response must be a string (NoneType)" in results[3]["detail"]


def test_score_file_in_process(tmp_path: Path) -> None:
    requests, results = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(requests)
    done = run_cli(
        "score",
        str(requests),
        "-o",
        str(results),
        "--workers",
        "1",
        "--verifier-modules",
        TEST_VERIFIERS,
    )
    assert done.returncode == 0, done.stderr
    check_results(results)
    assert "scored 5 requests (invalid: 3, ok: 2)" in done.stderr


def test_score_file_against_a_running_service(tmp_path: Path, server: ServerThread) -> None:
    requests, results = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(requests)
    done = run_cli("score", str(requests), "-o", str(results), "--target", server.grpc_target)
    assert done.returncode == 0, done.stderr
    check_results(results)


def test_bad_settings_are_reported_by_name() -> None:
    done = run_cli("serve", "--workers", "0")
    assert done.returncode != 0
    assert "--workers: Input should be greater than or equal to 1" in done.stderr
    done = run_cli("serve", "--domains", "math,nope")
    assert "unknown domain(s) in --domains: nope" in done.stderr


def test_help_lists_every_command_and_setting() -> None:
    top = run_cli("--help").stdout
    for command in ("serve", "score", "bench"):
        assert command in top
    serve = run_cli("serve", "--help").stdout
    for flag in ("--grpc-port", "--http-port", "--workers", "--max-request-bytes"):
        assert flag in serve


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_runs_until_sigterm_and_reads_the_environment() -> None:
    http_port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "REWARD_SERVICE_HTTP_PORT": str(http_port),
        "REWARD_SERVICE_GRPC_PORT": "0",
        "REWARD_SERVICE_WORKERS": "1",
        "REWARD_SERVICE_DOMAINS": "math",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "reward_service.cli", "serve"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        domains = httpx.get(f"http://127.0.0.1:{http_port}/v1/domains").json()["domains"]
        assert [d["name"] for d in domains] == ["math"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "shutting down" in process.stdout.read()
