"""The ``docker`` backend: the harness in a container, through the Docker SDK.

For hosts where a Docker engine runs and bubblewrap cannot (no unprivileged user namespaces).
One long-lived container per worker, like the bwrap backend, with:

- no network (``network_mode=none``), a read-only root, a private tmpfs as the only writable
  place, ``--init`` as pid 1 (so the harness can clean up every leftover process);
- a dedicated unprivileged uid per sandbox, all capabilities dropped, ``no-new-privileges``;
- a pids limit and a memory limit on the container (cgroups), on top of the harness's rlimits;
- an optional runtime, e.g. gVisor's ``runsc`` (``--sandbox-runtime runsc``).

The harness's pipes cannot be inherited across ``docker run``, so the worker passes them over
a unix socket in a private directory mounted read-only into the container: the harness
connects once at start, before any untrusted code exists, and the socket is deleted right
after. The image needs ``/usr/bin/python3`` (and ``g++`` for C++):
``docker build -f deploy/sandbox.Dockerfile -t reward-service-sandbox .``
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from sandboxes.base import SandboxLimits, SandboxUnavailableError
from sandboxes.harness_client import (
    START_TIMEOUT_S,
    HarnessSandbox,
    harness_source,
    sandbox_uid,
)

DEFAULT_IMAGE = "reward-service-sandbox:latest"
HARNESS_COMMAND = ["/usr/bin/python3", "-I", "-S", "-c"]
HARNESS_ARGS = ["--own-pid-namespace", "--fd-socket", "/channel/fds.sock"]


def _client() -> Any:
    try:
        import docker
    except ImportError:
        raise SandboxUnavailableError(
            "the Docker SDK is not installed (pip install 'reward-service[docker]')"
        ) from None
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # the SDK raises several unrelated types for "no engine"
        raise SandboxUnavailableError(f"no Docker engine reachable: {exc}") from None
    return client


class DockerSandbox(HarnessSandbox):
    """The harness in a Docker container (see the module docstring)."""

    name = "docker"

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        image: str = DEFAULT_IMAGE,
        runtime: str | None = None,
    ) -> None:
        super().__init__(limits)
        self.image = image
        self.runtime = runtime
        self.container: Any = None
        self._docker: Any = None

    @classmethod
    def check_available(cls) -> None:
        _client().close()

    def launch(self, control_in: int, control_out: int, tests: int, verdicts: int) -> None:
        self._docker = _client()
        try:
            self._docker.images.get(self.image)
        except Exception as exc:
            raise SandboxUnavailableError(
                f"sandbox image {self.image!r} is not available ({exc}); build it with "
                "docker build -f deploy/sandbox.Dockerfile -t reward-service-sandbox ."
            ) from None
        uid = sandbox_uid()
        channel_dir = Path(tempfile.mkdtemp(prefix="reward-sandbox-"))
        try:
            channel_dir.chmod(0o755)
            path = channel_dir / "fds.sock"
            with socket.socket(socket.AF_UNIX) as listener:
                listener.bind(str(path))
                path.chmod(0o777)  # the container's uid must be able to connect
                listener.listen(1)
                listener.settimeout(START_TIMEOUT_S)
                self.container = self._docker.containers.run(
                    self.image,
                    command=[*HARNESS_COMMAND, harness_source(), *HARNESS_ARGS],
                    detach=True,
                    auto_remove=True,
                    init=True,
                    network_mode="none",
                    read_only=True,
                    tmpfs={"/tmp": f"size={self.limits.tmpfs_mb}m,mode=1777,exec"},
                    volumes={str(channel_dir): {"bind": "/channel", "mode": "ro"}},
                    user=f"{uid}:{uid}",
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    pids_limit=self.limits.nproc + 16,
                    mem_limit=f"{2 * self.limits.memory_mb + 256}m",
                    environment={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"},
                    working_dir="/tmp",
                    runtime=self.runtime,
                )
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    raise SandboxUnavailableError(
                        "the sandbox container did not connect to its channel"
                    ) from None
                with connection:
                    socket.send_fds(
                        connection, [b"fds"], [control_in, control_out, tests, verdicts]
                    )
        finally:
            shutil.rmtree(channel_dir, ignore_errors=True)

    def alive(self) -> bool:
        # Asking the engine costs a round trip per submission; a dead container shows up as a
        # closed pipe instead, after which run() starts a new one.
        return self.container is not None

    def terminate(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):  # already gone: auto_remove did its job
                self.container.kill()
            self.container = None
        if self._docker is not None:
            self._docker.close()
            self._docker = None


BACKEND = DockerSandbox
