"""Who may call the API: named clients, their credentials and their limits.

Clients come from a TOML file (``Settings.clients_file``) and from the environment
(``REWARD_SERVICE_API_TOKENS=name=token,...``). The file looks like this::

    [defaults]              # optional: limits of every client (else the server settings)
    rate = 2000.0           # requests per second (a batch counts each item); 0 = no limit
    burst = 4000            # requests above the rate at once; 0 = one second of rate
    max_in_flight = 8192    # requests being scored at once; 0 = no limit
    max_batch_size = 4096
    max_request_bytes = 4194304

    [clients.team-a]
    token_sha256 = "9f86d0..."   # or: token = "..." (the file is then as secret as the token)
    rate = 500.0                 # any limit above, for this client only

    [clients.trainer-b]
    cert_cn = "trainer-b"        # authenticates by mutual-TLS client certificate instead

Tokens are held only as SHA-256 digests and looked up by digest, so a comparison takes the
same time whatever the presented token shares with a real one, and a memory dump shows no
token. The file is read again when it changes (:meth:`ClientRegistry.reload_if_changed`):
deleting a client's entry revokes it within seconds, without a restart. A file that no longer
parses keeps the last good set of clients (a half-written file must not lock everyone out) and
is logged as an error until it is fixed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from reward_service.queue.security import KEY_NAME, file_stamp
from reward_service.settings import Settings

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
BEARER = "bearer "
# Client names follow the queue keys' rule (no ':', so `cert:` names of certificate clients
# that the clients file does not list cannot collide with configured ones).
CLIENT_NAME = KEY_NAME


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What one client may do. Zero means no limit for ``rate`` and ``max_in_flight``."""

    rate: float
    burst: int
    max_in_flight: int
    max_batch_size: int
    max_request_bytes: int

    @property
    def largest_batch(self) -> tuple[int, str]:
        """The largest batch this client may send, and the setting that makes it so (a batch
        above ``max_in_flight`` could never be admitted: it is refused as too large)."""
        if self.max_in_flight and self.max_in_flight < self.max_batch_size:
            return self.max_in_flight, "max_in_flight"
        return self.max_batch_size, "max_batch_size"

    @property
    def bucket_size(self) -> float:
        """Tokens of the client's rate bucket: ``burst``, or one second of ``rate``."""
        return float(self.burst) if self.burst else max(self.rate, 1.0)


@dataclass(frozen=True, slots=True)
class Client:
    """An authenticated caller (or :data:`ANONYMOUS_NAME` when authentication is off)."""

    name: str
    limits: ClientLimits


ANONYMOUS_NAME = "anonymous"


class _Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate: float | None = Field(None, ge=0, allow_inf_nan=False)
    burst: int | None = Field(None, ge=0)
    max_in_flight: int | None = Field(None, ge=0)
    max_batch_size: int | None = Field(None, gt=0)
    max_request_bytes: int | None = Field(None, gt=0)

    def over(self, base: ClientLimits) -> ClientLimits:
        return ClientLimits(
            rate=base.rate if self.rate is None else self.rate,
            burst=base.burst if self.burst is None else self.burst,
            max_in_flight=base.max_in_flight if self.max_in_flight is None else self.max_in_flight,
            max_batch_size=(
                base.max_batch_size if self.max_batch_size is None else self.max_batch_size
            ),
            max_request_bytes=(
                base.max_request_bytes if self.max_request_bytes is None else self.max_request_bytes
            ),
        )


class _ClientEntry(_Limits):
    token: str | None = Field(None, min_length=MIN_TOKEN_CHARS)
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    cert_cn: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_credential(self) -> _ClientEntry:
        if self.token is not None and self.token_sha256 is not None:
            raise ValueError("give token or token_sha256, not both")
        if self.token is None and self.token_sha256 is None and self.cert_cn is None:
            raise ValueError("needs a credential: token, token_sha256 or cert_cn")
        return self

    def digest(self) -> str | None:
        if self.token is not None:
            return token_digest(self.token)
        return self.token_sha256.lower() if self.token_sha256 else None


