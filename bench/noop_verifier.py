"""Verifiers registered only by the benchmarks: ``noop`` does nothing, so what it measures is
the service's own cost per request (transport, validation, queue, worker round trip); ``spin``
burns a fixed amount of CPU, a verifier whose cost does not vary from sample to sample."""

from __future__ import annotations

import time

from reward_service.verifiers.base import StrictModel, Verdict, Verifier, VerifierOptions
from reward_service.verifiers.registry import register


class NoopReference(StrictModel):
    pass


@register
class NoopVerifier(Verifier):
    domain = "noop"
    description = "Benchmark only: reward 1, no work."
    reference_model = NoopReference

    def verify(self, response: str, reference: NoopReference, options: VerifierOptions) -> Verdict:
        return Verdict(1.0)


class SpinReference(StrictModel):
    ms: float = 4.0


@register
class SpinVerifier(Verifier):
    domain = "spin"
    description = "Benchmark only: burns reference.ms of CPU (a verifier of known, steady cost)."
    reference_model = SpinReference

    def verify(self, response: str, reference: SpinReference, options: VerifierOptions) -> Verdict:
        until = time.process_time() + reference.ms / 1000
        while time.process_time() < until:
            pass
        return Verdict(1.0)
