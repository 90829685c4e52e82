"""The IFEval checks: one pure function per instruction type, ``text + parameters -> bool``.

Each function decides whether ``text`` follows one instruction, with the semantics of Google's
IFEval reference (``instruction_following_eval``), quirks included, so that rewards agree
verdict for verdict with the published benchmark numbers. The functions know nothing about
requests or modes: strict mode calls them on the response, loose mode on its variants
(:mod:`reward_service.verifiers.ifeval`). Parameters arrive validated
(:mod:`reward_service.verifiers._ifeval_instructions`).

One deliberate difference: where the reference treats a keyword, a postscript marker or a
section marker as a regular expression, these checks match it literally. On the published
data that changes nothing (no such value contains a regex metacharacter), and it means that a
keyword such as ``C++`` is searched for instead of crashing the evaluation or matching
something else. And where the reference's regex backtracks quadratically on degenerate text
(bullets, placeholders, titles), an equivalent linear scan gives the same counts; a test checks
them against the regexes on random texts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Literal

from reward_service.verifiers import _ifeval_text as text_tools

Relation = Literal["less than", "at least"]
RELATIONS: tuple[Relation, ...] = ("less than", "at least")

# The three answers `detectable_format:constrained_response` allows.
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")

_WHITESPACE_RUN_RE = re.compile(r"\s*")
_HIGHLIGHT_RE = re.compile(r"\*[^\n\*]*\*")
_BOLD_HIGHLIGHT_RE = re.compile(r"\*\*[^\n\*]*\*\*")
_PARAGRAPH_DIVIDER_RE = re.compile(r"\s?\*\*\*\s?")
_PPS_RE = re.compile(r"p\.\s?p\.\s?s")
_PS_RE = re.compile(r"p\.\s?s\.")
_JSON_FENCE_OPENINGS = ("```json", "```Json", "```JSON", "```")
# Characters that end the first word of a paragraph (`nth_paragraph_first_word`).
_FIRST_WORD_STOP = frozenset(".,?!'\"")


def compare(actual: int, relation: Relation, threshold: int) -> bool:
    """``actual < threshold`` for "less than", ``actual >= threshold`` for "at least"."""
    return actual < threshold if relation == "less than" else actual >= threshold


def _contains(needle: str, text: str) -> bool:
    return re.search(re.escape(needle), text, flags=re.IGNORECASE) is not None


# --- keywords ---------------------------------------------------------------------------------


def keywords_existence(text: str, keywords: Sequence[str]) -> bool:
    """Every keyword occurs in ``text`` (case-insensitive substring match)."""
    return all(_contains(keyword, text) for keyword in keywords)


def keywords_frequency(text: str, keyword: str, frequency: int, relation: Relation) -> bool:
    """The number of non-overlapping, case-insensitive occurrences of ``keyword`` compares."""
    occurrences = len(re.findall(re.escape(keyword), text, flags=re.IGNORECASE))
    return compare(occurrences, relation, frequency)


def keywords_forbidden_words(text: str, forbidden_words: Sequence[str]) -> bool:
    """No forbidden word occurs as a whole word (``\\b`` on both sides, case-insensitive)."""
    return not any(
        re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) for word in forbidden_words
    )


def keywords_letter_frequency(text: str, letter: str, frequency: int, relation: Relation) -> bool:
    """The number of times the (lower-cased) letter occurs in the lower-cased text compares."""
    target = letter.lower()
    occurrences = sum(1 for char in text.lower() if char == target)
    return compare(occurrences, relation, frequency)


# --- language and case ------------------------------------------------------------------------


def response_language(text: str, language: str) -> bool:
    """langdetect names ``language``; a text it cannot judge (no letters) counts as followed."""
    detected = text_tools.detect_language(text)
    return detected is None or detected == language


def english_capital(text: str) -> bool:
    """All cased characters are upper case and the text is English (undecidable counts)."""
    return text.isupper() and text_tools.detect_language(text) in (None, "en")


def english_lowercase(text: str) -> bool:
    """All cased characters are lower case and the text is English (undecidable counts)."""
    return text.islower() and text_tools.detect_language(text) in (None, "en")


def capital_word_frequency(text: str, capital_frequency: int, capital_relation: Relation) -> bool:
    """The number of all-capitals word tokens (``nltk.word_tokenize``) compares."""
    capitals = sum(1 for token in text_tools.word_tokens(text) if token.isupper())
    return compare(capitals, capital_relation, capital_frequency)


# --- length -----------------------------------------------------------------------------------


def number_sentences(text: str, num_sentences: int, relation: Relation) -> bool:
    """The Punkt sentence count compares with ``num_sentences``."""
    return compare(text_tools.count_sentences(text), relation, num_sentences)


def number_words(text: str, num_words: int, relation: Relation) -> bool:
    """The ``\\w+`` word count compares with ``num_words``."""
    return compare(text_tools.count_words(text), relation, num_words)


def number_paragraphs(text: str, num_paragraphs: int) -> bool:
    """Exactly ``num_paragraphs`` paragraphs separated by ``***`` dividers.

    An empty chunk before the first or after the last divider does not count; an empty chunk
    between two dividers fails the instruction.
    """
    chunks = _PARAGRAPH_DIVIDER_RE.split(text)
    count = len(chunks)
    for index, chunk in enumerate(chunks):
        if not chunk.strip():
            if index in (0, len(chunks) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def nth_paragraph_first_word(
    text: str, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    """Exactly ``num_paragraphs`` non-empty ``\\n\\n``-separated paragraphs, and paragraph
    ``nth_paragraph`` starts with ``first_word`` (case-insensitive, quotes and punctuation
    after the word ignored).

    As in the reference, empty chunks are left out of the count but not out of the indexing,
    so a blank chunk before paragraph n shifts which chunk is examined.
    """
    chunks = text.split("\n\n")
    count = sum(1 for chunk in chunks if chunk.strip())
    if nth_paragraph > count:
        return False
    paragraph = chunks[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].lstrip("'").lstrip('"')
    found = []
    for char in word:
        if char in _FIRST_WORD_STOP:
            break
        found.append(char.lower())
    return count == num_paragraphs and "".join(found) == first_word.lower()


# --- detectable content and format ------------------------------------------------------------


def number_placeholders(text: str, num_placeholders: int) -> bool:
    """At least ``num_placeholders`` square-bracket placeholders such as ``[name]``."""
    return count_placeholders(text) >= num_placeholders


def count_placeholders(text: str) -> int:
    """Number of matches of the reference's ``\\[.*?\\]`` (brackets closed on the same line).

    Scanned in linear time: the regex itself retries every ``[`` of a line that has no ``]``
    after it, which takes minutes on a long run of ``[``.
    """
    count = 0
    for line in text.split("\n"):
        pos = 0
        while (start := line.find("[", pos)) != -1:
            end = line.find("]", start + 1)
            if end == -1:
                break  # no later `[` of this line can close either
            count += 1
            pos = end + 1
    return count


def postscript(text: str, postscript_marker: str) -> bool:
    """A postscript marker occurs (case-insensitive).

    ``P.S.`` and ``P.P.S`` allow a space after each dot (``p. s.``); any other marker must occur
    literally.
    """
    lowered = text.lower()
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        return _PPS_RE.search(lowered) is not None
    if marker == "P.S.":
        return _PS_RE.search(lowered) is not None
    return marker.lower() in lowered


def number_bullet_lists(text: str, num_bullets: int) -> bool:
    """Exactly ``num_bullets`` markdown bullet lines (``* item`` or ``- item``)."""
    return count_bullets(text, "*") + count_bullets(text, "-") == num_bullets


def count_bullets(text: str, marker: Literal["*", "-"]) -> int:
    """Number of matches of the reference's bullet regex, ``^\\s*\\*[^\\*].*$`` (marker ``*``)
    or ``^\\s*-.*$`` (marker ``-``), searched with ``re.MULTILINE`` as ``re.findall`` would.

    As in the reference, ``^\\s*`` runs over blank lines, and ``[^\\*]`` may take a newline, so
    a match can end on the next line. Computed in linear time: the regex rescans the same
    whitespace from every line start, which is quadratic in a run of blank lines.
    """
    n = len(text)
    count = 0
    resume = 0  # where findall goes on after the last match
    run_end = -1  # end of the whitespace run that covers the current line start
    line_start = 0
    while line_start <= n:
        if line_start >= resume:
            if line_start >= run_end:
                match = _WHITESPACE_RUN_RE.match(text, line_start)
                run_end = match.end() if match else line_start
            # `\s*` is greedy and a shorter run would leave whitespace where the marker must be.
            first = run_end
            if marker == "*":
                matched = text.startswith("*", first) and first + 1 < n and text[first + 1] != "*"
                rest = first + 2
            else:
                matched = text.startswith("-", first)
                rest = first + 1
            if matched:
                count += 1
                line_end = text.find("\n", rest)
                resume = n if line_end == -1 else line_end
        newline = text.find("\n", line_start)
        if newline == -1:
            break
        line_start = newline + 1
    return count


def constrained_response(text: str) -> bool:
    """The text contains one of "My answer is yes.", "... no." or "... maybe."."""
    stripped = text.strip()
    return any(option in stripped for option in CONSTRAINED_RESPONSES)


def number_highlighted_sections(text: str, num_highlights: int) -> bool:
    """At least ``num_highlights`` non-blank ``*highlighted*`` spans on one line.

    ``**bold**`` spans count as well (the single-asterisk pattern only sees their blank ``**``
    halves, the double-asterisk pattern sees the span).
    """
    count = sum(1 for h in _HIGHLIGHT_RE.findall(text) if h.strip("*").strip())
    count += sum(1 for h in _BOLD_HIGHLIGHT_RE.findall(text) if h[2:-2].strip())
    return count >= num_highlights


def multiple_sections(text: str, section_spliter: str, num_sections: int) -> bool:
    """At least ``num_sections`` section headers: the marker followed by a number
    (``SECTION 1``), optionally with one whitespace character around each part."""
    marker = re.escape(section_spliter.strip())
    headers = re.findall(rf"\s?{marker}\s?\d+\s?", text)
    return len(headers) >= num_sections


def json_format(text: str) -> bool:
    """The whole text, without one surrounding ```` ``` ```` / ```` ```json ```` fence, is JSON."""
    body = text.strip()
    for opening in _JSON_FENCE_OPENINGS:
        body = body.removeprefix(opening)
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting is not JSON
        return False
    return True


def title(text: str) -> bool:
    """A non-blank title in double angular brackets, such as ``<<poem of joy>>``, on one line.

    The reference's ``<<[^\\n]+>>`` matches at most once per line, from the line's first ``<<``
    to its last ``>>`` (with at least one character between); found here in linear time, as the
    regex needs quadratic time on a long line of ``<<``.
    """
    for line in text.split("\n"):
        start = line.find("<<")
        if start == -1:
            continue
        end = line.rfind(">>")
        if end >= start + 3 and line[start : end + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


# --- combinations, start and end, punctuation -------------------------------------------------


def two_responses(text: str) -> bool:
    """Exactly two different non-blank responses separated by ``******``.

    Blank text before the first or after the last separator is allowed, a blank response
    between two separators is not.
    """
    parts = text.split("******")
    responses = []
    for index, part in enumerate(parts):
        if part.strip():
            responses.append(part.strip())
        elif index not in (0, len(parts) - 1):
            return False
    return len(responses) == 2 and responses[0] != responses[1]


def repeat_prompt(text: str, prompt_to_repeat: str) -> bool:
    """The text starts with the request, repeated word for word (case-insensitive)."""
    return text.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(text: str, end_phrase: str) -> bool:
    """The text (ignoring surrounding blanks and double quotes) ends with ``end_phrase``."""
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(text: str) -> bool:
    """The whole text is wrapped in double quotation marks."""
    stripped = text.strip()
    return len(stripped) > 1 and stripped[0] == '"' and stripped[-1] == '"'


def no_comma(text: str) -> bool:
    """The text has no comma (only the ASCII ``,`` counts)."""
    return "," not in text