class _ClientsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: _Limits = Field(default_factory=_Limits)
    clients: dict[str, _ClientEntry] = Field(default_factory=dict, validate_default=True)

    @field_validator("clients")
    @classmethod
    def _names(cls, clients: dict[str, _ClientEntry]) -> dict[str, _ClientEntry]:
        for name in clients:
            if not CLIENT_NAME.fullmatch(name):
                raise ValueError(
                    f"client name {name!r}: use 1-64 letters, digits, '_', '.', '-' (quote a "
                    'name with dots in TOML: [clients."team.a"])'
                )
        if not clients:
            raise ValueError("no clients: a clients file must name at least one")
        return clients


def token_digest(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored (``token_sha256`` in the file)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def server_limits(settings: Settings) -> ClientLimits:
    """The limits of a client that the clients file says nothing about."""
    return ClientLimits(
        rate=settings.client_rate,
        burst=settings.client_burst,
        max_in_flight=settings.client_max_in_flight,
        max_batch_size=settings.max_batch_size,
        max_request_bytes=settings.max_request_bytes,
    )


class ClientsConfigError(ValueError):
    """The clients file or REWARD_SERVICE_API_TOKENS is malformed; the message says where
    (never a token)."""


@dataclass(frozen=True, slots=True)
class _Clients:
    by_digest: Mapping[str, Client]
    by_cert_cn: Mapping[str, Client]


class ClientRegistry:
    """The configured clients; :meth:`authenticate` maps credentials to a :class:`Client`.

    :attr:`enabled` is False when no client and no client CA is configured: then every caller
    is the anonymous client (which the server allows only on loopback addresses, see
    :func:`reward_service.gateway.server.check_bind_safety`).
    """

    def __init__(self, settings: Settings) -> None:
        self.path = settings.clients_file
        self.env_tokens = settings.api_tokens.get_secret_value() if settings.api_tokens else ""
        self.base_limits = server_limits(settings)
        self.any_certificate = settings.tls_client_ca_file is not None
        self.anonymous = Client(ANONYMOUS_NAME, self.base_limits)
        self._file_stamp: tuple[int, int, int] | None = None
        self._clients = self._load()
        self.enabled = bool(
            self.path is not None or self.env_tokens or settings.tls_client_ca_file is not None
        )

    # ----------------------------------------------------------------------------- loading

    def _load(self) -> _Clients:
        by_digest: dict[str, Client] = {}
        by_cert_cn: dict[str, Client] = {}
        defaults = self.base_limits
        entries: dict[str, _ClientEntry] = {}
        if self.path is not None:
            parsed = self._read_file(self.path)
            defaults = parsed.defaults.over(self.base_limits)
            entries.update(parsed.clients)
        for name, entry in _parse_env_tokens(self.env_tokens).items():
            if name in entries:
                raise ClientsConfigError(
                    f"client {name!r} is in both {self.path} and REWARD_SERVICE_API_TOKENS"
                )
            entries[name] = entry
        source = " and ".join(
            ([str(self.path)] if self.path else [])
            + (["REWARD_SERVICE_API_TOKENS"] if self.env_tokens else [])
        )
        for name, entry in entries.items():
            client = Client(name, entry.over(defaults))
            digest = entry.digest()
            if digest is not None:
                if digest in by_digest:
                    raise ClientsConfigError(
                        f"{source}: clients {by_digest[digest].name!r} and {name!r} have the "
                        "same token"
                    )
                by_digest[digest] = client
            if entry.cert_cn is not None:
                if entry.cert_cn in by_cert_cn:
                    raise ClientsConfigError(
                        f"{source}: clients {by_cert_cn[entry.cert_cn].name!r} and {name!r} "
                        f"have the same cert_cn {entry.cert_cn!r}"
                    )
                by_cert_cn[entry.cert_cn] = client
        return _Clients(by_digest, by_cert_cn)

    def _read_file(self, path: Path) -> _ClientsFile:
        try:
            self._file_stamp = file_stamp(path)
            data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ClientsConfigError(f"cannot read the clients file {path}: {exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ClientsConfigError(f"clients file {path} is not valid TOML: {exc}") from None
        try:
            return _ClientsFile.model_validate(data)
        except ValidationError as exc:
            raise ClientsConfigError(f"clients file {path}: {_describe(exc)}") from None

    def reload_if_changed(self) -> bool:
        """Read the clients file again if it changed since the last read (its modification
        time, size or inode: a rewrite within one timestamp tick, or a rename over it, still
        counts); True if the new clients are in effect. A file that does not load (a syntax
        error, or no client at all, as a truncated file has) keeps the previous clients and
        is logged once per change."""
        if self.path is None:
            return False
        stamp = file_stamp(self.path)
        if stamp == self._file_stamp:
            return False
        try:
            self._clients = self._load()
        except ClientsConfigError as exc:
            self._file_stamp = stamp  # do not log the same broken (or vanished) file every poll
            log.error("%s; keeping the previous clients", exc)
            return False
        log.info("clients file %s reloaded: %d clients", self.path, self.count)
        return True

    @property
    def has_certificate_clients(self) -> bool:
        """Whether some client authenticates by certificate CN."""
        return bool(self._clients.by_cert_cn)

    @property
    def count(self) -> int:
        names = {c.name for c in self._clients.by_digest.values()}
        names.update(c.name for c in self._clients.by_cert_cn.values())
        return len(names)

    # ----------------------------------------------------------------------------- lookups

    def authenticate(
        self, authorization: str | None, certificate_cn: str | None = None
    ) -> Client | None:
        """The client presenting ``authorization`` (an ``Authorization`` header value, or the
        gRPC ``authorization`` metadata) or a verified client certificate with common name
        ``certificate_cn``; None if neither identifies one."""
        if not self.enabled:
            return self.anonymous
        if authorization is not None and authorization[:7].lower() == BEARER:
            client = self._clients.by_digest.get(token_digest(authorization[7:].strip()))
            if client is not None:
                return client
        if certificate_cn is not None:
            client = self._clients.by_cert_cn.get(certificate_cn)
            if client is not None:
                return client
            if self.any_certificate and not self._clients.by_cert_cn and self.path is None:
                # Mutual TLS is the only credential configured: the CA is the authority.
                return Client(f"cert:{certificate_cn}", self.base_limits)
        return None


def add_client(clients_file: Path, name: str, token_file: Path) -> bool:
    """Add client ``name`` with a new random token to ``clients_file`` (created if missing):
    the file gets only the token's SHA-256, the token goes to ``token_file`` (mode 0600, which
    must not exist). False, and nothing written, if the file already has that client."""
    if not CLIENT_NAME.fullmatch(name):
        raise ValueError(f"client name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
    text = clients_file.read_text(encoding="utf-8") if clients_file.exists() else ""
    try:
        existing = tomllib.loads(text).get("clients", {})
    except tomllib.TOMLDecodeError as exc:
        raise ClientsConfigError(f"clients file {clients_file} is not valid TOML: {exc}") from None
    if name in existing:
        return False
    token = secrets.token_urlsafe(32)
    descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(token + "\n")
    entry = f'[clients."{name}"]\ntoken_sha256 = "{token_digest(token)}"\n'
    separator = "\n" if text and not text.endswith("\n\n") else ""
    with clients_file.open("a", encoding="utf-8") as file:
        file.write(separator + entry)
    return True


def _parse_env_tokens(value: str) -> dict[str, _ClientEntry]:
    # Errors name items by position only: a swapped pair (TOKEN=name) must not print a token,
    # and a token can look like a valid name.
    entries: dict[str, _ClientEntry] = {}
    for position, pair in enumerate((p.strip() for p in value.split(",")), start=1):
        if not pair:
            continue
        name, sep, token = pair.partition("=")
        name, token = name.strip(), token.strip()
        if not sep or not CLIENT_NAME.fullmatch(name):
            raise ClientsConfigError(
                f"REWARD_SERVICE_API_TOKENS item {position} is not NAME=TOKEN with NAME of "
                "1-64 letters, digits, '_', '.', '-'"
            )
        if len(token) < MIN_TOKEN_CHARS:
            raise ClientsConfigError(
                f"REWARD_SERVICE_API_TOKENS item {position}: the token is shorter than "
                f"{MIN_TOKEN_CHARS} characters (is the pair NAME=TOKEN, in that order?)"
            )
        if name in entries:
            raise ClientsConfigError(
                f"REWARD_SERVICE_API_TOKENS item {position} repeats the name of an earlier item"
            )
        entries[name] = _ClientEntry(token=token)
    return entries


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        place = ".".join(str(part) for part in error["loc"])
        problems.append(f"{place}: {error['msg']}")
    return "; ".join(problems)
