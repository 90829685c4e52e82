"""Distributed mode end to end: a real redis-server per test, the gateway in-process, and
``reward-service worker`` subprocesses that the tests kill, stop and restart."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from bench.redis_server import RedisServer
from reward_service.queue.security import Keyring
from reward_service.queue.streams import (
    GROUP,
    JobMessage,
    Keys,
    RedisOptions,
    cancel_tasks,
    connect,
    decode_stored,
    encode_stored,
    idempotency_key,
)
from tests.conftest import ServerThread
from tests.distributed import (
    QUEUE_KEYS,
    WorkerProcess,
    distributed_server,
    free_port,
    needs_redis,
    scrape,
    wait_for,
    wait_for_workers,
)
from trainer.client import RewardClient

pytestmark = needs_redis
KEYS = Keys("reward")
KEYRING = Keyring.from_env(QUEUE_KEYS)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Workers started by a test; all of them are killed at its end."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.close()


def start_worker(
    started: list[WorkerProcess],
    redis: RedisServer,
    domains: str,
    tmp_path: Path,
    *extra: str,
    concurrency: int = 1,
) -> WorkerProcess:
    worker = WorkerProcess(
        redis.url,
        domains,
        concurrency=concurrency,
        extra=list(extra),
        log_path=tmp_path / f"worker-{len(started)}.log",
    )
    started.append(worker)
    return worker


def echo(index: int, total: int, seconds: float = 0.0) -> dict[str, object]:
    reward = round(index / total, 6)
    return {
        "id": f"r{index}",
        "domain": "test_echo",
        "response": f"sample {index}",
        "reference": {"reward": reward, "seconds": seconds},
    }


def math_request(response: str, ground_truth: str) -> dict[str, object]:
    return {"domain": "math", "response": response, "reference": {"ground_truth": ground_truth}}


def metric(server: ServerThread, line_prefix: str) -> float:
    return scrape(f"{server.http_url}/metrics", line_prefix)


def test_mixed_domains_score_through_redis(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    start_worker(workers, redis_server, "math,test_echo", tmp_path, concurrency=2)
    wait_for_workers(redis_server.client(), "math", 1)
    with distributed_server(redis_server.url) as server:
        wait_for(lambda: httpx.get(f"{server.http_url}/readyz").status_code == 200, 10, "ready")
        with RewardClient(server.grpc_target) as client:
            results = client.score_batch(
                [
                    math_request(r"\boxed{\frac12}", "0.5"),
                    math_request(r"\boxed{3}", "2"),
                    echo(1, 4),
                    {"domain": "math", "response": "x", "reference": {}},
                ]
            )
        assert [(r.reward, r.status) for r in results] == [
            (1.0, "ok"),
            (0.0, "ok"),
            (0.25, "ok"),
            (0.0, "invalid"),  # validated by the gateway: never reaches Redis
        ]
        assert results[2].id == "r1"
        wait_for(
            lambda: metric(server, 'reward_service_workers_live{domain="math"}') == 1,
            5,
            "the worker's heartbeat in the gateway's metrics",
        )
        assert metric(server, "reward_service_redis_up") == 1
        assert metric(server, 'reward_service_build_info{role="gateway"') == 1
        assert redis_server.client().xlen(KEYS.jobs("math")) == 0  # answered jobs are deleted


def test_busy_worker_posts_results_in_groups(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A worker that still runs jobs lets a finished result wait (up to 60 ms) for others and
    posts them in one round trip; a lone request is posted at once, alone."""
    port = free_port()
    start_worker(workers, redis_server, "test_echo", tmp_path, "--metrics-port", str(port))
    wait_for_workers(redis_server.client(), "test_echo", 1)
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    with distributed_server(redis_server.url) as server, RewardClient(server.grpc_target) as client:
        total = 40
        results = client.score_batch([echo(i, total, seconds=0.005) for i in range(total)])
        assert [r.reward for r in results] == [round(i / total, 6) for i in range(total)]
        posts = scrape(metrics_url, "reward_service_results_per_post_count")
        assert scrape(metrics_url, "reward_service_results_per_post_sum") == total
        assert posts <= total / 2, f"{total} results in {posts:g} posts: not grouped"
        lone = client.score("test_echo", "alone", {"reward": 0.25})
        assert lone.reward == 0.25
        assert scrape(metrics_url, "reward_service_results_per_post_count") == posts + 1


