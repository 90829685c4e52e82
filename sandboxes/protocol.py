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


class FrameReader:
    """Frames from one pipe, read in whatever pieces arrive, so that several pipes can be
    drained at once (:func:`read_frame_draining`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.closed = False

    def feed(self) -> None:
        """One read of what the pipe holds (call when it is readable)."""
        try:
            chunk = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            self.closed = True
        self.buffer += chunk

    def drain(self) -> None:
        """Read everything the pipe holds now, without waiting."""
        while not self.closed and select.select([self.fd], [], [], 0)[0]:
            self.feed()

    def pop(self) -> Any | None:
        """The first complete frame read so far, or None."""
        if len(self.buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self.buffer)
        if size > MAX_REPLY_BYTES:
            raise ValueError(f"sandbox frame of {size} bytes is above {MAX_REPLY_BYTES}")
        end = HEADER.size + size
        if len(self.buffer) < end:
            return None
        data = bytes(self.buffer[HEADER.size : end])
        del self.buffer[:end]
        return json.loads(data)


def read_frame_draining(reader: FrameReader, others: list[FrameReader], deadline: float) -> Any:
    """The next frame of ``reader``, reading ``others`` meanwhile: a sandbox process blocked
    on writing a large frame to one of them must not stall the frame we wait for."""
    while (frame := reader.pop()) is None:
        if reader.closed:
            raise ChannelClosedError("the sandbox closed its output")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineError("the sandbox did not answer in time")
        watched = {r.fd: r for r in (reader, *others) if not r.closed}
        readable, _, _ = select.select(list(watched), [], [], remaining)
        for fd in readable:
            watched[fd].feed()
    return frame


def read_frame(fd: int, deadline: float) -> Any:
    """One frame from ``fd``; :class:`DeadlineError` if it does not arrive by ``deadline``."""
    return read_frame_draining(FrameReader(fd), [], deadline)
