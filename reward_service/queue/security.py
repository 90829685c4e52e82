"""Integrity of distributed mode's queue: the HMAC keys that sign what gateways and workers
exchange through Redis. (How they reach Redis, TLS and AUTH/ACL included, is
:class:`reward_service.queue.streams.RedisOptions`.)

Why sign: Redis carries the jobs *and* the rewards. Without signatures, any client of the Redis
server (another tenant of a shared Redis, a compromised pod of the same network, a stray
script) could post ``reward: 1.0`` for a request the trainer is waiting for, or have workers run
jobs of its own making. With queue keys (a :class:`Keyring` of ``NAME=SECRET`` lines shared by
gateways and workers, ``--queue-keys-file`` or ``REWARD_SERVICE_QUEUE_KEYS``), everything that
decides a reward is authenticated with HMAC-SHA256 (``hmac.digest`` over bytes that are already
encoded: no JSON is re-encoded to sign or verify):

- **Jobs.** A gateway signs each job's encoded payload (which names the request's id, content,
  deadline, the gateway's replies stream and its token for the request) together with the key's
  name. A worker verifies before it decodes anything; a job whose signature is missing, wrong,
  or made with an unknown key is not run and not answered: it is dead-lettered with reason
  ``forged`` and counted (``reward_service_rejected_jobs_total``). Not answering matters: an
  answer would be a signed ``error`` result for whatever token the forger copied from a genuine
  job.
- **Results.** A worker signs each result it posts, bound to its job: the MAC covers a domain
  tag, the replies stream, the gateway's token, the request's idempotency key and the result's
  bytes. A gateway accepts a result only for a token it still waits for (anything else is
  ``not_waited_for``: late, duplicate, or replayed) and only with a valid MAC from a key it
  knows (else ``forged``); both are dropped and counted in
  ``reward_service_dropped_results_total{reason}``. Tokens are random (64 bits), so a token
  cannot be guessed, and a result replayed from another request fails its MAC.
- **Stored results** (``<prefix>:done:<key>``, which answer a retried identical request without
  running it again) are signed over another tag, the idempotency key and the result's bytes: they
  are not bound to a token because the gateway that reads one is not the one that asked first.
  A gateway accepts a stored record only against the idempotency key of the request it is
  waiting for, i.e. for a request with exactly the same id and content, which is what the
  result cache answers by design.

The key that signs is the first of the keyring; every key of it verifies. Rotation without a
failed request: add the new key as the *last* line everywhere, then move it first, then delete
the old one (a key that signs before every reader knows it makes its messages look forged).
Deleting a key revokes it: its signatures fail from then on, stored results included (a retried
request whose stored result no longer verifies is run again). A key file is read again when it
changes, so none of this needs a restart.

What signatures do not do: they do not hide anything (use TLS for that), and a holder of a
queue key (any gateway or worker) can sign anything. Someone who can only write to Redis can
still delete or delay jobs; requests then end ``error`` at their deadline, never with a reward
that no worker computed.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reward_service.settings import Settings

log = logging.getLogger(__name__)

# Names of keys, and of API clients (reward_service.gateway.auth): they show in logs and labels.
KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_SECRET_BYTES = 16
ENV_KEYS = "REWARD_SERVICE_QUEUE_KEYS"
# Domain separation: a MAC made for one kind of message never verifies as another.
JOB_TAG = b"reward-service/job/v1"
RESULT_TAG = b"reward-service/result/v1"
STORED_TAG = b"reward-service/stored/v1"
# A key file is checked for changes at most this often.
RELOAD_CHECK_S = 1.0


class QueueKeyError(ValueError):
    """Queue keys are missing or malformed; the message says where (never a secret)."""


def _mac_input(parts: Iterable[bytes]) -> bytes:
    """The parts, each prefixed by its length: no two different part lists give the same bytes."""
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


class Keyring:
    """Named HMAC-SHA256 keys: the first signs, every one verifies.

    A signature is written ``<key name>:<hex MAC>`` (bytes, as it travels in Redis fields)."""

    def __init__(self, keys: list[tuple[str, bytes]], source: str) -> None:
        self.source = source
        self.path: Path | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._checked = time.monotonic()
        self._use(keys)

    def _use(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise QueueKeyError(f"{self.source} has no keys")
        self._secrets = {name.encode(): secret for name, secret in keys}
        self.names = [name for name, _ in keys]
        self._signer = keys[0][0].encode()
        self._signing_secret = keys[0][1]

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        """The keys of ``path``, which :meth:`refresh` reads again when it changes."""
        stamp = file_stamp(path)  # before reading: a change made meanwhile is seen later
        keyring = cls(_read_key_file(path), f"queue key file {path}")
        keyring.path, keyring._stamp = path, stamp
        return keyring

    @classmethod
    def from_env(cls, value: str) -> Keyring:
        items = enumerate(value.split(","), start=1)
        keys = _parse_pairs(((n, p) for n, p in items if p.strip()), f"{ENV_KEYS} item")
        return cls(keys, ENV_KEYS)

    def refresh(self) -> bool:
        """Read the key file again if it changed (checked at most every ``RELOAD_CHECK_S``);
        True if new keys are in force. A broken file is logged and the keys in force stay."""
        now = time.monotonic()
        if self.path is None or now - self._checked < RELOAD_CHECK_S:
            return False
        self._checked = now
        stamp = file_stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self._use(_read_key_file(self.path))
        except QueueKeyError as exc:
            log.error("%s; keeping the queue keys in force (%s)", exc, ", ".join(self.names))
            return False
        log.info("queue keys reloaded from %s: %s", self.path, ", ".join(self.names))
        return True

    # ----------------------------------------------------------------------------- MACs

    def _sign(self, parts: tuple[bytes, ...]) -> bytes:
        mac = hmac.digest(self._signing_secret, _mac_input((self._signer, *parts)), "sha256")
        return self._signer + b":" + mac.hex().encode()

    def _verify(self, signature: bytes | None, parts: tuple[bytes, ...]) -> bool:
        if not signature:
            return False
        name, sep, given = signature.partition(b":")
        secret = self._secrets.get(name)
        if secret is None or not sep:
            return False
        expected = hmac.digest(secret, _mac_input((name, *parts)), "sha256").hex().encode()
        return hmac.compare_digest(expected, given)

    def sign_job(self, payload: bytes) -> bytes:
        return self._sign((JOB_TAG, payload))

    def verify_job(self, payload: bytes, signature: bytes | None) -> bool:
        return self._verify(signature, (JOB_TAG, payload))

    def sign_result(self, replies: str, token: str, key: str, result: bytes) -> bytes:
        return self._sign((RESULT_TAG, replies.encode(), token.encode(), key.encode(), result))

    def verify_result(
        self, replies: str, token: str, key: str, result: bytes, signature: bytes | None
    ) -> bool:
        parts = (RESULT_TAG, replies.encode(), token.encode(), key.encode(), result)
        return self._verify(signature, parts)

    def sign_stored(self, key: str, result: bytes) -> bytes:
        return self._sign((STORED_TAG, key.encode(), result))

    def verify_stored(self, key: str, result: bytes, signature: bytes | None) -> bool:
        return self._verify(signature, (STORED_TAG, key.encode(), result))


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten or replaced (a Kubernetes Secret update swaps a
    symlink: the inode changes; a rewrite within one timestamp tick changes the size); None
    when the file cannot be read. Reloaded configuration files compare it."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _read_key_file(path: Path) -> list[tuple[str, bytes]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QueueKeyError(f"cannot read the queue key file {path}: {exc}") from None
    lines = (
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    )
    return _parse_pairs(lines, f"queue key file {path}, line")


def _parse_pairs(items: Iterable[tuple[int, str]], where: str) -> list[tuple[str, bytes]]:
    """``NAME=SECRET`` items, in order; ``where`` + the item's number locates a bad one."""
    keys: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for number, item in items:
        name, sep, secret = item.partition("=")
        name, secret = name.strip(), secret.strip()
        if not sep:
            raise QueueKeyError(f"{where} {number}: expected NAME=SECRET")
        if not KEY_NAME.fullmatch(name):
            raise QueueKeyError(
                f"{where} {number}: a key name is 1-64 letters, digits, '_', '.' or '-'"
            )
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise QueueKeyError(
                f"{where} {number}: the secret of key {name!r} is shorter than "
                f"{MIN_SECRET_BYTES} bytes (make one with `openssl rand -hex 32`)"
            )
        if name in seen:
            raise QueueKeyError(f"{where} {number}: key {name!r} is listed twice")
        seen.add(name)
        keys.append((name, secret.encode()))
    return keys


