"""Distinct math samples for throughput runs.

math-verify caches parses, so a benchmark that repeats inputs measures its cache. Every sample
here is different; about a third are wrong answers, and the forms mix what models write.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from fractions import Fraction

FILLER = (
    "We expand the expression, collect like terms and check the boundary cases. "
    "Substituting back confirms the value. "
)


def math_samples(count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` distinct (response, ground_truth) pairs."""
    return list(itertools.islice(iter_math_samples(seed), count))


def iter_math_samples(seed: int) -> Iterator[tuple[str, str]]:
    """Distinct (response, ground_truth) pairs, as many as are drawn."""
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    while True:
        kind = rng.randrange(6)
        wrong = rng.random() < 0.33
        if kind == 0:  # fraction vs decimal
            value = Fraction(rng.randint(1, 999), rng.choice([2, 4, 5, 8, 10, 16, 20, 25]))
            shown = value + (Fraction(1, 7) if wrong else 0)
            truth = f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
            answer = (
                f"\\frac{{{shown.numerator}}}{{{shown.denominator}}}"
                if wrong
                else f"{float(shown):g}"
            )
        elif kind == 1:  # integers
            value_int = rng.randint(-(10**6), 10**6)
            truth = str(value_int)
            answer = str(value_int + (rng.randint(1, 9) if wrong else 0))
        elif kind == 2:  # radicals
            a, b = rng.randint(2, 50), rng.choice([2, 3, 5, 6, 7, 10, 11])
            truth = f"{a}\\sqrt{{{b}}}"
            answer = f"\\sqrt{{{a * a * b + (1 if wrong else 0)}}}"
        elif kind == 3:  # tuples
            x, y = rng.randint(-99, 99), rng.randint(-99, 99)
            truth = f"({x}, {y})"
            answer = f"({y}, {x})" if wrong and x != y else f"({x},{y})"
        elif kind == 4:  # polynomial expressions
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            truth = f"x^2 + {a + b}x + {a * b}"
            answer = f"(x+{a})(x+{b + (1 if wrong else 0)})"
        else:  # percent and units
            value_int = rng.randint(1, 999)
            truth = str(value_int)
            answer = (
                f"{value_int + (1 if wrong else 0)}\\%"
                if rng.random() < 0.5
                else (f"{value_int + (1 if wrong else 0)}\\text{{ cm}}")
            )
        response = (
            "<think>"
            + FILLER * rng.randint(1, 12)
            + "</think>\n"
            + FILLER * rng.randint(0, 3)
            + f"The answer is $\\boxed{{{answer}}}$."
        )
        if (response, truth) not in seen:
            seen.add((response, truth))
            yield response, truth
