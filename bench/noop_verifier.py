"""A verifier that does nothing, registered only by the benchmark: what it measures is the
service's own cost per request (transport, validation, queue, worker round trip)."""

from __future__ import annotations

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
