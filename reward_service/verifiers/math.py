"""The ``math`` domain: the last ``\\boxed{}`` answer against a ground truth.

The answer counts as correct if either math-verify or the PRM800K/DeepScaleR normalising
grader says so (``metrics.matched_by`` names the one that matched): math-verify understands
more notation (sets, matrices, percentages, equations), the PRM800K rules accept some surface
forms it rejects (``20 dollars``, ``7 3/4``).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from pydantic import Field

from reward_service.verifiers._extract import after_think, last_boxed
from reward_service.verifiers._prm800k import grade_answer
from reward_service.verifiers.base import StrictModel, Verdict, Verifier, VerifierOptions
from reward_service.verifiers.registry import register


def _drop_timeout_disabled_warning(record: logging.LogRecord) -> bool:
    # math-verify warns once per process that its timeouts are off; here they are off on
    # purpose (see _mv_parse), so the warning would only alarm whoever reads the logs.
    return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_drop_timeout_disabled_warning)

# The text handed to math-verify is always `\boxed{...}`, so the box is the match to take.
_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


class MathReference(StrictModel):
    """Reference of a math problem."""

    ground_truth: str = Field(
        min_length=1,
        description="The correct final answer in LaTeX or plain text, e.g. '\\frac{1}{2}' or "
        "'[0, 1)'; a '\\boxed{...}' around it is allowed.",
    )


def _mv_parse(latex: str) -> list[Any]:
    # math-verify's own timeouts use SIGALRM and would cancel the worker's deadline timer, so
    # they stay off; the worker's VerifierTimeout (a BaseException) passes through its handlers.
    return parse(
        f"\\boxed{{{latex}}}", list(_EXTRACTION), parsing_timeout=None, raise_on_error=False
    )


@lru_cache(maxsize=1024)
def _parse_gold(ground_truth: str) -> tuple[Any, ...]:
    # A trainer sends each ground truth with a whole group of samples: parse it once.
    return tuple(_mv_parse(ground_truth))


@register
class MathVerifier(Verifier):
    domain = "math"
    description = (
        "Final answer in the last \\boxed{} (after </think> if present) against "
        "reference.ground_truth: 1 if math-verify or the PRM800K grader finds them equal, else 0."
    )
    reference_model = MathReference
    default_timeout_s = 5.0

    def setup(self) -> None:
        # The first parse builds math-verify's regexes and ANTLR parser and the first
        # simplify loads sympy's machinery: half a second that no request should pay.
        for response, gold in (("so \\boxed{\\dfrac{1}{2}}", "0.5"), ("\\boxed{[0, 1)}", "(0,1)")):
            self.verify(response, MathReference(ground_truth=gold), VerifierOptions())

    def verify(self, response: str, reference: MathReference, options: Any) -> Verdict:
        answer = last_boxed(after_think(response))
        if answer is None:
            return Verdict(0.0, detail="no \\boxed{} answer found")
        if not answer.strip():
            metrics = {"extracted": answer, "matched_by": "none"}
            return Verdict(0.0, detail="empty \\boxed{} answer", metrics=metrics)
        gold = reference.ground_truth
        if "\\boxed" in gold or "\\fbox" in gold:
            gold = last_boxed(gold) or gold
        # The reward is an OR, so the cheaper grader goes first (PRM800K's string rules take
        # about a fifth of math-verify's time) and math-verify runs only when it says no.
        if grade_answer(answer, gold):
            matched_by = "prm800k"
        elif verify(
            list(_parse_gold(gold)), _mv_parse(answer), timeout_seconds=None, raise_on_error=False
        ):
            matched_by = "math_verify"
        else:
            matched_by = "none"
        metrics = {"extracted": answer, "matched_by": matched_by}
        return Verdict(0.0 if matched_by == "none" else 1.0, metrics=metrics)
