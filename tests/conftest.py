"""Fixtures that run the real service: gRPC and HTTP on free loopback ports, real workers."""

from __future__ import annotations

import asyncio
import io
import shutil
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from reward_service.gateway.server import RewardServer
from reward_service.settings import Settings

TEST_VERIFIERS = "tests.plugin_verifiers"
ROOT = Path(__file__).resolve().parents[1]


def find_tool(name: str) -> str | None:
    """A binary the dev install puts in .venv/bin (helm, promtool, ...), else one on PATH."""
    for candidate in (Path(sys.executable).parent / name, ROOT / ".venv" / "bin" / name):
        if candidate.is_file():
            return str(candidate)
    return shutil.which(name)


class ServerThread:
    """A :class:`RewardServer` on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: RewardServer | None = None

    def run(self, coro: Any, timeout: float = 120) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{coro!r} still running after {timeout} s; the server's tasks:\n"
                + self.task_stacks()
            ) from None

    def task_stacks(self) -> str:
        """Where each of the loop's tasks waits: what a hang report needs (read from this
        thread while the loop runs: good enough for a diagnosis)."""
        report = io.StringIO()
        for task in list(asyncio.all_tasks(self.loop)):
            task.print_stack(file=report)
        return report.getvalue()

    def start(self) -> ServerThread:
        self.thread.start()

        async def start() -> RewardServer:
            server = RewardServer(self.settings)
            await server.start()
            return server

        self.server = self.run(start())
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.run(self.server.stop(grace_s=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def grpc_target(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def http_url(self) -> str:
        assert self.server is not None
        scheme = "https" if self.settings.tls_cert_file else "http"
        return f"{scheme}://127.0.0.1:{self.server.http_port}"


@contextmanager
def running_server(**overrides: Any) -> Iterator[ServerThread]:
    given: dict[str, Any] = {
        "grpc_port": 0,
        "http_port": 0,
        "workers": 2,
        "verifier_modules": [TEST_VERIFIERS],
    }
    settings = Settings(**(given | overrides))
    server = ServerThread(settings).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    """A service with every built-in domain plus the test verifiers, shared by a module."""
    with running_server(max_request_bytes=64 * 1024, max_batch_size=512) as running:
        yield running


def wait_for(future: Future[Any], timeout: float = 60) -> Any:
    return future.result(timeout)
