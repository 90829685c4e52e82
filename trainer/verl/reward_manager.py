"""verl reward manager that scores through the reward service (registered as ``reward_service``).

verl 0.9's reward loop (``verl.experimental.reward_loop``) calls a manager's
``run_single(data)`` once per sample, with a one-row :class:`verl.DataProto`: from the
agent loop the moment that sample finishes generating (the default, rule-based path), or
from ``RewardLoopManager.compute_rm_score`` for a whole batch. This manager decodes the
response, routes the sample to a domain (:mod:`trainer.verl.routing`), sends it to the
service over the streaming gRPC session, and returns ``{"reward_score", "reward_extra_info"}``;
verl puts the score on the last valid response token (``RewardManagerBase.assemble_rm_scores``
or the agent loop's ``rm_scores[-1]``). ``reward_extra_info`` has the same keys for every
sample (:data:`trainer.verl.scoring.EXTRA_INFO_KEYS` plus one ``reward_domain_<d>`` per
domain) and ``reward_valid`` is the mask: 0 for ``error``/``invalid`` results, and for every
sample while the service cannot be reached (no exception reaches the trainer).

Selected by configuration alone::

    reward.reward_manager.name=reward_service                 # with the verl.plugins entry point
    # or, without it:
    reward.reward_manager.source=importlib \
    reward.reward_manager.name=RewardServiceRewardManager \
    reward.reward_manager.module.path=pkg://trainer.verl.reward_manager

Outside the reward loop (a validation script, a custom trainer), the manager is also a
batch reward function in verl's classic form: ``manager(data, return_dict=True)`` returns
``{"reward_tensor": [B, T], "reward_extra_info": {key: [B values]}}``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from trainer.client import ScoreResult
from trainer.verl.routing import route
from trainer.verl.scoring import (
    ServiceCaller,
    ServiceSettings,
    error_result,
    extra_info,
    settings_from_config,
)

logger = logging.getLogger(__name__)

REGISTERED_NAME = "reward_service"


def _eos_ids(tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list | tuple):
        ids.update(int(i) for i in eos)
    return ids


def check_defer_config(config: Any) -> None:
    """``defer`` only makes sense with the trainer that gathers: fail at start-up instead of
    training on placeholder rewards."""
    from trainer.verl.overlap import TRAINER_NAME

    trainer = config.get("trainer") if hasattr(config, "get") else None
    v1 = trainer.get("v1") if trainer is not None else None
    mode = v1.get("trainer_mode") if v1 is not None else None
    if trainer is None or not trainer.get("use_v1", True) or mode != TRAINER_NAME:
        raise ValueError(
            "reward.reward_service.defer=true needs the trainer that gathers the deferred "
            f"rewards: trainer.use_v1=true trainer.v1.trainer_mode={TRAINER_NAME} (found "
            f"trainer_mode={mode!r}); without it every reward would stay a placeholder 0"
        )


@register(REGISTERED_NAME)
class RewardServiceRewardManager(RewardManagerBase):
    """Scores each sample through the reward service; see the module docstring."""

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
        settings: ServiceSettings | None = None,
        **_: Any,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        self.settings = settings or settings_from_config(config)
        if self.settings.defer:
            check_defer_config(config)
        self.caller = ServiceCaller(self.settings)
        self.eos_ids = _eos_ids(tokenizer)
        self._collector: Any = None

    # -- one sample ---------------------------------------------------------------------

    def prepare(self, data: DataProto) -> dict[str, Any]:
        """What the service needs from a one-row DataProto (the last row of a multi-turn
        output, as verl's managers do): response text, routing, truncation."""
        item = data[len(data) - 1]
        response_ids = item.batch["responses"]
        response_length = response_ids.shape[-1]
        valid_length = int(item.batch["attention_mask"][-response_length:].sum())
        valid_ids = response_ids[:valid_length].tolist()
        non_tensor = item.non_tensor_batch
        domain, reference, options = route(
            non_tensor.get("data_source"),
            non_tensor.get("reward_model"),
            non_tensor.get("extra_info"),
            self.settings,
        )
        truncated = bool(
            self.settings.detect_truncation
            and self.eos_ids
            and (not valid_ids or valid_ids[-1] not in self.eos_ids)
        )
        return {
            "valid_ids": valid_ids,
            "domain": domain,
            "reference": reference,
            "options": options,
            "truncated": truncated,
            "data_source": non_tensor.get("data_source"),
        }

    def decode(self, valid_ids: list[int]) -> str:
        return self.tokenizer.decode(valid_ids, skip_special_tokens=True)

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        sample = self.prepare(data)
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(None, self.decode, sample["valid_ids"])
        domain = sample["domain"]
        if domain is None:
            result: ScoreResult | None = ScoreResult(
                id="",
                reward=0.0,
                status="invalid",
                detail=f"no domain for data_source {sample['data_source']!r}: set "
                "reward.reward_service.domain_map, default_domain or extra_info.reward_domain",
            )
            ticket = ""
        elif self.settings.defer:
            from trainer.verl.overlap import get_collector

            if self._collector is None:
                self._collector = get_collector(self.settings)
            request = {
                "domain": domain,
                "response": response,
                "reference": sample["reference"],
                "options": sample["options"],
                "truncated": sample["truncated"],
            }
            try:
                ticket, result = (await self._collector.submit([request]))[0], None
            except Exception as exc:  # the collector is gone: mask, never crash the trainer
                self.caller.warn(f"reward collector: {type(exc).__name__}: {exc}")
                ticket, result = "", error_result(f"collector: {type(exc).__name__}: {exc}")
        else:
            result = await self.caller.score(
                domain,
                response,
                sample["reference"],
                options=sample["options"],
                truncated=sample["truncated"],
            )
            ticket = ""
        info = extra_info(
            result,
            domain=domain,
            truncated=sample["truncated"],
            settings=self.settings,
            ticket=ticket,
        )
        return {"reward_score": info["score"], "reward_extra_info": info}

    # -- a whole batch (verl's classic reward-function form) -----------------------------

    async def score_batch(self, data: DataProto) -> list[dict[str, Any]]:
        """``run_single`` for every row at once (concurrently), in order."""
        try:
            rows = (self.run_single(data[i : i + 1]) for i in range(len(data)))
            return list(await asyncio.gather(*rows))
        finally:
            await self.caller.aclose()

    def __call__(self, data: DataProto, return_dict: bool = False) -> Any:
        """``reward_tensor`` ``[B, response_length]`` with each reward on the last valid
        response token, and with ``return_dict`` the extra info as ``{key: [B values]}``."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            outputs = asyncio.run(self.score_batch(data))
        else:  # called from inside a running loop: run on a private one
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                outputs = pool.submit(asyncio.run, self.score_batch(data)).result()
        reward_tensor = self.assemble_rm_scores(data, [o["reward_score"] for o in outputs])
        if not return_dict:
            return reward_tensor
        keys = list(outputs[0]["reward_extra_info"]) if outputs else []
        extra = {k: [o["reward_extra_info"][k] for o in outputs] for k in keys}
        return {"reward_tensor": reward_tensor, "reward_extra_info": extra}

    @classmethod
    def assemble_rm_scores(cls, data: DataProto, scores: list[float]) -> torch.Tensor:
        """verl's rule (each score on the last valid response token), also for a batch whose
        rows have no valid token (the score then goes nowhere instead of wrapping to the
        last column)."""
        prompt_length = data.batch["prompts"].size(1)
        valid = data.batch["attention_mask"][:, prompt_length:].sum(dim=1)
        rm_scores = torch.zeros_like(data.batch["responses"], dtype=torch.float32)
        rows = torch.nonzero(valid > 0, as_tuple=True)[0]
        if len(rows):
            values = rm_scores.new_tensor(scores)[rows]
            rm_scores[rows, valid[rows] - 1] = values
        return rm_scores
