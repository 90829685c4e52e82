"""Overlap reward scoring with old/reference log-prob computation in verl's sync trainer.

verl 0.9's default trainer (``trainer.use_v1=true``, ``trainer.v1.trainer_mode=sync``)
runs one step as: generate (the agent loop calls the reward loop for each sample the
moment it finishes), old log-probs, reference log-probs, advantage, update. With the
plain ``reward_service`` manager each sample's reward is awaited inside the agent loop, so
the slowest rewards of a step's last responses extend the generation phase.

With ``reward.reward_service.defer=true`` the manager only *submits* each sample (to a
:class:`RewardCollector` that holds one streaming session to the service: a named Ray
actor, or an in-process one when Ray is not running) and returns at once, with
``reward_pending=1`` and a ``reward_ticket`` in the sample's extra info. The trainer
registered here as ``reward_service_sync`` (``trainer.v1.trainer_mode=reward_service_sync``,
a :class:`verl.trainer.ppo.v1.PPOTrainerSync`) gathers the results just before
``_compute_advantage``: scoring runs while the GPUs compute old and reference log-probs.
It also applies the mask: a sample whose result is ``error``/``invalid`` gets the mean
reward of its group's valid samples (``masked_reward: group_mean``), which gives it a zero
GRPO advantage without changing the group's mean.

The parts that need neither verl nor Ray (:class:`RewardCollector`, :func:`finalize_rewards`)
are tested on CPU; the trainer subclass is registered only when verl's v1 trainer (and so
TransferQueue) imports.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from trainer.verl.scoring import (
    ServiceCaller,
    ServiceSettings,
    error_result,
    extra_info,
    result_from_dict,
    result_to_dict,
    settings_from_config,
)

logger = logging.getLogger(__name__)

TRAINER_NAME = "reward_service_sync"


class RewardCollector:
    """Submitted requests and their results, on one event loop: ``submit`` returns tickets
    at once, ``gather`` waits (up to a timeout) and hands each result out once."""

    def __init__(self, settings: Mapping[str, Any] | ServiceSettings) -> None:
        if not isinstance(settings, ServiceSettings):
            settings = ServiceSettings.from_mapping(settings)
        self.settings = settings
        self.caller = ServiceCaller(settings)
        self.tasks: dict[str, asyncio.Task[Any]] = {}

    async def submit(self, requests: Sequence[Mapping[str, Any]]) -> list[str]:
        tickets = []
        for request in requests:
            ticket = uuid.uuid4().hex
            self.tasks[ticket] = asyncio.create_task(
                self.caller.score(
                    str(request["domain"]),
                    str(request["response"]),
                    request.get("reference") or {},
                    options=request.get("options") or None,
                    truncated=bool(request.get("truncated", False)),
                    id=ticket,
                )
            )
            tickets.append(ticket)
        return tickets

    async def gather(self, tickets: Sequence[str], timeout_s: float | None = None) -> list[dict]:
        """Each ticket's result as a dict (``error`` for an unknown ticket or one not scored
        within ``timeout_s``); a ticket's result is handed out once."""
        timeout_s = self.settings.gather_timeout_s if timeout_s is None else timeout_s
        tasks = [self.tasks.get(t) for t in tickets]
        waiting = {t for t in tasks if t is not None and not t.done()}
        if waiting:
            await asyncio.wait(waiting, timeout=timeout_s)
        results = []
        for ticket, task in zip(tickets, tasks, strict=True):
            self.tasks.pop(ticket, None)
            if task is None:
                result = error_result("unknown reward ticket (collector restarted?)", id=ticket)
            elif not task.done():
                task.cancel()
                result = error_result(f"not scored within {timeout_s} s of the gather", id=ticket)
            else:
                result = task.result()
            results.append(result_to_dict(result))
        return results

    async def pending(self) -> int:
        return len(self.tasks)


