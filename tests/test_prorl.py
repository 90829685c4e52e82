"""trainer/prorl: the ProRL recipe for verl (prorl.yaml) and the reset CLI (reset.py).

The recipe is composed by hydra in a Python that has verl 0.9 (``.venv-verl``, or
``REWARD_SERVICE_VERL_PYTHON``), in a subprocess; without one that test skips.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.verl_checks import verl_python
from trainer.prorl import reset

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO / "trainer" / "prorl"


# --------------------------------------------------------------------------------------------
# decide
# --------------------------------------------------------------------------------------------


def write_metrics(path: Path, records: list[tuple[int, dict[str, Any]]]) -> Path:
    """Lines as verl's FileLogger writes them: {"step": N, "data": {...}}."""
    path.write_text("".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in records))
    return path


def train(kl: float = 0.001, **extra: Any) -> dict[str, Any]:
    return {"actor/kl_loss": kl, "actor/pg_loss": -0.01, "timing_s/step": 12.5, **extra}


def val(score: float) -> dict[str, Any]:
    return {
        "val-core/math/acc/mean@1": score,
        "val-core/code/acc/mean@1": score,
        "val-aux/math/reward/std@1": 0.3,
    }


def run_cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = reset.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_decide_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = write_metrics(tmp_path / "m.jsonl", [(s, train()) for s in range(1, 8)])
    code, out, _ = run_cli("decide", "--metrics", str(metrics), "--every", "5", capsys=capsys)
    assert code == 0
    assert "at step 5" in out and "every 5 steps" in out
    code, out, _ = run_cli("decide", "--metrics", str(metrics), "--every", "10", capsys=capsys)
    assert code == 1
    assert "reset: no" in out and "up to step 7" in out


def test_decide_kl_spike(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = [(s, train(kl=0.01)) for s in range(1, 5)]
    records += [(5, train(kl=0.8)), (6, train(kl=0.9))]
    metrics = write_metrics(tmp_path / "m.jsonl", records)
    code, out, _ = run_cli(
        "decide", "--metrics", str(metrics), "--kl-threshold", "0.5", "--json", capsys=capsys
    )
    assert code == 0
    decision = json.loads(out)
    assert decision["reset"] is True and decision["step"] == 5
    assert decision["reasons"] == ["kl 0.8 > 0.5"]
    assert decision["kl_seen"] is True
    # a spike inside min_steps_between of the last reset does not count
    code, _, _ = run_cli(
        "decide",
        *("--metrics", str(metrics), "--kl-threshold", "0.5"),
        *("--last-reset-step", "3", "--min-steps-between", "4"),
        capsys=capsys,
    )
    assert code == 1


def test_decide_validation_drop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # validation before training is logged at step 0, then with every 2nd step's training
    # metrics (another line of the same step, merged)
    records: list[tuple[int, dict[str, Any]]] = [(0, val(0.40))]
    scores = {2: 0.50, 4: 0.55, 6: 0.52, 8: 0.41}
    for step in range(1, 10):
        records.append((step, train()))
        if step in scores:
            records.append((step, val(scores[step])))
    metrics = write_metrics(tmp_path / "m.jsonl", records)
    code, out, _ = run_cli(
        "decide", "--metrics", str(metrics), "--val-drop", "0.1", "--json", capsys=capsys
    )
    assert code == 0
    decision = json.loads(out)
    assert decision["step"] == 8
    assert "dropped more than 0.1 below 0.55" in decision["reasons"][0]
    assert decision["val_keys"] == ["val-core/code/acc/mean@1", "val-core/math/acc/mean@1"]
    # a smaller drop than the threshold: no reset
    code, _, _ = run_cli("decide", "--metrics", str(metrics), "--val-drop", "0.2", capsys=capsys)
    assert code == 1


def test_decide_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = [(s, train(kl=0.01 * s)) for s in range(1, 11)]
    records += [(5, val(0.5)), (10, val(0.52))]
    metrics = write_metrics(tmp_path / "m.jsonl", records)
    code, out, err = run_cli(
        "decide",
        *("--metrics", str(metrics), "--every", "50"),
        *("--kl-threshold", "1.0", "--val-drop", "0.05"),
        capsys=capsys,
    )
    assert code == 1
    assert "reset: no (read 10 steps, up to step 10)" in out
    assert err == ""


def test_decide_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = write_metrics(tmp_path / "m.jsonl", [(1, train())])
    code, _, err = run_cli("decide", "--metrics", str(metrics), capsys=capsys)
    assert code == 2 and "no trigger" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "data": {}}\nnot json\n')
    code, _, err = run_cli("decide", "--metrics", str(bad), "--every", "1", capsys=capsys)
    assert code == 2 and "bad.jsonl:2" in err
    # a KL trigger on a run without the KL loss says so
    no_kl = write_metrics(tmp_path / "nokl.jsonl", [(1, {"actor/pg_loss": 0.1})])
    code, _, err = run_cli(
        "decide", "--metrics", str(no_kl), "--kl-threshold", "0.1", capsys=capsys
    )
    assert code == 1 and "no 'actor/kl_loss'" in err


