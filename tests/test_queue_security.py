"""Integrity of distributed mode's queue and the security of its Redis: signed jobs and results
(forged, replayed and wrong-key messages are dropped and counted), queue keys (parsing,
rotation, revocation, refusal to start without them), and Redis with AUTH/ACL and TLS. A real
redis-server per test, the gateway in-process, real ``reward-service worker`` subprocesses."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bench.redis_server import RedisServer, RedisTLS
from reward_service.gateway.server import RewardServer
from reward_service.queue import security
from reward_service.queue.security import Keyring, QueueKeyError, load_keyring
from reward_service.queue.streams import (
    JobMessage,
    Keys,
    RedisOptions,
    decode_stored,
    encode_stored,
)
from reward_service.settings import Settings
from tests.conftest import TEST_VERIFIERS, ServerThread
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

KEYS = Keys("reward")
KEYRING = Keyring.from_env(QUEUE_KEYS)
# Same name as the tests' key, another secret: what someone without the key would sign with.
IMPOSTOR = Keyring.from_env(f"tests={secrets.token_hex(32)}")
STRANGER = Keyring.from_env(f"other={secrets.token_hex(32)}")
DROPPED = 'reward_service_dropped_results_total{reason="%s"}'

# The least a gateway and a worker need on Redis (docs/security.md): the commands they send,
# those their Lua scripts run, and the keys under the default prefix.
GATEWAY_ACL = (
    "resetkeys ~reward:* resetchannels -@all +ping +select +evalsha "
    "+script|load +get +set +del +xadd +xread +xtrim +xlen +xpending +xgroup|create +zcount "
    "+pexpire"
)
WORKER_ACL = (
    "resetkeys ~reward:* resetchannels -@all +ping +select +evalsha "
    "+script|load +get +set +xadd +xreadgroup +xautoclaim +xpending +xclaim +xack +xdel "
    "+xgroup|create +zadd +zrem +zremrangebyscore +pexpire"
)


def result_bytes(reward: float) -> bytes:
    return orjson.dumps({"reward": reward, "status": "ok", "detail": None, "metrics": {}})


def metric(server: ServerThread, line_prefix: str) -> float:
    return scrape(f"{server.http_url}/metrics", line_prefix)


def pending_job(redis: Any, domain: str) -> JobMessage:
    """The job waiting in ``domain``'s stream, read without taking it (XRANGE), as anyone who
    can read Redis would."""
    stream = KEYS.jobs(domain)
    wait_for(lambda: redis.xlen(stream) >= 1, 10, f"a job in {stream}")
    [(_, fields)] = redis.xrange(stream, count=1)
    return JobMessage.decode(fields[b"j"])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """``spawn(url, domains, *flags, env=..., metrics_port=...)`` starts a worker; all of them
    are killed at the test's end. Its log is ``worker.log_path``."""
    started: list[WorkerProcess] = []

    def start(url: str, domains: str, *flags: str, **options: Any) -> WorkerProcess:
        worker = WorkerProcess(
            url,
            domains,
            extra=list(flags),
            log_path=tmp_path / f"worker-{len(started)}.log",
            env=options.get("env"),
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def worker_metric(port: int, line_prefix: str) -> float:
    return scrape(f"http://127.0.0.1:{port}/metrics", line_prefix)


@contextmanager
def gateway(
    redis_url: str, **overrides: Any
) -> Iterator[tuple[ServerThread, RewardClient, concurrent.futures.ThreadPoolExecutor]]:
    """A distributed gateway, a client without retries, and a thread to wait on requests in."""
    with (
        distributed_server(redis_url, **overrides) as server,
        RewardClient(server.grpc_target, retries=0) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        yield server, client, pool


def start_gateway(redis_url: str, **overrides: Any) -> None:
    """Start (and stop) a gateway on ``redis_url``: for settings that must fail at start."""
    settings = Settings(
        redis_url=redis_url, queue_keys=QUEUE_KEYS, grpc_port=0, http_port=0, workers=1,
        verifier_modules=[TEST_VERIFIERS], **overrides,
    )  # fmt: skip

    async def start_and_stop() -> None:
        server = RewardServer(settings)
        await server.start()
        await server.stop(grace_s=0)

    asyncio.run(start_and_stop())


# ------------------------------------------------------------------------------ keys, offline


def test_key_file_order_comments_and_rotation(tmp_path: Path) -> None:
    old, new = secrets.token_hex(16), secrets.token_hex(32)
    path = tmp_path / "queue-keys"
    path.write_text(f"# rotated on Monday\n\n  new = {new}  \nold={old}\n")
    both = Keyring.from_file(path)
    assert both.names == ["new", "old"]
    only_old = Keyring.from_env(f"old={old}")
    signature = both.sign_job(b"payload")
    assert signature.startswith(b"new:")  # the first key signs
    assert not only_old.verify_job(b"payload", signature)  # a reader that lacks it refuses
    assert both.verify_job(b"payload", only_old.sign_job(b"payload"))  # every key verifies
    assert Keyring.from_env(f" old={old} , new={new}, ").names == ["old", "new"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("k1=" + "s" * 40 + "\nno-equals-sign-here\n", "line 2: expected NAME=SECRET"),
        ("bad name=" + "s" * 40, "line 1: a key name is"),
        ("# a comment\nk1=tooshort", "line 2: the secret of key 'k1' is shorter than 16 bytes"),
        ("k1=" + "s" * 40 + "\nk1=" + "t" * 40, "line 2: key 'k1' is listed twice"),
        ("# nothing but comments\n\n", "has no keys"),
    ],
)
def test_malformed_key_files_are_refused_by_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "queue-keys"
    path.write_text(text)
    with pytest.raises(QueueKeyError) as raised:
        Keyring.from_file(path)
    message = str(raised.value)
    assert str(path) in message and problem in message
    assert "tooshort" not in message and "s" * 40 not in message  # never a secret


def test_malformed_environment_keys_are_refused_by_item(tmp_path: Path) -> None:
    with pytest.raises(QueueKeyError, match="REWARD_SERVICE_QUEUE_KEYS item 2: the secret"):
        Keyring.from_env(f"a={'x' * 20},b=short")
    with pytest.raises(QueueKeyError, match="REWARD_SERVICE_QUEUE_KEYS has no keys"):
        Keyring.from_env(" , ")
    with pytest.raises(QueueKeyError, match="cannot read the queue key file"):
        Keyring.from_file(tmp_path / "missing")


def test_distributed_mode_needs_keys_unless_told_otherwise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from reward_service.cli import main
    from reward_service.workers.node import WorkerNode

    url = "redis://127.0.0.1:1/0"  # never reached: the settings are refused first
    with pytest.raises(QueueKeyError, match="needs queue keys"):
        load_keyring(Settings(redis_url=url))
    with pytest.raises(QueueKeyError, match="needs queue keys"):
        WorkerNode(Settings(redis_url=url, verifier_modules=[TEST_VERIFIERS]))
    with pytest.raises(QueueKeyError, match="needs queue keys"):
        RewardServer(Settings(redis_url=url, verifier_modules=[TEST_VERIFIERS]))
    for command in ("serve", "worker"):
        with pytest.raises(SystemExit, match=r"--queue-keys-file .* --allow-unsigned-queue"):
            main([command, "--redis-url", url])
    path = tmp_path / "keys"
    path.write_text(QUEUE_KEYS)
    with pytest.raises(QueueKeyError, match="set twice"):
        load_keyring(Settings(redis_url=url, queue_keys_file=path, queue_keys=QUEUE_KEYS))
    with caplog.at_level(logging.WARNING, logger="reward_service.queue.security"):
        assert load_keyring(Settings(redis_url=url, allow_unsigned_queue=True)) is None
    assert "not signed" in caplog.text
    assert load_keyring(Settings(redis_url=url, queue_keys_file=path)).names == ["tests"]


def test_signatures_bind_every_part() -> None:
    value = result_bytes(1.0)
    signature = KEYRING.sign_result("reward:replies:g", "00ff", "key", value)
    assert KEYRING.verify_result("reward:replies:g", "00ff", "key", value, signature)
    for replies, token, key, result in [
        ("reward:replies:h", "00ff", "key", value),  # another gateway
        ("reward:replies:g", "00fe", "key", value),  # another request
        ("reward:replies:g", "00ff", "yek", value),  # another request's content
        ("reward:replies:g", "00ff", "key", result_bytes(0.0)),  # another result
    ]:
        assert not KEYRING.verify_result(replies, token, key, result, signature)
    for forged in (None, b"", b"tests", b"tests:", b"tests:00", signature.replace(b"s:", b"s;")):
        assert not KEYRING.verify_result("reward:replies:g", "00ff", "key", value, forged)
    assert not IMPOSTOR.verify_result("reward:replies:g", "00ff", "key", value, signature)
    # Domain separation: no kind of MAC verifies as another.
    stored = KEYRING.sign_stored("key", value)
    assert KEYRING.verify_stored("key", value, stored)
    assert not KEYRING.verify_stored("other", value, stored)
    assert not KEYRING.verify_result("reward:replies:g", "00ff", "key", value, stored)
    assert not KEYRING.verify_job(value, stored)
    assert decode_stored(encode_stored(stored, value)) == (stored, value)
    assert decode_stored(encode_stored(b"", value)) == (b"", value)  # unsigned: the bare JSON


def test_key_file_changes_apply_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(security, "RELOAD_CHECK_S", 0.0)
    old, new = f"old={secrets.token_hex(32)}", f"new={secrets.token_hex(32)}"
    path = tmp_path / "keys"
    path.write_text(old + "\n")
    keyring = Keyring.from_file(path)
    signed_by_old = keyring.sign_job(b"job")
    assert not keyring.refresh()  # unchanged
    path.write_text(f"{new}\n{old}\n")
    assert keyring.refresh() and keyring.names == ["new", "old"]
    assert keyring.sign_job(b"job").startswith(b"new:")
    assert keyring.verify_job(b"job", signed_by_old)
    path.write_text("new=short\n")  # broken: the keys in force stay
    with caplog.at_level(logging.ERROR, logger="reward_service.queue.security"):
        assert not keyring.refresh()
    assert "line 1" in caplog.text and keyring.names == ["new", "old"]
    path.write_text(new + "\n")  # old revoked
    assert keyring.refresh() and not keyring.verify_job(b"job", signed_by_old)


def test_key_file_generation(tmp_path: Path) -> None:
    path = tmp_path / "queue-keys"
    assert security.main(["keygen", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keyring = Keyring.from_file(path)
    assert len(keyring.names) == 1
    before = path.read_text()
    assert not security.create_key_file(path)  # an existing file is kept
    assert path.read_text() == before
    assert security.main(["keygen"]) == 2


def test_redis_options_keep_the_password_out_of_logs(tmp_path: Path) -> None:
    options = RedisOptions.from_settings(
        Settings(
            redis_url="redis://app:url-secret@127.0.0.1:6380/2",
            redis_username="worker",
            redis_password="settings-secret",
        )
    )
    url, kwargs = options.client_kwargs()
    assert url == "redis://127.0.0.1:6380/2"  # credentials travel as arguments, not in the URL
    assert kwargs == {"username": "worker", "password": "settings-secret"}  # settings win
    for text in (options.redacted(), repr(options), str(options)):
        assert "settings-secret" not in text and "url-secret" not in text
    assert options.redacted() == "redis://app:***@127.0.0.1:6380/2 (user worker)"
    from_url = RedisOptions("redis://app:p%40ss@127.0.0.1/0").client_kwargs()[1]
    assert from_url == {"username": "app", "password": "p@ss"}
    with pytest.raises(ValueError, match="need a rediss:// URL"):
        RedisOptions.from_settings(
            Settings(redis_url="redis://127.0.0.1/0", redis_tls_ca_file=tmp_path / "ca.pem")
        )
    with pytest.raises(ValueError, match="--redis-tls-ca-file: no such file"):
        RedisOptions.from_settings(
            Settings(redis_url="rediss://127.0.0.1/0", redis_tls_ca_file=tmp_path / "ca.pem")
        )
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="Redis TLS files"):
        RedisOptions.from_settings(
            Settings(redis_url="rediss://127.0.0.1/0", redis_tls_ca_file=tmp_path / "ca.pem")
        )
    with pytest.raises(ValueError, match="needs --redis-tls-cert-file"):
        RedisOptions("rediss://127.0.0.1/0", tls_key_file=tmp_path / "key.pem").check()


# ------------------------------------------------------------------------------ forged messages


@needs_redis
def test_forged_results_for_a_pending_request_are_dropped(
    redis_server: RedisServer, spawn: Any
) -> None:
    """Results injected into the gateway's replies stream with the token of a request it waits
    for (read from the job in Redis): unsigned, with a made-up MAC, signed with a guessed
    secret, signed with an unknown key. None is delivered; the genuine one is."""
    redis = redis_server.client()
    with gateway(redis_server.url) as (server, client, pool):
        future = pool.submit(client.score, "test_echo", "x", {"reward": 0.5}, timeout_s=60)
        job = pending_job(redis, "test_echo")
        forged = result_bytes(1.0)
        made_up = b"tests:" + b"0" * 64
        for signature in (
            None,
            made_up,
            IMPOSTOR.sign_result(job.replies, job.token, job.key, forged),
            STRANGER.sign_result(job.replies, job.token, job.key, forged),
        ):
            fields = {"t": job.token, "v": forged, **({"s": signature} if signature else {})}
            redis.xadd(job.replies, fields)
        wait_for(lambda: metric(server, DROPPED % "forged") == 4, 10, "4 forged results dropped")
        assert not future.done()  # still waiting for a genuine result
        spawn(redis_server.url, "test_echo")
        result = future.result(timeout=60)
        assert (result.status, result.reward) == ("ok", 0.5)
        assert metric(server, DROPPED % "forged") == 4
        assert metric(server, DROPPED % "not_waited_for") == 0


@needs_redis
def test_forged_results_end_in_error_at_the_deadline(redis_server: RedisServer) -> None:
    redis = redis_server.client()
    with gateway(redis_server.url) as (_server, client, pool):
        future = pool.submit(client.score, "test_echo", "x", {"reward": 0.5}, timeout_s=2.0)
        job = pending_job(redis, "test_echo")
        redis.xadd(job.replies, {"t": job.token, "v": result_bytes(1.0)})
        result = future.result(timeout=30)
        assert (result.status, result.reward) == ("error", 0.0)
        assert "1 result(s) for it were dropped" in result.detail
        assert "share queue keys" in result.detail


@needs_redis
def test_replayed_genuine_results_are_dropped(redis_server: RedisServer, spawn: Any) -> None:
    """A genuine result (copied from the replies stream) and a genuine stored result (read from
    its done key) posted again for another pending request: neither is delivered."""
    redis = redis_server.client()
    spawn(redis_server.url, "test_echo")
    wait_for_workers(redis, "test_echo", 1)
    first = {"id": "first", "domain": "test_echo", "response": "a", "reference": {"reward": 0.25}}
    with gateway(redis_server.url) as (server, client, pool):
        assert client.score_batch([first])[0].reward == 0.25
        replies = server.server.queue.replies  # type: ignore[union-attr]
        # The gateway trims what it read, up to its last entry: the reply just delivered.
        [(_, captured)] = redis.xrevrange(replies, count=1)
        assert set(captured) == {b"t", b"v", b"s"}
        [done_key] = redis.keys(KEYS.done("*"))
        stored = redis.get(done_key)
        # No worker serves test_sleep: this request waits until its deadline.
        future = pool.submit(client.score, "test_sleep", "b", {"seconds": 0}, timeout_s=3.0)
        job = pending_job(redis, "test_sleep")
        redis.xadd(replies, captured)  # as it was: its request is answered already
        redis.xadd(replies, {**captured, b"t": job.token.encode()})  # aimed at the new one
        redis.xadd(replies, {"t": job.token, "d": stored})  # the stored form, aimed too
        result = future.result(timeout=30)
        assert result.status == "error" and "2 result(s) for it were dropped" in result.detail
        assert metric(server, DROPPED % "not_waited_for") == 1
        assert metric(server, DROPPED % "forged") == 2
        # By design, the stored result does answer an identical request (same id, content).
        again = client.score_batch([first])[0]
        assert (again.status, again.reward) == ("ok", 0.25)
        assert metric(server, 'reward_service_reused_results_total{domain="test_echo"}') == 1


@needs_redis
def test_forged_jobs_are_dead_lettered_not_run(redis_server: RedisServer, spawn: Any) -> None:
    """Jobs injected into a domain stream (unsigned, made-up MAC, guessed secret, unknown key),
    aimed at the token of a pending request: the worker runs none, answers none (so the
    pending request gets no forged `error` either), dead-letters them as forged and keeps
    serving."""
    redis = redis_server.client()
    port = free_port()
    worker = spawn(redis_server.url, "test_echo", "--metrics-port", str(port))
    wait_for_workers(redis, "test_echo", 1)
    with gateway(redis_server.url) as (server, client, pool):
        victim = pool.submit(client.score, "test_sleep", "v", {"seconds": 0}, timeout_s=4.0)
        target = pending_job(redis, "test_sleep")
        forged = JobMessage(
            key=target.key, token=target.token, replies=target.replies,
            deadline=time.time() + 60, domain="test_echo", id="forged", response="x",
            reference={"reward": 1.0}, options={},
        ).encode()  # fmt: skip
        for signature in (
            None,
            b"tests:" + b"0" * 64,
            IMPOSTOR.sign_job(forged),
            STRANGER.sign_job(forged),
        ):
            fields = {"j": forged, **({"s": signature} if signature else {})}
            redis.xadd(KEYS.jobs("test_echo"), fields)
        rejected = 'reward_service_rejected_jobs_total{domain="test_echo",reason="forged"}'
        wait_for(lambda: worker_metric(port, rejected) == 4, 10, "4 forged jobs rejected")
        dead = redis.xrange(KEYS.dead("test_echo"))
        reasons = [fields[b"reason"] for _, fields in dead]
        assert reasons == [b"forged: bad, missing or unknown-key signature"] * 4
        assert redis.xlen(KEYS.jobs("test_echo")) == 0
        assert worker_metric(port, "reward_service_requests_total") == 0  # none was run
        # The worker is fine, and a genuine job still runs.
        assert client.score("test_echo", "y", {"reward": 0.5}).reward == 0.5
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        assert worker.process.poll() is None
        result = victim.result(timeout=30)
        assert result.status == "error" and "dropped" not in result.detail
        assert metric(server, "reward_service_dropped_results_total") == 0


@needs_redis
def test_wrong_keys(redis_server: RedisServer, spawn: Any) -> None:
    """A worker without the gateway's key rejects its jobs; a worker that signs with a key the
    gateway lacks (a rotation done in the wrong order) has its results dropped. Either way the
    requests end `error` at their deadline, saying why, and never with a forged reward."""
    redis = redis_server.client()
    other = f"other={secrets.token_hex(32)}"
    spawn(redis_server.url, "test_echo", env={"REWARD_SERVICE_QUEUE_KEYS": other})
    spawn(
        redis_server.url, "test_sleep", env={"REWARD_SERVICE_QUEUE_KEYS": f"{other},{QUEUE_KEYS}"}
    )
    wait_for_workers(redis, "test_echo", 1)
    wait_for_workers(redis, "test_sleep", 1)
    with gateway(redis_server.url) as (server, client, _):
        rejected, dropped = client.score_batch(
            [
                {"domain": "test_echo", "response": "a", "reference": {"reward": 1.0}},
                {"domain": "test_sleep", "response": "b", "reference": {"seconds": 0}},
            ],
            timeout_s=3.0,
        )
        assert (rejected.status, rejected.reward) == ("error", 0.0)
        assert "did not answer in time" in rejected.detail
        [(_, dead)] = redis.xrange(KEYS.dead("test_echo"))
        assert dead[b"reason"].startswith(b"forged")
        assert (dropped.status, dropped.reward) == ("error", 0.0)
        assert "1 result(s) for it were dropped" in dropped.detail
        assert metric(server, DROPPED % "forged") == 1


@needs_redis
def test_rotation_and_revocation_through_key_files(
    redis_server: RedisServer, spawn: Any, tmp_path: Path
) -> None:
    """Mid-rotation (the gateway signs with the new key, the worker still with the old one)
    everything verifies; then the old key is revoked in both files, without restarts: the
    retry of a request answered under the old key is run again rather than answered from
    its stored result, which no longer verifies."""
    old, new = f"old={secrets.token_hex(32)}", f"new={secrets.token_hex(32)}"
    gateway_keys, worker_keys = tmp_path / "gateway-keys", tmp_path / "worker-keys"
    gateway_keys.write_text(f"{new}\n{old}\n")
    worker_keys.write_text(f"{old}\n{new}\n")
    redis = redis_server.client()
    no_env_keys = {"REWARD_SERVICE_QUEUE_KEYS": None}
    spawn(redis_server.url, "test_echo", "--queue-keys-file", str(worker_keys), env=no_env_keys)
    wait_for_workers(redis, "test_echo", 1)
    request = {"id": "r", "domain": "test_echo", "response": "a", "reference": {"reward": 0.5}}
    with gateway(redis_server.url, queue_keys_file=gateway_keys) as (server, client, _):
        assert client.score_batch([request])[0].reward == 0.5
        [done_key] = redis.keys(KEYS.done("*"))
        assert decode_stored(redis.get(done_key))[0].startswith(b"old:")
        gateway_keys.write_text(f"{new}\n")
        worker_keys.write_text(f"{new}\n")
        keyring = server.server.queue.keyring  # type: ignore[union-attr]
        wait_for(lambda: keyring.names == ["new"], 5, "the gateway to reload its keys")
        time.sleep(4.5)  # the worker checks at its heartbeats (every 2 s)
        again = client.score_batch([request], timeout_s=20)[0]
        assert (again.status, again.reward) == ("ok", 0.5)
        assert metric(server, DROPPED % "forged") == 1  # the stored result, signed by old
        assert decode_stored(redis.get(done_key))[0].startswith(b"old:")  # earlier wins...
        assert client.score_batch([{**request, "id": "s"}])[0].reward == 0.5  # ...new ones run


@needs_redis
def test_unsigned_mode_when_allowed(
    redis_server: RedisServer, spawn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    unsigned = {"REWARD_SERVICE_QUEUE_KEYS": None, "REWARD_SERVICE_ALLOW_UNSIGNED_QUEUE": "true"}
    worker = spawn(redis_server.url, "test_echo", env=unsigned)
    refused = spawn(redis_server.url, "test_echo", env={"REWARD_SERVICE_QUEUE_KEYS": None})
    assert refused.process.wait(60) != 0
    assert "needs queue keys" in refused.log_path.read_text()
    wait_for_workers(redis_server.client(), "test_echo", 1)
    with (
        caplog.at_level(logging.WARNING, logger="reward_service.queue.security"),
        gateway(redis_server.url, allow_unsigned_queue=True) as (server, client, _),
    ):
        request = {"id": "u", "domain": "test_echo", "response": "a", "reference": {"reward": 0.5}}
        assert client.score_batch([request])[0].reward == 0.5
        assert client.score_batch([request])[0].reward == 0.5  # from the stored result
        assert metric(server, 'reward_service_reused_results_total{domain="test_echo"}') == 1
    assert caplog.text.count("not signed") == 1
    assert "not signed" in worker.log_path.read_text()


# ------------------------------------------------------------------------------ Redis AUTH/ACL


def acl_users(gateway_password: str, worker_password: str) -> list[str]:
    return [
        f"reward-gateway on >{gateway_password} {GATEWAY_ACL}",
        f"reward-worker on >{worker_password} {WORKER_ACL}",
        f"reward-reader on >{worker_password} resetkeys ~reward:* -@all +ping +get",
    ]


@needs_redis
def test_redis_acl_users_score_end_to_end(
    tmp_path: Path, spawn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gateway and worker as the least-privileged ACL users of docs/security.md, passwords
    from REWARD_SERVICE_REDIS_PASSWORD, the default user locked behind its own password."""
    gateway_password, worker_password = secrets.token_hex(16), secrets.token_hex(16)
    with RedisServer(
        tmp_path, password=secrets.token_hex(16), users=acl_users(gateway_password, worker_password)
    ) as redis_server:
        redis = redis_server.client()
        port = free_port()
        worker = spawn(
            redis_server.url, "test_echo", "--redis-username", "reward-worker",
            "--metrics-port", str(port), "--visibility-timeout-s", "1",
            env={"REWARD_SERVICE_REDIS_PASSWORD": worker_password},
        )  # fmt: skip
        wait_for_workers(redis, "test_echo", 1)
        monkeypatch.setenv("REWARD_SERVICE_REDIS_PASSWORD", gateway_password)
        with gateway(redis_server.url, redis_username="reward-gateway") as (server, client, _):
            wait_for(lambda: httpx.get(f"{server.http_url}/readyz").status_code == 200, 10, "ready")
            requests = [
                {"id": str(i), "domain": "test_echo", "response": "a", "reference": {"reward": 0.5}}
                for i in range(20)
            ]
            assert {r.reward for r in client.score_batch(requests)} == {0.5}
            assert client.score_batch(requests[:1])[0].reward == 0.5  # the stored result
            wait_for(
                lambda: metric(server, 'reward_service_workers_live{domain="test_echo"}') == 1,
                5,
                "the worker's heartbeat seen by the gateway (ZCOUNT)",
            )
            time.sleep(1.0)  # a few reclaim and renewal rounds (XAUTOCLAIM, XPENDING, XCLAIM)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        worker.terminate()
        log = worker.log_path.read_text()
        assert "NOPERM" not in log and "failed" not in log, log
        assert worker_password not in log


@needs_redis
def test_wrong_redis_credentials_fail_at_start(tmp_path: Path, spawn: Any) -> None:
    gateway_password, worker_password = secrets.token_hex(16), secrets.token_hex(16)
    with RedisServer(
        tmp_path, password=secrets.token_hex(16), users=acl_users(gateway_password, worker_password)
    ) as redis_server:
        worker = spawn(
            redis_server.url, "test_echo", "--redis-username", "reward-worker",
            env={"REWARD_SERVICE_REDIS_PASSWORD": "wrong-password"},
        )  # fmt: skip
        started = time.monotonic()
        assert worker.process.wait(60) != 0
        log = worker.log_path.read_text()
        assert "refused the credentials" in log and "wrong-password" not in log
        for overrides, problem in [
            ({"redis_password": "wrong-password"}, "refused the credentials"),
            ({}, "refused the credentials"),  # no password at all
            # A user that cannot SET the epoch key: the ACL is too narrow for a gateway.
            ({"redis_username": "reward-reader", "redis_password": worker_password}, "permission"),
        ]:
            with pytest.raises(RuntimeError, match=problem) as raised:
                start_gateway(redis_server.url, **overrides)
            assert "wrong-password" not in str(raised.value)
        assert time.monotonic() - started < 60


# ------------------------------------------------------------------------------ Redis TLS


@pytest.fixture
def tls_files(tmp_path: Path) -> RedisTLS:
    certs = pytest.importorskip("tests.certs", reason="the cryptography package is not installed")
    authority = certs.TestCA(tmp_path)
    server = authority.issue("localhost", server=True)
    client = authority.issue("reward-client", server=False)
    return RedisTLS(
        ca_file=authority.cert_file,
        cert_file=server.cert,
        key_file=server.key,
        client_cert=client.cert,
        client_key=client.key,
    )


def tls_redis(tmp_path: Path, tls: RedisTLS) -> RedisServer:
    """A started TLS-only redis-server; the test is skipped if this build has no TLS."""
    server = RedisServer(tmp_path, tls=tls)
    try:
        return server.start()
    except RuntimeError as exc:
        if "tls" in str(exc).lower():
            pytest.skip(f"this redis-server is not built with TLS: {exc}")
        raise


@needs_redis
def test_redis_over_tls(
    tmp_path: Path, tls_files: RedisTLS, spawn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server = tls_redis(tmp_path, tls_files)
    try:
        assert redis_server.url.startswith("rediss://")
        ca = str(tls_files.ca_file)
        spawn(redis_server.url, "test_echo", "--redis-tls-ca-file", ca)
        wait_for_workers(redis_server.client(), "test_echo", 1)
        with gateway(redis_server.url, redis_tls_ca_file=ca) as (server, client, _):
            assert client.score("test_echo", "a", {"reward": 0.5}).reward == 0.5
        # Without the CA, the server's certificate does not verify: refused at start.
        with pytest.raises(RuntimeError, match="certificate does not verify"):
            start_gateway(redis_server.url)
        # Plaintext against the TLS port: no hang, not ready, `error` by the deadline, a hint.
        plain = f"redis://127.0.0.1:{redis_server.port}/0"
        with (
            caplog.at_level(logging.WARNING, logger="reward_service.queue"),
            gateway(plain) as (server, client, _),
        ):
            started = time.monotonic()
            result = client.score("test_echo", "a", {"reward": 0.5}, timeout_s=2.0)
            assert result.status == "error" and time.monotonic() - started < 5
            assert httpx.get(f"{server.http_url}/readyz").status_code == 503
        assert "if that port speaks TLS: a rediss:// URL" in caplog.text
    finally:
        redis_server.stop()


@needs_redis
def test_redis_with_client_certificates(tmp_path: Path, tls_files: RedisTLS, spawn: Any) -> None:
    tls = dataclasses.replace(tls_files, auth_clients=True)
    redis_server = tls_redis(tmp_path, tls)
    try:
        files = [
            "--redis-tls-ca-file", str(tls.ca_file),
            "--redis-tls-cert-file", str(tls.client_cert),
            "--redis-tls-key-file", str(tls.client_key),
        ]  # fmt: skip
        spawn(redis_server.url, "test_echo", *files)
        wait_for_workers(redis_server.client(), "test_echo", 1)
        with gateway(
            redis_server.url,
            redis_tls_ca_file=tls.ca_file,
            redis_tls_cert_file=tls.client_cert,
            redis_tls_key_file=tls.client_key,
        ) as (_server, client, _):
            assert client.score("test_echo", "a", {"reward": 0.25}).reward == 0.25
        # No client certificate: the server hangs up; a worker says what may be missing.
        lacking = spawn(redis_server.url, "test_echo", "--redis-tls-ca-file", str(tls.ca_file))
        wait_for(
            lambda: "--redis-tls-cert-file" in lacking.log_path.read_text(),
            30,
            "the worker's warning",
        )
        assert lacking.process.poll() is None  # not ready, retrying: the server may change
    finally:
        redis_server.stop()


@needs_redis
def test_redis_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, users=["bad-user on +nosuchcommand"])
    with pytest.raises(RuntimeError, match=r"did not start on port .*nosuchcommand"):
        server.start()
    assert server.process is None
