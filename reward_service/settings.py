"""All configuration of the service in one typed object.

Every field can be set by a CLI flag (see ``reward_service.cli``) or by an environment
variable ``REWARD_SERVICE_<FIELD>`` (e.g. ``REWARD_SERVICE_HTTP_PORT=9000``); flags win.
Secrets (tokens, keys, passwords) are the exception: they are read from files or from the
environment only, never from the command line (where ``ps`` shows them to every user), and
they are :class:`~pydantic.SecretStr` so that they never appear in logs or reprs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Marks a field that has no command-line flag (a secret: environment or file only).
ENV_ONLY = {"env_only": True}


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Configuration of the gateway and its embedded worker pool."""

    model_config = SettingsConfigDict(env_prefix="REWARD_SERVICE_", extra="forbid")

    # Network
    host: str = Field(
        "127.0.0.1",
        description="Address the gRPC and HTTP servers bind to. Any address other than a "
        "loopback one needs authentication (clients_file or REWARD_SERVICE_API_TOKENS, or "
        "tls_client_ca_file) unless allow_unauthenticated is set.",
    )
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")

    # Authentication (docs/security.md)
    clients_file: Path | None = Field(
        None,
        description="TOML file of API clients: each a name, a bearer token (or its SHA-256), "
        "optionally a certificate CN, and limits (see docs/security.md). Read again when it "
        "changes, so removing a client revokes its token without a restart.",
    )
    api_tokens: SecretStr | None = Field(
        None,
        description="API clients as NAME=TOKEN pairs, comma separated (environment only: "
        "REWARD_SERVICE_API_TOKENS).",
        json_schema_extra=ENV_ONLY,
    )
    open_health: bool = Field(
        True,
        description="Serve /healthz, /readyz and the gRPC health service without a token (for "
        "probes); false protects them like the API.",
    )
    open_metrics: bool = Field(
        False,
        description="Serve /metrics without a token (it names domains and clients); by default "
        "it needs one, like the API, when authentication is on.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Allow serving a non-loopback address with no authentication configured "
        "(anyone who reaches the port can then score and read results).",
    )

    # Transport security
    tls_cert_file: Path | None = Field(
        None,
        description="Server certificate (PEM, with its chain) for HTTPS and gRPC over TLS; "
        "needs tls_key_file.",
    )
    tls_key_file: Path | None = Field(None, description="Private key (PEM) of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None,
        description="CA bundle (PEM) that gRPC client certificates must be signed by: turns on "
        "mutual TLS for gRPC, and a client certificate's CN then names the client.",
    )

    # Per-client limits (defaults; the clients file can set them per client)
    client_rate: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="Requests per second one client may send (token bucket; a batch counts "
        "each item); 0 = no limit. Beyond it: 429 / RESOURCE_EXHAUSTED.",
    )
    client_burst: int = Field(
        0,
        ge=0,
        description="Requests a client may send at once above its rate (bucket size); 0 = one "
        "second of client_rate.",
    )
    client_max_in_flight: int = Field(
        0,
        ge=0,
        description="Requests of one client being scored at once; 0 = no limit beyond "
        "max_queued. Unary and batch calls beyond it get 429 / RESOURCE_EXHAUSTED; a stream "
        "waits.",
    )

    # Workers
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Verifier worker processes of the embedded pool (default: one per CPU).",
    )
    domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Domains to serve, comma separated (default: every registered domain).",
    )
    verifier_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra Python modules that register verifiers (plugins), comma separated.",
    )

    # Distributed mode
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:6379/0, rediss:// for TLS). `serve` with it routes "
        "requests onto Redis Streams for `worker` processes instead of running its own "
        "workers; `worker` needs it. Put no password here (the URL is logged redacted, but a "
        "flag shows in `ps`): use REWARD_SERVICE_REDIS_PASSWORD.",
    )
    redis_username: str | None = Field(
        None, description="Redis ACL user (AUTH username); default: the URL's, or none."
    )
    redis_password: SecretStr | None = Field(
        None,
        description="Redis AUTH password (environment only: REWARD_SERVICE_REDIS_PASSWORD).",
        json_schema_extra=ENV_ONLY,
    )
    redis_tls_ca_file: Path | None = Field(
        None,
        description="CA bundle (PEM) that the Redis server's certificate must chain to "
        "(default: the system's); needs a rediss:// URL.",
    )
    redis_tls_cert_file: Path | None = Field(
        None,
        description="Client certificate (PEM) for Redis servers that require one "
        "(tls-auth-clients); needs a rediss:// URL.",
    )
    redis_tls_key_file: Path | None = Field(
        None, description="Private key (PEM) of redis_tls_cert_file."
    )
    queue_keys_file: Path | None = Field(
        None,
        description="File of NAME=SECRET lines (# comments allowed; secrets of 16 bytes or "
        "more, e.g. `openssl rand -hex 32`): HMAC keys that sign jobs (gateways) and results "
        "(workers) on Redis. The first line's key signs; every listed key verifies. Read again "
        "when it changes: rotate by adding the new key last everywhere, then moving it first, "
        "then deleting the old line; delete a line to revoke its key (docs/security.md). "
        "Required in distributed mode unless allow_unsigned_queue is set.",
    )
    queue_keys: SecretStr | None = Field(
        None,
        description="The same NAME=SECRET pairs, comma separated (environment only: "
        "REWARD_SERVICE_QUEUE_KEYS).",
        json_schema_extra=ENV_ONLY,
    )
    allow_unsigned_queue: bool = Field(
        False,
        description="Run distributed mode without queue keys: any client of the Redis server "
        "can then forge jobs and results.",
    )
    redis_prefix: str = Field(
        "reward",
        min_length=1,
        description="Prefix of every Redis key (<prefix>:jobs:<domain> streams, ...): lets "
        "several deployments share one Redis.",
    )
    max_stream_length: int = Field(
        100_000,
        gt=0,
        description="Most jobs waiting or running in one domain's stream; beyond it the "
        "gateway answers new requests `error` (overloaded) instead of growing Redis.",
    )
    visibility_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A job held by a worker that stopped renewing its claim this long (it "
        "died) is handed to another worker.",
    )
    max_deliveries: int = Field(
        5,
        ge=1,
        description="Times a job is handed to a worker before it is dead-lettered and answered "
        "`error`.",
    )
    result_ttl_s: float = Field(
        600.0,
        gt=0,
        description="How long a result is kept in Redis to answer a retried request (same id "
        "and content) without scoring it again.",
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM a worker stops taking jobs and waits this long for the ones it "
        "holds, then hands the rest back.",
    )
    metrics_port: int = Field(
        9100,
        ge=0,
        le=65535,
        description="HTTP port of a `worker` process: /metrics, /healthz, /readyz (0 picks a "
        "free one).",
    )

    # Limits and deadlines
    max_request_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="Largest accepted request body / message, in bytes."
    )
    max_batch_size: int = Field(4096, gt=0, description="Most requests in one batch call.")
    max_queued: int = Field(
        65536,
        gt=0,
        description="Most requests waiting for a worker; beyond it new ones are answered "
        "`error` at once (overload).",
    )
    request_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Deadline of a request that brings none of its own (gRPC deadlines win).",
    )
    max_timeout_s: float = Field(
        60.0, gt=0, description="Largest per-sample compute budget a request may ask for."
    )
    kill_grace_s: float = Field(
        0.5,
        gt=0,
        description="How long past its budget a verifier call may run before its process is "
        "killed and replaced.",
    )
    batch_target_s: float = Field(
        0.01,
        gt=0,
        description="Work handed to a worker at once, in seconds of estimated verifier time: "
        "amortises the process round trip for cheap verifiers.",
    )
    worker_memory_mb: int = Field(
        4096,
        ge=0,
        description="Address-space limit of each verifier worker process in MiB (0: none); "
        "an answer that makes sympy build a giant number fails with MemoryError instead of "
        "taking the machine down.",
    )
    sandbox_backend: str = Field(
        "bwrap", description="Sandbox backend of the code domain: bwrap or docker."
    )
    sandbox_image: str = Field(
        "reward-service-sandbox:latest",
        description="Image of the docker sandbox backend (deploy/sandbox.Dockerfile).",
    )
    sandbox_runtime: str | None = Field(
        None, description="Container runtime of the docker backend, e.g. runsc (gVisor)."
    )
    sandbox_memory_mb: int = Field(
        1024, gt=0, description="Address-space limit of each sandboxed process, in MiB."
    )
    sandbox_tmpfs_mb: int = Field(
        64, gt=0, description="Writable space of each sandbox (a private tmpfs), in MiB."
    )
    judge_base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint of the LLM judge (e.g. https://host/v1); the "
        "key is read from OPENAI_API_KEY.",
    )
    judge_model: str | None = Field(None, description="Model name of the LLM judge.")
    judge_timeout_s: float = Field(20.0, gt=0, description="Timeout of one judge request.")
    judge_max_retries: int = Field(
        3, ge=0, description="Retries of a judge request on 429, 5xx and transport errors."
    )
    stem_judge: bool = Field(
        False,
        description="Ask the judge for STEM answers that rules cannot settle, unless a "
        "request says otherwise (reference.judge).",
    )
    truncated_reward: float | None = Field(
        None,
        description="Reward given to responses flagged truncated=true (the termination "
        "penalty); unset scores them like any other response.",
    )

    def verifier_configs(self) -> dict[str, dict[str, Any]]:
        """The per-domain configuration handed to each verifier's constructor."""
        return {
            "stem": {
                "judge_base_url": self.judge_base_url,
                "judge_model": self.judge_model,
                "judge_timeout_s": self.judge_timeout_s,
                "judge_max_retries": self.judge_max_retries,
                "judge_by_default": self.stem_judge,
            },
            "code": {
                "sandbox_backend": self.sandbox_backend,
                "max_timeout_s": self.max_timeout_s,
                "sandbox_limits": {
                    "memory_mb": self.sandbox_memory_mb,
                    "tmpfs_mb": self.sandbox_tmpfs_mb,
                },
                "sandbox_options": (
                    {"image": self.sandbox_image, "runtime": self.sandbox_runtime}
                    if self.sandbox_backend == "docker"
                    else {}
                ),
            },
        }

    @field_validator("domains", "verifier_modules", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)
