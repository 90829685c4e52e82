"""Sandboxes for untrusted code: one interface (:class:`sandboxes.base.Sandbox`), several
backends registered by name (``bwrap``, ``docker``), and the in-sandbox harness."""

from sandboxes.base import (
    Sandbox,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
    Submission,
    TestRun,
    available_backends,
    get_backend,
)

__all__ = [
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailableError",
    "Submission",
    "TestRun",
    "available_backends",
    "get_backend",
]
