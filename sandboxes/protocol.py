"""The worker's side of the harness protocol: length-prefixed JSON frames over pipes, read
and written with deadlines so that a stuck or hostile sandbox can never block a worker."""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

HEADER = struct.Struct(">I")
MAX_REPLY_BYTES = 512 * 1024 * 1024


class ChannelClosedError(EOFError):
    """The sandbox closed its end of a pipe (it died or was killed)."""


class DeadlineError(TimeoutError):
    """The sandbox did not answer within the deadline."""


def encode_frame(obj: Any) -> bytes:
    data = json.dumps(obj).encode()
    return HEADER.pack(len(data)) + data


def write_all(fd: int, data: bytes, deadline: float) -> None:
    """Write ``data`` to a non-blocking ``fd`` before ``deadline`` (time.monotonic)."""
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineError("the sandbox stopped reading its input")
        _, writable, _ = select.select([], [fd], [], remaining)
        if writable:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise ChannelClosedError("the sandbox closed its input") from None


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while size:
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise DeadlineError("the sandbox did not answer in time")
        readable, _, _ = select.select([fd], [], [], timeout)
        if not readable:
            raise DeadlineError("the sandbox did not answer in time")
        try:
            chunk = os.read(fd, min(size, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise ChannelClosedError("the sandbox closed its output")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None) -> Any:
    """One frame from ``fd``; :class:`DeadlineError` if it does not arrive by ``deadline``."""
    (size,) = HEADER.unpack(_read_exact(fd, HEADER.size, deadline))
    if size > MAX_REPLY_BYTES:
        raise ValueError(f"sandbox frame of {size} bytes is above {MAX_REPLY_BYTES}")
    return json.loads(_read_exact(fd, size, deadline))


def frame_ready(fd: int, timeout: float = 0.0) -> bool:
    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)