class LocalCollector:
    """A :class:`RewardCollector` on its own event-loop thread (one process: tests, a
    trainer without Ray): submit from any loop, gather from any thread."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="reward-collector", daemon=True
        )
        self.thread.start()
        self.collector = RewardCollector(settings)

    async def submit(self, requests: Sequence[Mapping[str, Any]]) -> list[str]:
        future = asyncio.run_coroutine_threadsafe(self.collector.submit(requests), self.loop)
        return await asyncio.wrap_future(future)

    def gather(self, tickets: Sequence[str], timeout_s: float | None = None) -> list[dict]:
        coroutine = self.collector.gather(tickets, timeout_s)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        """Close the session and stop the loop thread."""
        closing = asyncio.run_coroutine_threadsafe(self.collector.caller.aclose(), self.loop)
        closing.result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class RayCollector:
    """A named Ray actor running a :class:`RewardCollector` (shared by every reward-loop
    worker and the trainer of one job)."""

    def __init__(self, settings: ServiceSettings) -> None:
        import ray

        actor = ray.remote(RewardCollector).options(
            name=settings.collector_name,
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=4096,
        )
        self.handle = actor.remote(settings.as_dict())

    async def submit(self, requests: Sequence[Mapping[str, Any]]) -> list[str]:
        return await self.handle.submit.remote(list(requests))

    def gather(self, tickets: Sequence[str], timeout_s: float | None = None) -> list[dict]:
        import ray

        return ray.get(self.handle.gather.remote(list(tickets), timeout_s))


_LOCAL: dict[str, LocalCollector] = {}
_LOCAL_LOCK = threading.Lock()


def get_collector(settings: ServiceSettings) -> LocalCollector | RayCollector:
    """The job's named Ray collector when Ray is running here, else this process's own."""
    try:
        import ray

        if ray.is_initialized():
            return RayCollector(settings)
    except ImportError:
        pass
    with _LOCAL_LOCK:
        key = f"{settings.collector_name}@{settings.target}"
        if key not in _LOCAL:
            _LOCAL[key] = LocalCollector(settings)
        return _LOCAL[key]


def finalize_rewards(
    infos: Sequence[Mapping[str, Any]],
    groups: Sequence[Hashable],
    settings: ServiceSettings,
    collector: Any = None,
) -> tuple[list[float], list[dict[str, Any]], dict[str, float]]:
    """The rewards to train on, for one batch, just before the advantage.

    ``infos`` are the samples' extra info as the manager returned them (``reward_pending``
    ones are gathered from ``collector`` now), ``groups`` their GRPO group ids (verl's
    ``uid``). Returns ``(rewards, infos, metrics)``: masked samples (``reward_valid`` 0)
    get the mean of their group's valid rewards when ``settings.masked_reward`` is
    ``group_mean`` (``error_reward`` when the group has none). Samples whose extra info
    does not come from this integration keep their ``score`` and count as valid.
    """
    infos = [dict(info) for info in infos]
    started = time.monotonic()
    pending = {info["reward_ticket"] for info in infos if info.get("reward_pending")}
    if pending:
        if collector is None:
            collector = get_collector(settings)
        tickets = sorted(pending)
        try:
            gathered = collector.gather(tickets, settings.gather_timeout_s)
        except Exception as exc:  # the collector is gone: those samples are masked
            logger.warning(
                "reward collector: %s: %s; %d samples masked", type(exc).__name__, exc, len(tickets)
            )
            gathered = [result_to_dict(error_result(f"collector: {exc}", id=t)) for t in tickets]
        results = dict(zip(tickets, gathered, strict=True))
        for i, info in enumerate(infos):
            if info.get("reward_pending"):
                infos[i] = extra_info(
                    result_from_dict(results[info["reward_ticket"]]),
                    domain=info.get("reward_domain") or None,
                    truncated=bool(info.get("reward_truncated")),
                    settings=settings,
                    ticket=info["reward_ticket"],
                )
    rewards = [float(info.get("score", 0.0)) for info in infos]
    valid = [bool(info.get("reward_valid", 1.0)) for info in infos]
    if settings.masked_reward == "group_mean":
        members: dict[Hashable, list[int]] = defaultdict(list)
        for i, group in enumerate(groups):
            members[group].append(i)
        for indices in members.values():
            good = [rewards[i] for i in indices if valid[i]]
            fill = sum(good) / len(good) if good else float(settings.error_reward)
            for i in indices:
                if not valid[i]:
                    rewards[i] = fill
    elif settings.masked_reward != "error_reward":
        raise ValueError(
            f"masked_reward must be group_mean or error_reward, not {settings.masked_reward!r}"
        )
    metrics = batch_metrics(infos)
    metrics["reward_service/gather_s"] = time.monotonic() - started
    metrics["reward_service/gathered"] = float(len(pending))
    return rewards, infos, metrics


def batch_metrics(infos: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Valid fraction, statuses and each domain's mean reward, for the trainer's logger."""
    n = max(len(infos), 1)
    metrics: dict[str, float] = {
        "reward_service/valid_fraction": sum(float(i.get("reward_valid", 1.0)) for i in infos) / n
    }
    for status in ("ok", "timeout", "invalid", "error"):
        count = sum(1 for i in infos if i.get("reward_status") == status)
        metrics[f"reward_service/status_{status}"] = count / n
    by_domain: dict[str, list[float]] = defaultdict(list)
    for info in infos:
        if info.get("reward_domain") and info.get("reward_valid", 1.0):
            by_domain[str(info["reward_domain"])].append(float(info.get("score", 0.0)))
    for domain, values in by_domain.items():
        metrics[f"reward_service/{domain}/reward_mean"] = sum(values) / len(values)
    return metrics


# -- the trainer (verl's v1 sync trainer plus the gather) ------------------------------------


