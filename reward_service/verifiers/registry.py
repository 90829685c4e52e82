"""Registry of verifiers by domain name.

Each verifier is one module in this package that decorates its class with :func:`register`.
:func:`load_verifiers` imports every module of the package plus any extra modules named in
the settings (plugins, or the benchmark's no-op verifier), so that the gateway and the workers
see the same set of domains without a hand-maintained list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from reward_service.verifiers.base import Verifier

_REGISTRY: dict[str, type[Verifier]] = {}
_INFRASTRUCTURE_MODULES = {"base", "registry"}


class UnknownDomainError(KeyError):
    """Raised for a domain name that no loaded verifier registered."""

    def __init__(self, domain: str) -> None:
        super().__init__(domain)
        self.domain = domain

    def __str__(self) -> str:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        return f"unknown domain {self.domain!r} (known domains: {known})"


def register(cls: type[Verifier]) -> type[Verifier]:
    """Class decorator: make ``cls`` the verifier of ``cls.domain``."""
    existing = _REGISTRY.get(cls.domain)
    if existing is not None and existing is not cls:
        qualname = f"{existing.__module__}.{existing.__qualname__}"
        raise ValueError(f"domain {cls.domain!r} is already registered by {qualname}")
    _REGISTRY[cls.domain] = cls
    return cls


def load_verifiers(extra_modules: Iterable[str] = ()) -> dict[str, type[Verifier]]:
    """Import the built-in verifier modules and ``extra_modules``; return the registry."""
    package = importlib.import_module(__package__ or "reward_service.verifiers")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _INFRASTRUCTURE_MODULES and not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    for name in extra_modules:
        importlib.import_module(name)
    return dict(_REGISTRY)


def get_verifier_class(domain: str) -> type[Verifier]:
    """The verifier registered for ``domain``; :class:`UnknownDomainError` if there is none."""
    try:
        return _REGISTRY[domain]
    except KeyError:
        raise UnknownDomainError(domain) from None


def registered_domains() -> list[str]:
    """Names of all registered domains, sorted."""
    return sorted(_REGISTRY)
