"""Trainer-side library: clients of the reward service and trainer integrations."""

from trainer.client import (
    AsyncRewardClient,
    AsyncScoreSession,
    RewardClient,
    RewardServiceError,
    ScoreResult,
    ScoreSession,
)
from trainer.credentials import Credentials

__all__ = [
    "AsyncRewardClient",
    "AsyncScoreSession",
    "Credentials",
    "RewardClient",
    "RewardServiceError",
    "ScoreResult",
    "ScoreSession",
]
