"""The verl side of tests/test_verl_integration.py, run by a Python that has verl 0.9.

``python -m tests.verl_checks CASES.json OUT.json --target HOST:PORT --dead-target HOST:PORT``
builds real ``verl.DataProto`` batches from the cases (a tokenizer made here, nothing
downloaded), scores them through verl's own reward-loop code with the ``reward_service``
manager, and writes what came back to OUT.json for the test to check. It imports neither
the service nor pytest, so that it also runs from a virtual environment that has only verl
and the client (``.venv-verl``).

CASES.json: ``{"samples": [{"prompt", "response", "data_source", "reward_model",
"extra_info", "uid", "eos"?}, ...], "ray": bool}``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import string
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EOS, PAD, UNK = "<eos>", "<pad>", "<unk>"
DEFER = ("+reward.reward_service.defer=true", "trainer.v1.trainer_mode=reward_service_sync")


def verl_python() -> str | None:
    """A Python with verl installed: $REWARD_SERVICE_VERL_PYTHON, else .venv-verl (built by
    `deploy/install.sh --dev`), else this interpreter if it has verl; None if there is none."""
    configured = os.environ.get("REWARD_SERVICE_VERL_PYTHON")
    if configured:
        return configured
    venv = REPO / ".venv-verl" / "bin" / "python"
    if venv.exists():
        return str(venv)
    if importlib.util.find_spec("verl") is not None:
        return sys.executable
    return None


def build_tokenizer(directory: Path) -> str:
    """A character-level fast tokenizer saved with save_pretrained (AutoTokenizer loads it)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for char in chars:
        vocab.setdefault(char, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    fast.save_pretrained(str(directory))
    return str(directory)


def build_batch(samples: list[dict], tokenizer: Any, response_width: int | None = None) -> Any:
    """A generated batch as verl's trainer holds it: prompts left-padded, responses
    right-padded, ``attention_mask`` over both, the rows' non-tensor fields."""
    import numpy as np
    import torch
    from verl import DataProto

    prompts = [tokenizer.encode(s["prompt"], add_special_tokens=False) for s in samples]
    responses = []
    for s in samples:
        ids = tokenizer.encode(s["response"], add_special_tokens=False)
        if s.get("eos", True):
            ids.append(tokenizer.eos_token_id)
        responses.append(ids)
    width_p = max(len(p) for p in prompts)
    width_r = response_width or max(len(r) for r in responses) + 3
    pad = tokenizer.pad_token_id
    n = len(samples)
    prompt_ids = torch.full((n, width_p), pad, dtype=torch.long)
    response_ids = torch.full((n, width_r), pad, dtype=torch.long)
    attention = torch.zeros((n, width_p + width_r), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        r = r[:width_r]
        prompt_ids[i, width_p - len(p) :] = torch.tensor(p)
        response_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention[i, width_p - len(p) : width_p] = 1
        attention[i, width_p : width_p + len(r)] = 1
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    position_ids = torch.clamp(torch.cumsum(attention, dim=1) - 1, min=0)

    def column(key: str, default: Any) -> np.ndarray:
        values = np.empty(n, dtype=object)
        for i, s in enumerate(samples):
            values[i] = s.get(key, default)
        return values

    return DataProto.from_dict(
        tensors={
            "prompts": prompt_ids,
            "responses": response_ids,
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": position_ids,
        },
        non_tensors={
            "data_source": column("data_source", ""),
            "reward_model": column("reward_model", {}),
            "extra_info": column("extra_info", {}),
            "uid": column("uid", ""),
        },
    )


def agent_loop_item(sample: dict, tokenizer: Any) -> Any:
    """One sample as verl's agent loop hands it to the reward loop worker
    (verl/experimental/agent_loop/agent_loop.py, ``_compute_score``): unpadded, n=1."""
    import numpy as np
    import torch
    from tensordict import TensorDict
    from verl import DataProto

    prompt = torch.tensor(tokenizer.encode(sample["prompt"], add_special_tokens=False))
    ids = tokenizer.encode(sample["response"], add_special_tokens=False)
    ids.append(tokenizer.eos_token_id)
    response = torch.tensor(ids)
    input_ids = torch.cat([prompt, response])
    attention = torch.ones_like(input_ids)
    batch = TensorDict(
        {
            "prompts": prompt.unsqueeze(0),
            "responses": response.unsqueeze(0),
            "attention_mask": attention.unsqueeze(0),
            "input_ids": input_ids.unsqueeze(0),
            "position_ids": torch.arange(len(input_ids)).unsqueeze(0),
        },
        batch_size=1,
    )
    kwargs = {k: sample[k] for k in ("data_source", "reward_model", "extra_info", "uid")}
    non_tensor = {k: np.array([v]) for k, v in kwargs.items()}
    non_tensor["__num_turns__"] = np.array([2])
    non_tensor["tool_extra_fields"] = np.array([{}], dtype=object)
    return DataProto(batch=batch, non_tensor_batch=non_tensor), len(ids)


def compose(overrides: list[str]) -> Any:
    """verl's own PPO config with command-line overrides, as ``python -m
    verl.trainer.main_ppo OVERRIDES`` composes it (hydra)."""
    import verl.trainer
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = str(Path(verl.trainer.__file__).parent / "config")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=overrides)


def overrides_for(tokenizer_dir: str, target: str, *extra: str) -> list[str]:
    return [
        f"actor_rollout_ref.model.path={tokenizer_dir}",
        "reward.reward_manager.name=reward_service",
        f"+reward.reward_service.target={target}",
        "+reward.reward_service.timeout_s=60",
        "+reward.reward_service.retries=1",
        "+reward.reward_service.retry_backoff_s=0.2",
        *extra,
    ]


def compute_rm_score(worker: Any, manager_cls: Any, data: Any) -> dict:
    """What ``RewardLoopManager.compute_rm_score`` does with its workers' outputs
    (verl/experimental/reward_loop/reward_loop.py:343-376), with one in-process worker."""
    import numpy as np

    outputs = asyncio.run(worker.compute_score_batch(data))
    scores = [item["reward_score"] for item in outputs]
    rm_scores = manager_cls.assemble_rm_scores(data, scores)
    infos = [o.get("reward_extra_info", {}) for o in outputs]
    keys = list(infos[0].keys())
    extra = {key: np.array([info[key] for info in infos]).tolist() for key in keys}
    return {
        "rm_scores": rm_scores.tolist(),
        "extra": extra,
        "key_sets": sorted({tuple(sorted(info)) for info in infos}),
    }


def check_registry(out: dict) -> None:
    import verl
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    out["verl_version"] = verl.__version__
    out["registered"] = sorted(REWARD_MANAGER)
    config = compose(["reward.reward_manager.name=reward_service"])
    out["resolved"] = resolve_reward_manager_cls(config).__name__
    out["plugin_loaded"] = "trainer.verl.plugin" in sys.modules


def run(cases: dict, target: str, dead_target: str) -> dict:
    out: dict[str, Any] = {"errors": {}}
    samples = cases["samples"]
    work = Path(tempfile.mkdtemp(prefix="verl-checks-"))
    tokenizer_dir = build_tokenizer(work / "tokenizer")

    def guarded(name: str, fn: Any) -> None:
        started = time.monotonic()
        try:
            fn()
        except Exception:
            out["errors"][name] = traceback.format_exc()
        out.setdefault("seconds", {})[name] = time.monotonic() - started

    guarded("registry", lambda: check_registry(out))
    if cases.get("ray"):
        # First, before this process has gRPC threads: Ray starts its servers with fork+exec,
        # which gRPC's fork handlers do not survive ("Other threads are currently calling
        # into gRPC, skipping fork() handlers", then the GCS server never comes up).
        guarded("ray", lambda: run_ray(out, samples, tokenizer_dir, target))

    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    def by_name() -> None:
        config = compose(overrides_for(tokenizer_dir, target))
        worker = RewardLoopWorker(config)
        out["manager_class"] = type(worker.reward_manager).__name__
        data = build_batch(samples, worker.input_tokenizer)
        out["valid_lengths"] = (
            data.batch["attention_mask"][:, data.batch["prompts"].size(1) :].sum(-1).tolist()
        )
        out["response_width"] = data.batch["responses"].size(1)
        out["by_name"] = compute_rm_score(worker, resolve_reward_manager_cls(config), data)

        # The agent loop's form: one unpadded sample, reward at rm_scores[-1] of its response.
        item, length = agent_loop_item(samples[0], worker.input_tokenizer)
        result = asyncio.run(worker.compute_score(item))
        out["agent_loop"] = {"reward_score": result["reward_score"], "length": length}

        # verl's classic batch form: manager(data, return_dict=True).
        legacy = worker.reward_manager(data, return_dict=True)
        out["legacy"] = {
            "reward_tensor": legacy["reward_tensor"].tolist(),
            "extra_keys": sorted(legacy["reward_extra_info"]),
            "lengths": sorted({len(v) for v in legacy["reward_extra_info"].values()}),
        }

    guarded("by_name", by_name)

    def by_importlib() -> None:
        config = compose(
            [
                f"actor_rollout_ref.model.path={tokenizer_dir}",
                "reward.reward_manager.source=importlib",
                "reward.reward_manager.name=RewardServiceRewardManager",
                "reward.reward_manager.module.path=pkg://trainer.verl.reward_manager",
                f"+reward.reward_service.target={target}",
            ]
        )
        worker = RewardLoopWorker(config)
        data = build_batch(samples[:2], worker.input_tokenizer)
        out["by_importlib"] = compute_rm_score(worker, resolve_reward_manager_cls(config), data)

    guarded("by_importlib", by_importlib)

    def outage() -> None:
        config = compose(overrides_for(tokenizer_dir, dead_target))
        worker = RewardLoopWorker(config)
        data = build_batch(samples, worker.input_tokenizer)
        started = time.monotonic()
        out["outage"] = compute_rm_score(worker, resolve_reward_manager_cls(config), data)
        out["outage"]["seconds"] = time.monotonic() - started

    guarded("outage", outage)

    def deferred() -> None:
        from trainer.verl.overlap import finalize_rewards
        from trainer.verl.scoring import settings_from_config

        try:  # defer without the gathering trainer: refused at start-up
            RewardLoopWorker(compose(overrides_for(tokenizer_dir, target, DEFER[0])))
        except ValueError as exc:
            out["defer_guard"] = str(exc)
        config = compose(overrides_for(tokenizer_dir, target, *DEFER))
        worker = RewardLoopWorker(config)
        data = build_batch(samples, worker.input_tokenizer)
        submitted = compute_rm_score(worker, resolve_reward_manager_cls(config), data)
        infos = [
            {k: submitted["extra"][k][i] for k in submitted["extra"]} for i in range(len(samples))
        ]
        uids = [s["uid"] for s in samples]
        rewards, final, metrics = finalize_rewards(infos, uids, settings_from_config(config))
        out["deferred"] = {
            "submitted": submitted,
            "rewards": rewards,
            "final": final,
            "metrics": metrics,
        }

    guarded("deferred", deferred)

    def trainer_registry() -> None:
        try:
            import transfer_queue  # noqa: F401
        except ImportError as exc:
            out["trainer"] = {"skipped": f"TransferQueue not installed ({exc})"}
            return
        from verl.trainer.ppo.v1 import get_trainer_cls

        cls = get_trainer_cls("reward_service_sync")
        trainer = object.__new__(cls)
        trainer.trainer_mode = "reward_service_sync"  # what PPOTrainer.__init__ does
        out["trainer"] = {
            "class": cls.__name__,
            "bases": [b.__name__ for b in cls.__mro__[1:3]],
            "mode": trainer.trainer_mode,
            "overrides": sorted(
                name for name in ("_compute_advantage", "_build_replay_buffer") if name in vars(cls)
            ),
        }

    guarded("trainer", trainer_registry)

    return out


def run_ray(out: dict, samples: list[dict], tokenizer_dir: str, target: str) -> None:
    """verl's RewardLoopManager itself: Ray actors of RewardLoopWorker, compute_rm_score;
    then the deferred mode through the named collector actor."""
    import ray
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager

    from trainer.verl.overlap import finalize_rewards
    from trainer.verl.scoring import settings_from_config

    env = {"PYTHONPATH": str(REPO), "VERL_USE_EXTERNAL_MODULES": "trainer.verl.plugin"}
    # Logical CPUs (actors hold one each while they live: reward workers, TransferQueue's).
    ray.init(num_cpus=8, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        for mode, extra in (("ray", []), ("ray_deferred", [*DEFER])):
            config = compose(overrides_for(tokenizer_dir, target, "reward.num_workers=2", *extra))
            manager = RewardLoopManager(config)
            from transformers import AutoTokenizer

            data = build_batch(samples, AutoTokenizer.from_pretrained(tokenizer_dir))
            result = manager.compute_rm_score(data)
            keys = result.meta_info["reward_extra_keys"]
            entry = {
                "rm_scores": result.batch["rm_scores"].tolist(),
                "extra": {k: result.non_tensor_batch[k].tolist() for k in keys},
            }
            if mode == "ray_deferred":
                infos = [{k: entry["extra"][k][i] for k in keys} for i in range(len(samples))]
                settings = settings_from_config(config)
                uids = [s["uid"] for s in samples]
                try:
                    import transfer_queue  # noqa: F401
                except ImportError:
                    entry["rewards"], _, _ = finalize_rewards(infos, uids, settings)
                    entry["transfer_queue"] = False
                else:
                    entry["rewards"], entry["statuses"] = gather_through_transfer_queue(
                        infos, uids, data, settings
                    )
                    entry["transfer_queue"] = True
            out[mode] = entry
            # Only now: the collector actor belongs to the worker that created it.
            for worker in manager.reward_loop_workers:
                ray.kill(worker)
    finally:
        ray.shutdown()


def gather_through_transfer_queue(
    infos: list[dict], uids: list, data: Any, settings: Any
) -> tuple[list, list]:
    """The ``reward_service_sync`` trainer's gather on a batch held in TransferQueue the way
    verl's agent loop stores it (verl/trainer/ppo/v1/agent_loop_tq.py,
    ``_agent_loop_postprocess``): per-sample ``uid``, ``rm_scores`` over the response,
    ``extra_fields.reward_extra_info``. Returns each sample's rm_scores row after the gather."""
    from types import SimpleNamespace

    import torch
    import transfer_queue as tq
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    from trainer.verl.overlap import finalize_transfer_queue_batch

    tq.init()
    try:
        prompt_length = data.batch["prompts"].size(1)
        lengths = data.batch["attention_mask"][:, prompt_length:].sum(-1).tolist()
        keys, fields = [], []
        for i, (info, uid, length) in enumerate(zip(infos, uids, lengths, strict=True)):
            rm_scores = torch.zeros(length, dtype=torch.float32)
            rm_scores[-1] = info["score"]
            keys.append(f"{uid}_{i}_0")
            fields.append(
                {
                    "uid": uid,
                    "rm_scores": rm_scores,
                    "response_mask": torch.ones(length, dtype=torch.int64),
                    "extra_fields": {"reward_extra_info": info},
                }
            )
        tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(fields))
        batch = SimpleNamespace(keys=keys, partition_id="train")
        finalize_transfer_queue_batch(batch, settings)
        back = tq.kv_batch_get(
            keys=keys, partition_id="train", select_fields=["rm_scores", "extra_fields"]
        )
        rows = [row.tolist() for row in back["rm_scores"].unbind()]
        statuses = [f["reward_extra_info"]["reward_status"] for f in back["extra_fields"]]
        tq.kv_clear(keys=keys, partition_id="train")
        return rows, statuses
    finally:
        tq.close()


def main() -> None:
    cases_path, out_path = sys.argv[1], sys.argv[2]
    args = dict(zip(sys.argv[3::2], sys.argv[4::2], strict=True))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cases = json.loads(Path(cases_path).read_text())
    result = run(cases, args["--target"], args["--dead-target"])
    Path(out_path).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
