"""The TRL reward function, called as GRPOTrainer calls it, against the real service."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ServerThread
from trainer.trl import RewardServiceFunction, completion_text


def test_scores_a_mixed_batch_and_masks_failures(server: ServerThread) -> None:
    reward = RewardServiceFunction(server.grpc_target, retries=1, retry_backoff_s=0.05)
    try:
        rewards = reward(
            prompts=["p"] * 4,
            completions=[
                r"so \boxed{4}",
                [{"role": "assistant", "content": r"\boxed{5}"}],  # conversational format
                "anything",
                "x",
            ],
            domain=["math", "math", "test_echo", "test_crash"],
            reference=[None, None, json.dumps({"reward": 0.25}), {}],
            ground_truth=["4", "4", None, None],
            completion_ids=[[1], [2], [3], [4]],  # TRL passes more; ignored
        )
    finally:
        reward.close()
    assert rewards == [1.0, 0.0, 0.25, None]  # the crash is masked, not a 0
    assert reward.last_results[3].status == "error"
    assert reward.__name__ == "reward_service"


def test_single_domain_dataset_and_masked_reward_option(server: ServerThread) -> None:
    reward = RewardServiceFunction(server.grpc_target, domain="math", masked_reward=0.0)
    try:
        assert reward(["p", "p"], [r"\boxed{1}", r"\boxed{2}"], answer=["1", "1"]) == [1.0, 0.0]
    finally:
        reward.close()


def test_unreachable_service_masks_everything_without_raising() -> None:
    reward = RewardServiceFunction(
        "127.0.0.1:9", domain="math", timeout_s=2, retries=1, retry_backoff_s=0.01
    )
    try:
        assert reward(["p"], [r"\boxed{1}"], answer=["1"]) == [None]
    finally:
        reward.close()


def test_bad_inputs_say_what_is_wrong() -> None:
    reward = RewardServiceFunction("127.0.0.1:9")
    with pytest.raises(ValueError, match="no domain"):
        reward(["p"], ["x"], answer=["1"])
    with pytest.raises(ValueError, match="no `reference` column"):
        RewardServiceFunction("127.0.0.1:9", domain="math")(["p"], ["x"])
    with pytest.raises(TypeError, match="a completion must be"):
        completion_text(42)
