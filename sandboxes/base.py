"""The sandbox interface shared by every backend, and the backend registry.

A :class:`Sandbox` is one running isolated environment with the harness of
``sandboxes/harness/zygote.py`` inside. It runs one :class:`Submission` at a time, all of its
tests inside the same sandbox (a fork per test), and returns a :class:`SandboxResult` with the
raw per-test outputs; comparing them with expected outputs is the verifier's job and happens
outside, so expected outputs never enter the sandbox.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

HARNESS_SOURCE = Path(__file__).with_name("harness") / "zygote.py"


class SandboxUnavailableError(RuntimeError):
    """The backend cannot run on this host (missing tool, no engine, no permission)."""


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Resource limits of each untrusted process (and the sandbox's private tmpfs)."""

    memory_mb: int = 1024  # address space per process
    nproc: int = 64  # processes of the sandbox user
    fsize_mb: int = 16  # largest file a process may write
    nofile: int = 64  # open files per process
    output_bytes: int = 1 << 20  # stdout kept per test; more fails the test
    tmpfs_mb: int = 64  # the sandbox's whole writable space

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class Submission:
    """What to run: the code, how its tests are shaped, and the budget."""

    code: str
    language: Literal["python", "cpp"] = "python"
    mode: Literal["stdio", "call", "assert"] = "stdio"
    inputs: list[str] = field(default_factory=list)  # stdin texts, or JSON argument lists
    fn_name: str | None = None  # call mode: the function (or Solution method) under test
    test_code: str | None = None  # assert mode: HumanEval/MBPP-style test code
    entry_point: str | None = None  # assert mode: the function bound to `candidate`
    budget_s: float = 5.0  # total wall time of all tests
    test_time_limit_s: float | None = None  # per test, within the budget
    compile_timeout_s: float = 10.0  # C++ compilation, not counted in the budget
    # call mode: "apps" (JSON arguments; a Solution method will do; a fresh process after a
    # crash) or "check" (literal assertion checks: tagged arguments, the top-level function
    # only, and the tests after a crash fail, as in the checker process)
    calls: Literal["apps", "check"] = "apps"


@dataclass(slots=True)
class TestRun:
    """The raw outcome of one stdin/stdout or call-based test (the solution's output, not a
    verdict: the verifier compares it with the expected output outside the sandbox)."""

    status: str  # ok | timeout | runtime_error | output_limit
    stdout: str
    stderr: str
    exit: str
    time_s: float
    result: Any = None  # call-based tests: the return value, as tagged plain data


@dataclass(slots=True)
class SandboxResult:
    """Everything a run produced. ``assert_verdicts`` come from the checker process only."""

    tests: list[TestRun] = field(default_factory=list)
    compile_error: str | None = None
    timed_out: bool = False
    elapsed_s: float = 0.0
    assert_verdicts: list[dict[str, Any]] | None = None
    assert_error: str | None = None
    stderr: str = ""
    lost: str | None = None  # why the sandbox itself died or was killed during the run


class Sandbox(ABC):
    """A sandbox that runs submissions: :meth:`start` it (or let :meth:`run` start it), then
    :meth:`close` it. Constructors take the limits and backend-specific keyword options."""

    name: ClassVar[str]

    def __init__(self, limits: SandboxLimits | None = None, **options: Any) -> None:
        self.limits = limits or SandboxLimits()

    @abstractmethod
    def start(self) -> None:
        """Start the sandbox (or raise :class:`SandboxUnavailableError`)."""

    @classmethod  # noqa: B027 - optional: most backends can say more
    def check_available(cls) -> None:
        """Raise :class:`SandboxUnavailableError` saying why this backend cannot run here."""

    @abstractmethod
    def run(self, submission: Submission) -> SandboxResult:
        """Run every test of ``submission``; never raises for what the submission does."""

    @abstractmethod
    def close(self) -> None:
        """Stop the sandbox and everything in it."""

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_NOT_BACKENDS = {"base", "protocol", "harness_client", "check", "harness"}


def backends() -> dict[str, type[Sandbox]]:
    """Every backend of the package: each module that defines ``BACKEND`` (adding a backend
    is adding a module)."""
    package = importlib.import_module("sandboxes")
    found: dict[str, type[Sandbox]] = {}
    for module in pkgutil.iter_modules(package.__path__):
        if module.name in _NOT_BACKENDS or module.name.startswith("_"):
            continue
        backend = getattr(importlib.import_module(f"sandboxes.{module.name}"), "BACKEND", None)
        if backend is not None:
            found[backend.name] = backend
    return found


def get_backend(name: str) -> type[Sandbox]:
    """The backend class registered under ``name``."""
    known = backends()
    if name not in known:
        raise ValueError(f"unknown sandbox backend {name!r} (known: {', '.join(sorted(known))})")
    return known[name]


def available_backends() -> dict[str, str | None]:
    """Each backend's name, mapped to None if it can run here, else the reason it cannot."""
    status: dict[str, str | None] = {}
    for name, backend in sorted(backends().items()):
        try:
            backend.check_available()
            status[name] = None
        except SandboxUnavailableError as exc:
            status[name] = str(exc)
    return status
