"""A throwaway ``redis-server`` on a free loopback port (no persistence), for the benchmarks
and the tests of distributed mode; optionally with a password, ACL users and TLS."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from bench.service import free_port


@dataclass(frozen=True)
class RedisTLS:
    """TLS of a :class:`RedisServer`: its certificate and key, the CA that client certificates
    must chain to, and whether clients must present one (``--tls-auth-clients``). ``client_cert``
    and ``client_key`` are what :meth:`RedisServer.client` presents."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    auth_clients: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None


class RedisServer:
    """``with RedisServer() as server:`` runs redis-server until the block ends.
    :meth:`restart` keeps the port (and, without persistence, loses the data).

    ``password`` is the default user's (``--requirepass``); ``users`` are ACL rules, one user
    each (``"worker on >secret ~reward:* +@all"``: the arguments of ``ACL SETUSER``); with
    ``tls`` the port speaks TLS only. :meth:`client` connects as the default user."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        password: str | None = None,
        users: Sequence[str] = (),
        tls: RedisTLS | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (deploy/install.sh installs it)")
        self.binary = binary
        self.port = free_port()
        self._tempdir = None if directory else tempfile.TemporaryDirectory(prefix="redis-")
        self.directory = directory or Path(self._tempdir.name)  # type: ignore[union-attr]
        self.password = password
        self.users = list(users)
        self.tls = tls
        self.log_file = self.directory / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        options: dict[str, Any] = {"password": self.password}
        if self.tls is not None:
            options.update(
                ssl=True,
                ssl_ca_certs=str(self.tls.ca_file),
                ssl_certfile=str(self.tls.client_cert) if self.tls.client_cert else None,
                ssl_keyfile=str(self.tls.client_key) if self.tls.client_key else None,
            )
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, **options)

    def _arguments(self) -> list[str]:
        arguments = [
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.tls is None:
            arguments += ["--port", str(self.port)]
        else:
            arguments += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert_file),
                "--tls-key-file", str(self.tls.key_file),
                "--tls-ca-cert-file", str(self.tls.ca_file),
                "--tls-auth-clients", "yes" if self.tls.auth_clients else "no",
            ]  # fmt: skip
        if self.password is not None:
            arguments += ["--requirepass", self.password]
        for rule in self.users:
            arguments += ["--user", *rule.split()]
        return arguments

    def start(self) -> RedisServer:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, *self._arguments()], stdout=log, stderr=subprocess.STDOUT
            )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    tail = self.log_file.read_text(errors="replace").strip().splitlines()[-5:]
                    raise RuntimeError(
                        f"redis-server did not start on port {self.port}: " + " / ".join(tail)
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()
