"""Start ``reward-service serve`` (or ``worker``) in a child process for a benchmark, on free
ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """``with ServiceProcess(workers=2) as service:`` runs the gateway until the block ends;
    ``command="worker"`` runs a distributed worker instead (``workers`` processes). ``env``
    adds environment variables (e.g. ``REWARD_SERVICE_QUEUE_KEYS``).

    A separate process keeps the benchmark's client off the gateway's interpreter, as in
    production, where the trainer is another process (or machine).
    """

    def __init__(
        self,
        *,
        workers: int,
        extra_args: list[str] | None = None,
        command: str = "serve",
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = {**os.environ, **(env or {})}
        self.grpc_port = free_port()
        self.http_port = free_port()
        if command == "serve":
            role = ["serve", "--grpc-port", str(self.grpc_port), "--workers", str(workers)]
            role += ["--http-port", str(self.http_port)]
        elif command == "worker":  # its /readyz is on the metrics port
            role = ["worker", "--metrics-port", str(self.http_port), "--concurrency", str(workers)]
        else:
            raise ValueError(f"command must be serve or worker, got {command!r}")
        self.args = [
            sys.executable,
            "-m",
            "reward_service.cli",
            "--log-level",
            "WARNING",
            *role,
            "--verifier-modules",
            "bench.noop_verifier",
            *(extra_args or []),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> ServiceProcess:
        self.process = subprocess.Popen(self.args, env=self.env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with code {self.process.returncode}")
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError("the service did not become ready within 120 s")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
