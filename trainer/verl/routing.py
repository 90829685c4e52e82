"""From a verl sample to a reward-service request: domain routing and references.

Pure Python (no verl, no torch): what a verl row holds (``data_source``,
``reward_model.ground_truth``, ``extra_info``) becomes ``(domain, reference, options)`` for
the service. Values may arrive as numpy arrays and scalars (parquet lists and numbers do);
:func:`plain` turns them into JSON-able Python values first.

Precedence for the domain: ``extra_info.reward_domain`` (or ``reward_model.domain``), then
the ``data_source`` map (the configured ``domain_map`` over :data:`DEFAULT_DOMAIN_MAP`;
exact names, case-insensitive, or ``fnmatch`` patterns such as ``numina_*``), then the shape
of the reference (``instruction_id_list`` is IFEval, ``dataset`` + ``entry`` is Reasoning
Gym, ``inputs``/``outputs``/``tests``/``assert_code`` is code), then ``default_domain``.

Precedence for the reference: ``extra_info.reward_reference`` (or
``reward_model.reference``), a complete service reference used as it is; otherwise one is
built from ``reward_model.ground_truth`` and ``extra_info`` for the domain (see
:func:`build_reference`).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DOMAINS = ("math", "code", "stem", "reasoning_gym", "ifeval")

# verl's standard data_source names (verl/utils/reward_score/__init__.py and its example
# preprocessors) and the usual names of the recipes' data sets. Lower case; patterns allowed.
DEFAULT_DOMAIN_MAP: dict[str, str] = {
    # math
    "openai/gsm8k": "math",
    "gsm8k": "math",
    "lighteval/math": "math",
    "digitallearninggmbh/math-lighteval": "math",
    "huggingfaceh4/math-500": "math",
    "math": "math",
    "math_dapo": "math",
    "math_dapo_reasoning": "math",
    "aime*": "math",
    "amc*": "math",
    "numina_*": "math",
    "ai-mo/numinamath*": "math",
    "deepscaler*": "math",
    "agentica-org/deepscaler*": "math",
    "open-r1/openr1-math*": "math",
    "hiyouga/geometry3k": "math",
    "olympiad*": "math",
    "minerva*": "math",
    # code
    "codecontests": "code",
    "deepmind/code_contests": "code",
    "apps": "code",
    "codeparrot/apps": "code",
    "taco": "code",
    "baai/taco": "code",
    "likaixin/taco-verified": "code",
    "codeforces": "code",
    "open-r1/codeforces*": "code",
    "primeintellect": "code",
    "primeintellect/*": "code",
    "livecodebench*": "code",
    "humaneval*": "code",
    "openai/openai_humaneval": "code",
    "mbpp*": "code",
    "deepcoder*": "code",
    "agentica-org/deepcoder*": "code",
    "code": "code",
    # stem
    "stem": "stem",
    "stem_*": "stem",
    "scp-116k": "stem",
    "zjnlp/scp-116k": "stem",
    "gpqa*": "stem",
    "idavidrein/gpqa*": "stem",
    "mmlu*": "stem",
    "supergpqa*": "stem",
    # instruction following
    "ifeval": "ifeval",
    "ifeval_*": "ifeval",
    "google/ifeval": "ifeval",
    # reasoning gym
    "reasoning_gym": "reasoning_gym",
    "reasoning_gym/*": "reasoning_gym",
    "reasoning-gym*": "reasoning_gym",
}

# The reference fields each domain's schema accepts (the service forbids unknown fields).
_CODE_FIELDS = ("tests", "fn_name", "language", "time_limit_s", "test_time_limit_s", "assert_code")
_STEM_FIELDS = ("ground_truth", "choices", "judge", "question")
_RG_FIELDS = ("dataset", "entry", "config")
_IFEVAL_FIELDS = ("instruction_id_list", "kwargs", "prompt")


def plain(value: Any) -> Any:
    """``value`` with numpy arrays/scalars, tuples and mappings turned into JSON-able
    Python values (lists, dicts with string keys, int/float/str/bool/None)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        return plain(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return plain(item())
    return value


def _maybe_json(value: Any) -> Any:
    """A JSON object/array given as text (verl's code data does that) parsed; else as is."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@dataclass
class RoutingConfig:
    """How samples map to domains and references (the ``reward_service`` config's keys)."""

    domain_map: dict[str, str] = field(default_factory=dict)
    default_domain: str | None = None
    # Per-domain request options, e.g. {"ifeval": {"mode": "loose"}}.
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The domains that get a one-hot column in the extra info (any routed domain not in this
    # list still works; its samples have every one-hot at 0).
    domains: tuple[str, ...] = DOMAINS

    def __post_init__(self) -> None:
        self.domain_map = {str(k).lower(): str(v) for k, v in (self.domain_map or {}).items()}
        self.options = {str(k): dict(v or {}) for k, v in (self.options or {}).items()}
        self.domains = tuple(self.domains or DOMAINS)

    def domain_for_source(self, data_source: str) -> str | None:
        """The domain of a ``data_source`` name (configured map first, then the defaults)."""
        name = str(data_source or "").strip().lower()
        if not name:
            return None
        for table in (self.domain_map, DEFAULT_DOMAIN_MAP):
            if name in table:
                return table[name]
            for pattern, domain in table.items():
                if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern):
                    return domain
        return None


def _infer_domain(ground_truth: Any, extra_info: Mapping[str, Any]) -> str | None:
    candidates = [ground_truth, extra_info]
    for value in candidates:
        if not isinstance(value, Mapping):
            continue
        if "instruction_id_list" in value:
            return "ifeval"
        if "dataset" in value and "entry" in value:
            return "reasoning_gym"
        if any(k in value for k in ("inputs", "tests", "assert_code", "assert_case")):
            return "code"
    first = ground_truth[0] if isinstance(ground_truth, list) and ground_truth else None
    if isinstance(first, Mapping) and ("input" in first or "output" in first):
        return "code"
    return None


def route(
    data_source: Any,
    reward_model: Any,
    extra_info: Any,
    config: RoutingConfig,
) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """``(domain, reference, options)`` for one verl sample; ``domain`` is None when nothing
    routes it (the caller reports the sample ``invalid``: masked, never a silent 0)."""
    reward_model = plain(reward_model) if reward_model is not None else {}
    if not isinstance(reward_model, dict):
        reward_model = {"ground_truth": reward_model}
    extra_info = plain(extra_info) if extra_info is not None else {}
    if not isinstance(extra_info, dict):
        extra_info = {}
    ground_truth = _maybe_json(reward_model.get("ground_truth"))

    domain = extra_info.get("reward_domain") or reward_model.get("domain")
    if not domain:
        domain = config.domain_for_source(plain(data_source))
    if not domain:
        domain = _infer_domain(ground_truth, extra_info)
    if not domain:
        domain = config.default_domain
    domain = str(domain) if domain else None

    explicit = extra_info.get("reward_reference", reward_model.get("reference"))
    if explicit is not None:
        reference = _maybe_json(explicit)
        reference = reference if isinstance(reference, dict) else {"ground_truth": reference}
    elif domain is None:
        reference = {}
    else:
        reference = build_reference(domain, ground_truth, extra_info, plain(data_source))

    options = dict(config.options.get(domain or "", {}))
    sample_options = _maybe_json(extra_info.get("reward_options"))
    if isinstance(sample_options, dict):
        options.update(sample_options)
    return domain, reference, options


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # several accepted answers: the first one
        return _text(value[0]) if value else ""
    return str(value)


def build_reference(
    domain: str, ground_truth: Any, extra_info: Mapping[str, Any], data_source: Any = None
) -> dict[str, Any]:
    """The service reference of ``domain`` from a verl row's ground truth and extra info.

    - math: ``{"ground_truth"}`` (the first one when a list is given).
    - stem: ``{"ground_truth", "choices"?, "question"?, "judge"?}``; ``choices`` (or
      ``options``), ``question`` and ``judge`` come from ``extra_info``.
    - code: a service reference (``tests``/``assert_code``) as it is; verl/APPS/TACO/PRIME
      test cases ``{"inputs": [...], "outputs": [...], "fn_name"?}`` (JSON text or object)
      become ``tests`` (call-based arguments and results as JSON text); SandboxFusion's
      ``{"assert_case": [...]}`` becomes ``assert_code``; a list of ``{input, output}``
      is ``tests``.
    - reasoning_gym: ``{"dataset", "entry", "config"?}`` as it is, else built from
      ``extra_info`` (``dataset``/``task``, ``entry`` or ``question``/``metadata`` with the
      ground truth as the answer); the data set defaults to ``data_source``'s part after
      ``reasoning_gym/``.
    - ifeval: ``{"instruction_id_list", "kwargs", "prompt"?}`` from the ground truth or
      ``extra_info``.
    - any other domain (a plugin's): the ground truth if it is an object, else
      ``{"ground_truth": ...}``.
    """
    if domain == "math":
        if isinstance(ground_truth, dict) and "ground_truth" in ground_truth:
            return {"ground_truth": _text(ground_truth["ground_truth"])}
        return {"ground_truth": _text(ground_truth)}
    if domain == "stem":
        reference: dict[str, Any] = (
            {k: v for k, v in ground_truth.items() if k in _STEM_FIELDS}
            if isinstance(ground_truth, dict)
            else {"ground_truth": _text(ground_truth)}
        )
        choices = extra_info.get("choices", extra_info.get("options"))
        if choices and "choices" not in reference and isinstance(choices, list):
            reference["choices"] = [str(c) for c in choices]
        if extra_info.get("question") and "question" not in reference:
            reference["question"] = str(extra_info["question"])
        if extra_info.get("judge") is not None and "judge" not in reference:
            reference["judge"] = bool(extra_info["judge"])
        return reference
    if domain == "code":
        return _code_reference(ground_truth, extra_info)
    if domain == "reasoning_gym":
        return _reasoning_gym_reference(ground_truth, extra_info, data_source)
    if domain == "ifeval":
        source = ground_truth if isinstance(ground_truth, dict) else extra_info
        reference = {k: source[k] for k in _IFEVAL_FIELDS if source.get(k) is not None}
        if "prompt" not in reference and extra_info.get("prompt"):
            reference["prompt"] = str(extra_info["prompt"])
        return reference
    if isinstance(ground_truth, dict):
        return dict(ground_truth)
    return {"ground_truth": ground_truth}


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _stdin_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def _code_reference(ground_truth: Any, extra_info: Mapping[str, Any]) -> dict[str, Any]:
    cases = ground_truth
    if isinstance(cases, list) and all(isinstance(c, dict) for c in cases):
        cases = {"tests": cases}
    if not isinstance(cases, dict):
        return {"tests": []}  # nothing usable: the service answers `invalid`
    reference = {k: cases[k] for k in _CODE_FIELDS if cases.get(k) is not None}
    if "tests" in reference:
        reference["tests"] = [
            {"input": _stdin_text(t.get("input")), "output": _stdin_text(t.get("output"))}
            if not reference.get("fn_name")
            else {"input": _json_text(t.get("input", [])), "output": _json_text(t.get("output"))}
            for t in reference["tests"]
        ]
    elif "inputs" in cases:
        fn_name = cases.get("fn_name") or extra_info.get("fn_name")
        inputs, outputs = list(cases.get("inputs") or []), list(cases.get("outputs") or [])
        convert = _json_text if fn_name else _stdin_text
        if fn_name:
            reference["fn_name"] = str(fn_name)
        pairs = zip(inputs, outputs, strict=False)
        reference["tests"] = [{"input": convert(i), "output": convert(o)} for i, o in pairs]
    elif isinstance(cases.get("assert_case"), list) and "assert_code" not in reference:
        reference["assert_code"] = "\n".join(str(a) for a in cases["assert_case"])
    for key in ("language", "time_limit_s", "fn_name"):
        if (
            key not in reference
            and extra_info.get(key) is not None
            and (key != "fn_name" or "assert_code" in reference)
        ):
            reference[key] = extra_info[key]
    return reference


def _reasoning_gym_reference(
    ground_truth: Any, extra_info: Mapping[str, Any], data_source: Any
) -> dict[str, Any]:
    if isinstance(ground_truth, dict) and "dataset" in ground_truth and "entry" in ground_truth:
        return {k: ground_truth[k] for k in _RG_FIELDS if ground_truth.get(k) is not None}
    if "dataset" in extra_info and "entry" in extra_info:
        return {k: extra_info[k] for k in _RG_FIELDS if extra_info.get(k) is not None}
    dataset = extra_info.get("dataset") or extra_info.get("task")
    if not dataset and isinstance(data_source, str) and "/" in data_source:
        dataset = data_source.split("/", 1)[1]
    entry = _maybe_json(extra_info.get("entry"))
    if not isinstance(entry, dict):
        entry = {
            "question": str(extra_info.get("question", "")),
            "answer": ground_truth,
            "metadata": _maybe_json(extra_info.get("metadata")) or {},
        }
    reference: dict[str, Any] = {"dataset": str(dataset or ""), "entry": entry}
    config = _maybe_json(extra_info.get("config"))
    if isinstance(config, dict):
        reference["config"] = config
    return reference


def env_target() -> str:
    """The service's gRPC target from the environment (``REWARD_SERVICE_TARGET``)."""
    return os.environ.get("REWARD_SERVICE_TARGET", "localhost:50051")