def finalize_transfer_queue_batch(
    batch: Any, settings: ServiceSettings, *, impute: bool = True
) -> dict[str, float]:
    """:func:`finalize_rewards` on a v1 trainer batch held in TransferQueue: reads each
    sample's ``uid``, ``rm_scores`` and ``extra_fields.reward_extra_info`` (as verl's agent
    loop stores them), writes back ``rm_scores`` with the final reward on the last response
    token and ``extra_fields`` with the final extra info. ``impute=False`` (validation)
    leaves masked samples at ``error_reward``."""
    import dataclasses

    import torch
    import transfer_queue as tq
    from tensordict import TensorDict
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    data = tq.kv_batch_get(
        keys=batch.keys,
        partition_id=batch.partition_id,
        select_fields=["uid", "rm_scores", "extra_fields"],
    )
    uids, extra_fields = _as_list(data["uid"]), _as_list(data["extra_fields"])
    infos = [dict((fields or {}).get("reward_extra_info") or {}) for fields in extra_fields]
    if not any("reward_valid" in info for info in infos):
        return {}  # not scored by this integration: leave the batch alone
    if not impute:
        settings = dataclasses.replace(settings, masked_reward="error_reward")
    rewards, infos, metrics = finalize_rewards(infos, uids, settings)
    rows = []
    for row, reward in zip(data["rm_scores"].unbind(), rewards, strict=True):
        row = torch.zeros_like(row, dtype=torch.float32)
        if row.numel():
            row[-1] = reward
        rows.append(row)
    nested = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
    tq.kv_batch_put(
        keys=batch.keys,
        partition_id=batch.partition_id,
        fields=TensorDict({"rm_scores": nested}, batch_size=len(rows)),
    )
    updated = [
        {"extra_fields": {**(fields or {}), "reward_extra_info": info}}
        for fields, info in zip(extra_fields, infos, strict=True)
    ]
    tq.kv_batch_put(
        keys=batch.keys,
        partition_id=batch.partition_id,
        fields=list_of_dict_to_tensordict(updated),
    )
    return metrics


def _as_list(value: Any) -> list[Any]:
    return list(value.tolist() if hasattr(value, "tolist") else value)


def register_trainer() -> type | None:
    """Register ``reward_service_sync`` in verl's v1 trainer registry (idempotent); None
    when verl's v1 trainer cannot be imported here."""
    try:
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
        from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
        from verl.utils.debug import marked_timer
    except ImportError as exc:
        logger.debug("verl v1 trainer not importable (%s): %s not registered", exc, TRAINER_NAME)
        return None
    if TRAINER_NAME in TRAINER_REGISTRY:
        return TRAINER_REGISTRY[TRAINER_NAME]

    class RewardServiceSyncTrainer(PPOTrainerSync):
        """verl's sync trainer that gathers deferred rewards (and applies the mask) just
        before the advantage, after old/ref log-probs ran while the service scored."""

        # verl branches on `self.trainer_mode == "sync"` (replay buffer class, refills,
        # checkpoints, the `trainer.v1.sync` settings): this trainer is that mode.
        @property
        def trainer_mode(self) -> str:
            return "sync"

        @trainer_mode.setter
        def trainer_mode(self, value: str) -> None:
            pass  # PPOTrainer.__init__ sets it from trainer.v1.trainer_mode

        @property
        def reward_service_settings(self) -> ServiceSettings:
            if not hasattr(self, "_reward_service_settings"):
                self._reward_service_settings = settings_from_config(self.config)
            return self._reward_service_settings

        def _resolve_filter_groups_metric(self) -> Any:
            metric = super()._resolve_filter_groups_metric()
            if metric is not None and self.reward_service_settings.defer:
                raise ValueError(
                    "reward.reward_service.defer=true cannot be combined with "
                    "algorithm.filter_groups (DAPO dynamic sampling): the replay buffer "
                    "filters groups by their rewards when it samples, before the gather. "
                    "Use defer=false: the agent loop then scores each sample as it finishes."
                )
            return metric

        def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
            with marked_timer("reward_gather", self.timing_raw, color="yellow"):
                metrics.update(finalize_transfer_queue_batch(batch, self.reward_service_settings))
            return super()._compute_advantage(batch, metrics)

        def _build_replay_buffer(self) -> Any:
            # Validation reads rm_scores right after sampling its batch: gather there (no
            # log-probs to overlap with; masked samples stay at error_reward).
            buffer = super()._build_replay_buffer()
            sample = buffer.sample
            trainer = self

            def sample_then_gather(*args: Any, **kwargs: Any) -> Any:
                batch, metrics = sample(*args, **kwargs)
                if kwargs.get("partition_id") == "val":
                    settings = trainer.reward_service_settings
                    finalize_transfer_queue_batch(batch, settings, impute=False)
                return batch, metrics

            buffer.sample = sample_then_gather
            return buffer

    return register_trainer(TRAINER_NAME)(RewardServiceSyncTrainer)
