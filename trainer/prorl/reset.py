"""ProRL's hard reset for verl runs: decide when from the logged metrics, and restart from a
checkpoint's HF weights as the new policy *and* the new reference, with a fresh optimizer.

verl 0.9.1 has no in-process reference reset, so a reset is a stop and a relaunch:

``python -m trainer.prorl.reset decide --metrics RUN.jsonl [--every N] [--kl-threshold X]
[--val-drop Y]`` replays verl's file-logger output (``trainer.logger=[...,file]``: one
``{"step": N, "data": {metric: value}}`` line per log call) through
:class:`trainer.grpo.ResetPolicy` and says whether and at which step a reset is due. Exit
status 0: reset now; 1: not yet; 2: bad input.

``python -m trainer.prorl.reset apply --checkpoint DIR/global_step_N --run-name NAME
[--out overrides.txt]`` checks that the checkpoint holds HF weights (``actor/huggingface``,
written only with ``hf_model`` in ``actor_rollout_ref.actor.checkpoint.save_contents``) and
writes the hydra overrides, one per line, that start the next run from them.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The metric names verl 0.9.1 logs: the actor's k3 KL loss (verl/workers/utils/losses.py
# `metrics["kl_loss"]`, prefixed "actor/" by the v1 trainer), and the core validation metrics
# ("val-core/<data_source>/<acc|reward>/mean@<n>", verl/trainer/ppo/v1/trainer_base.py).
DEFAULT_KL_KEY = "actor/kl_loss"
DEFAULT_VAL_PATTERN = "val-core/*/mean@*"
# The keys the adapter hands ResetPolicy.
KL = "kl"
VAL = "val_score"

SAVE_CONTENTS_HINT = (
    "set actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model] "
    "(trainer/prorl/prorl.yaml does) so that verl writes the full HF weights to "
    "global_step_N/actor/huggingface"
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.safetensors.index.json")


class ResetError(Exception):
    """A problem with the input, reported as one message and exit status 2."""


# --------------------------------------------------------------------------------------------
# decide
# --------------------------------------------------------------------------------------------


def read_metrics(path: str | Path) -> list[tuple[int, dict[str, float]]]:
    """verl's FileLogger JSONL as (step, metrics) in step order; lines of the same step
    (the validation before training, a step's train and validation logs) are merged."""
    by_step: dict[int, dict[str, float]] = {}
    text = Path(path).read_text()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
            data = record["data"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ResetError(
                f"{path}:{number}: not a verl file-logger line "
                f'{{"step": N, "data": {{...}}}} ({exc})'
            ) from None
        if not isinstance(data, Mapping):
            raise ResetError(f"{path}:{number}: 'data' is not an object")
        merged = by_step.setdefault(step, {})
        for key, value in data.items():
            number_value = _number(value)
            if number_value is not None:
                merged[key] = number_value
    return sorted(by_step.items())


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, list) and len(value) == 1:  # orjson of a 1-element numpy array
        return _number(value[0])
    return None


def adapt(
    metrics: Mapping[str, float], kl_key: str, val_pattern: str
) -> tuple[dict[str, float], list[str]]:
    """The two values ResetPolicy reads, from one step's verl metrics: the KL, and the mean
    of the validation metrics matching ``val_pattern`` (absent when the step has none)."""
    adapted: dict[str, float] = {}
    if kl_key in metrics:
        adapted[KL] = metrics[kl_key]
    val_keys = sorted(k for k in metrics if fnmatch.fnmatchcase(k, val_pattern))
    if val_keys:
        adapted[VAL] = sum(metrics[k] for k in val_keys) / len(val_keys)
    return adapted, val_keys


@dataclass
class Decision:
    reset: bool
    step: int | None = None  # the first step at which the policy asked for a reset
    reasons: list[str] = field(default_factory=list)
    last_step: int | None = None
    steps_read: int = 0
    kl_seen: bool = False
    val_keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reset": self.reset,
            "step": self.step,
            "reasons": self.reasons,
            "last_step": self.last_step,
            "steps_read": self.steps_read,
            "kl_seen": self.kl_seen,
            "val_keys": self.val_keys,
        }


