"""How the code verifier decides whether one test's output is right (outside the sandbox).

The rules follow the reference harnesses (APPS/TACO/PRIME/LiveCodeBench): stdin/stdout
outputs match token by token, whitespace-insensitive, numbers within a tolerance; call-based
results match as JSON values, where a one-element list of the expected output also counts
(APPS wraps outputs that way) and tuples equal lists.
"""

from __future__ import annotations

import math
from typing import Any

FLOAT_TOLERANCE = 1e-6


def _numbers_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)


def _as_float(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def stdout_matches(actual: str, expected: str, *, exact: bool = False) -> bool:
    """Token-wise comparison with a float tolerance; ``exact`` compares the bytes, except
    for trailing whitespace at the very end."""
    if exact:
        return actual.rstrip() == expected.rstrip()
    got, want = actual.split(), expected.split()
    if len(got) != len(want):
        return False
    for a, b in zip(got, want, strict=True):
        if a == b:
            continue
        x, y = _as_float(a), _as_float(b)
        if x is None or y is None or not _numbers_close(x, y):
            return False
    return True


def values_match(actual: Any, expected: Any) -> bool:
    """JSON-value equality with tuples as lists and floats within the tolerance."""
    if isinstance(actual, tuple):
        actual = list(actual)
    if isinstance(expected, tuple):
        expected = list(expected)
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    if isinstance(actual, int | float) and isinstance(expected, int | float):
        return actual == expected or _numbers_close(float(actual), float(expected))
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(
            values_match(a, b) for a, b in zip(actual, expected, strict=True)
        )
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            values_match(actual[k], expected[k]) for k in actual
        )
    return bool(actual == expected)


def call_result_matches(actual: Any, expected: Any) -> bool:
    """:func:`values_match`, also accepting APPS's ``[expected]`` wrapping."""
    if values_match(actual, expected):
        return True
    return isinstance(expected, list) and len(expected) == 1 and values_match(actual, expected[0])
