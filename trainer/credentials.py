"""How a trainer authenticates to the reward service and checks that it talks to the real one.

A :class:`Credentials` holds a bearer token (sent as ``authorization`` metadata on every call)
and the TLS settings of the channel: the CA that the server's certificate must chain to and,
for mutual TLS, the client's own certificate and key. Every client of this package takes one
(``credentials=``); without it they read the environment (:meth:`Credentials.from_env`), so a
trainer launched with the right variables needs no code change::

    REWARD_CLIENT_TOKEN_FILE=/run/secrets/reward-token   # or REWARD_CLIENT_TOKEN=...
    REWARD_CLIENT_CA_FILE=/run/secrets/reward-ca.pem     # implies TLS
    REWARD_CLIENT_CERT_FILE=... REWARD_CLIENT_KEY_FILE=...   # mutual TLS
    REWARD_CLIENT_TLS=1                                  # TLS with the system's CAs
    REWARD_CLIENT_SERVER_NAME=reward.internal            # name the certificate must carry

(``REWARD_CLIENT_*``, not ``REWARD_SERVICE_*``: those configure the server, and the two often
share an environment in tests and examples.)
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ENV_PREFIX = "REWARD_CLIENT_"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    """A client's token and TLS settings (all optional: none is a plaintext channel without
    a token, which the service accepts only on loopback addresses)."""

    token: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS): give both")
        if self.token is not None and (not self.token or self.token != self.token.strip()):
            raise ValueError("token is empty or has surrounding whitespace")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """Credentials from ``REWARD_CLIENT_*`` variables (see the module docstring)."""
        env = os.environ if environ is None else environ

        def path(name: str) -> Path | None:
            value = env.get(ENV_PREFIX + name)
            return Path(value) if value else None

        token = env.get(ENV_PREFIX + "TOKEN") or None
        token_file = path("TOKEN_FILE")
        if token is not None and token_file is not None:
            raise ValueError("set REWARD_CLIENT_TOKEN or REWARD_CLIENT_TOKEN_FILE, not both")
        if token_file is not None:
            token = read_token(token_file)
        return cls(
            token=token,
            tls=env.get(ENV_PREFIX + "TLS", "").lower() in ("1", "true", "yes"),
            ca_file=path("CA_FILE"),
            cert_file=path("CERT_FILE"),
            key_file=path("KEY_FILE"),
            server_name=env.get(ENV_PREFIX + "SERVER_NAME") or None,
        )

    @classmethod
    def from_options(
        cls,
        *,
        token_file: str | Path | None = None,
        tls: bool = False,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> Credentials:
        """Credentials from configuration values (verl's and TRL's settings): paths only,
        so that no secret sits in a config file; anything not given comes from the
        environment."""
        env = cls.from_env()
        return cls(
            token=read_token(Path(token_file)) if token_file else env.token,
            tls=tls or env.tls,
            ca_file=Path(ca_file) if ca_file else env.ca_file,
            cert_file=Path(cert_file) if cert_file else env.cert_file,
            key_file=Path(key_file) if key_file else env.key_file,
            server_name=server_name or env.server_name,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the bearer token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials of the channel (None: plaintext)."""
        if not self.uses_tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        if self.server_name and self.uses_tls:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []

    def warn_if_exposed(self, target: str) -> None:
        """Log a warning when the token would cross a network in clear text."""
        if self.token and not self.uses_tls and not _is_loopback_target(target):
            log.warning(
                "sending a bearer token to %s without TLS: anyone on the network path can read "
                "it (set REWARD_CLIENT_CA_FILE or REWARD_CLIENT_TLS=1)",
                target,
            )

    def channel(self, target: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        """A blocking channel to ``target``."""
        self.warn_if_exposed(target)
        tls = self.channel_credentials()
        options = [*options, *self.channel_options()]
        if tls is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, tls, options=options)

    def aio_channel(self, target: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        """An asyncio channel to ``target``."""
        self.warn_if_exposed(target)
        tls = self.channel_credentials()
        options = [*options, *self.channel_options()]
        if tls is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, tls, options=options)


def _is_loopback_target(target: str) -> bool:
    """Whether a gRPC target (``host:port``, ``[v6]:port``, ``dns:///host:port``, ``unix:``)
    stays on this machine."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.split("///", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace, e.g. a final newline, removed)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
