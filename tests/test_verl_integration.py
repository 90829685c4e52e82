"""verl integration: real verl DataProto batches through the registered ``reward_service``
manager to a running service and back (trainer/verl/).

verl 0.9 cannot share the project's virtual environment (its hydra-core/omegaconf need
antlr4-python3-runtime 4.9.*, the math verifier's math-verify[antlr4_13_2] needs 4.13.2), so
the verl side runs in a Python that has verl -- ``REWARD_SERVICE_VERL_PYTHON``, else
``.venv-verl/bin/python`` (``deploy/install.sh --dev`` makes it), else this interpreter when
it has verl -- as ``python -m tests.verl_checks`` against the service this module starts.
Without any such Python the verl tests skip with that reason; the routing tests below run
everywhere. ``REWARD_SERVICE_VERL_RAY=0`` leaves out the part that starts a local Ray cluster
(verl's RewardLoopManager with Ray actors, the collector actor, TransferQueue).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import running_server
from tests.verl_checks import verl_python
from trainer.verl.routing import DEFAULT_DOMAIN_MAP, RoutingConfig, plain, route

REPO = Path(__file__).resolve().parents[1]
# The verl side imports torch and verl, and with Ray starts a local cluster: minutes on 2 cores.
pytestmark = pytest.mark.timeout(900)


NO_VERL = (
    "no Python with verl: run `bash deploy/install.sh --dev` (makes .venv-verl) or set "
    "REWARD_SERVICE_VERL_PYTHON"
)


def _reasoning_gym_entry() -> dict[str, Any]:
    import reasoning_gym

    entry = reasoning_gym.create_dataset("chain_sum", size=1, seed=7)[0]
    return json.loads(json.dumps(entry, default=str))


def cases() -> list[dict[str, Any]]:
    """One batch, every domain; ``expect`` is (reward, status, domain)."""
    think = "<think>Let me work it out.</think> "
    rg = _reasoning_gym_entry()
    code_stdin = json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "8\n"]})
    code_call = json.dumps({"inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]], "fn_name": "add"})
    ifeval = json.dumps({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
    return [
        {
            "data_source": "openai/gsm8k",
            "prompt": "What is 8*9?",
            "response": think + "The answer is \\boxed{72}.",
            "reward_model": {"style": "rule", "ground_truth": "72"},
            "extra_info": {"index": 0},
            "uid": "g1",
            "expect": (1.0, "ok", "math"),
        },
        {
            "data_source": "DigitalLearningGmbH/MATH-lighteval",
            "prompt": "Half of one?",
            "response": think + "It is \\boxed{3}.",
            "reward_model": {"style": "rule", "ground_truth": "\\frac{1}{2}"},
            "extra_info": {"index": 1},
            "uid": "g1",
            "expect": (0.0, "ok", "math"),
        },
        {
            "data_source": "codecontests",
            "prompt": "Add two numbers.",
            "response": think + "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
            "reward_model": {"style": "rule", "ground_truth": code_stdin},
            "extra_info": {"index": 2},
            "uid": "g2",
            "expect": (0.5, "ok", "code"),
        },
        {
            "data_source": "apps",
            "prompt": "Write add(a, b).",
            "response": think + "```python\ndef add(a, b):\n    return a + b\n```",
            "reward_model": {"style": "rule", "ground_truth": code_call},
            "extra_info": {"index": 3},
            "uid": "g2",
            "expect": (1.0, "ok", "code"),
        },
        {
            "data_source": "google/IFEval",
            "prompt": "Answer without commas.",
            "response": think + "There are no commas in this answer.",
            "reward_model": {"style": "rule", "ground_truth": ifeval},
            "extra_info": {"index": 4},
            "uid": "g3",
            "expect": (1.0, "ok", "ifeval"),
        },
        {
            "data_source": "reasoning_gym/chain_sum",
            "prompt": "Sum it.",
            "response": think + f"<answer>{rg['answer']}</answer>",
            "reward_model": {"style": "rule", "ground_truth": rg["answer"]},
            "extra_info": {"question": rg["question"], "metadata": rg["metadata"]},
            "uid": "g3",
            "expect": (1.0, "ok", "reasoning_gym"),
        },
        {
            "data_source": "gpqa_diamond",
            "prompt": "Pick one.",
            "response": think + "The answer is \\boxed{B}.",
            "reward_model": {"style": "rule", "ground_truth": "B"},
            "extra_info": {"choices": ["1 m", "2 m", "3 m", "4 m"]},
            "uid": "g4",
            "expect": (1.0, "ok", "stem"),
        },
        {
            "data_source": "openai/gsm8k",
            "prompt": "Crash.",
            "response": think + "\\boxed{1}",
            "reward_model": {"style": "rule", "ground_truth": "1"},
            "extra_info": {"reward_domain": "test_crash", "reward_reference": {"seconds": 0}},
            "uid": "g1",
            "expect": (0.0, "error", "test_crash"),
        },
        {
            "data_source": "some/unknown_source",
            "prompt": "Nothing routes this.",
            "response": think + "\\boxed{1}",
            "reward_model": {"style": "rule", "ground_truth": "1"},
            "extra_info": {},
            "uid": "g4",
            "expect": (0.0, "invalid", ""),
        },
        {
            "data_source": "openai/gsm8k",
            "prompt": "Cut off.",
            "response": think + "The answer is \\boxed{5}",
            "reward_model": {"style": "rule", "ground_truth": "5"},
            "extra_info": {},
            "uid": "g5",
            "eos": False,
            "expect": (1.0, "ok", "math"),
        },
    ]


def _dead_target() -> str:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def verl_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    python = verl_python()
    if python is None:
        pytest.skip(NO_VERL)
    work = tmp_path_factory.mktemp("verl")
    samples = cases()
    (work / "cases.json").write_text(
        json.dumps({"samples": samples, "ray": os.environ.get("REWARD_SERVICE_VERL_RAY") != "0"})
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # Configuration alone: verl imports the plugin module while `import verl` runs.
    env["VERL_USE_EXTERNAL_MODULES"] = "trainer.verl.plugin"
    env.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    with running_server() as server:
        command = [
            python,
            "-m",
            "tests.verl_checks",
            str(work / "cases.json"),
            str(work / "out.json"),
            "--target",
            server.grpc_target,
            "--dead-target",
            _dead_target(),
        ]
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
    if done.returncode != 0:
        pytest.fail(f"verl checks failed (rc {done.returncode}):\n{done.stderr[-6000:]}")
    out = json.loads((work / "out.json").read_text())
    out["samples"] = samples
    out["stderr"] = done.stderr[-4000:]
    return out


def _part(out: dict[str, Any], name: str) -> Any:
    assert name not in out["errors"], out["errors"][name]
    return out[name]


def _rows(out: dict[str, Any], name: str) -> list[dict[str, Any]]:
    extra = _part(out, name)["extra"]
    return [{k: extra[k][i] for k in extra} for i in range(len(out["samples"]))]


def test_manager_registered_in_verl_by_the_plugin(verl_run: dict[str, Any]) -> None:
    assert "registry" not in verl_run["errors"], verl_run["errors"].get("registry")
    assert verl_run["verl_version"].startswith("0.9")
    assert "reward_service" in verl_run["registered"]
    assert verl_run["resolved"] == "RewardServiceRewardManager"
    assert verl_run["manager_class"] == "RewardServiceRewardManager"


def test_mixed_domains_in_one_batch(verl_run: dict[str, Any]) -> None:
    rows = _rows(verl_run, "by_name")
    for sample, row in zip(verl_run["samples"], rows, strict=True):
        reward, status, domain = sample["expect"]
        assert (row["reward_status"], row["reward_domain"]) == (status, domain), row
        assert row["score"] == pytest.approx(reward), row
        for name in ("math", "code", "stem", "reasoning_gym", "ifeval"):
            assert row[f"reward_domain_{name}"] == (1.0 if domain == name else 0.0)
    code_stdin = rows[2]
    assert (code_stdin["reward_tests_passed"], code_stdin["reward_tests_total"]) == (1.0, 2.0)
    assert [r["reward_truncated"] for r in rows] == [0.0] * 9 + [1.0]


def test_every_sample_has_the_same_extra_info_keys(verl_run: dict[str, Any]) -> None:
    key_sets = _part(verl_run, "by_name")["key_sets"]
    assert len(key_sets) == 1
    keys = set(key_sets[0])
    assert {"score", "acc", "reward_valid", "reward_status", "reward_domain"} <= keys
    assert {"reward_tests_passed", "reward_tests_total", "reward_domain_code"} <= keys


def test_reward_on_the_last_valid_response_token(verl_run: dict[str, Any]) -> None:
    part = _part(verl_run, "by_name")
    rows = _rows(verl_run, "by_name")
    lengths = verl_run["valid_lengths"]
    assert len(set(lengths)) > 3  # rows of different lengths, right-padded
    for rm_row, length, row in zip(part["rm_scores"], lengths, rows, strict=True):
        assert len(rm_row) == verl_run["response_width"]
        assert length < len(rm_row)  # padding after the last valid token
        assert rm_row[length - 1] == pytest.approx(row["score"])
        assert all(v == 0 for i, v in enumerate(rm_row) if i != length - 1)


def test_mask_on_error_and_invalid(verl_run: dict[str, Any]) -> None:
    rows = _rows(verl_run, "by_name")
    assert [r["reward_valid"] for r in rows] == [1.0] * 7 + [0.0, 0.0, 1.0]
    assert rows[7]["reward_status"] == "error" and rows[7]["score"] == 0.0
    assert "no domain for data_source" in rows[8]["reward_detail"]


def test_agent_loop_single_sample_form(verl_run: dict[str, Any]) -> None:
    assert _part(verl_run, "agent_loop")["reward_score"] == 1.0


def test_classic_reward_function_form(verl_run: dict[str, Any]) -> None:
    legacy = _part(verl_run, "legacy")
    assert legacy["reward_tensor"] == verl_run["by_name"]["rm_scores"]
    assert legacy["lengths"] == [len(verl_run["samples"])]
    assert "reward_valid" in legacy["extra_keys"]


def test_selected_through_importlib_source(verl_run: dict[str, Any]) -> None:
    part = _part(verl_run, "by_importlib")
    assert part["extra"]["score"] == [1.0, 0.0]


def test_service_outage_masks_everything_without_raising(verl_run: dict[str, Any]) -> None:
    part = _part(verl_run, "outage")
    rows = _rows(verl_run, "outage")
    assert all(r["reward_valid"] == 0.0 for r in rows)
    routed = [r for r in rows if r["reward_domain"]]
    assert routed and all(r["reward_status"] == "error" for r in routed)
    assert all(all(v == 0 for v in row) for row in part["rm_scores"])
    assert part["seconds"] < 60
    assert "unreachable" in verl_run["stderr"]  # one warning, not an exception


def test_deferred_scoring_gathered_before_the_advantage(verl_run: dict[str, Any]) -> None:
    part = _part(verl_run, "deferred")
    submitted = part["submitted"]["extra"]
    routed = [i for i, s in enumerate(verl_run["samples"]) if s["expect"][2]]
    assert all(submitted["reward_status"][i] == "pending" for i in routed)
    assert all(submitted["reward_ticket"][i] for i in routed)
    direct = _rows(verl_run, "by_name")
    final = part["final"]
    for i, (row, fin) in enumerate(zip(direct, final, strict=True)):
        assert (fin["reward_status"], fin["score"]) == (row["reward_status"], row["score"]), i
    rewards = part["rewards"]
    # The crashed sample (group g1: rewards 1 and 0) is masked with its group's mean.
    assert rewards[7] == pytest.approx(0.5)
    # The unroutable one is alone with the stem sample in g4: it gets that sample's reward.
    assert rewards[8] == pytest.approx(1.0)
    assert rewards[:7] == pytest.approx([r["score"] for r in direct[:7]])
    assert part["metrics"]["reward_service/gathered"] == len(routed)
    assert "trainer.v1.trainer_mode=reward_service_sync" in verl_run["defer_guard"]


def test_sync_trainer_with_gather_is_registered(verl_run: dict[str, Any]) -> None:
    trainer = _part(verl_run, "trainer")
    if "skipped" in trainer:
        pytest.skip(trainer["skipped"])
    assert trainer["class"] == "RewardServiceSyncTrainer"
    assert trainer["bases"][0] == "PPOTrainerSync"
    assert trainer["mode"] == "sync"  # verl's `trainer_mode == "sync"` branches still apply
    assert trainer["overrides"] == ["_build_replay_buffer", "_compute_advantage"]


def test_ray_reward_loop_manager(verl_run: dict[str, Any]) -> None:
    if "ray" not in verl_run and "ray" not in verl_run["errors"]:
        pytest.skip("REWARD_SERVICE_VERL_RAY=0: verl's RewardLoopManager on Ray not run")
    direct = _rows(verl_run, "by_name")
    assert _part(verl_run, "ray")["rm_scores"] == verl_run["by_name"]["rm_scores"]
    assert _rows(verl_run, "ray") == direct
    deferred = _part(verl_run, "ray_deferred")
    rewards = deferred["rewards"]
    if deferred["transfer_queue"]:  # rm_scores rows as the trainer reads them back
        lengths = verl_run["valid_lengths"]
        assert [len(row) for row in rewards] == lengths
        assert all(all(v == 0 for v in row[:-1]) for row in rewards)
        rewards = [row[-1] for row in rewards]
        assert deferred["statuses"] == [r["reward_status"] for r in direct]
    assert rewards[:7] == pytest.approx([r["score"] for r in direct[:7]])
    assert rewards[7] == pytest.approx(0.5)  # the crashed sample: its group's mean


# -- routing (pure Python: runs without verl) ------------------------------------------------


def test_routing_defaults_cover_verls_data_sources() -> None:
    config = RoutingConfig()
    for source, domain in {
        "openai/gsm8k": "math",
        "lighteval/MATH": "math",
        "DigitalLearningGmbH/MATH-lighteval": "math",
        "aime_2024": "math",
        "numina_olympiads": "math",
        "codecontests": "code",
        "apps": "code",
        "taco": "code",
        "codeforces": "code",
        "PrimeIntellect/verifiable-coding-problems": "code",
        "primeintellect": "code",
        "google/IFEval": "ifeval",
        "reasoning_gym/graph_color": "reasoning_gym",
        "gpqa_diamond": "stem",
    }.items():
        assert config.domain_for_source(source) == domain, source
    assert config.domain_for_source("hiyouga/geometry3k") == "math"
    assert all(
        v in {"math", "code", "stem", "ifeval", "reasoning_gym"}
        for v in DEFAULT_DOMAIN_MAP.values()
    )


def test_routing_precedence_and_configured_map() -> None:
    config = RoutingConfig(domain_map={"my/data": "stem", "openai/gsm8k": "stem"})
    assert route("my/data", {"ground_truth": "3"}, {}, config)[0] == "stem"
    assert route("openai/gsm8k", {"ground_truth": "3"}, {}, config)[0] == "stem"
    explicit = {"reward_domain": "math"}
    assert route("my/data", {"ground_truth": "3"}, explicit, config)[0] == "math"
    assert route("x", {"ground_truth": "3"}, {}, config)[0] is None
    assert route("x", {"ground_truth": "3"}, {}, RoutingConfig(default_domain="math"))[0] == "math"
    shaped = {"ground_truth": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]})}
    assert route("x", shaped, {}, config)[0] == "code"


def test_code_references_from_verl_formats() -> None:
    config = RoutingConfig()
    _, ref, _ = route(
        "taco", {"ground_truth": {"inputs": [["1", "2"]], "outputs": [["3"]]}}, {}, config
    )
    assert ref == {"tests": [{"input": "1\n2", "output": "3"}]}
    gt = json.dumps({"inputs": [[1, [2, 3]]], "outputs": [[5]], "fn_name": "f"})
    _, ref, _ = route("apps", {"ground_truth": gt}, {}, config)
    assert ref == {"fn_name": "f", "tests": [{"input": "[1, [2, 3]]", "output": "[5]"}]}
    gt = json.dumps({"assert_case": ["assert f(1) == 2", "assert f(2) == 3"]})
    _, ref, _ = route("mbpp", {"ground_truth": gt}, {}, config)
    assert ref == {"assert_code": "assert f(1) == 2\nassert f(2) == 3"}
    service_form = {"assert_code": "def check(candidate): assert candidate(1) == 2", "fn_name": "f"}
    _, ref, _ = route("humaneval", {"ground_truth": service_form}, {}, config)
    assert ref == service_form


def test_other_references_and_options() -> None:
    import numpy as np

    config = RoutingConfig(options={"ifeval": {"mode": "loose"}})
    gt = {"instruction_id_list": np.array(["punctuation:no_comma"]), "kwargs": np.array([{}])}
    domain, ref, options = route(
        "ifeval", {"ground_truth": gt}, {"reward_options": {"x": 1}}, config
    )
    assert domain == "ifeval"
    assert ref == {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    assert options == {"mode": "loose", "x": 1}
    extra = {"choices": np.array(["a", "b"]), "question": "q?"}
    _, ref, _ = route("stem", {"ground_truth": "A"}, extra, config)
    assert ref == {"ground_truth": "A", "choices": ["a", "b"], "question": "q?"}
    entry = {"question": "q", "answer": "4", "metadata": {"k": 1}}
    _, ref, _ = route(
        "reasoning_gym", {"ground_truth": {"dataset": "x", "entry": entry}}, {}, config
    )
    assert ref == {"dataset": "x", "entry": entry}
    _, ref, _ = route("reasoning_gym/chain_sum", {"ground_truth": "4"}, {"question": "q"}, config)
    assert ref == {
        "dataset": "chain_sum",
        "entry": {"question": "q", "answer": "4", "metadata": {}},
    }
    explicit = {"reward_reference": json.dumps({"ground_truth": "7"})}
    assert route("openai/gsm8k", {"ground_truth": "1"}, explicit, config)[1] == {
        "ground_truth": "7"
    }
    assert plain(np.float32(0.5)) == 0.5 and plain((np.int64(1),)) == [1]


# -- the service side of the integration, without verl -------------------------------------


def test_settings_are_strict_about_unknown_keys() -> None:
    from trainer.verl.scoring import ServiceSettings, settings_from_config

    with pytest.raises(ValueError, match="unknown reward_service settings"):
        settings_from_config({"reward": {"reward_service": {"targte": "x:1"}}})
    config = {
        "reward": {
            "reward_kwargs": {"timeout_s": 5, "overlong_buffer_cfg": None},
            "reward_service": {"target": "x:1", "domain_map": {"A/B": "stem"}},
        }
    }
    settings = settings_from_config(config)
    assert (settings.target, settings.timeout_s) == ("x:1", 5)
    assert settings.domain_for_source("a/b") == "stem"
    assert isinstance(settings, ServiceSettings)


def test_extra_info_has_the_same_keys_whatever_the_result() -> None:
    from trainer.client import ScoreResult
    from trainer.verl.scoring import EXTRA_INFO_KEYS, ServiceSettings, extra_info

    settings = ServiceSettings()
    results = [
        ScoreResult("a", 1.0, "ok", metrics={"tests_passed": 3, "tests_total": 4}),
        ScoreResult("b", 0.0, "timeout"),
        ScoreResult("c", 0.7, "error", detail="worker died"),
        ScoreResult("d", 0.0, "invalid"),
        None,  # pending (defer)
    ]
    infos = [
        extra_info(r, domain="code", truncated=False, settings=settings, ticket="t")
        for r in results
    ]
    assert len({tuple(sorted(i)) for i in infos}) == 1
    assert set(EXTRA_INFO_KEYS) <= set(infos[0])
    assert [i["reward_valid"] for i in infos] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert [i["score"] for i in infos] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert infos[0]["reward_tests_passed"] == 3.0 and infos[4]["reward_status"] == "pending"


def test_finalize_rewards_imputes_group_mean_and_survives_a_lost_collector() -> None:
    from trainer.client import ScoreResult
    from trainer.verl.overlap import finalize_rewards
    from trainer.verl.scoring import ServiceSettings, extra_info

    settings = ServiceSettings()

    def info(reward: float, status: str) -> dict[str, Any]:
        result = ScoreResult("x", reward, status)
        return extra_info(result, domain="math", truncated=False, settings=settings)

    infos = [info(1.0, "ok"), info(0.0, "ok"), info(0.0, "error"), info(0.0, "invalid")]
    rewards, _, metrics = finalize_rewards(infos, ["g", "g", "g", "h"], settings)
    assert rewards == [1.0, 0.0, 0.5, 0.0]  # h has no valid sample: error_reward
    assert metrics["reward_service/valid_fraction"] == 0.5
    assert metrics["reward_service/math/reward_mean"] == 0.5

    class Gone:
        def gather(self, tickets: list[str], timeout_s: float) -> list[dict]:
            raise RuntimeError("actor died")

    pending = extra_info(None, domain="math", truncated=False, settings=settings, ticket="t1")
    rewards, final, _ = finalize_rewards([info(1.0, "ok"), pending], ["g", "g"], settings, Gone())
    assert final[1]["reward_status"] == "error" and final[1]["reward_valid"] == 0.0
    assert rewards == [1.0, 1.0]


async def test_caller_scores_and_masks_an_outage(server: Any) -> None:
    import time

    from trainer.verl.scoring import ServiceCaller, ServiceSettings

    caller = ServiceCaller(ServiceSettings(target=server.grpc_target))
    result = await caller.score("math", "\\boxed{4}", {"ground_truth": "4"})
    assert (result.status, result.reward) == ("ok", 1.0)
    bad = await caller.score("math", "\\boxed{4}", {"ground_truth": ""})
    assert bad.status == "invalid" and not bad.valid
    await caller.aclose()

    dead = ServiceCaller(ServiceSettings(target=_dead_target(), retries=1, retry_backoff_s=0.1))
    started = time.monotonic()
    results = [await dead.score("math", "\\boxed{4}", {"ground_truth": "4"}) for _ in range(3)]
    assert all(r.status == "error" and not r.valid for r in results)
    assert time.monotonic() - started < 20
    await dead.aclose()


def test_local_collector_submits_now_and_gathers_later(server: Any) -> None:
    from trainer.verl.overlap import LocalCollector
    from trainer.verl.scoring import ServiceSettings

    collector = LocalCollector(ServiceSettings(target=server.grpc_target))
    try:
        _collect(collector)
    finally:
        collector.close()


def _collect(collector: Any) -> None:
    import asyncio

    requests = [
        {"domain": "math", "response": "\\boxed{4}", "reference": {"ground_truth": "4"}},
        {"domain": "test_echo", "response": "x", "reference": {"reward": 0.25, "seconds": 0.3}},
    ]
    tickets = asyncio.run(collector.submit(requests))
    results = collector.gather([*tickets, "unknown"], timeout_s=30)
    assert [(r["status"], r["reward"]) for r in results[:2]] == [("ok", 1.0), ("ok", 0.25)]
    assert results[2]["status"] == "error" and "unknown" in results[2]["detail"]
    assert collector.gather(tickets[:1], timeout_s=1)[0]["status"] == "error"  # handed out once