def test_read_metrics_merges_and_keeps_numbers(tmp_path: Path) -> None:
    path = write_metrics(
        tmp_path / "m.jsonl",
        [(2, {"a": 1, "s": "text"}), (1, {"a": 0.5}), (2, {"b": [3.0], "c": float("nan")})],
    )
    assert reset.read_metrics(path) == [(1, {"a": 0.5}), (2, {"a": 1.0, "b": 3.0})]


# --------------------------------------------------------------------------------------------
# apply
# --------------------------------------------------------------------------------------------


def fake_checkpoint(root: Path, step: int, *, weights: bool, megatron: bool = False) -> Path:
    """A verl checkpoint tree: sharded actor state, and huggingface/ with config and tokenizer
    (always written) plus the weights (only with hf_model in save_contents)."""
    ckpt = root / f"global_step_{step}"
    actor = ckpt / "actor"
    hf = actor / "model" / "huggingface" if megatron else actor / "huggingface"
    hf.mkdir(parents=True)
    (actor / "model_world_size_8_rank_0.pt").write_bytes(b"")
    (actor / "optim_world_size_8_rank_0.pt").write_bytes(b"")
    (ckpt / "data.pt").write_bytes(b"")
    (hf / "config.json").write_text("{}")
    (hf / "tokenizer.json").write_text("{}")
    if weights:
        (hf / "model-00001-of-00002.safetensors").write_bytes(b"")
        (hf / "model-00002-of-00002.safetensors").write_bytes(b"")
        (hf / "model.safetensors.index.json").write_text("{}")
    return ckpt


