"""The math verifier in-process: a table of answers a careful human grader would score, plus
the text helpers that find the answer."""

from __future__ import annotations

import pytest

from reward_service.verifiers._extract import after_think, last_boxed
from reward_service.verifiers._prm800k import grade_answer
from reward_service.verifiers.base import Status, Verdict, VerifierOptions
from reward_service.verifiers.math import MathReference, MathVerifier


@pytest.fixture(scope="module")
def verifier() -> MathVerifier:
    v = MathVerifier()
    v.setup()
    return v


def boxed(answer: str) -> str:
    return f"Working it out carefully, the final answer is $\\boxed{{{answer}}}$."


def score(verifier: MathVerifier, response: str, ground_truth: str) -> Verdict:
    return verifier.verify(response, MathReference(ground_truth=ground_truth), VerifierOptions())


MATRIX = "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"
SPACED_MATRIX = "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"
VECTOR_HALF = "\\begin{pmatrix} \\frac{1}{2} \\\\ 3 \\end{pmatrix}"
UNION = "(-\\infty, 0) \\cup (1, \\infty)"


# (id, response, ground_truth, expected reward)
CASES: list[tuple[str, str, str, float]] = [
    # fractions and decimals
    ("frac-vs-decimal", boxed("\\frac{1}{2}"), "0.5", 1.0),
    ("decimal-vs-frac", boxed("0.5"), "\\frac{1}{2}", 1.0),
    ("frac-vs-wrong-decimal", boxed("\\frac{1}{3}"), "0.5", 0.0),
    ("decimal-vs-wrong-frac", boxed("0.25"), "\\frac{1}{3}", 0.0),
    ("frac-equivalent", boxed("\\frac{2}{4}"), "\\frac{1}{2}", 1.0),
    ("slash-frac", boxed("3/4"), "\\frac{3}{4}", 1.0),
    ("frac12-shorthand", boxed("\\frac12"), "\\frac{1}{2}", 1.0),
    ("dfrac", boxed("\\dfrac{3}{4}"), "\\frac{3}{4}", 1.0),
    ("tfrac", boxed("\\tfrac{3}{4}"), "0.75", 1.0),
    ("leading-dot-decimal", boxed(".75"), "\\frac34", 1.0),
    ("truncated-decimal-wrong", boxed("0.33"), "\\frac{1}{3}", 0.0),
    ("mixed-number-words", boxed("7 3/4"), "\\frac{31}{4}", 1.0),
    # integers, signs, plain wrong answers
    ("integer", boxed("42"), "42", 1.0),
    ("integer-wrong", boxed("41"), "42", 0.0),
    ("integer-trailing-zeros", boxed("42.0"), "42", 1.0),
    ("negative", boxed("-7"), "-7", 1.0),
    ("negative-sign-lost", boxed("7"), "-7", 0.0),
    ("negative-frac", boxed("-\\frac{1}{2}"), "-0.5", 1.0),
    ("negative-frac-position", boxed("\\frac{-1}{2}"), "-\\frac{1}{2}", 1.0),
    ("plain-wrong", boxed("17"), "\\frac{3}{5}", 0.0),
    ("extra-variable-wrong", boxed("2x"), "2", 0.0),
    ("extra-solution-wrong", boxed("3, 4"), "3", 0.0),
    ("mixed-number-latex", boxed("3\\frac{1}{2}"), "\\frac{7}{2}", 1.0),
    ("word-answer-wrong", boxed("\\text{no solution}"), "5", 0.0),
    # percent, degrees, units, thousands separators, currency
    ("percent-vs-number", boxed("25\\%"), "25", 1.0),
    ("number-vs-percent", boxed("25"), "25\\%", 1.0),
    ("percent-wrong", boxed("20\\%"), "25\\%", 0.0),
    ("degrees-circ", boxed("30^\\circ"), "30", 1.0),
    ("degrees-braced-circ", boxed("30^{\\circ}"), "30", 1.0),
    ("degrees-wrong", boxed("60^\\circ"), "30", 0.0),
    ("text-unit", boxed("5\\text{ cm}"), "5", 1.0),
    ("text-unit-squared", boxed("12\\text{ cm}^2"), "12", 1.0),
    ("unit-word", boxed("5 inches"), "5", 1.0),
    ("text-unit-wrong-value", boxed("6\\text{ cm}"), "5", 0.0),
    ("thousands-comma", boxed("1,000"), "1000", 1.0),
    ("thousands-comma-in-gold", boxed("1234567"), "1,234,567", 1.0),
    ("thousands-latex-comma", boxed("10{,}000"), "10000", 1.0),
    ("thousands-wrong", boxed("1,001"), "1000", 0.0),
    ("thousands-magnitude-wrong", boxed("1,000,000"), "1000", 0.0),
    ("scale-word", boxed("2.5 million"), "2500000", 1.0),
    ("unit-word-currency", boxed("20 dollars"), "20", 1.0),
    ("dollars", boxed("\\$18.90"), "18.90", 1.0),
    ("text-answer", boxed("\\text{Monday}"), "\\text{Monday}", 1.0),
    # equations, roots, pi, scientific notation
    ("equation-vs-value", boxed("x=3"), "3", 1.0),
    ("value-vs-equation", boxed("3"), "x=3", 1.0),
    ("equation-wrong", boxed("x=4"), "3", 0.0),
    ("sqrt-nested-braces", boxed("\\frac{\\sqrt{3}}{2}"), "\\frac{\\sqrt3}{2}", 1.0),
    ("sqrt-rationalised", boxed("\\frac{1}{\\sqrt{2}}"), "\\frac{\\sqrt{2}}{2}", 1.0),
    ("sqrt-simplified", boxed("2\\sqrt{2}"), "\\sqrt{8}", 1.0),
    ("sqrt-wrong", boxed("\\sqrt{3}"), "\\sqrt{2}", 0.0),
    ("sqrt-vs-decimal-approx-wrong", boxed("1.41"), "\\sqrt{2}", 0.0),
    ("pi-multiple", boxed("2\\pi"), "2\\pi", 1.0),
    ("pi-product-order", boxed("\\pi r^2"), "r^2\\pi", 1.0),
    ("pi-frac", boxed("\\frac{\\pi}{3}"), "\\frac{1}{3}\\pi", 1.0),
    ("pi-approx-wrong", boxed("3.14"), "\\pi", 0.0),
    ("infinity-sign-wrong", boxed("-\\infty"), "\\infty", 0.0),
    ("complex-reordered", boxed("4i+3"), "3+4i", 1.0),
    ("complex-conjugate-wrong", boxed("3-4i"), "3+4i", 0.0),
    ("choice-letter", boxed("\\text{(B)}"), "B", 1.0),
    ("scientific-times", boxed("1.5\\times 10^{-3}"), "0.0015", 1.0),
    ("scientific-cdot", boxed("3 \\cdot 10^{5}"), "300000", 1.0),
    ("scientific-wrong-exponent", boxed("1.5\\times 10^{-4}"), "0.0015", 0.0),
    ("scientific-large", boxed("6.02\\times10^{23}"), "6.02 \\times 10^{23}", 1.0),
    ("scientific-large-wrong", boxed("6.03\\times10^{23}"), "6.02 \\times 10^{23}", 0.0),
    ("polynomial-expanded", boxed("x^2+2x+1"), "(x+1)^2", 1.0),
    ("polynomial-wrong", boxed("x^2+1"), "(x+1)^2", 0.0),
    # intervals
    ("interval-closed", boxed("[0, 1]"), "[0,1]", 1.0),
    ("interval-half-open", boxed("[0,1)"), "[0, 1)", 1.0),
    ("interval-wrong-bracket", boxed("[0,1]"), "[0,1)", 0.0),
    ("interval-open-vs-closed", boxed("(0,1)"), "[0,1]", 0.0),
    ("interval-infinity", boxed("(-\\infty, 3]"), "(-\\infty,3]", 1.0),
    ("interval-left-right", boxed("\\left[ -2, 5 \\right)"), "[-2,5)", 1.0),
    ("interval-union", boxed(UNION.replace(" ", "")), UNION, 1.0),
    ("interval-union-wrong", boxed(UNION.replace("(1", "[1")), UNION, 0.0),
    # tuples and sets
    ("tuple", boxed("(1, 2)"), "(1,2)", 1.0),
    ("tuple-order-matters", boxed("(2, 1)"), "(1,2)", 0.0),
    ("tuple-with-fractions", boxed("\\left(\\frac{1}{2}, -3\\right)"), "(0.5,-3)", 1.0),
    ("tuple-wrong-length", boxed("(1, 2, 3)"), "(1,2)", 0.0),
    ("set-any-order", boxed("\\{2, 1\\}"), "\\{1, 2\\}", 1.0),
    ("set-missing-element", boxed("\\{1\\}"), "\\{1, 2\\}", 0.0),
    ("solution-list-any-order", boxed("3, -2"), "-2, 3", 1.0),
    ("solution-list-wrong", boxed("3, 2"), "-2, 3", 0.0),
    # matrices
    ("matrix", boxed(SPACED_MATRIX), MATRIX, 1.0),
    ("matrix-wrong-entry", boxed(SPACED_MATRIX.replace("4", "5")), MATRIX, 0.0),
    ("matrix-transposed", boxed(MATRIX.replace("2\\\\3", "3\\\\2")), MATRIX, 0.0),
    (
        "vector-fraction-entries",
        boxed(VECTOR_HALF),
        VECTOR_HALF.replace("\\frac{1}{2}", "0.5"),
        1.0,
    ),
    # where the answer is taken from
    ("last-boxed-counts", "First \\boxed{3}, then on reflection \\boxed{4}.", "4", 1.0),
    ("earlier-boxed-ignored", "First \\boxed{4}, then on reflection \\boxed{3}.", "4", 0.0),
    ("fbox", "The answer is \\fbox{12}.", "12", 1.0),
    ("boxed-without-braces", "The answer is $\\boxed 5$.", "5", 1.0),
    ("no-boxed-answer", "The answer is 5.", "5", 0.0),
    ("empty-boxed", "The answer is \\boxed{}.", "5", 0.0),
    ("unbalanced-boxed", "The answer is \\boxed{\\frac{1}{2}", "\\frac{1}{2}", 0.0),
    ("think-then-answer", "<think>maybe \\boxed{7}</think>So \\boxed{8}.", "8", 1.0),
    ("think-answer-ignored", "<think>it is \\boxed{8}</think>So \\boxed{7}.", "8", 0.0),
    ("think-no-final-box", "<think>it is \\boxed{8}</think>The answer is 8.", "8", 0.0),
    ("boxed-gold", boxed("\\frac{1}{2}"), "\\boxed{\\frac{1}{2}}", 1.0),
]


