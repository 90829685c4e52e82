"""A TRL reward function backed by the reward service: ``GRPOTrainer(reward_funcs=[...])``.

TRL calls a reward function with the batch's prompts and completions, plus every other column
of the dataset as a keyword argument, and expects one float per completion, or ``None`` where
the function has no reward for a sample (TRL then leaves it out instead of training on it).
This adapter sends the completions to the service in one ``ScoreBatch`` call and returns

- the reward of ``ok`` and ``timeout`` results,
- ``None`` for ``error`` results (an infrastructure failure, after ``retries`` attempts) and
  ``invalid`` ones (bad data): masked, never a fake 0 (``masked_reward`` changes that).

Each sample's domain comes from the ``domain`` column (or the ``domain`` argument for a
single-domain dataset), its reference from the ``reference`` column (an object, or its JSON
text), or else from a ``ground_truth``/``answer``/``solution`` column as
``{"ground_truth": ...}`` (math and stem).

Example::

    from trl import GRPOConfig, GRPOTrainer
    from trainer.trl import RewardServiceFunction

    reward = RewardServiceFunction("reward-service:50051")  # token, TLS: REWARD_CLIENT_*
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=dataset, args=...)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from trainer.client import RewardClient, RewardServiceError, ScoreResult
from trainer.credentials import Credentials

log = logging.getLogger(__name__)

GROUND_TRUTH_COLUMNS = ("ground_truth", "answer", "solution")


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversation (a list of messages) whose
    last assistant message is the completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        for message in reversed(completion):
            if isinstance(message, Mapping) and message.get("role", "assistant") == "assistant":
                return str(message.get("content", ""))
    raise TypeError(f"a completion must be a string or a list of messages, got {completion!r}")


class RewardServiceFunction:
    """Callable as a TRL reward function (see the module docstring)."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        domain: str | None = None,
        timeout_s: float = 300.0,
        retries: int = 2,
        retry_backoff_s: float = 0.5,
        masked_reward: float | None = None,
        name: str = "reward_service",
        credentials: Credentials | None = None,
    ) -> None:
        # Without credentials the client reads REWARD_CLIENT_* variables (token, TLS).
        self.client = RewardClient(target, timeout_s=timeout_s, credentials=credentials)
        self.domain = domain
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.masked_reward = masked_reward
        self.__name__ = name  # TRL logs each reward function under its __name__
        self.last_results: list[ScoreResult] = []

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> list[float | None]:
        requests = [
            self._request(index, completion, columns)
            for index, completion in enumerate(completions)
        ]
        results = self._score(requests)
        self.last_results = results
        return [result.reward if result.valid else self.masked_reward for result in results]

    def _request(self, index: int, completion: Any, columns: Mapping[str, Any]) -> dict[str, Any]:
        domain = self.domain or _column(columns, "domain", index)
        if not domain:
            raise ValueError(
                "no domain: pass RewardServiceFunction(domain=...) or give the dataset a "
                "`domain` column"
            )
        reference = _column(columns, "reference", index)
        if isinstance(reference, str):
            reference = json.loads(reference)
        if reference is None:
            for name in GROUND_TRUTH_COLUMNS:
                value = _column(columns, name, index)
                if value is not None:
                    reference = {"ground_truth": str(value)}
                    break
        if reference is None:
            columns_tried = ", ".join(GROUND_TRUTH_COLUMNS)
            raise ValueError(f"sample {index}: no `reference` column, nor any of {columns_tried}")
        return {
            "id": str(index),
            "domain": domain,
            "response": completion_text(completion),
            "reference": reference,
        }

    def _score(self, requests: list[dict[str, Any]]) -> list[ScoreResult]:
        """Score all; send ``error`` results again (with backoff); a failed call masks all."""
        results: dict[int, ScoreResult] = {}
        todo = list(range(len(requests)))
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
            try:
                scored = self.client.score_batch([requests[i] for i in todo])
            except RewardServiceError as exc:
                log.warning("reward service call failed (attempt %d): %s", attempt + 1, exc)
                scored = [ScoreResult(str(i), 0.0, "error", str(exc)) for i in todo]
            results.update(zip(todo, scored, strict=True))
            todo = [i for i in todo if results[i].status == "error"]
            if not todo:
                break
        return [results[i] for i in range(len(requests))]

    def close(self) -> None:
        self.client.close()


def _column(columns: Mapping[str, Any], name: str, index: int) -> Any:
    values = columns.get(name)
    if values is None:
        return None
    return values[index]
