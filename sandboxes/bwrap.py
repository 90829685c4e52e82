"""The ``bwrap`` backend: bubblewrap namespaces around a long-lived harness process.

The sandbox is started once per worker and serves submissions one at a time, so a
submission costs a few forks inside it, not a sandbox start. What it gets:

- new user, pid, network (no interface but a downed loopback), ipc, uts, cgroup and mount
  namespaces; ``--die-with-parent`` and ``--new-session``;
- read-only ``/usr`` (with the usual ``/bin``, ``/lib`` links) and nothing else of the host:
  no ``/etc`` beyond the dynamic loader's cache, no home, no repository, no sockets;
- a private tmpfs of ``limits.tmpfs_mb`` as the only writable place;
- an empty environment, also for bwrap itself (``/proc/1/environ`` shows nothing);
- when the worker runs as root, a dedicated unprivileged uid per sandbox (``setpriv``), since
  root, even inside a user namespace, ignores ``RLIMIT_NPROC``;
- rlimits on each untrusted process (address space, processes, file size, open files, CPU),
  set by the harness;
- the total budget enforced twice: by the harness, and from outside by killing the whole
  sandbox process group when the harness does not answer in time.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from typing import Any

from sandboxes.base import (
    HARNESS_SOURCE,
    Sandbox,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
    Submission,
    TestRun,
)
from sandboxes.protocol import (
    ChannelClosedError,
    DeadlineError,
    encode_frame,
    frame_ready,
    read_frame,
    write_all,
)

SANDBOX_PYTHON = "/usr/bin/python3"
START_TIMEOUT_S = 20.0
# Time the harness may take beyond the budget to fork, clean up and answer.
REPLY_GRACE_S = 1.0
# uids handed to sandboxes when the worker runs as root; far above any real account.
FIRST_SANDBOX_UID = 200_000
_uid_counter = itertools.count()


def _sandbox_uid() -> int:
    # Distinct per process and per sandbox: RLIMIT_NPROC counts per real uid, machine-wide.
    return FIRST_SANDBOX_UID + (os.getpid() * 16 + next(_uid_counter)) % 1_000_000


class BwrapSandbox(Sandbox):
    """A bubblewrap sandbox running the harness; start with :meth:`start` (or lazily)."""

    name = "bwrap"

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.process: subprocess.Popen[bytes] | None = None
        self.uid: int | None = None
        self._fds: dict[str, int] = {}
        self._ids = itertools.count(1)
        self.info: dict[str, Any] = {}

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
            self.uid = _sandbox_uid()
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
        harness = HARNESS_SOURCE.read_text()
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
            "--",
            SANDBOX_PYTHON, "-I", "-S", "-c", harness,
            "--own-pid-namespace", "--tests-fd", str(tests_fd), "--verdicts-fd", str(verdicts_fd),
        ]  # fmt: skip

    def start(self) -> None:
        """Start the sandbox and wait for its harness to say it is ready."""
        self.check_available()
        control_in_r, control_in_w = os.pipe()
        control_out_r, control_out_w = os.pipe()
        tests_r, tests_w = os.pipe()
        verdicts_r, verdicts_w = os.pipe()
        try:
            self.process = subprocess.Popen(
                self.command(tests_r, verdicts_w),
                stdin=control_in_r,
                stdout=control_out_w,
                stderr=subprocess.DEVNULL,
                pass_fds=(tests_r, verdicts_w),
                env={"PATH": "/usr/bin:/bin"},  # what bwrap itself (pid 1 inside) shows
                start_new_session=True,  # its own process group: one killpg ends it all
                close_fds=True,
            )
        finally:
            for fd in (control_in_r, control_out_w, tests_r, verdicts_w):
                os.close(fd)
        for fd in (control_in_w, tests_w):
            os.set_blocking(fd, False)
        self._fds = {
            "control_in": control_in_w,
            "control_out": control_out_r,
            "tests": tests_w,
            "verdicts": verdicts_r,
        }
        try:
            self.info = read_frame(control_out_r, time.monotonic() + START_TIMEOUT_S)
        except (DeadlineError, ChannelClosedError, ValueError) as exc:
            code = self.process.poll()
            self.close()
            raise SandboxUnavailableError(
                f"bubblewrap sandbox failed to start ({exc}; exit code {code}); "
                "are unprivileged user namespaces allowed on this host?"
            ) from None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def run(self, submission: Submission) -> SandboxResult:
        """Run every test of ``submission``; never raises for what the submission does."""
        if not self.running:
            self.close()
            self.start()
        request_id = next(self._ids)
        request = {
            "id": request_id,
            "language": submission.language,
            "mode": submission.mode,
            "code": submission.code,
            "inputs": submission.inputs,
            "fn_name": submission.fn_name,
            "entry_point": submission.entry_point,
            "budget_s": submission.budget_s,
            "test_time_limit_s": submission.test_time_limit_s,
            "compile_timeout_s": submission.compile_timeout_s,
            "limits": self.limits.to_json(),
        }
        compile_allowance = submission.compile_timeout_s if submission.language == "cpp" else 0
        deadline = time.monotonic() + submission.budget_s + compile_allowance + REPLY_GRACE_S
        try:
            write_all(self._fds["control_in"], encode_frame(request), deadline)
            if submission.mode == "assert":
                frame = encode_frame({"id": request_id, "test_code": submission.test_code})
                write_all(self._fds["tests"], frame, deadline)
            reply = read_frame(self._fds["control_out"], deadline)
            verdict = self._read_verdict(request_id) if submission.mode == "assert" else None
        except DeadlineError:
            self.close()
            return SandboxResult(
                timed_out=True,
                elapsed_s=submission.budget_s,
                lost="the sandbox did not answer within the budget and was killed",
            )
        except (ChannelClosedError, ValueError) as exc:
            self.close()
            return SandboxResult(lost=f"the sandbox died during the run ({exc})")
        except BaseException:
            self.close()  # interrupted mid-protocol (worker deadline): the channel is unusable
            raise
        if "harness_error" in reply:
            return SandboxResult(lost=f"harness failure: {reply['harness_error']}")
        result = SandboxResult(
            tests=[TestRun(**test) for test in reply.get("tests", [])],
            compile_error=reply.get("compile_error"),
            timed_out=bool(reply.get("timed_out")),
            elapsed_s=float(reply.get("elapsed_s", 0.0)),
            stderr=reply.get("stderr", ""),
        )
        if submission.mode == "assert" and result.compile_error is None:
            if verdict is None:
                checker_exit = reply.get("checker_exit", "unknown")
                result.assert_error = f"the checker process gave no verdict ({checker_exit})"
            else:
                result.assert_verdicts = verdict["tests"]
                result.assert_error = verdict.get("error")
        return result

    def _read_verdict(self, request_id: int) -> dict[str, Any] | None:
        # The checker writes its verdict before it exits, and the harness replies after
        # that, so the frame is already in the pipe if there is one at all.
        fd = self._fds["verdicts"]
        while frame_ready(fd):
            frame = read_frame(fd, time.monotonic() + 1.0)
            if frame.get("id") == request_id:
                return frame
        return None

    def close(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}


BACKEND = BwrapSandbox
