"""Per-client admission: a rate limit (token bucket) and a cap on requests in flight.

Both front ends share one :class:`Admission` (through the :class:`Scorer`), so a client's
gRPC and HTTP calls draw on the same allowance. Unary and batch calls that do not fit are
refused at once (429 / RESOURCE_EXHAUSTED, with the time after which a retry can succeed);
a stream instead waits for room (:meth:`Admission.wait`), which pushes back on the client
through HTTP/2 flow control. Fairness *between* admitted requests is the queue's job (see
:class:`reward_service.workers.fair_queue.FairQueue`).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from reward_service.gateway.auth import Client, ClientLimits

MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was not admitted; ``retry_after_s`` is when trying again can succeed."""

    reason: str  # "rate" | "in_flight"
    detail: str
    retry_after_s: float


@dataclass(slots=True)
class _Allowance:
    limits: ClientLimits
    tokens: float
    updated: float
    in_flight: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)

    def refill(self, now: float) -> None:
        if self.limits.rate > 0:
            size = self.limits.bucket_size
            self.tokens = min(size, self.tokens + (now - self.updated) * self.limits.rate)
        self.updated = now


class Admission:
    """Tracks each client's rate bucket and in-flight count (by client name, so a reloaded
    clients file changes a client's limits without resetting its usage)."""

    def __init__(self) -> None:
        self._allowances: dict[str, _Allowance] = {}

    def _allowance(self, client: Client) -> _Allowance:
        allowance = self._allowances.get(client.name)
        if allowance is None:
            allowance = _Allowance(client.limits, client.limits.bucket_size, time.monotonic())
            self._allowances[client.name] = allowance
        elif allowance.limits is not client.limits:
            allowance.limits = client.limits
        return allowance

    def in_flight(self, client: Client) -> int:
        return self._allowance(client).in_flight

    def try_admit(self, client: Client, count: int) -> Refusal | None:
        """Admit ``count`` requests of ``client`` now, or say why not. A batch larger than the
        bucket is admitted once the bucket is full and leaves it in debt: the client's average
        rate still holds, and big batches are never refused for their size alone."""
        allowance = self._allowance(client)
        limits = allowance.limits
        if limits.max_in_flight and allowance.in_flight + count > limits.max_in_flight:
            return Refusal(
                "in_flight",
                f"client {client.name!r} has {allowance.in_flight} requests in flight; "
                f"{count} more would pass its limit of {limits.max_in_flight}",
                0.1,
            )
        if limits.rate > 0:
            now = time.monotonic()
            allowance.refill(now)
            needed = min(float(count), limits.bucket_size)
            if allowance.tokens < needed:
                wait = min((needed - allowance.tokens) / limits.rate, MAX_RETRY_AFTER_S)
                return Refusal(
                    "rate",
                    f"client {client.name!r} is over its rate limit of {limits.rate:g} "
                    f"requests/s (retry in {wait:.2f} s)",
                    wait,
                )
            allowance.tokens -= count
        allowance.in_flight += count
        return None

    async def wait(self, client: Client) -> None:
        """Admit one request of ``client``, waiting for rate tokens and in-flight room."""
        allowance = self._allowance(client)
        while True:
            refusal = self.try_admit(client, 1)
            if refusal is None:
                return
            if refusal.reason == "rate":
                await asyncio.sleep(refusal.retry_after_s)
            else:
                allowance.room.clear()
                await allowance.room.wait()

    def release(self, client: Client, count: int = 1) -> None:
        """``count`` admitted requests of ``client`` were answered."""
        allowance = self._allowance(client)
        allowance.in_flight = max(0, allowance.in_flight - count)
        allowance.room.set()


def retry_after_header(refusal: Refusal) -> str:
    """The ``Retry-After`` value (whole seconds, at least 1) of a refusal."""
    return str(max(1, math.ceil(refusal.retry_after_s)))
