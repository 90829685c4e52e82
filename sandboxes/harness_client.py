"""What every backend shares: starting the harness with its four pipes, and running
submissions through it with deadlines. A backend only says how to launch the harness process
(:meth:`HarnessSandbox.launch`) and how to kill it (:meth:`HarnessSandbox.terminate`)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from abc import abstractmethod
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
from sandboxes.harness.zygote import encode
from sandboxes.protocol import (
    ChannelClosedError,
    DeadlineError,
    FrameReader,
    encode_frame,
    read_frame,
    read_frame_draining,
    write_all,
)

START_TIMEOUT_S = 60.0
# Time the harness may take beyond the budget to fork, clean up and answer.
REPLY_GRACE_S = 1.0
# uids handed to sandboxes; far above any real account.
FIRST_SANDBOX_UID = 200_000
_uid_counter = itertools.count()


def sandbox_uid() -> int:
    """A uid of its own for each sandbox: RLIMIT_NPROC counts per real uid, machine-wide."""
    return FIRST_SANDBOX_UID + (os.getpid() * 16 + next(_uid_counter)) % 1_000_000


def harness_source() -> str:
    return HARNESS_SOURCE.read_text()


def call_arguments(submission: Submission) -> list[list[Any]]:
    """A call-mode submission's tests as the candidate takes them: [arguments, keyword
    arguments] each, as tagged plain data (decoded and tagged here, not in the sandbox, where
    every page the zygote touches after a fork is a page copied)."""
    no_keywords = encode({})
    if submission.calls == "check":  # literal checks: their arguments are tagged already
        return [[json.loads(text), no_keywords] for text in submission.inputs]
    calls = []
    for text in submission.inputs:
        value = json.loads(text)
        calls.append([encode(value if isinstance(value, list) else [value]), no_keywords])
    return calls


class HarnessSandbox(Sandbox):
    """A sandbox with the harness of ``sandboxes/harness/zygote.py`` inside (see there for the
    protocol and the trust rules). Started by :meth:`start`, or lazily by :meth:`run`."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.info: dict[str, Any] = {}
        self._fds: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._started = False

    # ----------------------------------------------------------------------------- backend part

    @abstractmethod
    def launch(self, control_in: int, control_out: int, tests: int, verdicts: int) -> None:
        """Start the harness with these pipe ends as its control input, control output,
        test-code input and verdict output. Called with the worker's ends still open."""

    @abstractmethod
    def terminate(self) -> None:
        """Kill the harness and everything in the sandbox (idempotent)."""

    @abstractmethod
    def alive(self) -> bool:
        """Whether the harness may still be running (a dead one shows as a closed pipe)."""

    # ----------------------------------------------------------------------------- shared part

    def start(self) -> None:
        """Start the sandbox and wait for its harness to say it is ready."""
        self.check_available()
        control_in_r, control_in_w = os.pipe()
        control_out_r, control_out_w = os.pipe()
        tests_r, tests_w = os.pipe()
        verdicts_r, verdicts_w = os.pipe()
        self._fds = {
            "control_in": control_in_w,
            "control_out": control_out_r,
            "tests": tests_w,
            "verdicts": verdicts_r,
        }
        self._started = True
        try:
            self.launch(control_in_r, control_out_w, tests_r, verdicts_w)
        except BaseException:
            self.close()
            raise
        finally:
            for fd in (control_in_r, control_out_w, tests_r, verdicts_w):
                os.close(fd)
        for fd in (control_in_w, tests_w):
            os.set_blocking(fd, False)
        try:
            self.info = read_frame(control_out_r, time.monotonic() + START_TIMEOUT_S)
        except (DeadlineError, ChannelClosedError, ValueError) as exc:
            self.close()
            raise SandboxUnavailableError(f"{self.name} sandbox failed to start ({exc})") from None

    def run(self, submission: Submission) -> SandboxResult:
        """Run every test of ``submission``; never raises for what the submission does."""
        if not (self._started and self.alive()):
            self.close()
            self.start()
        request_id = next(self._ids)
        request = {
            "id": request_id,
            "language": submission.language,
            "mode": submission.mode,
            "code": submission.code,
            "inputs": submission.inputs if submission.mode != "call" else [],
            "call_arguments": call_arguments(submission) if submission.mode == "call" else [],
            "fn_name": submission.fn_name,
            "calls": submission.calls,
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
            # The checker's verdict may be larger than a pipe holds: read it meanwhile.
            verdicts = FrameReader(self._fds["verdicts"])
            reply = read_frame_draining(FrameReader(self._fds["control_out"]), [verdicts], deadline)
            verdict = self._verdict(verdicts, request_id) if submission.mode == "assert" else None
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
            self.close()  # its state is suspect: the next run starts a fresh sandbox
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

    @staticmethod
    def _verdict(verdicts: FrameReader, request_id: int) -> dict[str, Any] | None:
        # The checker has written all it will write before the harness replies (it tells the
        # harness after its verdict, or is dead), so what the pipe holds now is all there
        # is; a partial frame from a checker killed mid-write is dropped with the reader.
        verdicts.drain()
        while (frame := verdicts.pop()) is not None:
            if frame.get("id") == request_id:
                return frame
        return None

    def close(self) -> None:
        if self._started:
            self.terminate()
            self._started = False
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}