def overrides_in(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def test_apply_writes_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = fake_checkpoint(tmp_path / "ckpts", 300, weights=True)
    out = tmp_path / "overrides.txt"
    code, printed, _ = run_cli(
        "apply",
        *("--checkpoint", str(ckpt), "--run-name", "prorl-stage1-r1", "--out", str(out)),
        capsys=capsys,
    )
    assert code == 0 and "step offset 300" in printed
    assert overrides_in(out) == [
        f"actor_rollout_ref.model.path={ckpt.resolve() / 'actor' / 'huggingface'}",
        "trainer.resume_mode=disable",
        "trainer.experiment_name=prorl-stage1-r1",
        "data.seed=300",
    ]
    assert "# step offset: 300" in out.read_text()
    # stage 2, to stdout
    code, printed, _ = run_cli(
        "apply",
        *("--checkpoint", str(ckpt), "--run-name", "prorl-stage2"),
        *("--max-response-length", "16384", "--data-seed", "7"),
        capsys=capsys,
    )
    assert code == 0
    lines = [line for line in printed.splitlines() if not line.startswith("#")]
    assert lines[-2:] == ["data.max_response_length=16384", "data.seed=7"]


def test_apply_megatron_layout(tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path, 40, weights=True, megatron=True)
    overrides, offset = reset.overrides_for(ckpt, "next")
    assert offset == 40
    assert overrides[0].endswith("global_step_40/actor/model/huggingface")


def test_apply_without_hf_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = fake_checkpoint(tmp_path, 100, weights=False)
    out = tmp_path / "overrides.txt"
    code, _, err = run_cli(
        "apply", "--checkpoint", str(ckpt), "--run-name", "r1", "--out", str(out), capsys=capsys
    )
    assert code == 2
    assert "has no model weights" in err
    assert "save_contents=[model,optimizer,extra,hf_model]" in err
    assert "verl.model_merger" in err
    assert not out.exists()
    # no huggingface/ at all
    bare = tmp_path / "other" / "global_step_5"
    (bare / "actor").mkdir(parents=True)
    code, _, err = run_cli("apply", "--checkpoint", str(bare), "--run-name", "r", capsys=capsys)
    assert code == 2 and "no huggingface/ directory" in err and "hf_model" in err


def test_apply_bad_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        "apply", "--checkpoint", str(tmp_path / "global_step_1"), "--run-name", "r", capsys=capsys
    )
    assert code == 2 and "no such checkpoint" in err
    (tmp_path / "global_step_2").mkdir()
    code, _, err = run_cli(
        "apply", "--checkpoint", str(tmp_path / "global_step_2"), "--run-name", "r", capsys=capsys
    )
    assert code == 2 and "no actor/" in err
    ckpt = fake_checkpoint(tmp_path / "c", 3, weights=True)
    renamed = ckpt.rename(tmp_path / "c" / "latest")
    code, _, err = run_cli("apply", "--checkpoint", str(renamed), "--run-name", "r", capsys=capsys)
    assert code == 2 and "global_step_N" in err
    ckpt = fake_checkpoint(tmp_path / "d", 3, weights=True)
    code, _, err = run_cli("apply", "--checkpoint", str(ckpt), "--run-name", "a b=c", capsys=capsys)
    assert code == 2 and "run name" in err


def test_cli_module_entry_point(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path / "m.jsonl", [(1, train()), (2, train())])
    command = [sys.executable, "-m", "trainer.prorl.reset", "decide"]
    command += ["--metrics", str(metrics), "--every", "2"]
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "at step 2" in done.stdout


# --------------------------------------------------------------------------------------------
# the recipe, composed by verl's hydra config
# --------------------------------------------------------------------------------------------


# Run by the verl Python: composes prorl.yaml (its defaults: verl's ppo_trainer) with the
# overrides in argv[2:], checks that every key the recipe sets exists in verl's own
# ppo_trainer (hydra would silently add a misspelt one), builds verl's config dataclasses
# from the sections the recipe touches, and prints the resolved values as JSON.
COMPOSE_CHECK = r"""
import json, sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
import verl.trainer
from verl.utils.config import omega_conf_to_dataclass

recipe_dir = sys.argv[1]
overrides = sys.argv[2:]
with initialize_config_dir(config_dir=recipe_dir, version_base=None):
    cfg = compose(config_name="prorl", overrides=overrides)
GlobalHydra.instance().clear()
with initialize_config_dir(
    config_dir=str(Path(verl.trainer.__file__).parent / "config"), version_base=None
):
    base = compose(config_name="ppo_trainer")

def leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1]

recipe = OmegaConf.to_container(OmegaConf.load(Path(recipe_dir) / "prorl.yaml"))
own = ("hydra", "defaults", "reward.reward_service")
set_keys = [k for k in leaves(recipe) if not k.startswith(own)]
def exists(key):
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(base, parent) if parent else base
    return node is not None and last in node.keys()  # "???" (rollout.name) counts

missing = [k for k in set_keys if not exists(k)]
built = {}
# (not `reward`: verl 0.9.1's RewardManagerConfig fails omega_conf_to_dataclass on its own
# default too; tests/test_verl_integration.py runs the reward_service manager for real)
for section in ("algorithm", "actor_rollout_ref.actor", "actor_rollout_ref.rollout",
                "actor_rollout_ref.actor.checkpoint"):
    try:
        built[section] = type(omega_conf_to_dataclass(OmegaConf.select(cfg, section))).__name__
    except Exception as exc:
        built[section] = f"error: {exc!r}"[:500]
print(json.dumps({
    "config": OmegaConf.to_container(cfg, resolve=True),
    "set_keys": set_keys,
    "missing": missing,
    "built": built,
}))
"""


