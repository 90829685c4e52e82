"""Scoring with reasoning-gym's own scorers.

Self-contained on purpose: the verifier runs these functions in-process for most tasks, and
sends this file's source into the code sandbox for the tasks whose scorers evaluate the answer
as code (see ``reasoning_gym.py``), where nothing of this project is importable.
"""

import enum
import json
from functools import lru_cache

# JSON turns tuples into lists; these tasks compare grids as tuples of tuples.
TUPLE_METADATA = {"arc_agi": ("input", "output"), "rearc": ("input", "output")}


def _as_tuples(value):
    if isinstance(value, list):
        return tuple(_as_tuples(item) for item in value)
    return value


def restore_entry(dataset, entry):
    """The entry as the task generated it, undoing what a JSON round trip changed."""
    keys = TUPLE_METADATA.get(dataset, ())
    metadata = entry.get("metadata") or {}
    if not any(key in metadata for key in keys):
        return entry
    metadata = dict(metadata)
    for key in keys:
        if key in metadata:
            metadata[key] = _as_tuples(metadata[key])
    return dict(entry, metadata=metadata)


def restore_config(dataset, config):
    """The config as its dataclass wants it: JSON turned nested dataclasses into dicts, tuples
    into lists and enums into strings; the field defaults say what they were."""
    import dataclasses

    from reasoning_gym.factory import DATASETS

    restored = dict(config)
    for field in dataclasses.fields(DATASETS[dataset][1]):
        if field.name not in restored:
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            continue
        value = restored[field.name]
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            restored[field.name] = type(default)(**value)
        elif isinstance(default, tuple) and isinstance(value, list):
            restored[field.name] = _as_tuples(value)
        elif isinstance(default, enum.Enum) and isinstance(value, str):
            enum_type = type(default)
            try:
                restored[field.name] = enum_type(value)
            except ValueError:  # written as str(member): "Type.NAME"
                restored[field.name] = enum_type[value.rsplit(".", 1)[-1]]
    return restored


@lru_cache(maxsize=512)
def scorer(dataset, config_json):
    """``score_answer`` of the task built with its generation config (default config when
    none is given): some scorers read the config, none needs the generated items."""
    from reasoning_gym.factory import create_dataset

    config = restore_config(dataset, json.loads(config_json)) if config_json else {}
    config.setdefault("size", 1)
    return create_dataset(dataset, **config).score_answer


def score(dataset, config_json, answer, entry):
    """The task's own score for ``answer``; a composite entry is scored by its source task."""
    if dataset == "composite":
        dataset = (entry.get("metadata") or {}).get("source_dataset", dataset)
        config_json = ""
    return float(scorer(dataset, config_json)(answer, restore_entry(dataset, entry)))
