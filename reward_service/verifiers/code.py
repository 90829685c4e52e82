"""The ``code`` domain: run the response's last fenced code block against tests in a sandbox.

Reward semantics of the reference recipe: every test runs (never stopping at the first
failure) and the reward is the fraction passed; code that does not compile (or has a syntax
error) scores 0; a submission whose tests together exceed the total budget (default 5 s of
wall time, ``reference.time_limit_s`` or ``options.timeout_s`` up to the server maximum)
scores 0 with status ``timeout``.

Three test formats, chosen by the reference:

- stdin/stdout (``tests`` without ``fn_name``): the program reads each input, its output is
  compared token by token (numbers within 1e-6), or exactly with ``options.exact_output``;
- call-based (``tests`` with ``fn_name``, APPS/TACO/PRIME style): each input is a JSON list
  of arguments, the return value is compared as a JSON value; a ``Solution`` class method of
  that name works too;
- assertion-style (``assert_code``): HumanEval's ``check(candidate)`` (``fn_name`` is the
  candidate) or MBPP's top-level asserts; each statement of the checks that asserts something
  about the solution is one test. Checks that are all literal calls run as calls, their
  values compared outside the sandbox (``_literal_checks.py``); the others run in a checker
  process.

Expected outputs never enter the sandbox, and assertion tests run in a process separate from
the solution's (see ``sandboxes/harness/zygote.py``): printing "all tests passed", exiting
early, returning objects that claim to equal anything, or reading files gains nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import Field, model_validator

from reward_service.verifiers._code_compare import call_result_matches, stdout_matches
from reward_service.verifiers._extract import after_think, last_fenced_block
from reward_service.verifiers._literal_checks import LiteralCheck, literal_checks
from reward_service.verifiers.base import Status, StrictModel, Verdict, Verifier, VerifierOptions
from reward_service.verifiers.registry import register
from sandboxes.base import (
    Sandbox,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
    Submission,
    TestRun,
    get_backend,
)
from sandboxes.harness.zygote import decode

log = logging.getLogger(__name__)

LANGUAGE_TAGS = {
    "python": "python", "py": "python", "python3": "python",
    "cpp": "cpp", "c++": "cpp", "cc": "cpp", "cxx": "cpp",
}  # fmt: skip
COMPILE_TIMEOUT_S = 10.0
# What the worker allows beyond the sandbox's own budget: starting or restarting the sandbox,
# the harness's reply, and the comparisons.
WORKER_MARGIN_S = 3.0


class CodeTest(StrictModel):
    input: str = Field("", description="stdin text, or a JSON list of arguments (fn_name).")
    output: str = Field("", description="Expected stdout, or the expected return value as JSON.")


class CodeReference(StrictModel):
    """Tests of a programming problem (one of ``tests`` or ``assert_code``)."""

    tests: list[CodeTest] = Field(default_factory=list)
    fn_name: str | None = Field(
        None,
        min_length=1,
        description="Call-based tests: the function (or Solution method) to call; with "
        "assert_code: the function bound to `candidate` (HumanEval's entry_point).",
    )
    language: Literal["python", "cpp"] | None = Field(
        None, description="Overrides the code fence's language tag (default python)."
    )
    time_limit_s: float | None = Field(
        None, gt=0, description="Total wall-time budget of all tests (default 5 s)."
    )
    test_time_limit_s: float | None = Field(None, gt=0, description="Per-test time limit.")
    assert_code: str | None = Field(
        None, min_length=1, description="HumanEval/MBPP-style assertion test code."
    )

    @model_validator(mode="after")
    def _one_test_format(self) -> CodeReference:
        if bool(self.tests) == bool(self.assert_code):
            raise ValueError("give exactly one of tests (non-empty) or assert_code")
        if self.assert_code and self.language == "cpp":
            raise ValueError("assert_code tests are Python only")
        if self.fn_name and self.language == "cpp":
            raise ValueError("call-based tests (fn_name) are Python only")
        if self.fn_name:
            for index, test in enumerate(self.tests):
                try:
                    json.loads(test.input)
                except ValueError as exc:
                    raise ValueError(
                        f"tests[{index}].input is not JSON ({exc}); call-based tests (fn_name) "
                        "give the arguments as a JSON list"
                    ) from None
        return self


class CodeOptions(VerifierOptions):
    exact_output: bool = Field(
        False, description="Compare stdout exactly instead of token by token."
    )


@register
class CodeVerifier(Verifier):
    domain = "code"
    description = (
        "Last fenced code block (Python 3 or C++17) run in a sandbox against stdin/stdout, "
        "call-based or assertion tests; reward = fraction of tests passed."
    )
    reference_model = CodeReference
    options_model = CodeOptions
    default_timeout_s = 5.0

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.backend_name: str = self.config.get("sandbox_backend", "bwrap")
        self.max_time_limit_s: float = self.config.get("max_timeout_s", 60.0)
        self.limits = SandboxLimits(**self.config.get("sandbox_limits", {}))
        self.sandbox: Sandbox | None = None

    @classmethod
    def run_budget_s(cls, reference: CodeReference, options: CodeOptions, max_s: float) -> float:
        return min(options.timeout_s or reference.time_limit_s or cls.default_timeout_s, max_s)

    @classmethod
    def worker_budget_s(
        cls, reference: CodeReference, options: CodeOptions, max_timeout_s: float
    ) -> float:
        compile_s = COMPILE_TIMEOUT_S if reference.language != "python" else 0.0
        return cls.run_budget_s(reference, options, max_timeout_s) + compile_s + WORKER_MARGIN_S

    def setup(self) -> None:
        try:
            backend = get_backend(self.backend_name)
            self.sandbox = backend(self.limits, **self.config.get("sandbox_options", {}))
            self.sandbox.start()
        except (SandboxUnavailableError, ValueError) as exc:
            # Other domains keep working; code requests answer `error` with this reason.
            self.unavailable = str(exc)
            log.error("code sandbox unavailable: %s", exc)

    def verify(self, response: str, reference: CodeReference, options: CodeOptions) -> Verdict:
        block = last_fenced_block(after_think(response))
        if block is None:
            return Verdict(0.0, detail="no fenced code block found")
        tag, code = block
        language = reference.language or LANGUAGE_TAGS.get(tag, "python")
        if tag and tag not in LANGUAGE_TAGS and reference.language is None:
            return Verdict(0.0, detail=f"code block language {tag!r} is not supported")
        if language == "cpp" and (reference.fn_name or reference.assert_code):
            return Verdict(0.0, detail="a C++ solution cannot be scored by Python-only tests")
        if self.sandbox is None:
            return Verdict(0.0, Status.ERROR, f"code sandbox unavailable: {self.unavailable}")
        checks = _literal_checks_of(reference)
        submission = self._submission(code, language, reference, options, checks)
        result = self.sandbox.run(submission)
        if result.lost is not None and not result.timed_out:
            # The sandbox died: infrastructure trouble or the submission's doing. Run it once
            # more in a fresh sandbox; a submission that kills that one too scores 0.
            result = self.sandbox.run(submission)
            if result.lost is not None and not result.timed_out:
                return Verdict(0.0, detail=f"the submission broke its sandbox: {result.lost}")
        return self._score(result, submission, reference, options, checks)

    def _submission(
        self,
        code: str,
        language: str,
        reference: CodeReference,
        options: CodeOptions,
        checks: tuple[LiteralCheck, ...] | None,
    ) -> Submission:
        budget_s = self.run_budget_s(reference, options, self.max_time_limit_s)
        if checks is not None:
            return Submission(
                code=code,
                mode="call",
                inputs=[check.arguments for check in checks],
                fn_name=reference.fn_name,
                calls="check",
                budget_s=budget_s,
            )
        if reference.assert_code:
            mode = "assert"
        elif reference.fn_name:
            mode = "call"
        else:
            mode = "stdio"
        return Submission(
            code=code,
            language=language,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            inputs=[test.input for test in reference.tests],
            fn_name=reference.fn_name,
            test_code=reference.assert_code,
            entry_point=reference.fn_name,
            budget_s=budget_s,
            test_time_limit_s=reference.test_time_limit_s,
            compile_timeout_s=COMPILE_TIMEOUT_S,
        )

    def _score(
        self,
        result: SandboxResult,
        submission: Submission,
        reference: CodeReference,
        options: CodeOptions,
        checks: tuple[LiteralCheck, ...] | None,
    ) -> Verdict:
        """``checks``: the literal checks that ``submission`` ran as calls, if it did."""
        metrics: dict[str, Any] = {"run_time_s": result.elapsed_s, "language": submission.language}
        if result.compile_error is not None:
            total = len(checks) if checks is not None else len(reference.tests)
            metrics.update(tests_passed=0, tests_total=total)
            return Verdict(0.0, detail=f"compile error: {result.compile_error}", metrics=metrics)
        if submission.mode == "assert":
            verdicts = result.assert_verdicts or []
            passed, total = sum(1 for v in verdicts if v.get("passed") is True), len(verdicts)
            failures = [v.get("error") for v in verdicts if v.get("passed") is not True]
            detail = result.assert_error or (failures[0] if failures else None)
        else:
            if checks is not None:
                outcomes = [
                    run.status == "ok" and _check_passed(check, run)
                    for run, check in zip(result.tests, checks, strict=False)
                ]
                total = len(checks)
            else:
                outcomes = [
                    self._test_passed(run, test.output, submission.mode, options)
                    for run, test in zip(result.tests, reference.tests, strict=False)
                ]
                total = len(reference.tests)
            passed = sum(outcomes)
            failed = [i for i, ok in enumerate(outcomes) if not ok]
            detail = _first_failure(result, failed) if failed else None
        metrics.update(tests_passed=passed, tests_total=total)
        if result.timed_out:
            budget = submission.budget_s
            return Verdict(
                0.0, Status.TIMEOUT, f"tests exceeded the total budget of {budget:g} s", metrics
            )
        reward = passed / total if total else 0.0
        if total == 0 and detail is None:
            detail = "the tests contain no assertion about the solution"
        return Verdict(reward, detail=detail, metrics=metrics)

    @staticmethod
    def _test_passed(run: TestRun, expected: str, mode: str, options: CodeOptions) -> bool:
        if run.status != "ok":
            return False
        if mode == "stdio":
            return stdout_matches(run.stdout, expected, exact=options.exact_output)
        try:
            actual = decode(run.result)
            wanted = json.loads(expected)
        except (ValueError, KeyError, TypeError):
            return False
        return call_result_matches(actual, wanted)


def _literal_checks_of(reference: CodeReference) -> tuple[LiteralCheck, ...] | None:
    """The assertion tests of ``reference`` as literal call checks, where they all are one
    (HumanEval's ``check(candidate)`` with a per-test time limit keeps the checker, which
    has no per-test limit: the reward must not depend on the path)."""
    if reference.assert_code is None or reference.fn_name is None:
        return None
    if reference.test_time_limit_s is not None:
        return None
    return literal_checks(reference.assert_code)


def _check_passed(check: LiteralCheck, run: TestRun) -> bool:
    try:
        return check.passed(decode(run.result))
    except (ValueError, KeyError, TypeError, RecursionError):
        return False


def _first_failure(result: SandboxResult, failed: list[int]) -> str:
    index = failed[0]
    if index >= len(result.tests):
        return f"test {index + 1} did not run"
    run = result.tests[index]
    if run.status == "ok":
        return f"test {index + 1}: wrong output"
    tail = run.stderr.strip().splitlines()[-1:] if run.stderr.strip() else []
    return f"test {index + 1}: {run.status} ({run.exit})" + (f": {tail[0]}" if tail else "")
