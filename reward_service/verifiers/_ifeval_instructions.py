"""The IFEval instruction registry: instruction id -> typed kwargs model that checks a text.

Each of the 25 instruction types of Google's IFEval (``instruction_following_eval``'s
``instructions_registry``) has a :class:`InstructionArgs` subclass here whose fields are the
instruction's kwargs, exactly as named in the IFEval data, and whose :meth:`~InstructionArgs.check`
applies the matching function of :mod:`._ifeval_checks`.

Unlike the reference, which fills a missing or out-of-range kwarg with a *random* value, every
kwarg is required and validated here: a reward must not depend on chance, and a malformed
request must come back as ``invalid`` rather than as a silently different instruction. Integer
kwargs accept whole-number floats (``3.0``), because protobuf's ``Struct`` carries every number
as a double; booleans and strings are not integers.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictStr,
    ValidationError,
    model_validator,
)

from reward_service.verifiers import _ifeval_checks as checks
from reward_service.verifiers._ifeval_checks import Relation
from reward_service.verifiers.base import StrictModel

# The languages langdetect 1.0.9 (pinned) can name; `language:response_language` with any other
# code could never be followed, so it is rejected up front. Kept as a constant so that the
# gateway can validate requests without loading langdetect's profiles; a test pins it to the
# library's own list.
# fmt: off
LANGDETECT_LANGUAGES = frozenset({
    "af", "ar", "bg", "bn", "ca", "cs", "cy", "da", "de", "el", "en", "es", "et", "fa", "fi", "fr",
    "gu", "he", "hi", "hr", "hu", "id", "it", "ja", "kn", "ko", "lt", "lv", "mk", "ml", "mr", "ne",
    "nl", "no", "pa", "pl", "pt", "ro", "ru", "sk", "sl", "so", "sq", "sv", "sw", "ta", "te", "th",
    "tl", "tr", "uk", "ur", "vi", "zh-cn", "zh-tw",
})
# fmt: on


def _whole_number(value: Any) -> Any:
    # Runs before strict integer validation: turns 3.0 into 3 and rejects what is not a count.
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"must be a whole number, got {value!r}")
        return int(value)
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


Count = Annotated[int, BeforeValidator(_whole_number), Field(strict=True, ge=0)]
Text = Annotated[StrictStr, AfterValidator(_not_blank)]
Words = Annotated[list[Text], Field(min_length=1)]


class InstructionArgs(StrictModel):
    """The kwargs of one instruction; :meth:`check` decides whether a text follows it."""

    @abstractmethod
    def check(self, text: str) -> bool:
        """Whether ``text`` follows this instruction (``text`` is non-blank)."""


# --- keywords ---------------------------------------------------------------------------------


class KeywordsExistence(InstructionArgs):
    keywords: Words = Field(description="Each must occur in the response (case-insensitive).")

    def check(self, text: str) -> bool:
        return checks.keywords_existence(text, self.keywords)


class KeywordsFrequency(InstructionArgs):
    keyword: Text
    frequency: Count
    relation: Relation

    def check(self, text: str) -> bool:
        # The reference strips the keyword before counting.
        return checks.keywords_frequency(text, self.keyword.strip(), self.frequency, self.relation)


class KeywordsForbiddenWords(InstructionArgs):
    forbidden_words: Words = Field(description="None may occur as a whole word.")

    def check(self, text: str) -> bool:
        return checks.keywords_forbidden_words(text, self.forbidden_words)


class KeywordsLetterFrequency(InstructionArgs):
    letter: StrictStr = Field(description="One character, counted case-insensitively.")
    let_frequency: Count
    let_relation: Relation

    @model_validator(mode="after")
    def _one_character(self) -> KeywordsLetterFrequency:
        if len(self.letter) != 1 or self.letter.isspace():
            raise ValueError(f"letter must be a single character, got {self.letter!r}")
        return self

    def check(self, text: str) -> bool:
        return checks.keywords_letter_frequency(
            text, self.letter, self.let_frequency, self.let_relation
        )


# --- language and case ------------------------------------------------------------------------


class ResponseLanguage(InstructionArgs):
    language: StrictStr = Field(description="ISO 639-1 code as langdetect names it, e.g. 'de'.")

    @model_validator(mode="after")
    def _known_language(self) -> ResponseLanguage:
        if self.language not in LANGDETECT_LANGUAGES:
            known = ", ".join(sorted(LANGDETECT_LANGUAGES))
            raise ValueError(f"language {self.language!r} cannot be detected (supported: {known})")
        return self

    def check(self, text: str) -> bool:
        return checks.response_language(text, self.language)


class CapitalWordFrequency(InstructionArgs):
    capital_frequency: Count
    capital_relation: Relation

    def check(self, text: str) -> bool:
        return checks.capital_word_frequency(text, self.capital_frequency, self.capital_relation)


class EnglishCapital(InstructionArgs):
    def check(self, text: str) -> bool:
        return checks.english_capital(text)


class EnglishLowercase(InstructionArgs):
    def check(self, text: str) -> bool:
        return checks.english_lowercase(text)


# --- length -----------------------------------------------------------------------------------


class NumberSentences(InstructionArgs):
    num_sentences: Count
    relation: Relation

    def check(self, text: str) -> bool:
        return checks.number_sentences(text, self.num_sentences, self.relation)


class NumberParagraphs(InstructionArgs):
    num_paragraphs: Count

    def check(self, text: str) -> bool:
        return checks.number_paragraphs(text, self.num_paragraphs)


class NumberWords(InstructionArgs):
    num_words: Count
    relation: Relation

    def check(self, text: str) -> bool:
        return checks.number_words(text, self.num_words, self.relation)


class NthParagraphFirstWord(InstructionArgs):
    num_paragraphs: Count
    nth_paragraph: Count
    first_word: Text

    @model_validator(mode="after")
    def _nth_in_range(self) -> NthParagraphFirstWord:
        if not 1 <= self.nth_paragraph <= self.num_paragraphs:
            raise ValueError(
                f"nth_paragraph must be between 1 and num_paragraphs ({self.num_paragraphs}), "
                f"got {self.nth_paragraph}"
            )
        return self

    def check(self, text: str) -> bool:
        return checks.nth_paragraph_first_word(
            text, self.num_paragraphs, self.nth_paragraph, self.first_word
        )


# --- detectable content and format ------------------------------------------------------------


class NumberPlaceholders(InstructionArgs):
    num_placeholders: Count

    def check(self, text: str) -> bool:
        return checks.number_placeholders(text, self.num_placeholders)


class Postscript(InstructionArgs):
    postscript_marker: Text = Field(description="e.g. 'P.S.' or 'P.P.S'.")

    def check(self, text: str) -> bool:
        return checks.postscript(text, self.postscript_marker)


class NumberBulletLists(InstructionArgs):
    num_bullets: Count

    def check(self, text: str) -> bool:
        return checks.number_bullet_lists(text, self.num_bullets)


class ConstrainedResponse(InstructionArgs):
    def check(self, text: str) -> bool:
        return checks.constrained_response(text)


class NumberHighlightedSections(InstructionArgs):
    num_highlights: Count

    def check(self, text: str) -> bool:
        return checks.number_highlighted_sections(text, self.num_highlights)


class MultipleSections(InstructionArgs):
    section_spliter: Text = Field(description="The section marker, e.g. 'SECTION' or 'Day'.")
    num_sections: Count

    def check(self, text: str) -> bool:
        return checks.multiple_sections(text, self.section_spliter, self.num_sections)


class JsonFormat(InstructionArgs):
    def check(self, text: str) -> bool:
        return checks.json_format(text)


class Title(InstructionArgs):
    def check(self, text: str) -> bool:
        return checks.title(text)


# --- combinations, start and end, punctuation -------------------------------------------------


class TwoResponses(InstructionArgs):
    def check(self, text: str) -> bool:
        return checks.two_responses(text)


class RepeatPrompt(InstructionArgs):
    prompt_to_repeat: Text = Field(
        description="The request the response must start with (defaults to reference.prompt)."
    )

    def check(self, text: str) -> bool:
        return checks.repeat_prompt(text, self.prompt_to_repeat)


class EndChecker(InstructionArgs):
    end_phrase: Text

    def check(self, text: str) -> bool:
        return checks.end_checker(text, self.end_phrase)


class Quotation(InstructionArgs):
    def check(self, text: str) -> bool:
        return checks.quotation(text)


class NoComma(InstructionArgs):
    def check(self, text: str) -> bool:
        return checks.no_comma(text)


INSTRUCTIONS: dict[str, type[InstructionArgs]] = {
    "keywords:existence": KeywordsExistence,
    "keywords:frequency": KeywordsFrequency,
    "keywords:forbidden_words": KeywordsForbiddenWords,
    "keywords:letter_frequency": KeywordsLetterFrequency,
    "language:response_language": ResponseLanguage,
    "length_constraints:number_sentences": NumberSentences,
    "length_constraints:number_paragraphs": NumberParagraphs,
    "length_constraints:number_words": NumberWords,
    "length_constraints:nth_paragraph_first_word": NthParagraphFirstWord,
    "detectable_content:number_placeholders": NumberPlaceholders,
    "detectable_content:postscript": Postscript,
    "detectable_format:number_bullet_lists": NumberBulletLists,
    "detectable_format:constrained_response": ConstrainedResponse,
    "detectable_format:number_highlighted_sections": NumberHighlightedSections,
    "detectable_format:multiple_sections": MultipleSections,
    "detectable_format:json_format": JsonFormat,
    "detectable_format:title": Title,
    "combination:two_responses": TwoResponses,
    "combination:repeat_prompt": RepeatPrompt,
    "startend:end_checker": EndChecker,
    "startend:quotation": Quotation,
    "change_case:capital_word_frequency": CapitalWordFrequency,
    "change_case:english_capital": EnglishCapital,
    "change_case:english_lowercase": EnglishLowercase,
    "punctuation:no_comma": NoComma,
}

# Every kwarg name any instruction takes. Datasets in the Hugging Face layout of IFEval give each
# instruction all of these, null where unused; those nulls are dropped before validation.
ALL_KWARG_NAMES = frozenset(name for model in INSTRUCTIONS.values() for name in model.model_fields)

_REPEAT_PROMPT = "combination:repeat_prompt"


def parse_instruction(
    index: int, instruction_id: str, kwargs: dict[str, Any], prompt: str | None
) -> InstructionArgs:
    """Validate one instruction's kwargs; ``ValueError`` naming the instruction and kwarg.

    ``index`` (0-based) and ``instruction_id`` only serve the error message. ``prompt`` (the
    request's ``reference.prompt``) is what ``combination:repeat_prompt`` repeats when its
    kwargs do not say.
    """
    where = f"instruction {index} ({instruction_id!r})"
    model = INSTRUCTIONS.get(instruction_id)
    if model is None:
        known = ", ".join(sorted(INSTRUCTIONS))
        raise ValueError(f"{where}: unknown instruction id (known ids: {known})")
    present = {
        name: value
        for name, value in kwargs.items()
        if not (value is None and name in ALL_KWARG_NAMES)
    }
    if instruction_id == _REPEAT_PROMPT and "prompt_to_repeat" not in present:
        if prompt is None:
            raise ValueError(f"{where}: needs kwarg 'prompt_to_repeat' or reference.prompt")
        present["prompt_to_repeat"] = prompt
    try:
        return model.model_validate(present)
    except ValidationError as exc:
        raise ValueError(f"{where}: {_describe(exc, model)}") from None


def _describe(exc: ValidationError, model: type[InstructionArgs]) -> str:
    expected = ", ".join(model.model_fields) or "none"
    problems = []
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            problems.append(f"unexpected kwarg {name!r} (expected kwargs: {expected})")
        elif error["type"] == "missing":
            problems.append(f"missing kwarg {name!r}")
        elif name:
            problems.append(f"kwarg {name!r}: {error['msg']}")
        else:
            problems.append(error["msg"].removeprefix("Value error, "))
    return "; ".join(problems)


__all__ = [
    "ALL_KWARG_NAMES",
    "INSTRUCTIONS",
    "LANGDETECT_LANGUAGES",
    "InstructionArgs",
    "parse_instruction",
]