def decide(
    steps: Iterable[tuple[int, Mapping[str, float]]],
    *,
    every: int | None = None,
    kl_threshold: float | None = None,
    val_drop: float | None = None,
    min_steps_between: int = 1,
    last_reset_step: int = 0,
    kl_key: str = DEFAULT_KL_KEY,
    val_pattern: str = DEFAULT_VAL_PATTERN,
) -> Decision:
    """Replays the run's steps through ResetPolicy; stops at the first step it asks for a
    reset (the run did not reset there, so later steps say nothing about a reset policy)."""
    from trainer.grpo import ResetPolicy  # imports torch; only the decision logic is used

    policy = ResetPolicy(
        every_n_steps=every,
        kl_threshold=kl_threshold,
        val_drop=val_drop,
        min_steps_between=min_steps_between,
        kl_key=KL,
        val_key=VAL,
        last_reset_step=last_reset_step,
    )
    decision = Decision(reset=False)
    val_keys: set[str] = set()
    for step, metrics in steps:
        if step < last_reset_step:
            continue
        adapted, keys = adapt(metrics, kl_key, val_pattern)
        decision.steps_read += 1
        decision.last_step = step
        decision.kl_seen = decision.kl_seen or KL in adapted
        val_keys.update(keys)
        result = policy.update(step, adapted)
        if result:
            decision.reset, decision.step, decision.reasons = True, step, list(result.reasons)
            break
    decision.val_keys = sorted(val_keys)
    return decision


def _cmd_decide(args: argparse.Namespace) -> int:
    if args.every is None and args.kl_threshold is None and args.val_drop is None:
        raise ResetError("no trigger: give at least one of --every, --kl-threshold, --val-drop")
    steps = read_metrics(args.metrics)
    if not steps:
        raise ResetError(f"{args.metrics}: no metrics")
    decision = decide(
        steps,
        every=args.every,
        kl_threshold=args.kl_threshold,
        val_drop=args.val_drop,
        min_steps_between=args.min_steps_between,
        last_reset_step=args.last_reset_step,
        kl_key=args.kl_key,
        val_pattern=args.val_key,
    )
    if args.json:
        print(json.dumps(decision.as_dict()))
    elif decision.reset:
        print(f"reset: yes, at step {decision.step} ({'; '.join(decision.reasons)})")
        print(
            f"  take the last checkpoint at or before step {decision.step} "
            "(trainer.default_local_dir/global_step_K) and run `reset apply` on it"
        )
    else:
        print(f"reset: no (read {decision.steps_read} steps, up to step {decision.last_step})")
    if not args.json:
        if args.kl_threshold is not None and not decision.kl_seen:
            print(
                f"  warning: no {args.kl_key!r} in the metrics "
                "(needs actor_rollout_ref.actor.use_kl_loss=true)",
                file=sys.stderr,
            )
        if args.val_drop is not None and not decision.val_keys:
            print(
                f"  warning: no metric matches {args.val_key!r} (needs trainer.test_freq > 0)",
                file=sys.stderr,
            )
    return 0 if decision.reset else 1


# --------------------------------------------------------------------------------------------
# apply
# --------------------------------------------------------------------------------------------

STEP_DIR = re.compile(r"^global_step_(\d+)$")


