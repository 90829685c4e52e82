"""verl plugin: registers this integration in verl's registries in every verl process.

verl imports the ``verl.plugins`` entry points (and the modules named in
``VERL_USE_EXTERNAL_MODULES``) while ``import verl`` runs, in the driver and in every Ray
worker. Importing the registries themselves at that moment would make every verl process
(rollout servers included) pay for the reward loop and the v1 trainer, so this module only
arranges for the registration to run right after verl imports them:

- ``verl.experimental.reward_loop.reward_manager`` -> the ``reward_service`` reward manager;
- ``verl.trainer.ppo.v1`` -> the ``reward_service_sync`` trainer (see :mod:`.overlap`).

``REWARD_SERVICE_VERL_PLUGIN=0`` turns it off.
"""

from __future__ import annotations

import importlib
import importlib.abc
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def _register_manager() -> None:
    importlib.import_module("trainer.verl.reward_manager")


def _register_trainer() -> None:
    from trainer.verl.overlap import register_trainer

    register_trainer()


ACTIONS: dict[str, Callable[[], None]] = {
    "verl.experimental.reward_loop.reward_manager": _register_manager,
    "verl.trainer.ppo.v1": _register_trainer,
}


def _run(name: str, action: Callable[[], None]) -> None:
    try:
        action()
    except Exception:  # a failing plugin must not break verl's own import
        logger.warning("reward-service verl plugin: registering after %s failed", name, exc_info=1)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs an action right after a watched module has been executed."""

    def __init__(self, actions: dict[str, Callable[[], None]]) -> None:
        self.actions = dict(actions)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        action = self.actions.get(fullname)
        if action is None:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        del self.actions[fullname]
        if not self.actions and self in sys.meta_path:
            sys.meta_path.remove(self)
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            _run(fullname, action)

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register now what verl has already imported; watch for the rest."""
    if os.environ.get("REWARD_SERVICE_VERL_PLUGIN", "1") == "0":
        return
    if any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        return
    waiting = {}
    for name, action in ACTIONS.items():
        if name in sys.modules:
            _run(name, action)
        else:
            waiting[name] = action
    if waiting:
        sys.meta_path.insert(0, _AfterImport(waiting))


install()
