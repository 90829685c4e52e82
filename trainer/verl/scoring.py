"""Calling the reward service from a verl process, and what a sample's result looks like.

No verl here (only :mod:`trainer.client`): the settings, a per-event-loop caller that
never raises (an unreachable service gives ``error`` results: masked, reward
``error_reward``, one warning), and :func:`extra_info`, the per-sample extra info with the
same keys for every sample whatever its domain or status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from trainer.client import AsyncRewardClient, AsyncScoreSession, RewardServiceError, ScoreResult
from trainer.credentials import Credentials
from trainer.verl.routing import DOMAINS, RoutingConfig, env_target

logger = logging.getLogger(__name__)

# Keys of every sample's extra info, besides one ``reward_domain_<name>`` per domain.
EXTRA_INFO_KEYS = (
    "score",
    "acc",
    "reward_valid",
    "reward_status",
    "reward_domain",
    "reward_truncated",
    "reward_tests_passed",
    "reward_tests_total",
    "reward_pending",
    "reward_ticket",
    "reward_detail",
)


@dataclass
class ServiceSettings(RoutingConfig):
    """The integration's settings: ``reward.reward_service`` in verl's config (see README)."""

    target: str = field(default_factory=env_target)
    # Bound on one sample's scoring as the trainer sees it (the service has its own deadline).
    timeout_s: float = 120.0
    # Retries of a unary call on UNAVAILABLE (after the stream broke), with backoff.
    retries: int = 2
    retry_backoff_s: float = 0.5
    # The reward given to a masked sample (`error`/`invalid`); the mask says not to learn it.
    error_reward: float = 0.0
    # `truncated=true` when the last valid response token is not an end-of-sequence token.
    detect_truncation: bool = True
    # Overlap: submit in the reward loop, gather before the advantage (see overlap.py).
    defer: bool = False
    gather_timeout_s: float = 600.0
    collector_name: str = "reward_service_collector"
    # How the `reward_service_sync` trainer fills masked samples' reward before the
    # advantage: "group_mean" (the mean of the valid samples of its group: zero GRPO
    # advantage) or "error_reward" (leave error_reward).
    masked_reward: str = "group_mean"
    max_message_bytes: int = 64 * 1024 * 1024
    # Authentication and TLS (docs/security.md): paths only, so that no secret sits in the
    # trainer's config; anything unset comes from the REWARD_CLIENT_* environment variables.
    token_file: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_server_name: str | None = None

    def credentials(self) -> Credentials:
        """The client credentials these settings describe."""
        return Credentials.from_options(
            token_file=self.token_file,
            tls=self.tls,
            ca_file=self.tls_ca_file,
            cert_file=self.tls_cert_file,
            key_file=self.tls_key_file,
            server_name=self.tls_server_name,
        )

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any] | None, *, strict: bool = True
    ) -> ServiceSettings:
        known = {f.name for f in fields(cls)}
        values = dict(values or {})
        unknown = sorted(set(values) - known)
        if unknown and strict:
            raise ValueError(f"unknown reward_service settings {unknown}; known: {sorted(known)}")
        kwargs = {k: v for k, v in values.items() if k in known and v is not None}
        if "domains" in kwargs:
            kwargs["domains"] = tuple(kwargs["domains"])
        return cls(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _container(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    try:  # an OmegaConf node
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - verl always brings omegaconf
        pass
    return dict(node) if isinstance(node, Mapping) else {}


def settings_from_config(config: Any) -> ServiceSettings:
    """Settings from verl's config: ``reward.reward_service`` (strict: a typo is an error),
    over the matching keys of ``reward.reward_kwargs`` (verl's place for a reward manager's
    keyword arguments; other keys there belong to other managers and are ignored)."""
    reward = config.get("reward") if hasattr(config, "get") else None
    reward = reward if reward is not None else {}
    merged = _container(reward.get("reward_kwargs"))
    known = {f.name for f in fields(ServiceSettings)}
    merged = {k: v for k, v in merged.items() if k in known}
    dedicated = _container(reward.get("reward_service"))
    ServiceSettings.from_mapping(dedicated)  # raises on unknown keys
    merged.update(dedicated)
    return ServiceSettings.from_mapping(merged)


def error_result(detail: str, *, status: str = "error", id: str = "") -> ScoreResult:
    return ScoreResult(id=id or uuid.uuid4().hex, reward=0.0, status=status, detail=detail)


class _WarnOnce:
    """Logs a failure once a minute at most, with the count in between."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self.last = 0.0
        self.suppressed = 0

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            more = f" ({self.suppressed} more since the last warning)" if self.suppressed else ""
            logger.warning("%s; samples are masked (status=error)%s", message, more)
            self.last, self.suppressed = now, 0
        else:
            self.suppressed += 1


