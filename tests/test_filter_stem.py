"""``reward-service filter-stem``: the LLM-judge data filter, against a real local
OpenAI-compatible server (``tests/fake_openai.py``), mostly through the real command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reward_service.stem_filter import FilterSettings, filter_stem, final_answer
from tests.fake_openai import Reply, fake_openai, verdict

REPO = Path(__file__).resolve().parent.parent
FAST = ["--judge-timeout-s", "2", "--judge-max-retries", "2", "--judge-backoff-s", "0.01"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reward_service.cli", "filter-stem", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=REPO,
    )


def judge_flags(base_url: str) -> list[str]:
    return ["--judge-base-url", base_url, "--judge-model", "judge-test", *FAST]


def candidate(body: dict[str, Any]) -> str:
    """The candidate's answer in a judge request (the last block of the user message)."""
    return body["messages"][1]["content"].rsplit("Candidate's final answer:\n", 1)[1].strip()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_rows(path: Path, rows: list[dict[str, Any] | str]) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def row(n: int, answer: str | None = None, **extra: Any) -> dict[str, Any]:
    """A row whose ground truth is ``n`` and whose response answers ``answer`` (``n``)."""
    given = str(n) if answer is None else answer
    return {
        "id": f"r{n}",
        "problem": f"What is {n} + 0?",
        "solution": f"Adding zero changes nothing.\nAnswer: {n}",
        "response": f"<think>maybe \\boxed{{-1}}</think> So it is $\\boxed{{{given}}}$.",
        **extra,
    }


# --- answer extraction -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("<think>\\boxed{1}</think> Final: \\boxed{2}", "2"),
        ("Long derivation...\nAnswer: $9.8\\ m/s^2$.", "9.8\\ m/s^2"),
        ("Work.\n**Answer:** (B)\n", "(B)"),
        ("We get it.\nThus the final answer is 42.", "42"),
        ("Derivation here.\nThe answer is 3 mol.\nThat is all.", "3 mol"),
        ("Steps.\nFinal Answer:\n\n  7 kg\n", "7 kg"),
        ("$x = 3$", "x = 3"),
        ("6.02e23", "6.02e23"),
        ("A long explanation without any stated result.\n" * 3, None),
        ("x" * 101, None),
        ("", None),
        ("   ", None),
        ("Answer the questions below.\nThey are hard and the text is long.\n" * 2, None),
        ("<think>Answer: 3</think>", None),
    ],
)
def test_final_answer(text: str, expected: str | None) -> None:
    assert final_answer(text) == expected


# --- the command -------------------------------------------------------------------------------


def test_keeps_consistent_rows_and_rejects_the_rest(tmp_path: Path) -> None:
    rows: list[dict[str, Any] | str] = [
        row(1),
        row(2, answer="5"),  # the judge says no
        {"id": "nogt", "problem": "p", "solution": "A long essay.\n" * 20, "response": "1"},
        {"id": "noresp", "problem": "p", "solution": "\\boxed{4}"},
        {"id": "noans", "problem": "p", "solution": "4", "response": "I am not sure.\n" * 20},
        "{broken json",
        "[1, 2]",
        "",
        {"problem": "What is 3?", "solution": "3", "response": "It is 3"},  # no id
    ]
    write_rows(tmp_path / "in.jsonl", rows)
    with fake_openai() as server:
        server.script = lambda body: verdict(candidate(body) != "5", "checked")
        done = run_cli(
            str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), *judge_flags(server.base_url)
        )
        asked = len(server.requests)
    assert done.returncode == 0, done.stderr
    assert asked == 3  # only rows with both answers reach the judge
    assert server.requests[0]["model"] == "judge-test"

    kept = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in kept] == ["r1", kept[1]["id"]]
    assert kept[0]["ground_truth"] == "1" and kept[0]["judge_reason"] == "checked"
    assert kept[0]["response"] == rows[0]["response"]  # type: ignore[index]
    assert kept[1]["ground_truth"] == "3" and len(kept[1]["id"]) == 16  # id from a hash

    rejected = {r.get("id", r.get("line")): r for r in read_jsonl(tmp_path / "out.rejected.jsonl")}
    assert list(rejected) == ["r2", "nogt", "noresp", "noans", 6, 7]  # input order
    assert rejected["r2"]["reject_reason"].startswith("judge: the response's answer '5'")
    assert rejected["r2"]["ground_truth"] == "2"
    assert rejected["nogt"]["reject_reason"] == "no ground-truth answer"
    assert rejected["noresp"]["reject_reason"] == "no response"
    assert rejected["noans"]["reject_reason"] == "no final answer in the response"
    assert rejected[6]["reject_reason"].startswith("line 6: malformed JSON")
    assert rejected[6]["raw"] == "{broken json"
    assert rejected[7]["reject_reason"] == "line 7: expected a JSON object, got list"
    assert "2 kept, 6 rejected, 0 errors" in done.stderr
    assert len(read_jsonl(tmp_path / "out.journal.jsonl")) == 3