@pytest.mark.parametrize(
    ("response", "ground_truth", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_math_equivalence(
    verifier: MathVerifier, response: str, ground_truth: str, expected: float
) -> None:
    verdict = score(verifier, response, ground_truth)
    assert verdict.status == Status.OK
    assert verdict.reward == expected, verdict.metrics


def test_metrics_name_the_extracted_answer_and_the_grader_that_matched(
    verifier: MathVerifier,
) -> None:
    verdict = score(verifier, boxed("\\dfrac{1}{2}"), "0.5")
    assert verdict.metrics == {"extracted": "\\dfrac{1}{2}", "matched_by": "prm800k"}
    verdict = score(verifier, boxed("3\\cdot10^5"), "300000")  # PRM800K's integer rule says no
    assert verdict.metrics == {"extracted": "3\\cdot10^5", "matched_by": "math_verify"}
    verdict = score(verifier, boxed("7"), "8")
    assert verdict.metrics == {"extracted": "7", "matched_by": "none"}


def test_missing_answer_says_why(verifier: MathVerifier) -> None:
    verdict = score(verifier, "I think it is 5.", "5")
    assert (verdict.reward, verdict.status) == (0.0, Status.OK)
    assert verdict.detail == "no \\boxed{} answer found"


def test_ground_truth_must_not_be_empty() -> None:
    with pytest.raises(ValueError):
        MathReference(ground_truth="")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{5}", "5"),
        ("a \\boxed{1} b \\boxed{2} c", "2"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed {x}", "x"),
        ("\\boxed 5", "5"),
        ("$\\boxed 5$.", "5"),
        ("\\boxed 5.", "5"),
        ("\\fbox{a}", "a"),
        ("\\boxed{1} then \\fbox{2}", "2"),
        ("\\fbox{1} then \\boxed{2}", "2"),
        ("\\boxed{}", ""),
        ("\\boxed{\\frac{1}{2}", None),
        ("\\boxed{1} and \\boxed{2", None),
        ("\\boxed", None),
        ("\\boxedfoo{1}", None),
        ("no answer", None),
        ("", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("no tags", "no tags"),
        ("<think>a</think>b", "b"),
        ("<think>a</think>b</think>c", "c"),
        ("<think>unfinished thought", "<think>unfinished thought"),
        ("</think>", ""),
    ],
)
def test_after_think(response: str, expected: str) -> None:
    assert after_think(response) == expected


@pytest.mark.parametrize(
    ("given", "gold", "expected"),
    [
        ("\\dfrac12", "0.5", True),
        ("5\\text{ cm}^2", "5", True),
        ("30^{\\circ}", "30", True),
        ("1{,}000", "1000", True),
        ("k = 5", "5", True),
        ("7 3/4", "\\frac{31}{4}", True),
        ("\\sqrt2/2", "\\frac{1}{\\sqrt{2}}", True),
        ("\\left( \\frac{1}{2}, 3 \\right)", "(0.5,3)", True),
        ("\\{3, 1\\}", "1, 3", True),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
        ("\\text{Monday}", "monday", True),
        ("3\\cdot 10^5", "300000", False),  # integers must be written as integers
        ("(2,1)", "(1,2)", False),
        ("[1,2]", "(1,2)", False),
        ("(1,2)", "1,2", False),
        ("\\frac{1}{3}", "0.33", False),
        ("2", "2,2", False),
    ],
)
def test_prm800k_grader_alone(given: str, gold: str, expected: bool) -> None:
    assert grade_answer(given, gold) is expected


@pytest.mark.parametrize(
    ("given", "gold"),
    [
        ("__import__('os').system('true')", "0"),  # sympy's parser evaluates Python
        ("9^{9^{9}}", "1"),  # a 370-million-digit integer
        ("((9^{99})^{99})^{99}", "1"),
        ("x^{123456789}", "x"),
        ("\\frac{1}{0}", "1"),
        ("(" * 500 + "1" + ")" * 500, "2"),
        ("", ""),
    ],
)
def test_prm800k_grader_refuses_quickly_and_never_raises(given: str, gold: str) -> None:
    assert grade_answer(given, gold) is False
