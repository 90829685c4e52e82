"""Assertion tests that are plain calls with literal values, run as calls instead.

Most HumanEval/MBPP-style checks are ``assert candidate(<literals>) == <literal>``. Such a
check needs no test code inside the sandbox: the solution's function is called with the
arguments and its return value, as plain data, is compared outside with the same ``==``
(or truth test) that the checker process would apply. That saves the checker process (a fork,
the parse of the test code and a pipe round trip per call) and keeps the expected values out
of the sandbox altogether. Any check that is not of that shape (helper functions, loops,
imports, tolerances) runs in the checker as before, so the reward never depends on which path
ran.
"""

from __future__ import annotations

import ast
import functools
import json
from dataclasses import dataclass
from typing import Any, Literal

from sandboxes.harness.zygote import UnsupportedValueError, encode

CANDIDATE = "candidate"


@dataclass(frozen=True, slots=True)
class LiteralCheck:
    """One counted test: call the entry point with ``arguments`` (tagged plain data, as JSON)
    and test the value as ``kind`` says."""

    arguments: str
    kind: Literal["equals", "is", "truthy", "falsy"]
    expected: Any = None

    def passed(self, value: Any) -> bool:
        if self.kind == "equals":
            return bool(value == self.expected)
        if self.kind == "is":
            return value is self.expected
        return bool(value) == (self.kind == "truthy")


# A GRPO group sends one problem's tests with every response: parsed once per worker. Test
# code longer than this is parsed each time rather than kept.
CACHED_TEST_CODE_CHARS = 64 * 1024


def literal_checks(test_code: str) -> tuple[LiteralCheck, ...] | None:
    """The tests of HumanEval-style ``test_code`` (a ``check(candidate)`` function) if every
    statement is a literal call check or a no-op, else None (run it in the checker).

    The statements that the checker would not count (asserts that do not use the solution,
    such as ``assert True, "..."``) must be constants, so that skipping them changes nothing;
    the module level may hold docstrings and literal assignments (HumanEval's ``METADATA``).
    """
    if len(test_code) > CACHED_TEST_CODE_CHARS:
        return _literal_checks(test_code)
    return _cached_literal_checks(test_code)


def _literal_checks(test_code: str) -> tuple[LiteralCheck, ...] | None:
    try:
        tree = ast.parse(test_code)
    except (SyntaxError, ValueError, RecursionError):
        return None
    checks = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    if len(checks) != 1 or checks[0].name != "check" or not _takes_candidate(checks[0]):
        return None
    if not all(_is_inert(node) for node in tree.body if node is not checks[0]):
        return None
    found: list[LiteralCheck] = []
    for statement in checks[0].body:
        if _is_docstring(statement) or (
            isinstance(statement, ast.Assert)
            and _is_constant(statement.test)
            and (statement.msg is None or _is_constant(statement.msg))
        ):
            continue  # not a test of the solution, and nothing happens when it runs
        check = _literal_check(statement)
        if check is None:
            return None
        found.append(check)
    return tuple(found) or None


_cached_literal_checks = functools.lru_cache(maxsize=256)(_literal_checks)


def _takes_candidate(function: ast.FunctionDef) -> bool:
    arguments = function.args
    return (
        [a.arg for a in arguments.args] == [CANDIDATE]
        and not arguments.posonlyargs
        and not arguments.kwonlyargs
        and arguments.vararg is None
        and arguments.kwarg is None
        and not function.decorator_list
    )


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and _is_constant(node.value)


def _is_constant(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant)


def _is_inert(node: ast.stmt) -> bool:
    if _is_docstring(node):
        return True
    if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
        return _literal(node.value) is not _NOT_LITERAL
    return False


_NOT_LITERAL = object()


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


def _call_arguments(node: ast.expr) -> str | None:
    """The tagged arguments of ``candidate(<literals>)``, as JSON; None for anything else."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == CANDIDATE
        and not node.keywords
        and not any(isinstance(a, ast.Starred) for a in node.args)
    ):
        return None
    values = [_literal(a) for a in node.args]
    if any(v is _NOT_LITERAL for v in values):
        return None
    try:
        return json.dumps(encode(values))
    except (UnsupportedValueError, ValueError, TypeError, RecursionError):
        return None  # e.g. a complex number: plain data cannot carry it


def _literal_check(statement: ast.stmt) -> LiteralCheck | None:
    if not isinstance(statement, ast.Assert) or (
        statement.msg is not None and not _is_constant(statement.msg)
    ):
        return None
    test = statement.test
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        arguments = _call_arguments(test.operand)
        return None if arguments is None else LiteralCheck(arguments, "falsy")
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, right = test.left, test.comparators[0]
        if isinstance(test.ops[0], ast.Eq):
            arguments = _call_arguments(left)
            if arguments is None:  # `value == candidate(...)`: == is symmetric here
                arguments, right = _call_arguments(right), left
            expected = _literal(right)
            if arguments is None or expected is _NOT_LITERAL:
                return None
            return LiteralCheck(arguments, "equals", expected)
        if isinstance(test.ops[0], ast.Is) and isinstance(right, ast.Constant):
            arguments = _call_arguments(left)
            if arguments is None or not any(right.value is c for c in (True, False, None)):
                return None
            return LiteralCheck(arguments, "is", right.value)
        return None
    arguments = _call_arguments(test)
    return None if arguments is None else LiteralCheck(arguments, "truthy")
