"""The ``ifeval`` domain: the fraction of IFEval-style instructions a response follows.

Semantics are those of Google's IFEval reference (``instruction_following_eval``, the
published benchmark): the 25 instruction types with their kwargs (see
:mod:`._ifeval_instructions`), strict mode (each instruction checked on the response) and loose
mode (an instruction counts as followed if it holds on any of eight variants of the response:
as is, without its first line, without its last line, without both, and each of those four with
every ``*`` removed). A blank response follows nothing. Unlike the reference, the result never
depends on chance (missing kwargs are an error, not a random draw; language detection is seeded).

Only the answer is graded: the text after the last ``</think>``, without the whitespace that
separates it from the reasoning. A response that opens a ``<think>`` block and never closes it
has no answer and scores 0.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, StrictStr, model_validator

from reward_service.verifiers import _ifeval_text
from reward_service.verifiers._extract import after_think
from reward_service.verifiers._ifeval_instructions import (
    INSTRUCTIONS,
    InstructionArgs,
    parse_instruction,
)
from reward_service.verifiers.base import (
    MetricValue,
    StrictModel,
    Verdict,
    Verifier,
    VerifierOptions,
)
from reward_service.verifiers.registry import register

_THINK_START = "<think>"
_THINK_END = "</think>"


class IfevalReference(StrictModel):
    """The instructions a response must follow, in IFEval's data layout."""

    instruction_id_list: list[StrictStr] = Field(
        min_length=1,
        description="IFEval instruction ids, e.g. ['punctuation:no_comma', "
        "'length_constraints:number_words'].",
    )
    kwargs: list[dict[str, Any]] = Field(
        description="One object per instruction id with that instruction's kwargs, e.g. "
        "{'num_words': 300, 'relation': 'at least'}; {} for instructions without kwargs. "
        "Null values of known kwarg names are ignored (the Hugging Face layout).",
    )
    prompt: StrictStr | None = Field(
        default=None,
        description="The prompt; what combination:repeat_prompt repeats when its kwargs have "
        "no prompt_to_repeat.",
    )
    _instructions: tuple[InstructionArgs, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _parse_instructions(self) -> IfevalReference:
        if len(self.kwargs) != len(self.instruction_id_list):
            raise ValueError(
                f"kwargs has {len(self.kwargs)} entries but instruction_id_list has "
                f"{len(self.instruction_id_list)}: they must have the same length"
            )
        self._instructions = self._parse()
        return self

    def _parse(self) -> tuple[InstructionArgs, ...]:
        return tuple(
            parse_instruction(index, instruction_id, kwargs, self.prompt)
            for index, (instruction_id, kwargs) in enumerate(
                zip(self.instruction_id_list, self.kwargs, strict=True)
            )
        )

    @property
    def instructions(self) -> tuple[InstructionArgs, ...]:
        """The validated instructions, in ``instruction_id_list`` order."""
        if not self._instructions:  # built without validation (model_construct)
            self._instructions = self._parse()
        return self._instructions


class IfevalOptions(VerifierOptions):
    """Options of the ifeval domain."""

    mode: Literal["strict", "loose"] = Field(
        default="strict",
        description="'strict' checks the response as is; 'loose' also accepts an instruction "
        "followed after dropping the first and/or last line and/or every '*' (IFEval's loose "
        "accuracy).",
    )


def graded_text(response: str) -> str | None:
    """The answer part of ``response``, or ``None`` if an opened ``<think>`` never closes.

    The text after the last ``</think>`` loses its leading whitespace (the separator a chat
    template puts after the reasoning), so that the same answer scores the same with or without
    a reasoning block; a response without ``</think>`` is graded exactly as given.
    """
    if _THINK_END in response:
        return after_think(response).lstrip()
    if _THINK_START in response:
        return None
    return response


def loose_variants(text: str) -> list[str]:
    """IFEval's loose-mode variants of ``text``, distinct and in a fixed order.

    The text itself, without its first line, without its last line, without both (those three
    stripped), then each of the four with every ``*`` removed.
    """
    lines = text.split("\n")
    cut = [
        text,
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    ]
    variants = cut + [variant.replace("*", "") for variant in cut]
    return list(dict.fromkeys(variants))  # a dict keeps the first-seen order, unlike a set


def follows(instruction: InstructionArgs, candidates: list[str]) -> bool:
    """Whether ``instruction`` holds on any non-blank candidate text."""
    return any(text.strip() and instruction.check(text) for text in candidates)


def _metric_keys(instruction_ids: list[str]) -> list[str]:
    # `instruction:<id>`; a repeated id (17 prompts of IFEval have one) gets `#2`, `#3`, ...
    seen: dict[str, int] = {}
    keys = []
    for instruction_id in instruction_ids:
        seen[instruction_id] = seen.get(instruction_id, 0) + 1
        suffix = "" if seen[instruction_id] == 1 else f"#{seen[instruction_id]}"
        keys.append(f"instruction:{instruction_id}{suffix}")
    return keys


@register
class IfevalVerifier(Verifier):
    domain = "ifeval"
    description = (
        "IFEval instruction following (Google's 25 instruction types: keywords, length, format, "
        "case, language, punctuation, start/end, combination) on the text after </think>: reward "
        "= fraction of reference.instruction_id_list followed, strict by default, loose with "
        "options.mode='loose'; metrics give each instruction's verdict."
    )
    reference_model = IfevalReference
    options_model = IfevalOptions
    default_timeout_s = 5.0

    def setup(self) -> None:
        # Punkt's model, the word tokenizer and langdetect's 55 profiles load on first use
        # (about half a second): pay it at start-up, not in the first request.
        _ifeval_text.warm_up()

    def verify(self, response: str, reference: IfevalReference, options: Any) -> Verdict:
        mode = getattr(options, "mode", "strict")
        ids = reference.instruction_id_list
        keys = _metric_keys(ids)
        text = graded_text(response)
        if text is None:
            metrics: dict[str, MetricValue] = {
                "mode": mode,
                "followed": 0,
                "total": len(ids),
                "all_followed": False,
            }
            metrics.update(dict.fromkeys(keys, False))
            return Verdict(0.0, detail="unfinished <think> block: no answer", metrics=metrics)
        candidates = loose_variants(text) if mode == "loose" else [text]
        verdicts = [follows(instruction, candidates) for instruction in reference.instructions]
        followed = sum(verdicts)
        metrics: dict[str, MetricValue] = {
            "mode": mode,
            "followed": followed,
            "total": len(verdicts),
            "all_followed": followed == len(verdicts),
        }
        metrics.update(zip(keys, verdicts, strict=True))
        return Verdict(followed / len(verdicts), metrics=metrics)


__all__ = ["INSTRUCTIONS", "IfevalOptions", "IfevalReference", "IfevalVerifier"]