def load_keyring(settings: Settings) -> Keyring | None:
    """The queue keys of distributed mode. None (unsigned jobs and results, with a warning)
    only when no key is configured and ``allow_unsigned_queue`` says that is intended."""
    if settings.queue_keys_file is not None and settings.queue_keys is not None:
        raise QueueKeyError(
            f"queue keys are set twice (--queue-keys-file and {ENV_KEYS}): keep one of them"
        )
    if settings.queue_keys_file is not None:
        return Keyring.from_file(settings.queue_keys_file)
    if settings.queue_keys is not None:
        return Keyring.from_env(settings.queue_keys.get_secret_value())
    if not settings.allow_unsigned_queue:
        raise QueueKeyError(
            "distributed mode needs queue keys, shared by gateways and workers, to sign jobs "
            f"and results: --queue-keys-file (NAME=SECRET lines) or {ENV_KEYS}; "
            "--allow-unsigned-queue true runs without them (then anyone who can write to Redis "
            "can forge rewards)"
        )
    log.warning(
        "queue keys are not configured (allow_unsigned_queue): jobs and results on Redis are "
        "not signed, so any client of Redis can forge rewards"
    )
    return None


def create_key_file(path: Path, name: str | None = None) -> bool:
    """Write a key file with one fresh random key to ``path`` (mode 0600) unless it exists;
    True if written. For deployments that generate their key at first start."""
    name = name or time.strftime("k%Y%m%d")
    if path.exists():
        return False
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(
            "# Queue keys of the reward service (NAME=SECRET; the first signs, all verify).\n"
            f"{name}={secrets.token_hex(32)}\n"
        )
    os.replace(temporary, path)
    return True


class Throttled:
    """A warning logged at most once per ``interval_s``, with how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last = -interval_s
        self._held_back = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._held_back += 1
            return
        if self._held_back:
            message += f" (and {self._held_back} more since the last such warning)"
        self.logger.warning(message, *args)
        self._last, self._held_back = now, 0


def main(argv: list[str] | None = None) -> int:
    """``python -m reward_service.queue.security keygen PATH``: create a key file (mode 0600)
    with one random key, unless PATH exists."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "keygen":
        print("usage: python -m reward_service.queue.security keygen PATH", file=sys.stderr)
        return 2
    path = Path(args[1])
    if create_key_file(path):
        print(f"wrote a new queue key to {path}")
    else:
        print(f"{path} exists: kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
