"""The sandbox backends directly: the registry, sandbox-check's probes, and the docker
backend where an engine runs (skipped, with the reason, where none does)."""

from __future__ import annotations

import pytest

from sandboxes.base import SandboxUnavailableError, Submission, available_backends, backends
from sandboxes.check import check_backends
from sandboxes.docker import DockerSandbox


def test_backends_are_found_by_module() -> None:
    assert {"bwrap", "docker"} <= set(backends())
    assert available_backends()["bwrap"] is None  # installed by deploy/install.sh


def test_sandbox_check_finds_bwrap_isolated() -> None:
    [report] = check_backends(["bwrap"])
    assert report.available, report.reason
    assert report.probes and report.isolated, report.probes


def docker_or_skip() -> DockerSandbox:
    sandbox = DockerSandbox()
    try:
        sandbox.start()
    except SandboxUnavailableError as exc:
        pytest.skip(f"docker backend unavailable here: {exc}")
    return sandbox


def test_docker_backend_runs_and_isolates() -> None:
    with docker_or_skip() as sandbox:
        result = sandbox.run(Submission(code="print(int(input()) * 2)", inputs=["21"]))
        assert result.tests[0].stdout.strip() == "42"
        checked = sandbox.run(
            Submission(
                code="def add(a, b):\n    return a + b\n",
                mode="assert",
                entry_point="add",
                test_code="def check(candidate):\n    assert candidate(1, 2) == 3\n",
            )
        )
        assert checked.assert_verdicts == [{"passed": True}]
    [report] = check_backends(["docker"])
    assert report.isolated, report.probes
