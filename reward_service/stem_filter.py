"""``reward-service filter-stem``: the LLM-judge data filter of the reference recipe.

ProRL's STEM data kept only problems whose reference model answer agreed with the ground truth,
as decided by an LLM judge. :func:`filter_stem` does that to a JSONL file: for each row (a
problem, a ground-truth solution, a reference model's response) it extracts both final answers,
asks the judge whether they agree, and writes the consistent rows to the output and every other
row, with its reason, to a rejected file.

Contract of a run (:func:`filter_stem`):

- Every verdict is appended to a journal (``OUT.journal.jsonl`` unless set) and flushed the
  moment it is known, so an interrupted run loses at most the requests in flight. A verdict is
  keyed by what the judge was asked (model, problem, ground-truth answer, response's answer):
  on the next run the rows already in the journal are not sent again.
- A row whose judge call failed (:class:`~reward_service.judge.JudgeError`) is not decided: it
  is counted as an error, left out of both outputs and retried on the next run.
- The output and rejected files are rewritten at the end, atomically, from the journal and the
  rejections that need no judge, in input order: they are complete and deterministic whatever
  the history of interruptions. The journal is kept, so a re-run costs no judge requests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from reward_service.judge import Judge, JudgeError
from reward_service.verifiers._extract import after_think, clean_answer, stated_answer

# A solution this short (and on one line) is its own final answer, e.g. "9.8 m/s^2".
SHORT_ANSWER_MAX_CHARS = 100


def final_answer(text: str) -> str | None:
    """The final answer of a solution or response, or ``None`` if none can be found: the one it
    states (:func:`~reward_service.verifiers._extract.stated_answer`, as the ``stem`` verifier
    reads it), else the whole text if it is short (at most :data:`SHORT_ANSWER_MAX_CHARS`
    characters, one line), as ground truths often are."""
    stated = stated_answer(text)
    if stated:
        return stated
    short = after_think(text).strip()
    if short and len(short) <= SHORT_ANSWER_MAX_CHARS and "\n" not in short:
        return clean_answer(short) or None
    return None


@dataclass(frozen=True, slots=True)
class FilterSettings:
    """Everything a run of the filter needs. ``rejected_path`` and ``journal_path`` default to
    ``OUT.rejected.jsonl`` and ``OUT.journal.jsonl`` next to the output."""

    input_path: Path
    output_path: Path
    judge_base_url: str
    judge_model: str
    judge_api_key: str | None = None  # None: from OPENAI_API_KEY
    rejected_path: Path | None = None
    journal_path: Path | None = None
    problem_field: str = "problem"
    solution_field: str = "solution"
    response_field: str = "response"
    id_field: str = "id"
    judge_timeout_s: float = 30.0
    judge_max_retries: int = 4
    judge_backoff_s: float = 0.5
    concurrency: int = 16
    progress: bool = True

    def _next_to_output(self, suffix: str) -> Path:
        name = self.output_path.name
        base = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
        return self.output_path.with_name(f"{base}.{suffix}.jsonl")

    @property
    def rejected(self) -> Path:
        return self.rejected_path or self._next_to_output("rejected")

    @property
    def journal(self) -> Path:
        return self.journal_path or self._next_to_output("journal")


@dataclass(slots=True)
class FilterResult:
    """Counts of one run, in rows. ``judged`` counts the rows decided by a verdict obtained in
    this run, ``from_journal`` those decided by one journaled earlier; ``errors`` holds one
    message per row the judge could not decide."""

    rows: int = 0
    kept: int = 0
    rejected: int = 0
    judged: int = 0
    from_journal: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"filter-stem: {self.rows} rows: {self.kept} kept, {self.rejected} rejected, "
            f"{len(self.errors)} errors ({self.judged} judged now, {self.from_journal} from "
            "the journal)"
        )


@dataclass(slots=True)
class _Row:
    """One input line: either a row to judge (``key`` set), or one rejected without asking."""

    line: int
    data: dict[str, Any]
    reject_reason: str | None = None
    ground_truth: str | None = None
    question: str = ""
    answer: str = ""
    key: str = ""


def _hash(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _read_rows(settings: FilterSettings) -> Iterator[_Row]:
    with settings.input_path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                yield _parse_row(number, line, settings)


def _parse_row(number: int, line: str, settings: FilterSettings) -> _Row:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        reason = f"line {number}: malformed JSON: {exc}"
        return _Row(number, {"line": number, "raw": line.rstrip("\n")}, reason)
    if not isinstance(data, dict):
        reason = f"line {number}: expected a JSON object, got {type(data).__name__}"
        return _Row(number, {"line": number, "raw": line.rstrip("\n")}, reason)
    problem, solution, response = (
        data.get(name)
        for name in (settings.problem_field, settings.solution_field, settings.response_field)
    )
    texts = [value if isinstance(value, str) else "" for value in (problem, solution, response)]
    if data.get(settings.id_field) in (None, ""):
        data[settings.id_field] = _hash(*texts)[:16]
    row = _Row(number, data, question=texts[0])
    row.ground_truth = final_answer(texts[1])
    if row.ground_truth is None:
        row.reject_reason = "no ground-truth answer"
    elif not texts[2].strip():
        row.reject_reason = "no response"
    else:
        answer = final_answer(texts[2])
        if answer is None:
            row.reject_reason = "no final answer in the response"
        else:
            row.answer = answer
            row.key = _hash(settings.judge_model, row.question, row.ground_truth, answer)
    return row


def _load_journal(path: Path) -> dict[str, dict[str, Any]]:
    """Verdicts already journaled, by key. A line cut short by an interruption is skipped:
    its row is simply judged again."""
    verdicts: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return verdicts
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("key"), str)
                and isinstance(entry.get("equivalent"), bool)
            ):
                verdicts[entry["key"]] = entry
    return verdicts


def _open_journal(path: Path) -> IO[str]:
    """The journal, open for appending; a last line cut short is ended first so that the next
    entry does not run into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    journal = path.open("a+", encoding="utf-8")
    if journal.tell() > 0:
        journal.seek(journal.tell() - 1)
        if journal.read(1) != "\n":
            journal.write("\n")
    return journal