def test_field_names_and_paths_are_configurable(tmp_path: Path) -> None:
    data = {"uid": "u1", "q": "Speed?", "gt": "\\boxed{3 m/s}", "gen": "Answer: 3 m/s"}
    write_rows(tmp_path / "in.jsonl", [data])
    with fake_openai() as server:
        server.script = lambda body: verdict(True)
        done = run_cli(
            str(tmp_path / "in.jsonl"),
            str(tmp_path / "kept.jsonl"),
            "--rejected",
            str(tmp_path / "dropped.jsonl"),
            *("--problem-field", "q", "--solution-field", "gt"),
            *("--response-field", "gen", "--id-field", "uid"),
            env={
                "REWARD_SERVICE_JUDGE_BASE_URL": server.base_url,
                "REWARD_SERVICE_JUDGE_MODEL": "from-env",
            },
        )
        body = server.requests[0]
    assert done.returncode == 0, done.stderr
    assert body["model"] == "from-env"
    assert "Problem:\nSpeed?" in body["messages"][1]["content"]
    assert read_jsonl(tmp_path / "kept.jsonl") == [
        {**data, "ground_truth": "3 m/s", "judge_reason": "scripted"}
    ]
    assert read_jsonl(tmp_path / "dropped.jsonl") == []


def test_judge_settings_are_required(tmp_path: Path) -> None:
    write_rows(tmp_path / "in.jsonl", [row(1)])
    env = {"REWARD_SERVICE_JUDGE_BASE_URL": "", "REWARD_SERVICE_JUDGE_MODEL": ""}
    done = run_cli(str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), env=env)
    assert done.returncode == 2
    assert "--judge-base-url and --judge-model required" in done.stderr


def test_429_and_500_are_retried(tmp_path: Path) -> None:
    write_rows(tmp_path / "in.jsonl", [row(1), row(2)])
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def script(body: dict[str, Any]) -> Reply:
        with lock:
            answer = candidate(body)
            seen[answer] = seen.get(answer, 0) + 1
            attempt = seen[answer]
        if answer == "1" and attempt == 1:
            return Reply("slow down", status=429, headers={"Retry-After": "0"})
        if answer == "2" and attempt <= 2:
            return Reply("oops", status=500)
        return verdict(True)

    with fake_openai() as server:
        server.script = script
        done = run_cli(
            str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), *judge_flags(server.base_url)
        )
        asked = len(server.requests)
    assert done.returncode == 0, done.stderr
    assert seen == {"1": 2, "2": 3} and asked == 5
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["r1", "r2"]


