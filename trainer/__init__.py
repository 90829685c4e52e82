"""Trainer-side library: clients of the reward service and trainer integrations."""

from trainer.client import (
    AsyncRewardClient,
    AsyncScoreSession,
    RewardClient,
    RewardServiceError,
    ScoreResult,
    ScoreSession,
)

__all__ = [
    "AsyncRewardClient",
    "AsyncScoreSession",
    "RewardClient",
    "RewardServiceError",
    "ScoreResult",
    "ScoreSession",
]
