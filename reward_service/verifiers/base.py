"""The verifier contract: what every domain implements.

A verifier turns one model response plus its typed reference into a :class:`Verdict`.
It runs inside a worker process (never in the gateway's event loop), one call at a time,
under a deadline that the worker enforces: first with a soft timer that raises
:class:`VerifierTimeout` inside :meth:`Verifier.verify`, then, if the call does not come
back, by killing the process. Verifiers therefore need no timeout logic of their own, but
must not swallow ``BaseException`` (``VerifierTimeout`` derives from it on purpose, so that
libraries' broad ``except Exception`` blocks cannot hide it).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class Status(enum.StrEnum):
    """Outcome of scoring one request (the ``status`` field of the public API)."""

    OK = "ok"
    INVALID = "invalid"  # the request was malformed: a 4xx / INVALID_ARGUMENT, never a silent 0
    TIMEOUT = "timeout"  # the sample's own computation exceeded its budget
    ERROR = "error"  # infrastructure failure: the trainer should mask the sample


MetricValue = float | int | str | bool


@dataclass(slots=True)
class Verdict:
    """What a verifier says about one response."""

    reward: float
    status: Status = Status.OK
    detail: str | None = None
    metrics: dict[str, MetricValue] = field(default_factory=dict)


class VerifierTimeout(BaseException):
    """Raised inside a verifier call when its budget runs out (see the module docstring)."""


class StrictModel(BaseModel):
    """Base for reference and option models: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class VerifierOptions(StrictModel):
    """Per-request options every domain accepts; a domain may extend this model."""

    timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Compute budget for this sample in seconds (capped by the server's maximum).",
    )


class Verifier(ABC):
    """Base class of a domain's verifier.

    Subclasses set ``domain``, ``reference_model`` (a :class:`StrictModel` describing the
    request's ``reference`` object) and optionally ``options_model``, ``description`` and
    ``default_timeout_s``, implement :meth:`verify`, and register themselves with
    :func:`reward_service.verifiers.registry.register`.
    """

    domain: ClassVar[str]
    description: ClassVar[str] = ""
    reference_model: ClassVar[type[StrictModel]]
    options_model: ClassVar[type[VerifierOptions]] = VerifierOptions
    default_timeout_s: ClassVar[float] = 5.0

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """``config`` is the domain's section of the server settings (may be empty)."""
        self.config = config or {}
        # Set by setup() when this verifier cannot score on this host (e.g. no sandbox): its
        # requests answer ``error`` with this reason, and a distributed worker refuses to start
        # rather than answer every job of its domain with an error.
        self.unavailable: str | None = None

    @classmethod
    def worker_budget_s(cls, reference: Any, options: Any, max_timeout_s: float) -> float:
        """Seconds the worker lets one :meth:`verify` call run before stopping it.

        By default the request's ``options.timeout_s`` or :attr:`default_timeout_s`, capped by
        the server's maximum. A verifier that enforces a budget of its own (code runs its tests
        under one) returns more, so that its own limit is the one that answers.
        """
        return min(options.timeout_s or cls.default_timeout_s, max_timeout_s)

    def setup(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Warm up once per worker process (load models, fill caches). Default: nothing."""

    @abstractmethod
    def verify(self, response: str, reference: Any, options: Any) -> Verdict:
        """Score ``response`` against a validated ``reference`` under validated ``options``."""
