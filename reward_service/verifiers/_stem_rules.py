"""Rule-based matching of STEM answers: what settles a comparison without a judge.

``compare`` answers ``True`` (same answer), ``False`` (certainly different: two numbers apart
beyond the tolerance, or two different options) or ``None`` (the rules cannot tell: free text
that differs, or forms they do not parse), which is when a judge may be asked.
"""

from __future__ import annotations

import math
import re
import string

_TEXT_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mathbf|operatorname)\{([^{}]*)\}")
_LATEX_SPACES = re.compile(r"\\[,;:! ]|~")
_SCIENTIFIC = re.compile(
    r"^([-+]?\d*\.?\d+)\s*(?:\\times|\\cdot|x|\u00d7|\*)\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?"
)
_EXPRESSION_MARKS = re.compile(r"[+=(<>]")
_NUMBER_PREFIX = re.compile(r"^[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_FRACTION = re.compile(r"^\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$|^([-+]?\d+)\s*/\s*(\d+)$")
_OPTION = re.compile(r"^\(?([A-Za-z])\)?[.):]?$")
_OPTION_PREFIX = re.compile(r"^(?:option|choice|answer)\s*[:\-]?\s*", re.I)


def normalize(text: str) -> str:
    """Lower-cased text without LaTeX wrappers, math delimiters, spacing and end punctuation."""
    text = _TEXT_WRAPPERS.sub(r"\1", text)
    text = _LATEX_SPACES.sub(" ", text).replace("$", "").replace("\\%", "%")
    text = text.strip().strip(".").strip()
    return " ".join(text.lower().split())


def parse_number(text: str) -> float | None:
    """The value of a numeric answer, ignoring trailing units (``9.8 m/s^2``), thousands
    separators, scientific forms (``3\\times10^{8}``, ``3e8``), fractions and percent."""
    text = normalize(text).replace(" ", "")
    if not text:
        return None
    scientific = _SCIENTIFIC.match(text)
    if scientific and not _EXPRESSION_MARKS.search(text[scientific.end() :]):
        return float(scientific.group(1)) * 10 ** int(scientific.group(2))
    fraction = _FRACTION.match(text)
    if fraction:
        numerator, denominator = (
            (fraction.group(1), fraction.group(2))
            if fraction.group(1)
            else (fraction.group(3), fraction.group(4))
        )
        try:
            return float(numerator) / float(denominator)
        except (ValueError, ZeroDivisionError):
            return None
    number = _NUMBER_PREFIX.match(text)
    if not number:
        return None
    rest = text[number.end() :]
    if rest and (rest[0] in string.digits + "^/" or _EXPRESSION_MARKS.search(rest)):
        return None  # an expression ("2x+1"), not a number with a unit ("9.8 m/s^2")
    # A percent sign stays a unit: "50%" matches "50", as graders of these datasets expect.
    return float(number.group(0).replace(",", ""))


def numbers_match(a: float, b: float, relative_tolerance: float) -> bool:
    return math.isclose(a, b, rel_tol=relative_tolerance, abs_tol=1e-12)


def option_index(answer: str, choices: list[str]) -> int | None:
    """Which option ``answer`` names: a letter (``B``, ``(b)``, ``Option B``) or the text of
    one option; ``None`` if neither."""
    text = _OPTION_PREFIX.sub("", normalize(answer))
    letter = _OPTION.match(text)
    if letter:
        index = ord(letter.group(1).lower()) - ord("a")
        if index < len(choices):
            return index
    texts = [normalize(choice) for choice in choices]
    return texts.index(text) if text in texts else None


def compare(
    answer: str, ground_truth: str, choices: list[str], relative_tolerance: float
) -> bool | None:
    """True, False, or None when the rules cannot settle it (see the module docstring)."""
    if choices:
        given, wanted = option_index(answer, choices), option_index(ground_truth, choices)
        if given is not None and wanted is not None:
            return given == wanted
    if normalize(answer) == normalize(ground_truth):
        return True
    given_number, wanted_number = parse_number(answer), parse_number(ground_truth)
    if given_number is not None and wanted_number is not None:
        return numbers_match(given_number, wanted_number, relative_tolerance)
    return None
