"""What both front ends ask before scoring: who is calling, may they call this, is there room.

One :class:`AccessControl` per gateway joins the :class:`~reward_service.gateway.auth.
ClientRegistry` (credentials) and the :class:`~reward_service.gateway.limits.Admission`
(per-client rate and in-flight limits), and counts every refusal. The HTTP middleware and the
gRPC interceptor translate its answers into 401 / 429 and UNAUTHENTICATED / RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from reward_service.gateway.auth import Client, ClientRegistry
from reward_service.gateway.limits import Admission, Refusal
from reward_service.metrics import ServiceMetrics
from reward_service.settings import Settings

log = logging.getLogger(__name__)

# The answer to any call without valid credentials: the same words whatever was asked, so that
# an unauthenticated caller learns nothing about which routes, methods or clients exist.
UNAUTHENTICATED_DETAIL = "authentication required: missing or invalid credentials"
RELOAD_INTERVAL_S = 2.0


@dataclass
class AccessControl:
    """Credentials, limits and open endpoints of one gateway (see the module docstring)."""

    clients: ClientRegistry
    metrics: ServiceMetrics
    open_health: bool = True
    open_metrics: bool = True
    admission: Admission = field(default_factory=Admission)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: ServiceMetrics) -> AccessControl:
        return cls(
            ClientRegistry(settings),
            metrics,
            open_health=settings.open_health,
            open_metrics=settings.open_metrics,
        )

    @property
    def enabled(self) -> bool:
        return self.clients.enabled

    def authenticate(
        self, authorization: str | None, certificate_cn: str | None = None
    ) -> Client | None:
        """The calling client, or None (counted as an ``unauthenticated`` refusal)."""
        client = self.clients.authenticate(authorization, certificate_cn)
        if client is None:
            self.metrics.refused.labels("", "unauthenticated").inc()
        return client

    def admit(self, client: Client, count: int) -> Refusal | None:
        """Admit ``count`` requests of ``client`` now (see :meth:`Admission.try_admit`)."""
        refusal = self.admission.try_admit(client, count)
        if refusal is not None:
            self.metrics.refused.labels(client.name, refusal.reason).inc(count)
        return refusal

    def refuse_too_large(self, client: Client) -> None:
        self.metrics.refused.labels(client.name, "too_large").inc()

    async def wait(self, client: Client) -> None:
        await self.admission.wait(client)

    def release(self, client: Client, count: int = 1) -> None:
        self.admission.release(client, count)

    async def reload_forever(self) -> None:
        """Pick up changes of the clients file (revocations) every few seconds."""
        while True:
            await asyncio.sleep(RELOAD_INTERVAL_S)
            try:
                self.clients.reload_if_changed()
            except Exception:  # a bug here must not end the reloads (revocations)
                log.exception("reloading the clients file failed")
