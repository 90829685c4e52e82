"""The main loop of one verifier worker process (the side that runs untrusted-input work).

The parent (:mod:`reward_service.workers.pool`) sends batches of work items over a pipe; this
process runs them one at a time and sends verdicts back. Before each item it writes the item's
index and start time into shared memory, so the parent can see which item is running and kill
the process when that item outlives its hard deadline. Inside the process a soft deadline is
enforced with ``SIGALRM`` (we are the main thread, where signals are delivered), which raises
:class:`~reward_service.verifiers.base.VerifierTimeout` in the verifier's Python code; code
stuck in C never sees the signal, which is what the parent's kill is for.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import signal
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from reward_service.verifiers.base import Status, Verdict, Verifier, VerifierTimeout
from reward_service.verifiers.registry import get_verifier_class, load_verifiers

# Results are flushed to the parent at least this often during a long batch, so that callers
# of cheap items are not held up by an expensive item later in the same batch.
FLUSH_INTERVAL_S = 0.005
PR_SET_PDEATHSIG = 1
EXPIRED_IN_BATCH = "deadline passed while waiting behind other samples (service overloaded)"

# One work item as it travels over the pipe: (domain, response, reference, options, budget_s,
# deadline), the deadline on the time.monotonic clock (CLOCK_MONOTONIC, shared by processes).
WorkItem = tuple[str, str, Any, Any, float, float]
# One verdict as it travels back: (reward, status, detail, metrics, run_time_s).
VerdictTuple = tuple[float, str, str | None, dict[str, Any], float]


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when our parent dies, so no worker outlives the service."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the EOF on the pipe still stops the loop
        pass


def _limit_memory(megabytes: int) -> None:
    if megabytes > 0:
        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _on_alarm(signum: int, frame: Any) -> None:
    raise VerifierTimeout


def _run_one(verifier: Verifier, item: WorkItem, started: float) -> Verdict:
    _, response, reference, options, budget_s, deadline = item
    # An item waits for the ones before it in its batch: its budget ends at its deadline.
    budget_s = min(budget_s, deadline - started)
    if budget_s <= 0:
        return Verdict(0.0, Status.ERROR, EXPIRED_IN_BATCH)
    try:
        signal.setitimer(signal.ITIMER_REAL, budget_s)
        try:
            return verifier.verify(response, reference, options)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except VerifierTimeout:
        return Verdict(0.0, Status.TIMEOUT, f"scoring exceeded its budget of {budget_s:g} s")
    except MemoryError:
        return Verdict(0.0, Status.TIMEOUT, "scoring ran out of memory (worker_memory_mb)")
    except Exception as exc:  # a verifier bug is an infrastructure failure, not a 0 reward
        return Verdict(0.0, Status.ERROR, f"verifier raised {type(exc).__name__}: {exc}")


def main(
    conn: Connection,
    progress: Any,
    domains: list[str],
    verifier_modules: list[str],
    configs: dict[str, dict[str, Any]],
    memory_mb: int = 0,
) -> None:
    """Serve batches from ``conn`` until it closes or the parent sends ``None``.

    ``progress`` is a shared ``double[2]``: the index of the running item in the current batch
    (-1 when idle) and its start time on the ``time.monotonic`` clock. ``memory_mb`` caps the
    process's address space (0: no cap).
    """
    _die_with_parent()
    _limit_memory(memory_mb)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # A SIGTERM sent to the whole process group (systemd, tini -g) is the parent's to act on:
    # it drains and then stops us; PR_SET_PDEATHSIG still ends us if it dies.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        load_verifiers(verifier_modules)
        verifiers = {d: get_verifier_class(d)(configs.get(d)) for d in domains}
        for verifier in verifiers.values():
            verifier.setup()
    except Exception:
        conn.send(("failed", traceback.format_exc()))
        return
    signal.signal(signal.SIGALRM, _on_alarm)
    # The verifiers' libraries (sympy, reasoning-gym, ...) are hundreds of thousands of
    # objects that never die: kept out of the collector, a full collection scans only what
    # the batches allocate.
    gc.collect()
    gc.freeze()
    progress[0] = -1.0
    unavailable = {d: v.unavailable for d, v in verifiers.items() if v.unavailable}
    conn.send(("ready", os.getpid(), unavailable))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        batch_id, items = message
        pending: list[tuple[int, VerdictTuple]] = []
        last_flush = time.monotonic()
        for index, item in enumerate(items):
            started = time.monotonic()
            progress[1] = started
            progress[0] = float(index)  # written last: the parent reads index, then start time
            verdict = _run_one(verifiers[item[0]], item, started)
            finished = time.monotonic()
            pending.append(
                (
                    index,
                    (
                        verdict.reward,
                        verdict.status.value,
                        verdict.detail,
                        verdict.metrics,
                        finished - started,
                    ),
                )
            )
            if finished - last_flush >= FLUSH_INTERVAL_S and index + 1 < len(items):
                conn.send(("results", batch_id, pending))
                pending = []
                last_flush = finished
        progress[0] = -1.0
        conn.send(("done", batch_id, pending))
