"""The ``bwrap`` backend: bubblewrap namespaces around a long-lived harness process.

The sandbox is started once per worker and serves submissions one at a time, so a
submission costs a few forks inside it, not a sandbox start. What it gets:

- new user, pid, network (no interface but a downed loopback), ipc, uts, cgroup and mount
  namespaces; ``--die-with-parent`` and ``--new-session``;
- read-only ``/usr`` (with the usual ``/bin``, ``/lib`` links) and nothing else of the host:
  no ``/etc`` beyond the dynamic loader's cache, no home, no repository, no sockets;
- a private tmpfs of ``limits.tmpfs_mb`` as the only writable place;
- a read-only root (``--remount-ro /``) and an empty environment, also for bwrap itself
  (``/proc/1/environ`` shows nothing);
- when the worker runs as root, a dedicated unprivileged uid per sandbox (``setpriv``), since
  root, even inside a user namespace, ignores ``RLIMIT_NPROC``;
- rlimits on each untrusted process (address space, processes, file size, open files, CPU),
  set by the harness;
- the total budget enforced twice: by the harness, and from outside by killing the whole
  sandbox process group when the harness does not answer in time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence

from sandboxes.base import SandboxLimits, SandboxUnavailableError
from sandboxes.harness_client import HarnessSandbox, harness_source, sandbox_uid

SANDBOX_PYTHON = "/usr/bin/python3"


class BwrapSandbox(HarnessSandbox):
    """The harness in a bubblewrap sandbox (see the module docstring)."""

    name = "bwrap"

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        python_paths: Sequence[str] = (),
        preload: Sequence[str] = (),
    ) -> None:
        """``python_paths``: host folders of pure-Python or same-ABI packages to mount
        read-only and put on the harness's ``sys.path``; ``preload``: modules the harness
        imports once, so that every fork has them (a scoring library, for instance)."""
        super().__init__(limits)
        self.python_paths = list(python_paths)
        self.preload = list(preload)
        self.process: subprocess.Popen[bytes] | None = None
        self.uid: int | None = None

    @classmethod
    def check_available(cls) -> None:
        for tool in ("bwrap", SANDBOX_PYTHON):
            if shutil.which(tool) is None:
                raise SandboxUnavailableError(
                    f"{tool} is not installed (Debian/Ubuntu: apt-get install bubblewrap python3)"
                )
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            raise SandboxUnavailableError("setpriv (util-linux) is needed when running as root")

    def command(self, tests_fd: int, verdicts_fd: int) -> list[str]:
        """The full command line that starts the sandbox."""
        prefix: list[str] = []
        if os.geteuid() == 0:
            self.uid = sandbox_uid()
            prefix = [
                "setpriv",
                f"--reuid={self.uid}",
                f"--regid={self.uid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--",
            ]
        layout: list[str] = ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/lib", "/lib64", "/sbin"):
            if os.path.islink(top):
                layout += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                layout += ["--ro-bind", top, top]
        layout += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        extra_args: list[str] = []
        for index, path in enumerate(self.python_paths):
            layout += ["--ro-bind", path, f"/opt/python{index}"]
            extra_args += ["--path", f"/opt/python{index}"]
        for module in self.preload:
            extra_args += ["--preload", module]
        harness = harness_source()
        return [
            *prefix,
            "bwrap",
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--hostname", "sandbox",
            *layout,
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(self.limits.tmpfs_mb * 1024 * 1024), "--tmpfs", "/tmp",
            "--remount-ro", "/",  # the root bwrap builds is a tmpfs: freeze it
            "--chdir", "/tmp",
            "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin",
            "--setenv", "HOME", "/tmp",
            "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--setenv", "MPLCONFIGDIR", "/tmp",  # matplotlib, if a preloaded library pulls it in
            "--",
            SANDBOX_PYTHON, "-I", "-S", "-c", harness,
            "--own-pid-namespace", "--tests-fd", str(tests_fd), "--verdicts-fd", str(verdicts_fd),
            *extra_args,
        ]  # fmt: skip

    def launch(self, control_in: int, control_out: int, tests: int, verdicts: int) -> None:
        self.process = subprocess.Popen(
            self.command(tests, verdicts),
            stdin=control_in,
            stdout=control_out,
            stderr=subprocess.DEVNULL,
            pass_fds=(tests, verdicts),
            env={"PATH": "/usr/bin:/bin"},  # what bwrap itself (pid 1 inside) shows
            start_new_session=True,  # its own process group: one killpg ends it all
            close_fds=True,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None


BACKEND = BwrapSandbox