def compose_recipe(*overrides: str) -> dict[str, Any]:
    python = verl_python()
    if python is None:
        pytest.skip(
            "no Python with verl: run `bash deploy/install.sh --dev` (makes .venv-verl) or set "
            "REWARD_SERVICE_VERL_PYTHON"
        )
    done = subprocess.run(
        [python, "-c", COMPOSE_CHECK, str(RECIPE_DIR), *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"composing prorl.yaml failed (rc {done.returncode}):\n{done.stderr[-6000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_recipe_composes_with_verl(tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path / "ckpts", 200, weights=True)
    reset_overrides, _ = reset.overrides_for(ckpt, "prorl-stage2", max_response_length=16384)
    # stage 1 as the recipe has it, and stage 2 as `reset apply` starts it
    stage1 = compose_recipe()
    stage2 = compose_recipe(*reset_overrides)

    assert stage1["missing"] == [], f"keys not in verl's ppo_trainer: {stage1['missing']}"
    assert len(stage1["set_keys"]) > 25
    for section, built in {**stage1["built"], **stage2["built"]}.items():
        assert not built.startswith("error"), f"{section}: {built}"

    cfg = stage1["config"]
    algorithm = cfg["algorithm"]
    assert algorithm["adv_estimator"] == "grpo"
    assert algorithm["use_kl_in_reward"] is False
    assert algorithm["filter_groups"]["enable"] is True
    assert algorithm["filter_groups"]["metric"] == "reward"

    actor = cfg["actor_rollout_ref"]["actor"]
    assert (actor["clip_ratio_low"], actor["clip_ratio_high"]) == (0.2, 0.4)
    assert actor["loss_agg_mode"] == "token-mean"
    assert actor["use_kl_loss"] is True
    assert actor["kl_loss_type"] == "low_var_kl"
    assert actor["kl_loss_coef"] == pytest.approx(1e-4)
    assert actor["ppo_mini_batch_size"] == 64
    assert actor["optim"]["lr"] == pytest.approx(2e-6)
    assert actor["optim"]["lr_warmup_steps"] == 0
    assert actor["optim"]["lr_scheduler_type"] == "constant"
    assert "hf_model" in actor["checkpoint"]["save_contents"]
    assert "hf_model" not in actor["checkpoint"]["load_contents"]

    rollout = cfg["actor_rollout_ref"]["rollout"]
    assert rollout["n"] == 16 and actor["rollout_n"] == 16
    assert rollout["temperature"] == pytest.approx(1.2)
    assert rollout["response_length"] == cfg["data"]["max_response_length"] == 8192
    assert cfg["data"]["train_batch_size"] == 256

    assert cfg["reward"]["reward_manager"]["name"] == "reward_service"
    assert cfg["reward"]["reward_service"] == {"detect_truncation": True, "defer": False}
    assert "file" in cfg["trainer"]["logger"]
    assert cfg["trainer"]["resume_mode"] == "auto"

    two = stage2["config"]
    weights = str(ckpt.resolve() / "actor" / "huggingface")
    assert two["actor_rollout_ref"]["model"]["path"] == weights
    assert two["actor_rollout_ref"]["rollout"]["response_length"] == 16384
    assert two["trainer"]["resume_mode"] == "disable"
    assert two["trainer"]["experiment_name"] == "prorl-stage2"
    assert two["trainer"]["default_local_dir"] == "checkpoints/prorl/prorl-stage2"
    assert two["data"]["seed"] == 200
    # everything else of the recipe is unchanged
    assert two["actor_rollout_ref"]["actor"]["clip_ratio_high"] == 0.4
    assert two["actor_rollout_ref"]["actor"]["kl_loss_coef"] == pytest.approx(1e-4)