def _write_atomically(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


async def filter_stem(settings: FilterSettings, judge: Judge | None = None) -> FilterResult:
    """Filter ``settings.input_path`` into the output and rejected files (see the module's
    contract). Uses ``judge`` if given (the caller closes it; ``settings.judge_model`` must
    still name its model, as it keys the journal), else one built from the settings. Never
    raises for a row's judge failure: it is in ``FilterResult.errors``. Raises ``OSError`` if
    the input cannot be read or an output cannot be written."""
    rows = list(_read_rows(settings))
    verdicts = _load_journal(settings.journal)
    result = FilterResult(rows=len(rows))
    # One request per distinct question: duplicate rows share their verdict.
    pending: dict[str, _Row] = {}
    for row in rows:
        if row.key and row.key not in verdicts:
            pending.setdefault(row.key, row)
    failures: dict[str, str] = {}
    judged_now: set[str] = set()

    own_judge = judge is None
    if judge is None:
        judge = Judge(
            settings.judge_base_url,
            settings.judge_model,
            api_key=settings.judge_api_key,
            timeout_s=settings.judge_timeout_s,
            max_retries=settings.judge_max_retries,
            backoff_s=settings.judge_backoff_s,
            concurrency=settings.concurrency,
        )
    active: Judge = judge
    from tqdm import tqdm

    progress = tqdm(
        total=len(pending),
        unit="row",
        desc="judging",
        file=sys.stderr,
        disable=not settings.progress,
    )
    queue: asyncio.Queue[_Row] = asyncio.Queue()
    for row in pending.values():
        queue.put_nowait(row)
    journal = _open_journal(settings.journal)

    async def work() -> None:
        # A fixed pool of workers rather than a task per row: at most ``concurrency`` requests
        # in flight, and a million-row file does not mean a million pending tasks.
        while not queue.empty():
            row = queue.get_nowait()
            try:
                judgement = await active.judge(row.question, row.ground_truth or "", row.answer)
            except JudgeError as exc:
                failures[row.key] = f"line {row.line}: judge failed: {exc}"
            else:
                entry = {
                    "key": row.key,
                    "id": row.data.get(settings.id_field),
                    "equivalent": judgement.equivalent,
                    "reason": judgement.reason,
                }
                verdicts[row.key] = entry
                journal.write(json.dumps(entry, ensure_ascii=False) + "\n")
                journal.flush()  # a verdict survives an interruption once it is known
                judged_now.add(row.key)
            progress.update(1)

    try:
        workers = max(1, min(settings.concurrency, len(pending)))
        await asyncio.gather(*(work() for _ in range(workers)))
    finally:
        journal.close()
        progress.close()
        if own_judge:
            await judge.aclose()

    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for row in rows:
        if row.reject_reason is not None:
            extra = {"ground_truth": row.ground_truth} if row.ground_truth is not None else {}
            rejected.append({**row.data, **extra, "reject_reason": row.reject_reason})
            continue
        verdict = verdicts.get(row.key)
        if verdict is None:
            result.errors.append(failures.get(row.key, f"line {row.line}: not judged"))
            continue
        if row.key in judged_now:
            result.judged += 1
        else:
            result.from_journal += 1
        if verdict["equivalent"]:
            kept.append(
                {**row.data, "ground_truth": row.ground_truth, "judge_reason": verdict["reason"]}
            )
        else:
            reason = f"judge: the response's answer {row.answer!r} disagrees with the ground truth"
            if verdict["reason"]:
                reason += f": {verdict['reason']}"
            rejected.append({**row.data, "ground_truth": row.ground_truth, "reject_reason": reason})
    result.kept, result.rejected = len(kept), len(rejected)
    _write_atomically(settings.output_path, kept)
    _write_atomically(settings.rejected, rejected)
    return result


MAX_ERRORS_SHOWN = 10


def run_from_args(args: argparse.Namespace) -> int:
    """The ``filter-stem`` command: 0 when every row was decided, 1 when some judge calls
    failed (re-run to retry them), 2 for bad usage."""
    base_url = args.judge_base_url or os.environ.get("REWARD_SERVICE_JUDGE_BASE_URL", "")
    model = args.judge_model or os.environ.get("REWARD_SERVICE_JUDGE_MODEL", "")
    missing = [
        flag
        for flag, value in (("--judge-base-url", base_url), ("--judge-model", model))
        if not value
    ]
    if missing:
        print(
            f"reward-service filter-stem: {' and '.join(missing)} required (or "
            "REWARD_SERVICE_JUDGE_BASE_URL / REWARD_SERVICE_JUDGE_MODEL)",
            file=sys.stderr,
        )
        return 2
    if args.concurrency < 1:
        print("reward-service filter-stem: --concurrency must be at least 1", file=sys.stderr)
        return 2
    settings = FilterSettings(
        input_path=args.input,
        output_path=args.output,
        judge_base_url=base_url,
        judge_model=model,
        rejected_path=args.rejected,
        journal_path=args.journal,
        problem_field=args.problem_field,
        solution_field=args.solution_field,
        response_field=args.response_field,
        id_field=args.id_field,
        judge_timeout_s=args.judge_timeout_s,
        judge_max_retries=args.judge_max_retries,
        judge_backoff_s=args.judge_backoff_s,
        concurrency=args.concurrency,
    )
    try:
        result = asyncio.run(filter_stem(settings))
    except KeyboardInterrupt:
        print(
            f"reward-service filter-stem: interrupted; verdicts so far are in {settings.journal}, "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:
        print(f"reward-service filter-stem: {exc}", file=sys.stderr)
        return 2
    for message in result.errors[:MAX_ERRORS_SHOWN]:
        print(message, file=sys.stderr)
    if len(result.errors) > MAX_ERRORS_SHOWN:
        print(f"... and {len(result.errors) - MAX_ERRORS_SHOWN} more errors", file=sys.stderr)
    print(result.summary(), file=sys.stderr)
    print(
        f"kept -> {settings.output_path}, rejected -> {settings.rejected}, "
        f"journal -> {settings.journal}"
        + (" (run again to retry the errors)" if result.errors else ""),
        file=sys.stderr,
    )
    return 1 if result.errors else 0