def test_slow_judge_is_an_error_retried_on_the_next_run(tmp_path: Path) -> None:
    write_rows(tmp_path / "in.jsonl", [row(1), row(2), row(3, answer="4")])
    args = [str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")]
    flags = ["--judge-timeout-s", "0.3", "--judge-max-retries", "1", "--judge-backoff-s", "0.01"]
    with fake_openai() as server:
        # Row 2 always answers too late: timeout, one retry, then an error.
        server.script = lambda body: (
            Reply(delay_s=1.5) if candidate(body) == "2" else verdict(candidate(body) != "4")
        )
        first = run_cli(*args, "--judge-base-url", server.base_url, "--judge-model", "m", *flags)
        first_requests = [candidate(b) for b in server.requests]
    assert first.returncode == 1, first.stderr
    assert sorted(first_requests) == ["1", "2", "2", "4"]
    assert "line 2: judge failed: judge unavailable after 2 attempts: no answer within 0.3 s" in (
        first.stderr
    )
    assert "1 kept, 1 rejected, 1 errors" in first.stderr
    # The undecided row is in neither output, nor in the journal.
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["r1"]
    assert [r["id"] for r in read_jsonl(tmp_path / "out.rejected.jsonl")] == ["r3"]
    assert {e["id"] for e in read_jsonl(tmp_path / "out.journal.jsonl")} == {"r1", "r3"}

    with fake_openai() as server:  # now the judge is quick: only row 2 is asked again
        server.script = lambda body: verdict(True)
        second = run_cli(*args, "--judge-base-url", server.base_url, "--judge-model", "m", *flags)
        second_requests = [candidate(b) for b in server.requests]
    assert second.returncode == 0, second.stderr
    assert second_requests == ["2"]
    assert "2 kept, 1 rejected, 0 errors (1 judged now, 2 from the journal)" in second.stderr
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["r1", "r2"]
    assert [r["id"] for r in read_jsonl(tmp_path / "out.rejected.jsonl")] == ["r3"]


def test_unreachable_judge_exits_with_error(tmp_path: Path) -> None:
    write_rows(tmp_path / "in.jsonl", [row(1), row(2)])
    with fake_openai() as server:
        dead_url = server.base_url  # the port is closed once the server is gone
    done = run_cli(
        str(tmp_path / "in.jsonl"),
        str(tmp_path / "out.jsonl"),
        *("--judge-base-url", dead_url, "--judge-model", "m"),
        *("--judge-max-retries", "1", "--judge-backoff-s", "0.01"),
    )
    assert done.returncode == 1
    assert "cannot reach" in done.stderr and "0 kept, 0 rejected, 2 errors" in done.stderr
    assert read_jsonl(tmp_path / "out.jsonl") == []
    assert read_jsonl(tmp_path / "out.journal.jsonl") == []


def test_resumes_after_a_kill_without_asking_twice(tmp_path: Path) -> None:
    write_rows(tmp_path / "in.jsonl", [row(n) for n in range(1, 6)])
    journal = tmp_path / "out.journal.jsonl"
    args = [str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), "--concurrency", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with fake_openai() as server:
        # Rows 1-3 are answered at once; row 4 hangs until the process is killed.
        server.script = lambda body: Reply(delay_s=0 if int(candidate(body)) <= 3 else 30)
        slow_flags = [*judge_flags(server.base_url), "--judge-timeout-s", "60"]
        process = subprocess.Popen(
            [sys.executable, "-m", "reward_service.cli", "filter-stem", *args, *slow_flags],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while len(server.requests) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    assert len(server.requests) == 4
    assert not (tmp_path / "out.jsonl").exists()  # killed before the end
    assert [e["id"] for e in read_jsonl(journal)] == ["r1", "r2", "r3"]
    # A kill mid-write leaves a partial last line: that verdict is lost, the journal still works.
    with journal.open("a") as stream:
        stream.write('{"key": "abc", "equiv')

    with fake_openai() as server:
        server.script = lambda body: verdict(True)
        done = run_cli(*args, *judge_flags(server.base_url))
        asked = sorted(candidate(b) for b in server.requests)
    assert done.returncode == 0, done.stderr
    assert asked == ["4", "5"]
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["r1", "r2", "r3", "r4", "r5"]
    entries = [
        json.loads(line) for line in journal.read_text().splitlines() if "equivalent" in line
    ]
    assert [e["id"] for e in entries] == ["r1", "r2", "r3", "r4", "r5"]

    # Once everything is decided a re-run asks nothing and writes the same files.
    before = (tmp_path / "out.jsonl").read_bytes()
    with fake_openai() as server:
        again = run_cli(*args, *judge_flags(server.base_url))
        assert server.requests == []
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out.jsonl").read_bytes() == before

    # Verdicts belong to their judge: another model is asked afresh.
    with fake_openai() as server:
        other = run_cli(*args, *judge_flags(server.base_url), "--judge-model", "other")
        assert len(server.requests) == 5
    assert other.returncode == 0, other.stderr


async def test_requests_run_concurrently_and_duplicates_are_asked_once(tmp_path: Path) -> None:
    rows = [row(n) for n in range(1, 9)] + [row(1, id="dup")]
    write_rows(tmp_path / "in.jsonl", rows)
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def script(body: dict[str, Any]) -> Reply:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.2)
        with lock:
            in_flight -= 1
        return verdict(True)

    with fake_openai() as server:
        server.script = script
        settings = FilterSettings(
            input_path=tmp_path / "in.jsonl",
            output_path=tmp_path / "out.jsonl",
            judge_base_url=server.base_url,
            judge_model="m",
            concurrency=4,
            progress=False,
        )
        result = await filter_stem(settings)
        asked = len(server.requests)
    assert asked == 8  # the duplicate row shares row 1's verdict
    assert peak == 4
    assert (result.rows, result.kept, result.rejected, result.errors) == (9, 9, 0, [])
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")][-1] == "dup"
