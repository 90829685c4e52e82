"""The Redis side of distributed mode: key names, the job and result codecs, and the Lua
scripts that make completion atomic.

Layout (``<p>`` is ``Settings.redis_prefix``):

- ``<p>:jobs:<domain>``: one stream per domain; consumer group ``workers``. An entry is one job
  (field ``j``: the JSON of :class:`JobMessage`). Entries are deleted when answered, so the
  stream's length is its backlog (waiting + running): what autoscalers watch.
- ``<p>:replies:<gateway id>``: the results stream of one gateway instance (fields ``t``: the
  gateway's token for the request, ``v``: the JSON of the result). It expires when its gateway
  stops reading it.
- ``<p>:done:<key>``: a finished result, kept ``result_ttl_s`` to answer a retried request (same
  id and content) without scoring it again. ``error`` results are not kept: a retry should run.
- ``<p>:dead:<domain>``: dead letters (jobs delivered ``max_deliveries`` times, or undecodable).
- ``<p>:workers:<domain>``: sorted set of worker heartbeats (member: worker id, score: time).
- ``<p>:epoch``: a random value set by the first gateway; when it vanishes, Redis lost its data
  (restart without persistence) and gateways republish what they still wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

log = logging.getLogger(__name__)

GROUP = "workers"
JOB_FIELD = b"j"
TOKEN_FIELD = b"t"
VALUE_FIELD = b"v"
DEAD_LETTER_MAXLEN = 10_000
# A gateway's replies stream outlives a pause of its reader by this much, then expires.
REPLIES_TTL_MS = 600_000
MAX_BACKOFF_S = 2.0


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
        )
        for name in ("key", "token", "replies", "domain", "id", "response"):
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


# Publish one job, unless an identical request (same idempotency key) was answered already:
# then post that result to the requesting gateway at once instead (a retry is not run again).
#
# KEYS: jobs stream, done key, replies stream
# ARGV: job payload, token, replies ttl ms
PUBLISH_SCRIPT = """
local done = redis.call('GET', KEYS[2])
if done then
  redis.call('XADD', KEYS[3], '*', 't', ARGV[2], 'v', done)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  return 0
end
redis.call('XADD', KEYS[1], '*', 'j', ARGV[1])
return 1
"""

# Answer one job, atomically: acknowledge it (XACK says 0 when another worker already answered
# it: then this is a late duplicate and nothing else happens), delete it from the stream, keep
# the result under its idempotency key (unless told not to; an earlier result for the same key
# wins, so retries agree), optionally dead-letter the job, and post the result to the
# requesting gateway's replies stream.
#
# KEYS: jobs stream, done key, replies stream, dead-letter stream
# ARGV: group, entry id, result, token, store (1/0), result ttl ms, replies ttl ms,
#       dead-letter payload ('' for none), dead-letter reason, dead-letter maxlen
COMPLETE_SCRIPT = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[8] ~= '' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[10], '*',
             'entry', ARGV[2], 'j', ARGV[8], 'reason', ARGV[9])
end
local result = ARGV[3]
if ARGV[5] == '1' then
  local earlier = redis.call('GET', KEYS[2])
  if earlier then
    result = earlier
  else
    redis.call('SET', KEYS[2], result, 'PX', ARGV[6])
  end
end
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[3], '*', 't', ARGV[4], 'v', result)
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


def connect(url: str) -> Redis:
    """A client for ``url`` whose calls fail fast when Redis is unreachable: callers retry
    with their own backoff and never wait past a request's deadline."""
    return Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_keepalive=True,
        health_check_interval=5,
        max_connections=64,
    )


def redacted(url: str) -> str:
    """``url`` without its password, for logs: ``redis://user:***@host:6379/0``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


async def backoff(what: str, exc: object, failures: int) -> None:
    """Wait before retrying a failed Redis call (exponential, capped); log the first failure
    of a streak only, so an outage is one warning, not one per retry."""
    if failures == 1:
        log.warning("Redis %s failed (%s); retrying", what, exc)
    await asyncio.sleep(min(0.05 * 2**failures, MAX_BACKOFF_S))


async def cancel_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks``, wait until they end, and empty the list."""
    for task in tasks:
        task.cancel()
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
