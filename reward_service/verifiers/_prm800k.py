"""A PRM800K / DeepScaleR-style answer grader, written from their published rules.

Both answers are normalised the way the Hendrycks MATH ``strip_string`` and the PRM800K
``_normalize`` describe (units, degrees, percent, ``\\dfrac``, ``\\frac12``, ``a/b``, ``x=``
prefixes, thousands separators ...). Equal strings are correct; otherwise tuples, intervals and
sets are split into elements (brackets must match; sets and bare lists in any order) and each
pair is compared: integers strictly as strings, anything else by asking sympy whether the
difference simplifies to 0, but only for short, letter-poor expressions without big powers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from decimal import Decimal

import sympy
from sympy.parsing.sympy_parser import (
    implicit_multiplication,
    parse_expr,
    standard_transformations,
)

_REPLACEMENTS = (
    ("\n", ""),
    ("{,}", ","),
    ("\\!", ""),
    ("\\,", ""),
    ("\\;", ""),
    ("\\:", ""),
    ("dfrac", "frac"),
    ("tfrac", "frac"),
    ("\\left", ""),
    ("\\right", ""),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("\\circ", ""),
    ("\\degree", ""),
    ("°", ""),
    ("\\$", ""),
    ("$", ""),
    ("\\%", ""),
    ("%", ""),
)
# `\ ` is a space, but `\\ ` is a row break followed by one (in matrices).
_CONTROL_SPACE_RE = re.compile(r"(?<!\\)\\ ")
_TEXT_CMD = r"\\(?:text|textrm|textbf|mbox|mathrm|mathbf|operatorname)\s*"
# A unit written after the value: `5\text{ cm}`, `3\mbox{ m}^2`; only when something precedes it.
_TRAILING_TEXT_RE = re.compile(rf"(?<=\S)\s*{_TEXT_CMD}\{{[^{{}}]*\}}(?:\^\{{?\d\}}?)?$")
_TEXT_RE = re.compile(rf"{_TEXT_CMD}\{{([^{{}}]*)\}}")
_UNITS = (
    "degree|radian|percent|cm|mm|km|centimeter|millimeter|kilometer|meter|metre|mile|inch|inche"
    "|foot|feet|yard|second|sec|minute|min|hour|hr|day|week|month|year|unit|square|sq|cubic"
    "|dollar|cent|gram|kg|kilogram|pound|lb|ounce|liter|litre|gallon|mph"
)
_UNIT_RE = re.compile(rf"(?<![A-Za-z\\])(?:{_UNITS})(?:es|s)?(?:\^\{{?\d\}}?)?(?![A-Za-z])")
_SCALES = {"thousand": 3, "million": 6, "billion": 9, "trillion": 12}
_SCALE_RE = re.compile(rf"(\d+(?:\.\d+)?)\s*({'|'.join(_SCALES)})(?![A-Za-z])")
_MIXED_NUMBER_RE = re.compile(r"(?<![\d.])(\d+)\s+(\d+/\d+)")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_INT_RE = re.compile(r"-?\d+(?:\.0*)?")
_SLASH_FRAC_RE = re.compile(r"(-?\d+)/(\d+)")

_OPENERS, _CLOSERS = "([{", ")]}"
# The spaces keep `\pi r` from fusing into one name `pir`.
_LATEX_TO_SYMPY = (
    ("\\infty", " oo "),
    ("\\cdot", "*"),
    ("\\times", "*"),
    ("\\div", "/"),
    ("\\pi", " pi "),
    ("{", "("),
    ("}", ")"),
    ("^", "**"),
)
_FRAC_RE = re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}")
_SQRT_RE = re.compile(r"\\sqrt\{([^{}]*)\}")
_SCI_RE = re.compile(r"(\d)[eE]([+-]?\d+)")
_SAFE_CHARS_RE = re.compile(r"[0-9A-Za-z+\-*/(). ]*")
_NAMES_RE = re.compile(r"[A-Za-z]+")
_KNOWN_NAMES = {"sqrt", "pi", "oo"}
# Exponents sympy can take without building huge integers: a short number or one letter.
_POWER_RE = re.compile(r"\*\*(?!\(?-?\d{1,2}\)?+(?![\d*])|\(?[A-Za-z]\)?+(?!\*\*))")
_MAX_ANSWER_CHARS = 1000
_MAX_SYMPY_CHARS = 120
_MAX_LETTERS = 2
_TRANSFORMS = (*standard_transformations, implicit_multiplication)
_LOCALS: dict[str, sympy.Basic] = {c: sympy.Symbol(c) for c in string.ascii_letters} | {
    "e": sympy.E
}


def grade_answer(given: str, ground_truth: str) -> bool:
    """Whether ``given`` states the same answer as ``ground_truth``.

    Never raises an ``Exception``: whatever fails inside reads as "not equal". ``BaseException``
    (the worker's ``VerifierTimeout``) passes through.
    """
    try:
        return _grade(given, ground_truth)
    except Exception:  # a failure to parse or simplify means "not shown equal"
        return False


def _grade(given: str, ground_truth: str) -> bool:
    if max(len(given), len(ground_truth)) > _MAX_ANSWER_CHARS:
        return False  # not a final answer; math-verify still judges it
    ans, gold = normalize(given), normalize(ground_truth)
    if not ans or not gold:
        return False
    if ans == gold or ("\\" not in ans and ans.lower() == gold.lower()):
        return True
    gold_open, gold_elems, gold_close = _split(gold)
    ans_open, ans_elems, ans_close = _split(ans)
    if len(gold_elems) != len(ans_elems):
        return False
    if len(gold_elems) > 1 and (gold_open, gold_close) != (ans_open, ans_close):
        return False  # (a, b) is not [a, b], nor an interval a set
    if not gold_open and len(gold_elems) > 1:  # sets and bare lists: any order
        # Equal strings pair off first, so that sympy only sees what is left.
        unmatched = Counter(gold_elems)
        unmatched.subtract(ans_elems)
        rest = list((+unmatched).elements())
        for elem in (Counter(ans_elems) - Counter(gold_elems)).elements():
            match = next((g for g in rest if _elems_equal(elem, g)), None)
            if match is None:
                return False
            rest.remove(match)
        return True
    return all(_elems_equal(a, g) for a, g in zip(ans_elems, gold_elems, strict=True))


def normalize(answer: str) -> str:
    """The canonical string form of an answer that the grader compares."""
    s = _CONTROL_SPACE_RE.sub(" ", answer.strip())
    for old, new in _REPLACEMENTS:
        s = s.replace(old, new)
    s = _TRAILING_TEXT_RE.sub("", s)
    s = _TEXT_RE.sub(r"\1", s)
    if re.search(r"\d", s):  # a bare word such as `square` may be the answer itself
        s = _UNIT_RE.sub("", s)
    s = _SCALE_RE.sub(lambda m: format(Decimal(m[1]).scaleb(_SCALES[m[2]]), "f"), s)
    s = _MIXED_NUMBER_RE.sub(r"\1+\2", s)
    lhs, eq, rhs = s.partition("=")
    if eq and "=" not in rhs and len(lhs.strip()) <= 2:  # `x = 3`, `k=5`
        s = rhs
    s = s.strip()
    if _THOUSANDS_RE.fullmatch(s):  # before spaces go, so that `1, 234` stays a list
        s = s.replace(",", "")
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\w)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"(?<!\d)\.(?=\d)", "0.", s)
    if (m := _SLASH_FRAC_RE.fullmatch(s)) is not None:
        s = f"\\frac{{{m[1]}}}{{{m[2]}}}"
    while len(s) > 1 and s[0] == "{" and _closing_index(s, 0) == len(s) - 1:
        s = s[1:-1]
    if _INT_RE.fullmatch(s):
        s = str(int(s.partition(".")[0]))
    return s


def _closing_index(s: str, start: int) -> int:
    """Index of the bracket closing the one at ``start`` (any of ``([{``), or -1."""
    depth = 0
    for i in range(start, len(s)):
        if s[i] in _OPENERS:
            depth += 1
        elif s[i] in _CLOSERS:
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split(s: str) -> tuple[str, list[str], str]:
    """(opening bracket, elements, closing bracket) of a tuple, interval, set or bare list."""
    opening = closing = ""
    inner = s
    if s.startswith("\\{") and s.endswith("\\}") and _closing_index(s, 1) == len(s) - 1:
        inner = s[2:-2]  # a set reads like a bare list `1, 2`: both are unordered
    elif s[:1] in "([" and s[-1:] in ")]" and _closing_index(s, 0) == len(s) - 1:
        opening, inner, closing = s[0], s[1:-1], s[-1]
    elems, depth, start = [], 0, 0
    for i, char in enumerate(inner):
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth -= 1
        elif char == "," and depth == 0:
            elems.append(inner[start:i])
            start = i + 1
    elems.append(inner[start:])
    if len(elems) == 1:  # no top-level comma: `(3)` or `(x+1)(x-1)` is one element
        return "", [s], ""
    return opening, elems, closing


def _elems_equal(given: str, gold: str) -> bool:
    if given == gold:
        return True
    if _INT_RE.fullmatch(gold) or _INT_RE.fullmatch(given):
        return False  # integers are exact: `3` is not `\frac{6}{2}`, nor `2.9999999`
    return _equal_under_sympy(given, gold)


def _equal_under_sympy(given: str, gold: str) -> bool:
    given_expr, gold_expr = _to_sympy_text(given), _to_sympy_text(gold)
    if given_expr is None or gold_expr is None:
        return False
    expr = f"({gold_expr})-({given_expr})"
    letters = set(_NAMES_RE.findall(expr)) - _KNOWN_NAMES  # single letters by now
    if len(expr) > _MAX_SYMPY_CHARS or len(letters) > _MAX_LETTERS or _POWER_RE.search(expr):
        return False  # simplify could run for minutes, or build a giant integer in C
    if _has_power_tower(parse_expr(expr, _LOCALS, _TRANSFORMS, evaluate=False)):
        return False
    diff = parse_expr(expr, _LOCALS, _TRANSFORMS)
    return diff == 0 or sympy.simplify(diff) == 0


def _has_power_tower(expr: sympy.Basic) -> bool:
    """Whether a power is raised to a power, as in ``(9^{99})^{99}``: exponents multiply."""
    return any(
        isinstance(node, sympy.Pow)
        and any(
            isinstance(inner, sympy.Pow) and inner.exp.is_number and abs(inner.exp) > 1
            for inner in sympy.preorder_traversal(node.base)
        )
        for node in sympy.preorder_traversal(expr)
    )


def _to_sympy_text(latex: str) -> str | None:
    """``latex`` as text for sympy's parser, or ``None`` if it uses anything else.

    The parser evaluates its input as Python, so only digits, single letters, operators and a
    few known names may reach it.
    """
    s = _SCI_RE.sub(r"\1*10**(\2)", latex)
    previous = None
    while previous != s:
        previous = s
        s = _FRAC_RE.sub(r"((\1)/(\2))", s)
        s = _SQRT_RE.sub(r" sqrt(\1)", s)
    for old, new in _LATEX_TO_SYMPY:
        s = s.replace(old, new)
    if not _SAFE_CHARS_RE.fullmatch(s):
        return None
    names = _NAMES_RE.findall(s)
    if any(len(name) > 1 and name not in _KNOWN_NAMES for name in names):
        return None  # `sin`, `log`, `abc`: not something this grader understands
    return s
