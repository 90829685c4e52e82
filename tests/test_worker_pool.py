"""The embedded queue and worker pool: deadlines, kills, crashes, overload, batching."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from reward_service.verifiers.base import Status, VerifierOptions
from reward_service.verifiers.registry import load_verifiers
from reward_service.workers.pool import Job, WorkerPool
from tests.conftest import TEST_VERIFIERS
from tests.plugin_verifiers import DurationReference, EchoReference

DOMAINS = ["test_echo", "test_sleep", "test_spin", "test_crash"]


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    load_verifiers([TEST_VERIFIERS])
    pool = WorkerPool(
        workers=2,
        domains=DOMAINS,
        verifier_modules=[TEST_VERIFIERS],
        kill_grace_s=0.2,
        max_queued=5000,
    )
    await pool.start()
    yield pool
    await pool.stop()


@contextlib.asynccontextmanager
async def one_worker_pool(**settings: Any) -> AsyncIterator[WorkerPool]:
    """A started pool of one worker with the test verifiers; stopped afterwards."""
    load_verifiers([TEST_VERIFIERS])
    pool = WorkerPool(
        **{"workers": 1, "domains": DOMAINS, "verifier_modules": [TEST_VERIFIERS], **settings}
    )
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


def job(domain: str, reference: object, *, budget: float = 5.0, deadline: float = 30.0) -> Job:
    return Job(domain, "x", reference, VerifierOptions(), budget, time.monotonic() + deadline)


def echo(reward: float = 1.0) -> Job:
    return job("test_echo", EchoReference(reward=reward))


async def test_many_cheap_jobs_are_batched_and_all_answered(pool: WorkerPool) -> None:
    futures = [pool.submit(echo(i / 4000)) for i in range(4000)]
    verdicts = await asyncio.gather(*futures)
    assert [v.reward for v in verdicts] == [i / 4000 for i in range(4000)]
    assert {v.metrics["pid"] for v in verdicts} == {
        w.process.pid for w in pool._workers if w is not None
    }


async def test_python_level_overrun_is_stopped_by_the_soft_timer(pool: WorkerPool) -> None:
    started = time.monotonic()
    verdict = await pool.submit(job("test_sleep", DurationReference(seconds=10), budget=0.3))
    assert verdict.status is Status.TIMEOUT and verdict.reward == 0.0
    assert time.monotonic() - started < 1.0
    pids_before = {w.process.pid for w in pool._workers if w is not None}
    assert (await pool.submit(echo())).metrics["pid"] in pids_before  # no restart needed


async def test_code_stuck_beyond_signals_is_killed_and_the_worker_replaced(
    pool: WorkerPool,
) -> None:
    started = time.monotonic()
    stuck = pool.submit(job("test_spin", DurationReference(seconds=30), budget=0.3))
    await asyncio.sleep(0.05)
    # the other worker keeps answering while one is stuck
    quick = await asyncio.gather(*(pool.submit(echo()) for _ in range(200)))
    assert all(v.status is Status.OK for v in quick)
    assert time.monotonic() - started < 0.5
    verdict = await stuck
    assert verdict.status is Status.TIMEOUT and "killed" in (verdict.detail or "")
    assert time.monotonic() - started < 0.3 + 0.2 + 0.5
    for _ in range(100):
        if pool.ready_workers == 2:
            break
        await asyncio.sleep(0.05)
    assert pool.ready_workers == 2


async def test_a_crash_answers_error_and_requeues_the_rest_of_the_batch(pool: WorkerPool) -> None:
    crash = pool.submit(job("test_crash", DurationReference()))
    verdict = await crash
    assert verdict.status is Status.ERROR and "died" in (verdict.detail or "")
    verdicts = await asyncio.gather(*(pool.submit(echo()) for _ in range(50)))
    assert all(v.status is Status.OK for v in verdicts)


async def test_jobs_expire_in_the_queue_with_error(pool: WorkerPool) -> None:
    blockers = [
        pool.submit(job("test_sleep", DurationReference(seconds=1), budget=2)) for _ in range(2)
    ]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    waiting = await pool.submit(job("test_echo", EchoReference(), deadline=0.3))
    assert waiting.status is Status.ERROR and "deadline passed" in (waiting.detail or "")
    assert 0.25 < time.monotonic() - started < 0.6
    await asyncio.gather(*blockers)


async def test_overload_is_refused_not_buffered() -> None:
    async with one_worker_pool(max_queued=3) as pool:
        running = pool.submit(job("test_sleep", DurationReference(seconds=0.3)))
        await asyncio.sleep(0.05)
        queued = [pool.submit(echo()) for _ in range(3)]
        refused = await pool.submit(echo())
        assert refused.status is Status.ERROR and "max_queued=3" in (refused.detail or "")
        assert all(v.status is Status.OK for v in await asyncio.gather(running, *queued))


async def test_stop_answers_everything_with_error() -> None:
    load_verifiers([TEST_VERIFIERS])
    pool = WorkerPool(workers=1, domains=DOMAINS, verifier_modules=[TEST_VERIFIERS])
    await pool.start()
    running = pool.submit(job("test_sleep", DurationReference(seconds=5)))
    queued = pool.submit(echo())
    await asyncio.sleep(0.05)
    await pool.stop()
    for verdict in (await running, await queued):
        assert verdict.status is Status.ERROR and "shutting down" in (verdict.detail or "")
    assert (await pool.submit(echo())).status is Status.ERROR


async def test_a_verifier_that_cannot_start_is_reported() -> None:
    load_verifiers([TEST_VERIFIERS])
    pool = WorkerPool(workers=1, domains=["test_echo"], verifier_modules=["no.such.module"])
    with pytest.raises(RuntimeError, match="No module named 'no'"):
        await pool.start(timeout_s=20)


async def test_a_worker_found_dead_while_dispatching_loses_no_job(pool: WorkerPool) -> None:
    # A worker that died while idle is only noticed when a batch sent to it fails. The jobs
    # are requeued and handed to the others, and no worker may be sent a second batch over
    # the first (that batch's jobs would never be answered).
    dead = pool._workers[-1]  # the idle worker that dispatching picks first
    assert dead is not None and dead.idle
    dead.process.kill()
    for _ in range(500):  # wait for it to die without letting the event loop see the EOF
        try:
            with open(f"/proc/{dead.process.pid}/stat") as stat:  # noqa: ASYNC230 - on purpose
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:  # already reaped (by the forkserver, its parent)
            break
        time.sleep(0.01)  # noqa: ASYNC251 - blocking on purpose: the loop must not run
    # Many jobs queued while both workers look idle: the state a requeue leaves behind.
    jobs = [echo(i / 40) for i in range(40)]
    for queued in jobs:
        queued.future = asyncio.get_running_loop().create_future()
        pool._enqueue(queued, at_head=False)
    pool._dispatch()
    verdicts = await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), 10)
    assert [v.reward for v in verdicts] == [i / 40 for i in range(40)]
    assert all(v.status is Status.OK for v in verdicts)


async def test_a_job_waiting_behind_a_slow_one_in_its_batch_is_answered_by_its_deadline() -> None:
    # A large batch target puts both queued sleep jobs into one batch of the only worker.
    async with one_worker_pool(kill_grace_s=0.2, batch_target_s=100) as pool:
        blocker = pool.submit(job("test_sleep", DurationReference(seconds=0.3)))
        await asyncio.sleep(0.05)
        slow = pool.submit(job("test_sleep", DurationReference(seconds=1.5)))
        started = time.monotonic()
        late = pool.submit(job("test_sleep", DurationReference(seconds=2), deadline=0.6))
        verdict = await late
        assert time.monotonic() - started < 0.6 + 0.2 + 0.25
        assert verdict.status is Status.ERROR and "deadline passed" in (verdict.detail or "")
        assert (await blocker).status is Status.OK and (await slow).status is Status.OK


async def test_a_batch_item_is_cut_at_its_deadline_not_its_full_budget() -> None:
    async with one_worker_pool(kill_grace_s=0.2, batch_target_s=100) as pool:
        blocker = pool.submit(job("test_sleep", DurationReference(seconds=0.3)))
        await asyncio.sleep(0.05)
        # Both share one deadline (as in one ScoreBatch call); the second starts late.
        started = time.monotonic()
        first = pool.submit(job("test_sleep", DurationReference(seconds=0.5), deadline=1.0))
        second = pool.submit(job("test_sleep", DurationReference(seconds=5), deadline=1.0))
        verdicts = await asyncio.gather(first, second)
        assert time.monotonic() - started < 1.0 + 0.2 + 0.25
        assert verdicts[0].status is Status.OK
        assert verdicts[1].status is Status.TIMEOUT
        await blocker


async def test_a_cancelled_queued_job_is_never_run() -> None:
    async with one_worker_pool() as pool:
        [pid] = [w.process.pid for w in pool._workers if w is not None]
        busy = pool.submit(job("test_sleep", DurationReference(seconds=0.3)))
        await asyncio.sleep(0.05)
        doomed = pool.submit(job("test_crash", DurationReference()))  # would kill the worker
        doomed.cancel()  # what the gateway does when the caller goes away
        assert (await busy).status is Status.OK
        assert (await pool.submit(echo())).metrics["pid"] == pid  # the same worker: never crashed


async def test_expired_jobs_do_not_count_against_max_queued() -> None:
    async with one_worker_pool(max_queued=3) as pool:
        running = pool.submit(job("test_sleep", DurationReference(seconds=0.5)))
        await asyncio.sleep(0.05)
        short = [pool.submit(job("test_echo", EchoReference(), deadline=0.1)) for _ in range(3)]
        assert all(v.status is Status.ERROR for v in await asyncio.gather(*short))
        # The three expired jobs are still in the deque behind the sleeping one, but a new
        # job is accepted rather than refused as an overload.
        accepted = pool.submit(echo())
        assert (await running).status is Status.OK
        assert (await accepted).status is Status.OK
