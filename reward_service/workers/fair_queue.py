"""The queue of one domain's jobs, fair across clients.

One trainer flooding the service must not starve another that shares a domain: jobs wait in
one FIFO per client, and the queue hands them out round robin, one job per client per turn.
A client alone in the queue is served exactly as a plain FIFO would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class _HasClient(Protocol):
    client: str
    done: bool


J = TypeVar("J", bound=_HasClient)


class FairQueue(Generic[J]):
    """FIFO per client, round robin across clients. ``appendleft`` puts a job back at the
    head (a batch given back by a lost worker), with its client served next."""

    def __init__(self) -> None:
        self._by_client: dict[str, deque[J]] = {}
        self._turns: deque[str] = deque()  # clients with waiting jobs, next one first
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[J]:
        for client in self._turns:
            yield from self._by_client[client]

    @property
    def clients(self) -> int:
        """Clients with jobs waiting."""
        return len(self._turns)

    def append(self, job: J) -> None:
        queue = self._by_client.get(job.client)
        if queue is None:
            queue = self._by_client[job.client] = deque()
            self._turns.append(job.client)
        queue.append(job)
        self._length += 1

    def appendleft(self, job: J) -> None:
        queue = self._by_client.get(job.client)
        if queue is None:
            queue = self._by_client[job.client] = deque()
        else:
            self._turns.remove(job.client)
        self._turns.appendleft(job.client)
        queue.appendleft(job)
        self._length += 1

    def popleft(self) -> J:
        """The next job: the head of the client whose turn it is. IndexError when empty."""
        client = self._turns[0]
        queue = self._by_client[client]
        job = queue.popleft()
        self._length -= 1
        if queue:
            self._turns.rotate(-1)
        else:
            self._turns.popleft()
            del self._by_client[client]
        return job

    def drop_done(self) -> int:
        """Forget jobs already answered (expired or withdrawn); returns how many remain."""
        for client in list(self._turns):
            kept = deque(job for job in self._by_client[client] if not job.done)
            if kept:
                self._by_client[client] = kept
            else:
                del self._by_client[client]
                self._turns.remove(client)
        self._length = sum(len(queue) for queue in self._by_client.values())
        return self._length