def test_worker_killed_mid_batch_every_request_answered_once(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    total = 2000
    doomed = start_worker(
        workers, redis_server, "test_echo", tmp_path, "--visibility-timeout-s", "1", concurrency=2
    )
    start_worker(
        workers, redis_server, "test_echo", tmp_path, "--visibility-timeout-s", "1", concurrency=2
    )
    client_redis = redis_server.client()
    wait_for_workers(client_redis, "test_echo", 2)
    with (
        distributed_server(redis_server.url) as server,
        RewardClient(server.grpc_target, timeout_s=120) as client,
    ):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            batch = pool.submit(
                client.score_batch, [echo(i, total, seconds=0.004) for i in range(total)]
            )
            # Kill one worker (no drain, no goodbye) once a quarter of the work is done.
            wait_for(
                lambda: metric(server, "reward_service_requests_total") >= total // 4,
                60,
                "progress",
            )
            assert batch.running()
            doomed.kill()
            results = batch.result(timeout=120)
        assert len(results) == total
        for index, result in enumerate(results):
            assert (result.id, result.status, result.reward) == (
                f"r{index}",
                "ok",
                round(index / total, 6),
            ), result
        answered = metric(server, 'reward_service_requests_total{domain="test_echo"')
        assert answered == total  # no request answered twice
    assert client_redis.xlen(KEYS.jobs("test_echo")) == 0
    assert client_redis.xlen(KEYS.dead("test_echo")) == 0


def test_redis_restart_mid_run_answers_everything(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    total = 600
    start_worker(workers, redis_server, "test_echo", tmp_path, concurrency=2)
    wait_for_workers(redis_server.client(), "test_echo", 1)
    with (
        distributed_server(redis_server.url) as server,
        RewardClient(server.grpc_target, timeout_s=60, retries=0) as client,
    ):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            batch = pool.submit(
                client.score_batch,
                [echo(i, total, seconds=0.005) for i in range(total)],
                timeout_s=30,
            )
            wait_for(lambda: metric(server, "reward_service_requests_total") >= 50, 30, "progress")
            redis_server.restart(down_s=0.5)  # no persistence: streams and groups are gone
            results = batch.result(timeout=60)
        elapsed = time.monotonic() - started
        assert elapsed < 30  # nothing waited for its deadline
        assert len(results) == total
        assert {r.status for r in results} <= {"ok", "error"}
        for index, result in enumerate(results):
            if result.status == "ok":
                assert result.reward == round(index / total, 6)
        # The gateway republished what Redis lost, so in practice nothing failed.
        assert sum(r.status == "ok" for r in results) == total
        assert metric(server, "reward_service_republished_jobs_total") > 0
        # And both sides are back in business.
        wait_for(lambda: httpx.get(f"{server.http_url}/readyz").status_code == 200, 10, "ready")
        assert client.score_batch([echo(1, 2)])[0].reward == 0.5


def test_code_workers_gone_code_errors_at_deadline_math_flows(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    start_worker(workers, redis_server, "math", tmp_path, concurrency=1)
    code_worker = start_worker(workers, redis_server, "code", tmp_path, concurrency=1)
    client_redis = redis_server.client()
    wait_for_workers(client_redis, "math", 1)
    wait_for_workers(client_redis, "code", 1)
    code_request = {
        "domain": "code",
        "response": "```python\nprint(int(input()) * 2)\n```",
        "reference": {"tests": [{"input": "2\n", "output": "4\n"}]},
    }
    with (
        distributed_server(redis_server.url, kill_grace_s=0.2) as server,
        RewardClient(server.grpc_target, retries=0) as client,
    ):
        assert client.score_batch([code_request], timeout_s=30)[0].reward == 1.0
        assert code_worker.terminate() == 0  # all code workers stopped (drained)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            started = time.monotonic()
            code = pool.submit(client.score_batch, [code_request] * 3, timeout_s=2.0)
            math_latencies = []
            while not code.done():
                sent = time.monotonic()
                result = client.score("math", r"\boxed{4}", {"ground_truth": "4"}, timeout_s=5)
                math_latencies.append(time.monotonic() - sent)
                assert (result.status, result.reward) == ("ok", 1.0)
            code_results = code.result()
            waited = time.monotonic() - started
        assert [r.status for r in code_results] == ["error"] * 3
        assert "no worker for domain 'code' is running" in code_results[0].detail
        assert 1.9 <= waited < 3.0  # at the deadline (plus the grace), not before, not much later
        assert len(math_latencies) >= 5 and max(math_latencies) < 1.0


def test_duplicate_and_stray_replies_are_dropped(redis_server: RedisServer) -> None:
    """Acting as a worker by hand (with the queue key): a job answered twice, a result for a
    request that does not exist, and an unreadable entry reach the gateway; the client sees
    exactly one result."""
    redis = redis_server.client()
    with (
        distributed_server(redis_server.url) as server,
        RewardClient(server.grpc_target, retries=0) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        future = pool.submit(
            client.score, "test_echo", "x", {"reward": 0.5}, id="req", timeout_s=20
        )
        stream = KEYS.jobs("test_echo")
        wait_for(lambda: redis.xlen(stream) == 1, 10, "the job in its stream")
        [[_, [(_, fields)]]] = redis.xreadgroup(GROUP, "by-hand", {stream: ">"}, count=1)
        assert KEYRING.verify_job(fields[b"j"], fields[b"s"])
        job = JobMessage.decode(fields[b"j"])
        assert (job.id, job.response, job.reference) == ("req", "x", {"reward": 0.5})

        def reply(token: str, reward: float) -> dict[str, bytes | str]:
            value = orjson.dumps({"reward": reward, "status": "ok", "detail": None, "metrics": {}})
            signature = KEYRING.sign_result(job.replies, token, job.key, value)
            return {"t": token, "v": value, "s": signature}

        redis.xadd(job.replies, reply("no-such-token", 1.0))
        redis.xadd(job.replies, reply(job.token, 0.75))
        redis.xadd(job.replies, reply(job.token, 1.0))  # a duplicate, late
        redis.xadd(job.replies, {"t": job.token})  # unreadable (answered already, too)
        redis.xadd(job.replies, {"v": b"{}"})  # unreadable: no token
        result = future.result(timeout=20)
        assert (result.id, result.reward) == ("req", 0.75)
        wait_for(
            lambda: metric(server, "reward_service_dropped_results_total") == 4, 5, "4 dropped"
        )
        dropped = 'reward_service_dropped_results_total{reason="%s"}'
        assert metric(server, dropped % "not_waited_for") == 3
        assert metric(server, dropped % "unreadable") == 1


def test_late_result_of_a_reclaimed_job_is_dropped(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A worker that stalls past the visibility timeout loses its job to another; when it
    finally answers, the completion script refuses it (XACK says someone else did)."""
    from redis import Redis

    from reward_service.queue.streams import COMPLETE_SCRIPT

    redis: Redis = redis_server.client()
    with (
        distributed_server(redis_server.url) as server,
        RewardClient(server.grpc_target, retries=0) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        future = pool.submit(client.score, "test_echo", "x", {"reward": 0.25}, timeout_s=30)
        stream = KEYS.jobs("test_echo")
        wait_for(lambda: redis.xlen(stream) == 1, 10, "the job in its stream")
        [[_, [(entry_id, fields)]]] = redis.xreadgroup(GROUP, "stalled", {stream: ">"}, count=1)
        job = JobMessage.decode(fields[b"j"])
        start_worker(workers, redis_server, "test_echo", tmp_path, "--visibility-timeout-s", "0.5")
        assert future.result(timeout=30).reward == 0.25  # reclaimed and answered
        late = orjson.dumps({"reward": 1.0, "status": "ok", "detail": None, "metrics": {}})
        complete = redis.register_script(COMPLETE_SCRIPT)
        outcome = complete(
            keys=[stream, KEYS.done(job.key), job.replies, KEYS.dead("test_echo")],
            args=[
                GROUP, entry_id, late, job.token, 1, 60000, 60000, "", "", 100,
                KEYRING.sign_result(job.replies, job.token, job.key, late),
                encode_stored(KEYRING.sign_stored(job.key, late), late),
            ],
        )  # fmt: skip
        assert outcome == 0  # refused: nothing posted, nothing stored
        signature, stored = decode_stored(redis.get(KEYS.done(job.key)))
        assert KEYRING.verify_stored(job.key, stored, signature)
        assert orjson.loads(stored)["reward"] == 0.25
        time.sleep(0.3)
        assert metric(server, "reward_service_dropped_results_total") == 0


def test_retried_request_is_not_run_twice(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    metrics_port = free_port()
    start_worker(workers, redis_server, "test_echo", tmp_path, "--metrics-port", str(metrics_port))
    wait_for_workers(redis_server.client(), "test_echo", 1)
    request = {
        "id": "same",
        "domain": "test_echo",
        "response": "y",
        "reference": {"reward": 0.5, "seconds": 0.5},
    }
    with (
        distributed_server(redis_server.url) as server,
        RewardClient(server.grpc_target) as client,
    ):
        first = client.score_batch([request])[0]
        started = time.monotonic()
        second = client.score_batch([request])[0]  # a retry: same id, same content
        assert time.monotonic() - started < 0.4  # answered from the stored result
        other = client.score_batch([{**request, "response": "z"}])[0]  # same id, new content
        assert metric(server, 'reward_service_reused_results_total{domain="test_echo"}') == 1
    assert first.reward == second.reward == other.reward == 0.5
    worker_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert 'reward_service_requests_total{domain="test_echo",status="ok"} 2.0' in worker_metrics
    # Workers report their own Redis reachability (an alert on 0 must not fire for them) and
    # their role, which dashboards join on to tell their request counts from the gateways'.
    assert "reward_service_redis_up 1.0" in worker_metrics
    assert 'reward_service_build_info{role="worker",version=' in worker_metrics


def test_job_delivered_too_often_is_dead_lettered(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    redis = redis_server.client()
    stream = KEYS.jobs("test_echo")
    with (
        distributed_server(redis_server.url) as server,
        RewardClient(server.grpc_target, retries=0) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        future = pool.submit(client.score, "test_echo", "x", {"reward": 1.0}, timeout_s=30)
        wait_for(lambda: redis.xlen(stream) == 1, 10, "the job in its stream")
        # Two workers take it and die without a word (deliveries 1 and 2) ...
        [[_, [(entry_id, _fields)]]] = redis.xreadgroup(GROUP, "dead-1", {stream: ">"}, count=1)
        redis.xclaim(stream, GROUP, "dead-2", 0, [entry_id])
        # ... so the third delivery, with max_deliveries=2, dead-letters it.
        start_worker(
            workers, redis_server, "test_echo", tmp_path,
            "--visibility-timeout-s", "0.5", "--max-deliveries", "2",
        )  # fmt: skip
        result = future.result(timeout=30)
        assert result.status == "error"
        assert "dead-lettered" in result.detail
        [(_, dead)] = redis.xrange(KEYS.dead("test_echo"))
        assert dead[b"entry"] == entry_id and b"delivered 3 times" in dead[b"reason"]
        assert JobMessage.decode(dead[b"j"]).reference == {"reward": 1.0}
        assert redis.xlen(stream) == 0
        wait_for(
            lambda: metric(server, 'reward_service_dead_letters{domain="test_echo"}') == 1,
            5,
            "the dead letter in the gateway's metrics",
        )


def test_long_streams_push_back(redis_server: RedisServer) -> None:
    """No worker at all and a stream limit of 5: the sixth request is refused at once."""
    with (
        distributed_server(redis_server.url, max_stream_length=5) as server,
        RewardClient(server.grpc_target, retries=0) as client,
    ):
        started = time.monotonic()
        results = client.score_batch([echo(i, 8) for i in range(8)], timeout_s=1.0)
        assert [r.status for r in results] == ["error"] * 8
        refused = [r for r in results if "max_stream_length=5" in r.detail]
        assert len(refused) == 3
        assert time.monotonic() - started < 3


def test_sigterm_drains_held_jobs(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A worker told to stop finishes what it holds; one that cannot finish in its drain
    timeout hands its jobs back and another worker answers them at once."""
    client_redis = redis_server.client()
    patient = start_worker(workers, redis_server, "test_echo", tmp_path, concurrency=2)
    wait_for_workers(client_redis, "test_echo", 1)
    with (
        distributed_server(redis_server.url) as server,
        RewardClient(server.grpc_target, retries=0) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        batch = pool.submit(client.score_batch, [echo(i, 2, seconds=1.0) for i in range(2)])
        wait_for(lambda: metric(server, "reward_service_stream_pending") == 2, 10, "jobs taken")
        assert patient.terminate() == 0
        assert [r.reward for r in batch.result(timeout=10)] == [0.0, 0.5]

        hasty = start_worker(
            workers, redis_server, "test_echo", tmp_path, "--drain-timeout-s", "0.2"
        )
        wait_for_workers(client_redis, "test_echo", 1)
        batch = pool.submit(client.score_batch, [echo(1, 2, seconds=3.0)], timeout_s=60)
        wait_for(lambda: metric(server, "reward_service_stream_pending") == 1, 10, "job taken")
        start_worker(workers, redis_server, "test_echo", tmp_path, "--visibility-timeout-s", "8")
        wait_for_workers(client_redis, "test_echo", 2)
        started = time.monotonic()
        assert hasty.terminate() == 0
        assert batch.result(timeout=60)[0].reward == 0.5
        # Handed back: taken by the other worker's next reclaim (every 2 s), then 3 s of work.
        # Not handed back, it would wait out the 8 s visibility timeout first: 11 s or more.
        assert time.monotonic() - started < 10


def test_readiness_follows_redis(redis_server: RedisServer) -> None:
    with distributed_server(redis_server.url) as server:
        ready = f"{server.http_url}/readyz"
        wait_for(lambda: httpx.get(ready).status_code == 200, 10, "ready")
        redis_server.stop()
        wait_for(lambda: httpx.get(ready).status_code == 503, 10, "not ready")
        assert metric(server, "reward_service_redis_up") == 0
        redis_server.start()
        wait_for(lambda: httpx.get(ready).status_code == 200, 10, "ready again")


def test_job_message_round_trip_and_keys() -> None:
    message = JobMessage(
        key="k", token="1f", replies="reward:replies:g", deadline=123.5, domain="math",
        id="a", response="r", reference={"ground_truth": "1"}, options={},
    )  # fmt: skip
    assert JobMessage.decode(message.encode()) == message
    with pytest.raises((ValueError, KeyError, TypeError)):
        JobMessage.decode(b'{"k": 1}')
    base = idempotency_key("a", "math", "r", {"ground_truth": "1", "x": 2}, {})
    assert base == idempotency_key("a", "math", "r", {"x": 2, "ground_truth": "1"}, {})
    assert base != idempotency_key("b", "math", "r", {"ground_truth": "1", "x": 2}, {})
    assert base != idempotency_key("a", "math", "r2", {"ground_truth": "1", "x": 2}, {})


def test_commands_packed_in_c_travel_as_redis_py_packs_them(redis_server: RedisServer) -> None:
    """The client packs commands with hiredis (see streams._HiredisPacking): the bytes on the
    wire are redis-py's own, multi-word commands still split, and what redis-py refuses is
    still refused with its DataError."""
    from redis.asyncio.connection import Connection
    from redis.exceptions import DataError

    args = ("EVALSHA", "f" * 40, 2, "k:1", b"k:\xff", "h\u00e9", 7, -1.5, b"", 600000)
    from reward_service.queue.streams import _HiredisPacking

    client = connect(RedisOptions(redis_server.url))
    assert issubclass(client.connection_pool.connection_class, _HiredisPacking)
    packing = client.connection_pool.connection_class()
    assert b"".join(packing.pack_command(*args)) == b"".join(Connection().pack_command(*args))
    assert packing.pack_command("SCRIPT LOAD", "return 1") == Connection().pack_command(
        "SCRIPT LOAD", "return 1"
    )

    async def scenario() -> list[object]:
        try:
            sha = await client.script_load("return ARGV[1]")
            pipe = client.pipeline(transaction=False)
            pipe.set("x", 1.25)
            pipe.get("x")
            pipe.evalsha(sha, 0, "h\u00e9")
            answers = await pipe.execute()
            with pytest.raises(DataError, match="NoneType"):
                await client.set("x", None)  # type: ignore[arg-type]
            return answers
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [True, b"1.25", "h\u00e9".encode()]


def test_cancel_tasks_ends_a_task_that_swallows_a_cancel() -> None:
    """A library that swallows a cancel (redis-py 8 does, now and then) must not leave a
    shutdown waiting forever: the cancel is repeated until the task ends."""
    swallowed = 0

    async def stubborn_loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    async def scenario() -> list[asyncio.Task[None]]:
        tasks = [asyncio.create_task(stubborn_loop()), asyncio.create_task(stubborn_loop())]
        await asyncio.sleep(0)
        await cancel_tasks(list(tasks))
        return tasks

    started = time.monotonic()
    tasks = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert swallowed == 1 and all(task.cancelled() for task in tasks)
    assert time.monotonic() - started < 5


def test_worker_refuses_to_start_without_redis_url() -> None:
    from reward_service.cli import main

    with pytest.raises(SystemExit, match="needs --redis-url"):
        main(["worker", "--domains", "math"])


def test_worker_that_cannot_sandbox_refuses_to_start(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A code worker without a working sandbox would answer every code job `error`: it exits
    instead, saying why (no Docker engine runs here)."""
    worker = start_worker(workers, redis_server, "code", tmp_path, "--sandbox-backend", "docker")
    assert worker.process.wait(120) != 0
    log = (tmp_path / "worker-0.log").read_text()
    assert "cannot serve code on this host" in log and "sandbox-check" in log
    assert not redis_server.client().exists(KEYS.jobs("code"))  # it never read the stream
