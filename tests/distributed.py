"""Real processes for the distributed-mode tests: ``redis-server`` on a free port (no
persistence, restartable on the same port: :class:`bench.redis_server.RedisServer`) and
``reward-service worker`` subprocesses, which share the queue keys :data:`QUEUE_KEYS` with
gateways started by :func:`distributed_server`."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bench.redis_server import RedisServer
from bench.service import free_port
from tests.conftest import TEST_VERIFIERS, ServerThread, running_server

__all__ = [
    "QUEUE_KEYS",
    "RedisServer",
    "WorkerProcess",
    "distributed_server",
    "free_port",
    "needs_redis",
    "scrape",
    "wait_for",
    "wait_for_workers",
]

# The queue keys (NAME=SECRET) of the tests' gateways and workers; fresh for each test run.
QUEUE_KEYS = f"tests={secrets.token_hex(32)}"

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (deploy/install.sh installs it with apt-get)",
)


def wait_for(condition, timeout: float, what: str, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class WorkerProcess:
    """``reward-service worker`` as a real subprocess (so that it can be SIGKILLed). It gets
    :data:`QUEUE_KEYS` through the environment; ``env`` adds variables, or removes them
    (a None value)."""

    def __init__(
        self,
        redis_url: str,
        domains: str,
        *,
        concurrency: int = 1,
        extra: list[str] | None = None,
        log_path: Path | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> None:
        command = [
            sys.executable, "-m", "reward_service.cli", "--log-level", "WARNING", "worker",
            "--redis-url", redis_url,
            "--domains", domains,
            "--concurrency", str(concurrency),
            "--verifier-modules", TEST_VERIFIERS,
            "--metrics-port", "0",
            *(extra or []),
        ]  # fmt: skip
        self.log_path = log_path
        self.log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        variables = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "REWARD_SERVICE_QUEUE_KEYS": QUEUE_KEYS,
            **(env or {}),
        }
        self.process = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={name: value for name, value in variables.items() if value is not None},
            cwd=Path(__file__).resolve().parent.parent,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def scrape(url: str, line_prefix: str) -> float:
    """The sum of the Prometheus samples at ``url`` whose line starts with ``line_prefix``."""
    text = httpx.get(url).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix)
    )


@contextmanager
def distributed_server(redis_url: str, **overrides: Any) -> Iterator[ServerThread]:
    """A gateway in distributed mode on ``redis_url``, with :data:`QUEUE_KEYS` unless
    ``overrides`` set other keys."""
    keyed = {"queue_keys_file", "queue_keys", "allow_unsigned_queue"} & overrides.keys()
    keys = {} if keyed else {"queue_keys": QUEUE_KEYS}
    with running_server(redis_url=redis_url, **keys, **overrides) as server:
        yield server


def live_workers(client: redis.Redis, domain: str, prefix: str = "reward") -> int:
    return client.zcount(f"{prefix}:workers:{domain}", time.time() - 10, "+inf")


def wait_for_workers(client: redis.Redis, domain: str, count: int, timeout: float = 60) -> None:
    wait_for(lambda: live_workers(client, domain) >= count, timeout, f"{count} {domain} workers")
