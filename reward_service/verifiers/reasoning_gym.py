"""The ``reasoning_gym`` domain: the Reasoning Gym task's own ``score_answer``.

The service is stateless: the request carries the task name, the generated entry (question,
answer, metadata) and, for the scorers that read it, the generation config; scorers are built
once per (task, config) and cached, never regenerated per request. The answer is the last
``<answer>...</answer>`` after ``</think>``.

Some tasks' scorers run the answer through ``eval()`` or sympy's ``parse_expr`` (which
evaluates code): for those the answer is untrusted code, so they are scored inside the code
sandbox (no network, no secrets, no writable host files), with the package mounted read-only.
A scorer that raises gives 0 with the reason.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import reasoning_gym
from pydantic import BaseModel, ConfigDict, Field, field_validator
from reasoning_gym.factory import DATASETS

from reward_service.verifiers import _rg_scoring
from reward_service.verifiers._extract import after_think, last_tagged
from reward_service.verifiers.base import Status, StrictModel, Verdict, Verifier, VerifierOptions
from reward_service.verifiers.registry import register
from sandboxes.base import SandboxLimits, SandboxUnavailableError, Submission
from sandboxes.bwrap import BwrapSandbox
from sandboxes.harness.zygote import decode

log = logging.getLogger(__name__)

# Scorers that evaluate the answer as code (eval() or sympy's parse_expr), read here in
# reasoning-gym 0.1.25: an answer that writes a file did so in each of them.
UNTRUSTED_SCORERS = frozenset(
    {
        "binary_matrix",
        "spiral_matrix",
        "string_insertion",
        "n_queens",
        "countdown",
        "puzzle24",
        "polynomial_multiplication",
    }
)
SCORING_SOURCE = inspect.getsource(_rg_scoring)
# What the worker allows beyond the sandbox's own budget (a restart, the harness's reply).
WORKER_MARGIN_S = 3.0


class Entry(BaseModel):
    """A generated item, as the task's ``__getitem__`` returned it (extra keys are kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    question: str
    answer: Any = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ReasoningGymReference(StrictModel):
    dataset: str = Field(description="The task's registered name, e.g. 'graph_color'.")
    entry: Entry = Field(description="The generated item: question, answer, metadata.")
    config: dict[str, Any] | None = Field(
        None, description="The generation config, for the tasks whose scorer reads it."
    )

    @field_validator("dataset")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(
                f"unknown reasoning-gym task {name!r} ({len(DATASETS)} registered in "
                f"reasoning-gym {reasoning_gym.__version__}; see reasoning_gym.factory.DATASETS)"
            )
        return name


@register
class ReasoningGymVerifier(Verifier):
    domain = "reasoning_gym"
    description = (
        "The Reasoning Gym task's own score_answer on the last <answer>...</answer> (after "
        "</think>); scorers that evaluate the answer as code run in the sandbox."
    )
    reference_model = ReasoningGymReference
    default_timeout_s = 5.0

    @classmethod
    def worker_budget_s(
        cls, reference: ReasoningGymReference, options: VerifierOptions, max_timeout_s: float
    ) -> float:
        return super().worker_budget_s(reference, options, max_timeout_s) + WORKER_MARGIN_S

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.sandbox: BwrapSandbox | None = None

    def setup(self) -> None:
        site_packages = str(Path(reasoning_gym.__file__).resolve().parent.parent)
        limits = SandboxLimits(memory_mb=max(2048, self.config.get("memory_mb", 0)))
        self.sandbox = BwrapSandbox(limits, python_paths=[site_packages], preload=["reasoning_gym"])
        try:
            self.sandbox.start()
        except SandboxUnavailableError as exc:
            self.unavailable = str(exc)
            self.sandbox = None
            log.error("reasoning_gym sandbox unavailable: %s", exc)

    def verify(
        self, response: str, reference: ReasoningGymReference, options: VerifierOptions
    ) -> Verdict:
        answer = last_tagged(after_think(response), "answer")
        if answer is None:
            return Verdict(0.0, detail="no <answer>...</answer> found")
        entry = reference.entry.model_dump()
        config_json = json.dumps(reference.config, sort_keys=True) if reference.config else ""
        task = reference.dataset
        if task == "composite":
            task = entry["metadata"].get("source_dataset", task)
        if task in UNTRUSTED_SCORERS:
            budget = options.timeout_s or self.default_timeout_s
            return self._score_in_sandbox(reference.dataset, config_json, answer, entry, budget)
        try:
            reward = _rg_scoring.score(reference.dataset, config_json, answer, entry)
        except Exception as exc:  # the task's scorer failed on this answer: its 0, not ours
            return Verdict(0.0, detail=f"scorer raised {type(exc).__name__}: {exc}")
        return Verdict(reward)

    def _score_in_sandbox(
        self, dataset: str, config_json: str, answer: str, entry: dict[str, Any], budget_s: float
    ) -> Verdict:
        if self.sandbox is None:
            return Verdict(0.0, Status.ERROR, f"scoring sandbox unavailable: {self.unavailable}")
        submission = Submission(
            code=SCORING_SOURCE,
            mode="call",
            fn_name="score",
            inputs=[json.dumps([dataset, config_json, answer, entry])],
            budget_s=budget_s,
        )
        result = self.sandbox.run(submission)
        if result.timed_out:
            return Verdict(0.0, Status.TIMEOUT, "scoring exceeded its budget in the sandbox")
        if result.lost is not None or not result.tests:
            return Verdict(0.0, detail=f"scoring broke its sandbox: {result.lost}")
        run = result.tests[0]
        value = decode(run.result) if run.status == "ok" else None
        if not isinstance(value, int | float):
            tail = run.stderr.strip().splitlines()[-1:] if run.stderr.strip() else [run.status]
            return Verdict(0.0, detail=f"scorer failed: {tail[0]}")
        return Verdict(float(value), metrics={"sandboxed": True})
