"""Verifiers registered only by the tests (loaded through ``verifier_modules``).

They make the pool's behaviour observable: ``echo`` answers at once, ``sleep`` sleeps in
Python (a soft-timeout case), ``spin`` blocks in C where no signal handler can run (a
hard-kill case), ``crash`` kills its own process.
"""

from __future__ import annotations

import os
import signal
import time

from reward_service.verifiers.base import StrictModel, Verdict, Verifier
from reward_service.verifiers.registry import register


class EchoReference(StrictModel):
    reward: float = 1.0
    seconds: float = 0.0  # sleep this long first (work that takes time)


class DurationReference(StrictModel):
    seconds: float = 0.0


@register
class EchoVerifier(Verifier):
    domain = "test_echo"
    description = "Test-only: returns the reward from the reference (after reference.seconds)."
    reference_model = EchoReference

    def verify(self, response: str, reference: EchoReference, options: object) -> Verdict:
        if reference.seconds:
            time.sleep(reference.seconds)
        return Verdict(reference.reward, metrics={"pid": os.getpid(), "length": len(response)})


@register
class SleepVerifier(Verifier):
    domain = "test_sleep"
    description = "Test-only: sleeps in Python for reference.seconds."
    reference_model = DurationReference

    def verify(self, response: str, reference: DurationReference, options: object) -> Verdict:
        time.sleep(reference.seconds)
        return Verdict(1.0, metrics={"pid": os.getpid()})


@register
class SpinVerifier(Verifier):
    domain = "test_spin"
    description = "Test-only: blocks signals and sleeps, so only a kill can stop it."
    reference_model = DurationReference

    def verify(self, response: str, reference: DurationReference, options: object) -> Verdict:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            time.sleep(reference.seconds)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
        return Verdict(1.0, metrics={"pid": os.getpid()})


@register
class CrashVerifier(Verifier):
    domain = "test_crash"
    description = "Test-only: kills its own process."
    reference_model = DurationReference

    def verify(self, response: str, reference: DurationReference, options: object) -> Verdict:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")
