"""Real processes for the distributed-mode tests: ``redis-server`` on a free port (no
persistence, restartable on the same port: :class:`bench.redis_server.RedisServer`) and
``reward-service worker`` subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from bench.redis_server import RedisServer
from bench.service import free_port
from tests.conftest import TEST_VERIFIERS

__all__ = ["RedisServer", "WorkerProcess", "free_port", "needs_redis", "wait_for"]

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
    """``reward-service worker`` as a real subprocess (so that it can be SIGKILLed)."""

    def __init__(
        self,
        redis_url: str,
        domains: str,
        *,
        concurrency: int = 1,
        extra: list[str] | None = None,
        log_path: Path | None = None,
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
        self.process = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
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


def live_workers(client: redis.Redis, domain: str, prefix: str = "reward") -> int:
    return client.zcount(f"{prefix}:workers:{domain}", time.time() - 10, "+inf")


def wait_for_workers(client: redis.Redis, domain: str, count: int, timeout: float = 60) -> None:
    wait_for(lambda: live_workers(client, domain) >= count, timeout, f"{count} {domain} workers")
