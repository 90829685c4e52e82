"""The ``stem`` domain: the final answer against a ground truth, by rules first, then
optionally by an LLM judge for the answers that rules cannot settle.

Rules (``_stem_rules``): multiple-choice letter or option text; the same text after
normalisation; numbers within a relative tolerance, units ignored; symbolic equality through
math-verify. When they cannot tell (free text that differs), the judge decides if the request
asks for it (``reference.judge``) or the server enables it by default (``--stem-judge``); a
judge that cannot be reached gives status ``error`` (mask the sample), never a silent 0.

The final answer is the last ``\\boxed{}``, else the last ``<answer>...</answer>``, else the
text after a last "answer is"/"Answer:", all after ``</think>``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from math_verify import parse, verify
from pydantic import Field

from reward_service.judge import Judge, JudgeError
from reward_service.verifiers._extract import stated_answer
from reward_service.verifiers._stem_rules import compare
from reward_service.verifiers.base import Status, StrictModel, Verdict, Verifier, VerifierOptions
from reward_service.verifiers.registry import register


class StemReference(StrictModel):
    ground_truth: str = Field(min_length=1, description="The correct final answer.")
    choices: list[str] = Field(
        default_factory=list,
        description="Options of a multiple-choice question; the ground truth may be a letter "
        "or an option's text.",
    )
    judge: bool | None = Field(
        None,
        description="Ask the LLM judge when rules cannot settle it (default: the server's "
        "--stem-judge setting).",
    )
    question: str | None = Field(None, description="The problem, given to the judge as context.")


class StemOptions(VerifierOptions):
    relative_tolerance: float = Field(
        1e-2, gt=0, lt=1, description="Relative tolerance of numeric answers."
    )


@register
class StemVerifier(Verifier):
    domain = "stem"
    description = (
        "Final answer against reference.ground_truth: multiple choice, numbers within a "
        "relative tolerance, symbolic equality, normalised text; optionally an LLM judge."
    )
    reference_model = StemReference
    options_model = StemOptions
    default_timeout_s = 5.0

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.judge_by_default = bool(self.config.get("judge_by_default", False))
        self.judge: Judge | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if self.config.get("judge_base_url") and self.config.get("judge_model"):
            self.judge = Judge(
                self.config["judge_base_url"],
                self.config["judge_model"],
                timeout_s=self.config.get("judge_timeout_s", 20.0),
                max_retries=self.config.get("judge_max_retries", 3),
                backoff_s=self.config.get("judge_backoff_s", 0.5),
            )

    @classmethod
    def worker_budget_s(
        cls, reference: StemReference, options: StemOptions, max_timeout_s: float
    ) -> float:
        # A judged answer may wait for the judge's retries; the judge's own timeouts answer
        # first. (The judge's settings are the server's; this is their upper bound.)
        return (
            max_timeout_s
            if reference.judge is not False
            else super().worker_budget_s(reference, options, max_timeout_s)
        )

    def verify(self, response: str, reference: StemReference, options: StemOptions) -> Verdict:
        answer = stated_answer(response)
        if answer is None:
            return Verdict(0.0, detail="no final answer found")
        metrics: dict[str, Any] = {"extracted": answer}
        settled = compare(
            answer, reference.ground_truth, reference.choices, options.relative_tolerance
        )
        if settled is None and _symbolically_equal(answer, reference.ground_truth):
            settled = True
        if settled is not None:
            return Verdict(1.0 if settled else 0.0, metrics={**metrics, "judged": False})
        wants_judge = reference.judge if reference.judge is not None else self.judge_by_default
        if not wants_judge:
            return Verdict(0.0, detail="answers differ", metrics={**metrics, "judged": False})
        if self.judge is None:
            return Verdict(
                0.0, Status.ERROR, "a judge was asked for but none is configured (--judge-base-url)"
            )
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            judgement = self._loop.run_until_complete(
                self.judge.judge(reference.question or "", reference.ground_truth, answer)
            )
        except JudgeError as exc:
            return Verdict(0.0, Status.ERROR, f"judge unavailable: {exc}", metrics)
        metrics.update(judged=True, judge_reason=judgement.reason)
        return Verdict(1.0 if judgement.equivalent else 0.0, metrics=metrics)


def _symbolically_equal(answer: str, ground_truth: str) -> bool:
    gold = parse(f"\\boxed{{{ground_truth}}}", parsing_timeout=None, raise_on_error=False)
    given = parse(f"\\boxed{{{answer}}}", parsing_timeout=None, raise_on_error=False)
    return bool(gold and given and verify(gold, given, timeout_seconds=None, raise_on_error=False))
