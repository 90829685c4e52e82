"""The code domain's semantics through the running service: test formats, partial credit,
budgets, compile errors, languages, and reference validation."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from reward_service.verifiers._code_compare import (
    call_result_matches,
    stdout_matches,
    values_match,
)
from reward_service.verifiers._extract import last_fenced_block
from tests.conftest import running_server
from trainer.client import RewardClient, RewardServiceError


@pytest.fixture(scope="module")
def client() -> Iterator[RewardClient]:
    with running_server(domains=["code"]) as server, RewardClient(server.grpc_target) as c:
        yield c


def fenced(code: str, tag: str = "python") -> str:
    return f"<think>```python\nprint('draft')\n```</think>\nFinal:\n```{tag}\n{code}\n```\n"


def score(client: RewardClient, response: str, reference: dict, **options: object):
    return client.score("code", response, reference, options=options or None)


def test_stdin_stdout_partial_credit_is_exact(client: RewardClient) -> None:
    # Doubles its input, except for inputs divisible by 7: 14 of 20 tests pass.
    code = "n = int(input())\nprint(n * 2 if n % 7 else -1)"
    tests = [{"input": f"{n}\n", "output": f"{n * 2}\n"} for n in range(1, 21)]
    result = score(client, fenced(code), {"tests": tests})
    assert result.status == "ok"
    assert result.reward == 18 / 20  # 7 and 14 fail
    assert result.metrics["tests_passed"] == 18 and result.metrics["tests_total"] == 20
    assert result.detail == "test 7: wrong output"


def test_stdin_reads_as_in_a_python_process(client: RewardClient) -> None:
    # `python3 solution.py < input` (what reference harnesses run) translates no newlines on
    # input: a CRLF line keeps its "\r"; stdout goes out as written.
    code = "import sys\nline = input()\nprint(len(line), sys.stdin.read().count('\\r'))"
    reference = {"tests": [{"input": "ab\r\ncd\r\n", "output": "3 1"}]}
    assert score(client, fenced(code), reference).reward == 1.0


def test_every_test_runs_after_failures(client: RewardClient) -> None:
    code = "n = int(input())\nassert n != 1\nprint(n)"
    tests = [{"input": str(n), "output": str(n)} for n in range(1, 5)]
    result = score(client, fenced(code), {"tests": tests})
    assert result.reward == 3 / 4
    assert "test 1: runtime_error" in result.detail


def test_output_comparison_is_token_wise_with_float_tolerance(client: RewardClient) -> None:
    code = "print('  1.0000000001   2\\n\\n3 ')"
    reference = {"tests": [{"input": "", "output": "1 2 3\n"}]}
    assert score(client, fenced(code), reference).reward == 1.0
    assert score(client, fenced(code), reference, exact_output=True).reward == 0.0


def test_call_based_tests_compare_json_values(client: RewardClient) -> None:
    code = "def pair(a, b):\n    return (a + b, [a, b])"
    tests = [
        {"input": "[1, 2]", "output": "[3, [1, 2]]"},
        {"input": "[2, 2]", "output": "[[4, [2, 2]]]"},  # APPS wraps outputs in a list
        {"input": "[0.1, 0.2]", "output": "[0.3, [0.1, 0.2]]"},
        {"input": "[1, 1]", "output": "[3, [1, 1]]"},
    ]
    result = score(client, fenced(code), {"tests": tests, "fn_name": "pair"})
    assert result.reward == 3 / 4


def test_call_based_solution_class_method(client: RewardClient) -> None:
    code = "class Solution:\n    def twoSum(self, nums, target):\n" + (
        "        seen = {}\n        for i, n in enumerate(nums):\n"
        "            if target - n in seen:\n                return [seen[target - n], i]\n"
        "            seen[n] = i\n"
    )
    tests = [{"input": json.dumps([[2, 7, 11, 15], 9]), "output": "[0, 1]"}]
    assert score(client, fenced(code), {"tests": tests, "fn_name": "twoSum"}).reward == 1.0


def test_missing_function_fails_every_test(client: RewardClient) -> None:
    result = score(
        client,
        fenced("def other(): pass"),
        {"tests": [{"input": "[1]", "output": "1"}], "fn_name": "f"},
    )
    assert result.reward == 0.0 and "runtime_error" in result.detail


def test_mbpp_style_top_level_asserts(client: RewardClient) -> None:
    code = "def remove_Occ(s, ch):\n    return s.replace(ch, '')"
    asserts = (
        'assert remove_Occ("hello","l") == "heo"\n'
        'assert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"\n'
        'assert remove_Occ("xx","x") == "?"\n'
    )
    result = score(client, fenced(code), {"assert_code": asserts})
    assert result.reward == 3 / 4 and result.metrics["tests_total"] == 4


def test_many_failing_asserts_give_partial_credit_not_timeout(client: RewardClient) -> None:
    # 400 verdicts with long messages are far more than a pipe holds: the worker must read
    # them while the checker writes, or the checker blocks until the budget ends.
    checks = "".join(f"    assert candidate({i}) == {i}, 'x' * 600\n" for i in range(400))
    code = "def f(x):\n    return x if x % 2 else -1"
    result = score(
        client, fenced(code), {"assert_code": f"def check(candidate):\n{checks}", "fn_name": "f"}
    )
    assert (result.reward, result.status) == (0.5, "ok")
    assert result.metrics["tests_total"] == 400


def test_unparsable_test_code_is_reported(client: RewardClient) -> None:
    result = score(client, fenced("def f(x):\n    return x"), {"assert_code": "assert f(1) == (1"})
    assert result.reward == 0.0 and "the test code does not parse" in result.detail


@pytest.mark.parametrize(
    "reference",
    [
        {"tests": [{"input": "", "output": ""}]},
        {"fn_name": "f", "tests": [{"input": "[1]", "output": "1"}]},
        {"fn_name": "f", "assert_code": "def check(candidate):\n    assert candidate(1) == 1\n"},
    ],
    ids=["stdio", "call", "literal_checks"],
)
def test_syntax_error_scores_zero(client: RewardClient, reference: dict) -> None:
    result = score(client, fenced("def f(:\n  pass"), reference)
    assert (result.reward, result.status) == (0.0, "ok")
    assert result.detail.startswith("compile error: SyntaxError"), result.detail


def test_total_budget_exceeded_is_timeout_with_zero(client: RewardClient) -> None:
    code = "import time\ntime.sleep(0.4)\nprint(1)"
    tests = [{"input": "", "output": "1"}] * 5
    result = score(client, fenced(code), {"tests": tests, "time_limit_s": 1.0})
    assert (result.reward, result.status) == (0.0, "timeout")
    assert result.metrics["tests_passed"] >= 1  # some passed before the budget ran out


def test_per_test_time_limit_fails_only_slow_tests(client: RewardClient) -> None:
    code = "import time\nn = int(input())\ntime.sleep(n)\nprint(n)"
    tests = [{"input": "0", "output": "0"}, {"input": "2", "output": "2"}]
    result = score(
        client, fenced(code), {"tests": tests, "time_limit_s": 5, "test_time_limit_s": 0.5}
    )
    assert (result.reward, result.status) == (0.5, "ok")
    assert "test 2: timeout" in result.detail


def test_cpp_solution_and_compile_error(client: RewardClient) -> None:
    code = "#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<'\\n';}"
    tests = [{"input": "2 3", "output": "5"}, {"input": "10 -4", "output": "6"}]
    result = score(client, fenced(code, "cpp"), {"tests": tests})
    assert (result.reward, result.metrics["language"]) == (1.0, "cpp")
    broken = score(client, fenced("int main( {", "c++"), {"tests": tests})
    assert broken.reward == 0.0 and broken.detail.startswith("compile error:")
    forced = score(client, fenced(code, ""), {"tests": tests, "language": "cpp"})
    assert forced.reward == 1.0


def test_responses_without_usable_code(client: RewardClient) -> None:
    reference = {"tests": [{"input": "", "output": ""}]}
    assert score(client, "no code here", reference).detail == "no fenced code block found"
    rust = score(client, fenced("fn main() {}", "rust"), reference)
    assert rust.reward == 0.0 and "'rust' is not supported" in rust.detail


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ({}, "give exactly one of tests (non-empty) or assert_code"),
        ({"tests": [{"input": "1", "output": "1"}], "assert_code": "assert True"}, "exactly one"),
        ({"tests": [{"input": "1"}], "time_limit_s": -1}, "time_limit_s"),
        ({"tests": [{"stdin": "1"}]}, "tests.0.stdin: Extra inputs are not permitted"),
        ({"assert_code": "assert f(1)", "language": "cpp"}, "Python only"),
        (
            {"fn_name": "f", "tests": [{"input": "[1]"}, {"input": "[1, "}]},
            "tests[1].input is not JSON",
        ),
    ],
)
def test_malformed_references_are_invalid(
    client: RewardClient, reference: dict, message: str
) -> None:
    with pytest.raises(RewardServiceError) as info:
        score(client, fenced("print(1)"), reference)
    assert message in info.value.message


def test_last_fenced_block() -> None:
    text = "```python\na = 1\n```\ntext\n```\nb = 2\n```"
    assert last_fenced_block(text) == ("", "b = 2\n")
    assert last_fenced_block("```C++ \nint x;\n```") == ("c++", "int x;\n")
    assert last_fenced_block("```python\nunclosed") is None


def test_comparison_rules() -> None:
    assert stdout_matches("1 2\n3", "1\n2 3\n")
    assert not stdout_matches("1 2", "1 2 3")
    assert stdout_matches("0.30000000000000004", "0.3")
    assert not stdout_matches("0.31", "0.3")
    assert not stdout_matches("nan", "1")
    assert values_match((1, [2.0000000001]), [1, [2]])
    assert not values_match(True, 1)
    assert call_result_matches(5, [5]) and not call_result_matches(5, [5, 5])
