"""The Redis side of distributed mode: how to connect, key names, the job and result codecs,
and the Lua scripts that make completion atomic.

Layout (``<p>`` is ``Settings.redis_prefix``):

- ``<p>:jobs:<domain>``: one stream per domain; consumer group ``workers``. An entry is one job
  (field ``j``: the JSON of :class:`JobMessage`; field ``s``: its signature, when queue keys
  are configured). Entries are deleted when answered, so the stream's length is its backlog
  (waiting + running): what autoscalers watch.
- ``<p>:replies:<gateway id>``: the results stream of one gateway instance. An entry has ``t``
  (the gateway's token for the request) and a result in one or both of two forms: ``v`` (a
  result just computed, with ``s``: its signature, bound to the replies stream, the token and
  the request's idempotency key) and ``d`` (a stored record, see below: the answer an identical
  request got earlier). The stream expires when its gateway stops reading it.
- ``<p>:done:<key>``: a finished result, kept ``result_ttl_s`` to answer a retried request (same
  id and content) without scoring it again: a stored record, ``<signature>\n<result JSON>``
  (signed over the idempotency key and the result; just the JSON when unsigned). ``error``
  results are not kept: a retry should run.
- ``<p>:dead:<domain>``: dead letters (jobs delivered ``max_deliveries`` times, undecodable, or
  ``forged``: not signed by a known queue key).
- ``<p>:workers:<domain>``: sorted set of worker heartbeats (member: worker id, score: time).
- ``<p>:epoch``: a random value set by the first gateway; when it vanishes, Redis lost its data
  (restart without persistence) and gateways republish what they still wait for.

What is signed, and why: :mod:`reward_service.queue.security`. How gateways and workers reach
Redis (TLS, AUTH/ACL): :class:`RedisOptions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import hiredis
import orjson
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    NoScriptError,
    RedisError,
)

if TYPE_CHECKING:
    from reward_service.settings import Settings

log = logging.getLogger(__name__)

GROUP = "workers"
JOB_FIELD = b"j"
TOKEN_FIELD = b"t"
VALUE_FIELD = b"v"
SIGNATURE_FIELD = b"s"
STORED_FIELD = b"d"
DEAD_LETTER_MAXLEN = 10_000
# A gateway's replies stream outlives a pause of its reader by this much, then expires.
REPLIES_TTL_MS = 600_000
MAX_BACKOFF_S = 2.0
CANCEL_RETRY_S = 0.5  # how long a cancelled task may take to end before it is cancelled again
# How long a process waits, at start, for Redis to tell whether its settings can work at all.
FIRST_CONTACT_S = 5.0


@dataclass(frozen=True, slots=True)
class Keys:
    """The names of every Redis key of one deployment (see the module docstring)."""

    prefix: str

    def jobs(self, domain: str) -> str:
        return f"{self.prefix}:jobs:{domain}"

    def replies(self, gateway_id: str) -> str:
        return f"{self.prefix}:replies:{gateway_id}"

    def done(self, key: str) -> str:
        return f"{self.prefix}:done:{key}"

    def dead(self, domain: str) -> str:
        return f"{self.prefix}:dead:{domain}"

    def heartbeats(self, domain: str) -> str:
        return f"{self.prefix}:workers:{domain}"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"


@dataclass(slots=True)
class JobMessage:
    """One job as it travels through a domain stream.

    ``deadline`` is wall-clock (``time.time()``) because it crosses machines: their clocks must
    agree to well under a request's timeout (NTP does this).
    """

    key: str
    token: str
    replies: str
    deadline: float
    domain: str
    id: str
    response: str
    reference: dict[str, Any]
    options: dict[str, Any]
    # The authenticated client that sent it: a worker's queue is fair across clients.
    client: str = ""

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "k": self.key,
                "t": self.token,
                "r": self.replies,
                "dl": self.deadline,
                "d": self.domain,
                "id": self.id,
                "resp": self.response,
                "ref": self.reference,
                "opt": self.options,
                "c": self.client,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> JobMessage:
        """Raises ValueError (or KeyError/TypeError) for anything that is not a job."""
        raw = orjson.loads(data)
        message = cls(
            key=raw["k"],
            token=raw["t"],
            replies=raw["r"],
            deadline=float(raw["dl"]),
            domain=raw["d"],
            id=raw["id"],
            response=raw["resp"],
            reference=raw["ref"],
            options=raw["opt"],
            client=raw.get("c", ""),
        )
        for name in ("key", "token", "replies", "domain", "id", "response", "client"):
            if not isinstance(getattr(message, name), str):
                raise TypeError(f"job field {name!r} is not a string")
        if not isinstance(message.reference, dict) or not isinstance(message.options, dict):
            raise TypeError("job reference and options must be objects")
        return message

    def remaining_s(self) -> float:
        return self.deadline - time.time()


def idempotency_key(
    request_id: str, domain: str, response: str, reference: Any, options: Any
) -> str:
    """The key under which a request's result is kept: the id *and* the content, so that two
    clients that both number their requests from 0 never get each other's results."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (request_id, domain, response):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    digest.update(orjson.dumps(reference, option=orjson.OPT_SORT_KEYS))
    digest.update(b"\x00")
    digest.update(orjson.dumps(options, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def encode_result(reward: float, status: str, detail: str | None, metrics: dict[str, Any]) -> bytes:
    return orjson.dumps({"reward": reward, "status": status, "detail": detail, "metrics": metrics})


def decode_result(data: bytes) -> tuple[float, str, str | None, dict[str, Any]]:
    raw = orjson.loads(data)
    return float(raw["reward"]), str(raw["status"]), raw.get("detail"), raw.get("metrics") or {}


def encode_stored(signature: bytes, result: bytes) -> bytes:
    """The record kept under a done key: ``<signature>\\n<result>``, or the bare result when
    unsigned (a result is a JSON object: it starts with ``{`` and holds no raw newline)."""
    return signature + b"\n" + result if signature else result


def decode_stored(record: bytes) -> tuple[bytes, bytes]:
    """(signature, result) of a stored record; the signature is empty when there is none."""
    if record[:1] == b"{":
        return b"", record
    signature, _, result = record.partition(b"\n")
    return signature, result


# Publish one job, unless an identical request (same idempotency key) was answered already:
# then post that stored result to the requesting gateway at once instead (a retry is not run
# again). With reuse '0' the job is published whatever is stored (the gateway found the stored
# record unverifiable: its key was revoked, or someone wrote it who holds no key).
#
# KEYS: jobs stream, done key, replies stream
# ARGV: job payload, token, replies ttl ms, job signature ('' unsigned), reuse ('1'/'0')
PUBLISH_SCRIPT = """
if ARGV[5] == '1' then
  local done = redis.call('GET', KEYS[2])
  if done then
    redis.call('XADD', KEYS[3], '*', 't', ARGV[2], 'd', done)
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
    return 0
  end
end
if ARGV[4] == '' then
  redis.call('XADD', KEYS[1], '*', 'j', ARGV[1])
else
  redis.call('XADD', KEYS[1], '*', 'j', ARGV[1], 's', ARGV[4])
end
return 1
"""

# Answer one job, atomically: acknowledge it (XACK says 0 when another worker already answered
# it: then this is a late duplicate and nothing else happens), delete it from the stream, keep
# the result under its idempotency key (unless told not to), optionally dead-letter the job,
# and post the result to the requesting gateway's replies stream. An earlier stored result for
# the same key wins, so that retries agree: it is posted as well (field 'd'), and the gateway
# takes it if it verifies, else this result (a stored record that no longer verifies must not
# turn a good answer into a lost one).
#
# KEYS: jobs stream, done key, replies stream, dead-letter stream
# ARGV: group, entry id, result, token, store (1/0), result ttl ms, replies ttl ms,
#       dead-letter payload ('' for none), dead-letter reason, dead-letter maxlen,
#       result signature ('' unsigned), stored record
COMPLETE_SCRIPT = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[8] ~= '' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[10], '*',
             'entry', ARGV[2], 'j', ARGV[8], 'reason', ARGV[9])
end
local earlier = false
if ARGV[5] == '1' then
  earlier = redis.call('GET', KEYS[2])
  if not earlier then
    redis.call('SET', KEYS[2], ARGV[12], 'PX', ARGV[6])
  end
end
if ARGV[4] ~= '' then
  local entry = {'t', ARGV[4], 'v', ARGV[3]}
  if ARGV[11] ~= '' then
    table.insert(entry, 's')
    table.insert(entry, ARGV[11])
  end
  if earlier then
    table.insert(entry, 'd')
    table.insert(entry, earlier)
  end
  redis.call('XADD', KEYS[3], '*', unpack(entry))
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
end
return 1
"""

# Reset the idle time of the entries this consumer still owns (a lease renewal), without
# touching the ones another worker has reclaimed meanwhile. Returns how many were renewed.
#
# KEYS: jobs stream; ARGV: group, consumer, entry ids...
RENEW_SCRIPT = """
local renewed = 0
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"""


class Script:
    """A Lua script called by its SHA. Queued on pipelines with :meth:`queue` (no SCRIPT EXISTS
    round trip per pipeline, as redis-py's registered scripts do); a ``NOSCRIPT`` error (Redis
    restarted) means: :func:`load_scripts`, then retry."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def queue(self, pipe: Any, keys: list[Any], args: list[Any]) -> None:
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    async def __call__(self, redis: Redis, keys: list[Any], args: list[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await load_scripts(redis)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


PUBLISH = Script(PUBLISH_SCRIPT)
COMPLETE = Script(COMPLETE_SCRIPT)
RENEW = Script(RENEW_SCRIPT)


async def load_scripts(redis: Redis) -> None:
    for script in (PUBLISH, COMPLETE, RENEW):
        await redis.script_load(script.source)


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """How to reach Redis: the URL (``rediss://`` for TLS) and what the settings add to it.
    A username or password given here wins over the URL's; the password is never logged
    (:meth:`redacted` is what logs show)."""

    url: str
    username: str | None = None
    password: SecretStr | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisOptions:
        if not settings.redis_url:
            raise ValueError("distributed mode needs --redis-url (REWARD_SERVICE_REDIS_URL)")
        options = cls(
            url=settings.redis_url,
            username=settings.redis_username,
            password=settings.redis_password,
            tls_ca_file=settings.redis_tls_ca_file,
            tls_cert_file=settings.redis_tls_cert_file,
            tls_key_file=settings.redis_tls_key_file,
        )
        options.check()
        return options

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"

    def check(self) -> None:
        """Fail at start, by name, on TLS files that cannot work."""
        scheme = urlsplit(self.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"--redis-url must be redis://, rediss:// or unix://, not {scheme}://")
        files = {
            "--redis-tls-ca-file": self.tls_ca_file,
            "--redis-tls-cert-file": self.tls_cert_file,
            "--redis-tls-key-file": self.tls_key_file,
        }
        given = [flag for flag, path in files.items() if path is not None]
        if given and not self.tls:
            raise ValueError(
                f"{', '.join(given)} need a rediss:// URL (TLS); --redis-url is {self.redacted()}"
            )
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("--redis-tls-key-file needs --redis-tls-cert-file")
        if not given:
            return
        context = ssl.create_default_context()
        for flag, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{flag}: no such file: {path}")
        try:
            if self.tls_ca_file is not None:
                context.load_verify_locations(cafile=str(self.tls_ca_file))
            if self.tls_cert_file is not None:
                key = str(self.tls_key_file) if self.tls_key_file else None
                context.load_cert_chain(str(self.tls_cert_file), key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"Redis TLS files: {exc}") from None

    def __repr__(self) -> str:  # a URL may hold a password
        return f"RedisOptions({self.redacted()!r})"

    def redacted(self) -> str:
        """The URL without its password, and the user when the settings name one: for logs."""
        text = redacted(self.url)
        return f"{text} (user {self.username})" if self.username else text

    def client_kwargs(self) -> tuple[str, dict[str, Any]]:
        """The URL without credentials, and the keyword arguments of ``Redis.from_url``
        (redis-py lets a URL's credentials win over keyword arguments: so they move here)."""
        parts = urlsplit(self.url)
        kwargs: dict[str, Any] = {}
        username = self.username or (unquote(parts.username) if parts.username else None)
        if self.password is not None:
            password: str | None = self.password.get_secret_value()
        else:
            password = unquote(parts.password) if parts.password is not None else None
        if username:
            kwargs["username"] = username
        if password:
            kwargs["password"] = password
        if self.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(self.tls_ca_file)
        if self.tls_cert_file is not None:
            kwargs["ssl_certfile"] = str(self.tls_cert_file)
        if self.tls_key_file is not None:
            kwargs["ssl_keyfile"] = str(self.tls_key_file)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc)), kwargs


def redacted(url: str) -> str:
    """``url`` without its password, for logs: ``redis://user:***@host:6379/0``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def misconfiguration(exc: BaseException, options: RedisOptions) -> str | None:
    """Why ``exc`` (from the first calls to Redis) is a configuration error that retrying
    cannot fix (credentials, ACL, an untrusted certificate), or None if it may pass (Redis is
    not up yet, restarting, unreachable)."""
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        return (
            f"Redis at {options.redacted()} refused the credentials ({exc}): check "
            "--redis-username and REWARD_SERVICE_REDIS_PASSWORD"
        )
    if isinstance(exc, NoPermissionError):
        return (
            f"the Redis user at {options.redacted()} lacks a permission ({exc}); "
            "docs/security.md lists the ACL gateways and workers need"
        )
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"Redis at {options.redacted()}: the server's certificate does not verify "
            f"({cause.verify_message}); --redis-tls-ca-file names the CA that signed it"
        )
    return None


def describe(exc: BaseException, options: RedisOptions) -> str:
    """``exc`` for a log line, with a hint where a likely cause is known."""
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ConnectionResetError | ssl.SSLError) or "closed by server" in text:
        if options.tls:
            text += (
                " (if the server asks for a client certificate: --redis-tls-cert-file and "
                "--redis-tls-key-file; if that port does not speak TLS: a redis:// URL)"
            )
        else:
            text += " (if that port speaks TLS: a rediss:// URL)"
    return text


async def first_contact(call: Awaitable[Any], options: RedisOptions) -> None:
    """Await ``call``, a process's first command to Redis: RuntimeError if Redis says these
    settings cannot work (:func:`misconfiguration`); a warning if it is not reachable yet
    (the caller's loops retry)."""
    try:
        await asyncio.wait_for(call, FIRST_CONTACT_S)
    except (RedisError, OSError, TimeoutError) as exc:
        problem = misconfiguration(exc, options)
        if problem is not None:
            raise RuntimeError(problem) from None
        log.warning(
            "Redis at %s is not reachable yet: %s", options.redacted(), describe(exc, options)
        )


def connect(options: RedisOptions) -> Redis:
    """A client for ``options`` whose calls fail fast when Redis is unreachable: callers retry
    with their own backoff and never wait past a request's deadline."""
    url, credentials = options.client_kwargs()
    client = Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_keepalive=True,
        health_check_interval=5,
        max_connections=64,
        **credentials,
    )
    pool = client.connection_pool
    pool.connection_class = _packing_in_c(pool.connection_class)  # TCP, TLS or Unix socket
    return client


class _HiredisPacking:
    """Mixed into a redis-py asyncio connection class: commands are packed by hiredis, in C.
    redis-py's asyncio connections pack them in Python (its sync ones use hiredis): ~30 us for
    one script call of twenty arguments, the largest per-request cost of a gateway in
    distributed mode, against ~5 us here. What hiredis refuses takes redis-py's own path,
    which raises redis-py's errors."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py does: "SCRIPT LOAD" and the like travel as separate words.
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].encode().split(), *args[1:])
        elif isinstance(args[0], bytes) and b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]


_PACKING_CLASSES: dict[type, type] = {}


def _packing_in_c(connection_class: type) -> type:
    if connection_class not in _PACKING_CLASSES:
        _PACKING_CLASSES[connection_class] = type(
            f"HiredisPacking{connection_class.__name__}",
            (_HiredisPacking, connection_class),
            {},
        )
    return _PACKING_CLASSES[connection_class]


async def backoff(what: str, exc: object, failures: int) -> None:
    """Wait before retrying a failed Redis call (exponential, capped); log the first failure
    of a streak only, so an outage is one warning, not one per retry."""
    if failures == 1:
        log.warning("Redis %s failed (%s); retrying", what, exc)
    await asyncio.sleep(min(0.05 * 2**failures, MAX_BACKOFF_S))


async def cancel_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks``, wait until they end, and empty the list.

    The cancel is repeated until each task has ended: redis-py can swallow one that lands
    inside its own calls (seen with redis 8.2 on Python 3.11: a loop went on to its next sleep
    while "cancelling"), and a single cancel then left ``stop`` waiting forever."""
    while pending := [task for task in tasks if not task.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=CANCEL_RETRY_S)
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
            await task
    tasks.clear()


def is_nogroup(exc: Exception) -> bool:
    return "NOGROUP" in str(exc)


def is_noscript(exc: Exception) -> bool:
    return isinstance(exc, NoScriptError) or "NOSCRIPT" in str(exc)


async def ensure_group(redis: Redis, stream: str) -> None:
    """Create ``stream`` and its consumer group if missing. The group starts at 0, not $, so
    that jobs added before it existed (a gateway that started first) are not skipped."""
    try:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except Exception as exc:
        if "BUSYGROUP" not in str(exc):
            raise