def hf_weights_dir(checkpoint: str | Path) -> Path:
    """The HF weights of a verl checkpoint's actor: ``actor/huggingface`` (FSDP engine,
    verl/utils/checkpoint/fsdp_checkpoint_manager.py) or ``actor/model/huggingface`` (Megatron
    layout v2, verl/utils/megatron_utils.py). Raises ResetError saying what is missing."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise ResetError(f"{checkpoint}: no such checkpoint directory")
    actor = checkpoint / "actor"
    if not actor.is_dir():
        raise ResetError(
            f"{checkpoint}: no actor/ directory; not a verl checkpoint "
            "(trainer.default_local_dir/global_step_N)"
        )
    candidates = [actor / "huggingface", actor / "model" / "huggingface"]
    present = [c for c in candidates if c.is_dir()]
    for candidate in present:
        if any(any(candidate.glob(p)) for p in WEIGHT_PATTERNS):
            if not (candidate / "config.json").is_file():
                raise ResetError(f"{candidate}: HF weights without config.json")
            return candidate
    if present:
        raise ResetError(
            f"{present[0]} has no model weights, only what verl always writes there "
            f"(config, tokenizer): {SAVE_CONTENTS_HINT}; this checkpoint's sharded weights can "
            "still be merged with `python -m verl.model_merger merge --backend fsdp "
            f"--local_dir {actor} --target_dir {actor / 'huggingface'}`"
        )
    raise ResetError(f"{actor}: no huggingface/ directory: {SAVE_CONTENTS_HINT}")


def overrides_for(
    checkpoint: str | Path,
    run_name: str,
    *,
    max_response_length: int | None = None,
    data_seed: int | None = None,
) -> tuple[list[str], int]:
    """The hydra overrides that start the next stage from the checkpoint, and the step offset
    (the checkpoint's global step: the new run counts its steps from 1 again)."""
    checkpoint = Path(checkpoint).resolve()
    match = STEP_DIR.match(checkpoint.name)
    if match is None:
        raise ResetError(f"{checkpoint}: expected a directory named global_step_N")
    offset = int(match.group(1))
    weights = hf_weights_dir(checkpoint)
    if not run_name or any(c in run_name for c in "/ ,='\"\n"):
        raise ResetError(f"run name {run_name!r}: use letters, digits, '-', '_', '.'")
    overrides = [
        # actor and reference both load actor_rollout_ref.model.path (ref has no model path
        # of its own): the reset makes the current policy the new reference
        f"actor_rollout_ref.model.path={weights}",
        # no resume: a new optimizer (fresh Adam moments), a new dataloader and step 1
        "trainer.resume_mode=disable",
        f"trainer.experiment_name={run_name}",
    ]
    if max_response_length is not None:
        overrides.append(f"data.max_response_length={max_response_length}")
    # verl's sampler shuffles with data.seed (verl/trainer/ppo/utils.py); unset, an unseeded
    # torch.Generator repeats the first run's prompt order from its start
    overrides.append(f"data.seed={offset if data_seed is None else data_seed}")
    return overrides, offset


def _cmd_apply(args: argparse.Namespace) -> int:
    overrides, offset = overrides_for(
        args.checkpoint,
        args.run_name,
        max_response_length=args.max_response_length,
        data_seed=args.data_seed,
    )
    header = [
        f"# ProRL reset from {Path(args.checkpoint).resolve()}",
        f"# step offset: {offset} (step s of {args.run_name} is step {offset} + s overall)",
    ]
    text = "\n".join([*header, *overrides]) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: {len(overrides)} overrides, step offset {offset}")
    else:
        sys.stdout.write(text)
    return 0


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.prorl.reset", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    d = commands.add_parser("decide", help="is a reset due? (exit 0: yes, 1: no)")
    d.add_argument("--metrics", required=True, help="verl file-logger JSONL of the run")
    d.add_argument("--every", type=int, help="reset every N steps")
    d.add_argument("--kl-threshold", type=float, help="reset when the KL exceeds X")
    d.add_argument(
        "--val-drop", type=float, help="reset when validation drops more than Y below its best"
    )
    d.add_argument("--min-steps-between", type=int, default=1)
    d.add_argument(
        "--last-reset-step", type=int, default=0, help="ignore steps before it (default 0)"
    )
    d.add_argument("--kl-key", default=DEFAULT_KL_KEY, help=f"default {DEFAULT_KL_KEY}")
    d.add_argument(
        "--val-key",
        default=DEFAULT_VAL_PATTERN,
        help=f"key or fnmatch pattern, averaged when several match (default {DEFAULT_VAL_PATTERN})",
    )
    d.add_argument("--json", action="store_true", help="print the decision as JSON")
    d.set_defaults(func=_cmd_decide)

    a = commands.add_parser("apply", help="write the overrides that restart from a checkpoint")
    a.add_argument("--checkpoint", required=True, help="trainer.default_local_dir/global_step_N")
    a.add_argument("--run-name", required=True, help="the new trainer.experiment_name")
    a.add_argument("--out", help="write the overrides there (default: stdout)")
    a.add_argument("--max-response-length", type=int, help="e.g. 16384 for stage 2")
    a.add_argument(
        "--data-seed",
        type=int,
        help="data.seed, the prompt order of the new run (default: the step offset)",
    )
    a.set_defaults(func=_cmd_apply)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ResetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