class ServiceCaller:
    """Scores samples against the service from one event loop at a time.

    A gRPC asyncio channel belongs to the loop that made it, so each loop gets its own
    client and streaming session. :meth:`score` never raises: a broken stream is retried
    once as a unary call (which retries UNAVAILABLE with backoff), and whatever still fails
    becomes an ``error`` result.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._per_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[AsyncRewardClient, list[AsyncScoreSession | None]]
        ] = weakref.WeakKeyDictionary()
        self.warn = _WarnOnce()

    def _client(self) -> tuple[AsyncRewardClient, list[AsyncScoreSession | None]]:
        loop = asyncio.get_running_loop()
        entry = self._per_loop.get(loop)
        if entry is None:
            client = AsyncRewardClient(
                self.settings.target,
                timeout_s=self.settings.timeout_s,
                retries=self.settings.retries,
                retry_backoff_s=self.settings.retry_backoff_s,
                max_message_bytes=self.settings.max_message_bytes,
                credentials=self.settings.credentials(),
            )
            entry = (client, [None])
            self._per_loop[loop] = entry
        return entry

    async def _session(self) -> AsyncScoreSession:
        client, holder = self._client()
        session = holder[0]
        if session is None or session._error is not None:  # the stream is over: a new one
            if session is not None:
                await _close_quietly(session)  # ends its request iterator
            session = await client.session().__aenter__()
            holder[0] = session
        return session

    async def score(
        self,
        domain: str,
        response: str,
        reference: Mapping[str, Any],
        options: Mapping[str, Any] | None = None,
        truncated: bool = False,
        id: str | None = None,
    ) -> ScoreResult:
        id = id or uuid.uuid4().hex
        timeout_s = self.settings.timeout_s
        try:
            session = await self._session()
            future = session.submit(
                domain, response, reference, options=options, truncated=truncated, id=id
            )
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            self.warn(f"reward service {self.settings.target}: no result within {timeout_s} s")
            return error_result(f"no result within {timeout_s} s", id=id)
        except (RewardServiceError, ValueError):
            pass  # the stream broke (or the id was in flight on it): one unary try below
        except Exception as exc:  # anything unexpected must not reach the trainer
            self.warn(f"reward service {self.settings.target}: {type(exc).__name__}: {exc}")
            return error_result(f"{type(exc).__name__}: {exc}", id=id)
        client, _ = self._client()
        try:
            return await client.score(
                domain,
                response,
                reference,
                options=options,
                truncated=truncated,
                id=uuid.uuid4().hex,
                timeout_s=timeout_s,
            )
        except RewardServiceError as exc:
            if exc.code.name == "INVALID_ARGUMENT":  # the request itself is wrong: invalid
                return error_result(exc.message, status="invalid", id=id)
            self.warn(f"reward service {self.settings.target} unreachable ({exc})")
            return error_result(str(exc), id=id)
        except Exception as exc:
            self.warn(f"reward service {self.settings.target}: {type(exc).__name__}: {exc}")
            return error_result(f"{type(exc).__name__}: {exc}", id=id)

    async def aclose(self) -> None:
        """Close this loop's session and channel (other loops' stay open)."""
        loop = asyncio.get_running_loop()
        entry = self._per_loop.pop(loop, None)
        if entry is None:
            return
        client, holder = entry
        if holder[0] is not None:
            await _close_quietly(holder[0])
        await client.close()


async def _close_quietly(session: AsyncScoreSession) -> None:
    with contextlib.suppress(Exception):  # a broken stream: nothing left to save
        await asyncio.wait_for(session.close(), 5)


def extra_info(
    result: ScoreResult | None,
    *,
    domain: str | None,
    truncated: bool,
    settings: ServiceSettings,
    ticket: str = "",
) -> dict[str, Any]:
    """One sample's extra info: the same keys for every sample (``result`` None means the
    request was submitted and is still pending: the ``defer`` mode)."""
    pending = result is None
    valid = (not pending) and result.valid
    reward = float(result.reward) if valid else float(settings.error_reward)
    metrics = {} if result is None else result.metrics
    info: dict[str, Any] = {
        "score": reward,
        "acc": reward,
        "reward_valid": 1.0 if valid else 0.0,
        "reward_status": "pending" if pending else result.status,
        "reward_domain": domain or "",
        "reward_truncated": 1.0 if truncated else 0.0,
        "reward_tests_passed": float(metrics.get("tests_passed", 0) or 0),
        "reward_tests_total": float(metrics.get("tests_total", 0) or 0),
        "reward_pending": 1.0 if pending else 0.0,
        "reward_ticket": ticket,
        "reward_detail": "" if result is None else (result.detail or "")[:300],
    }
    for name in settings.domains or DOMAINS:
        info[f"reward_domain_{name}"] = 1.0 if domain == name else 0.0
    return info


def result_to_dict(result: ScoreResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "reward": result.reward,
        "status": result.status,
        "detail": result.detail,
        "metrics": dict(result.metrics),
    }


def result_from_dict(value: Mapping[str, Any]) -> ScoreResult:
    return ScoreResult(
        id=str(value.get("id", "")),
        reward=float(value.get("reward", 0.0)),
        status=str(value.get("status", "error")),
        detail=str(value.get("detail", "")),
        metrics=dict(value.get("metrics") or {}),
    )
