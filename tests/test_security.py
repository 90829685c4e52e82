"""Access control and transport security of the gateway, over real HTTP and gRPC: bearer
tokens, revocation, open and protected probes, TLS and mutual TLS with certificates made
here, per-client limits, fair queueing across clients, and the safe-bind default."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reward_service.gateway.auth import ClientRegistry, ClientsConfigError, add_client
from reward_service.gateway.server import RewardServer, is_loopback
from reward_service.settings import Settings
from reward_service.v1 import reward_pb2, reward_pb2_grpc
from reward_service.workers.fair_queue import FairQueue
from tests.certs import TestCA
from tests.conftest import TEST_VERIFIERS, ServerThread, running_server
from trainer.client import RewardClient, RewardServiceError
from trainer.credentials import Credentials
from trainer.trl import RewardServiceFunction
from trainer.verl.scoring import ServiceCaller, ServiceSettings

TOKEN_A = "team-a-token-0123456789abcdef"
TOKEN_B = "team-b-token-fedcba9876543210"
ECHO = {"domain": "test_echo", "response": "r", "reference": {"reward": 1.0}}


def write_clients(path: Path, *, with_b: bool = True, extra: str = "") -> None:
    text = f'[clients.team-a]\ntoken = "{TOKEN_A}"\n'
    if with_b:
        digest = hashlib.sha256(TOKEN_B.encode()).hexdigest()
        text += f'\n[clients.team-b]\ntoken_sha256 = "{digest}"\n'
    path.write_text(text + extra)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def clients_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "clients.toml"
    write_clients(path)
    return path


@pytest.fixture(scope="module")
def secured(clients_file: Path) -> Iterator[ServerThread]:
    with running_server(clients_file=clients_file, domains=["test_echo", "test_sleep"]) as s:
        yield s


# --------------------------------------------------------------------------- HTTP tokens


def test_http_accepts_a_valid_token_and_names_the_client(secured: ServerThread) -> None:
    for token in (TOKEN_A, TOKEN_B):
        reply = httpx.post(f"{secured.http_url}/v1/score", json=ECHO, headers=bearer(token))
        assert reply.status_code == 200, reply.text
        assert reply.json()["reward"] == 1.0


@pytest.mark.parametrize(
    "headers, params",
    [
        ({}, {}),  # no token
        (bearer("not-a-real-token-000000000000"), {}),  # a wrong one
        ({"Authorization": TOKEN_A}, {}),  # no Bearer scheme
        ({"Authorization": f"Basic {TOKEN_A}"}, {}),  # another scheme
        ({"X-Api-Key": TOKEN_A}, {}),  # the wrong header
        ({}, {"token": TOKEN_A, "access_token": TOKEN_A}),  # in the URL
    ],
    ids=["none", "wrong", "no-scheme", "basic", "x-api-key", "query"],
)
def test_http_refuses_bad_credentials_everywhere_alike(
    secured: ServerThread, headers: dict[str, str], params: dict[str, str]
) -> None:
    answers = set()
    for method, path in (
        ("POST", "/v1/score"),
        ("POST", "/v1/score/batch"),
        ("POST", "/get_reward"),
        ("GET", "/v1/domains"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/no/such/route"),  # unknown routes answer alike: nothing is revealed
    ):
        reply = httpx.request(
            method, f"{secured.http_url}{path}", json=ECHO, headers=headers, params=params
        )
        assert reply.status_code == 401, (path, reply.text)
        assert reply.headers["www-authenticate"].startswith("Bearer")
        answers.add(reply.text)
    assert len(answers) == 1


def test_probes_are_open_and_metrics_protected_by_default(secured: ServerThread) -> None:
    for path in ("/healthz", "/readyz"):
        assert httpx.get(f"{secured.http_url}{path}").status_code == 200, path
    assert httpx.get(f"{secured.http_url}/metrics").status_code == 401  # it names clients
    metrics = httpx.get(f"{secured.http_url}/metrics", headers=bearer(TOKEN_A)).text
    assert 'reward_service_refused_requests_total{client="",reason="unauthenticated"}' in metrics


def test_metrics_can_be_opened(clients_file: Path) -> None:
    with running_server(clients_file=clients_file, domains=["test_echo"], open_metrics=True) as s:
        assert httpx.get(f"{s.http_url}/metrics").status_code == 200
        assert httpx.get(f"{s.http_url}/v1/domains").status_code == 401


def test_websockets_are_refused(secured: ServerThread) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", secured.server.http_port), timeout=5) as sock:  # type: ignore[union-attr]
        sock.sendall(
            b"GET /v1/score HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        reply = sock.recv(1024)
    assert not reply.startswith(b"HTTP/1.1 101")


def test_probes_and_metrics_can_be_protected(clients_file: Path) -> None:
    with running_server(
        clients_file=clients_file, domains=["test_echo"], open_health=False, open_metrics=False
    ) as server:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{server.http_url}{path}").status_code == 401, path
            reply = httpx.get(f"{server.http_url}{path}", headers=bearer(TOKEN_A))
            assert reply.status_code == 200, path
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            token = [("authorization", f"Bearer {TOKEN_A}")]
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5, metadata=token)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Watch (a stream written with context.write) works behind the check too.
            watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=5, metadata=token)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()


# --------------------------------------------------------------------------- gRPC tokens


def grpc_code(target: str, method: str, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        try:
            call(b"", timeout=5, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("authorization", "Bearer not-a-real-token-000000000000")],
        [("authorization", TOKEN_A)],
        [("x-api-key", TOKEN_A)],
        [("token", TOKEN_A)],
    ],
    ids=["none", "wrong", "no-scheme", "x-api-key", "token-key"],
)
def test_grpc_refuses_bad_credentials_on_every_method(
    secured: ServerThread, metadata: list[tuple[str, str]]
) -> None:
    for method in (
        "/reward_service.v1.RewardService/Score",
        "/reward_service.v1.RewardService/ListDomains",
        "/reward_service.v1.RewardService/NoSuchMethod",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ):
        assert grpc_code(secured.grpc_target, method, metadata) is (
            grpc.StatusCode.UNAUTHENTICATED
        ), method


def test_grpc_unknown_method_is_unimplemented_only_for_authenticated_callers(
    secured: ServerThread,
) -> None:
    method = "/reward_service.v1.RewardService/NoSuchMethod"
    code = grpc_code(secured.grpc_target, method, [("authorization", f"Bearer {TOKEN_A}")])
    assert code is grpc.StatusCode.UNIMPLEMENTED


def test_grpc_client_library_sends_the_token(secured: ServerThread) -> None:
    with RewardClient(secured.grpc_target, credentials=Credentials(token=TOKEN_A)) as client:
        assert client.score("test_echo", "r", {"reward": 0.5}).reward == 0.5
        assert client.score_batch([ECHO, ECHO])[1].reward == 1.0
        with client.session() as session:
            futures = [session.submit("test_echo", "r", {"reward": 1.0}) for _ in range(20)]
        assert all(f.result().reward == 1.0 for f in futures)
    with RewardClient(secured.grpc_target, credentials=Credentials()) as client:
        with pytest.raises(RewardServiceError) as caught:
            client.score("test_echo", "r", {"reward": 0.5})
        assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
        with client.session() as session:
            future = session.submit("test_echo", "r", {"reward": 1.0})
        with pytest.raises(RewardServiceError, match="UNAUTHENTICATED"):
            future.result(10)


def test_client_reads_its_token_from_the_environment(
    secured: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_B + "\n")
    monkeypatch.setenv("REWARD_CLIENT_TOKEN_FILE", str(token_file))
    with RewardClient(secured.grpc_target) as client:
        assert client.score("test_echo", "r", {"reward": 0.25}).reward == 0.25


def test_trainer_integrations_take_the_same_credentials(
    tls_server: ServerThread, pki: dict[str, Any], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_A)
    credentials = Credentials(token=TOKEN_A, ca_file=pki["ca"].cert_file)
    reward = RewardServiceFunction(
        tls_server.grpc_target, domain="test_echo", credentials=credentials
    )
    assert reward(["p"], ["c"], reference=[{"reward": 0.5}]) == [0.5]
    settings = ServiceSettings.from_mapping(
        {
            "target": tls_server.grpc_target,
            "token_file": str(token_file),
            "tls_ca_file": str(pki["ca"].cert_file),
        }
    )
    assert settings.credentials() == credentials

    async def score() -> float:
        result = await ServiceCaller(settings).score("test_echo", "r", {"reward": 0.25})
        return result.reward

    assert asyncio.run(score()) == 0.25


def test_revoking_a_token_takes_effect_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "clients.toml"
    write_clients(path)
    with running_server(clients_file=path, domains=["test_echo"]) as server:
        url = f"{server.http_url}/v1/score"
        assert httpx.post(url, json=ECHO, headers=bearer(TOKEN_B)).status_code == 200
        time.sleep(0.05)  # a new mtime even on coarse-grained file systems
        write_clients(path, with_b=False)
        deadline = time.monotonic() + 15
        while httpx.post(url, json=ECHO, headers=bearer(TOKEN_B)).status_code != 401:
            assert time.monotonic() < deadline, "the revoked token still works"
            time.sleep(0.2)
        assert httpx.post(url, json=ECHO, headers=bearer(TOKEN_A)).status_code == 200
        code = grpc_code(
            server.grpc_target,
            "/reward_service.v1.RewardService/ListDomains",
            [("authorization", f"Bearer {TOKEN_B}")],
        )
        assert code is grpc.StatusCode.UNAUTHENTICATED
        # A broken file keeps the clients in effect (a half-written file locks nobody out).
        path.write_text("[clients.team-a\n")
        time.sleep(3)
        assert httpx.post(url, json=ECHO, headers=bearer(TOKEN_A)).status_code == 200


def test_tokens_from_the_environment_and_never_in_logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REWARD_SERVICE_API_TOKENS", f"ci={TOKEN_A}")
    caplog.set_level(logging.DEBUG)
    settings = Settings(
        grpc_port=0,
        http_port=0,
        workers=1,
        domains=["test_echo"],
        verifier_modules=[TEST_VERIFIERS],
    )
    assert TOKEN_A not in repr(settings) and TOKEN_A not in str(settings.model_dump())
    server = ServerThread(settings).start()
    try:
        url = f"{server.http_url}/v1/score"
        assert httpx.post(url, json=ECHO, headers=bearer(TOKEN_A)).status_code == 200
        assert httpx.post(url, json=ECHO).status_code == 401
    finally:
        server.stop()
    assert TOKEN_A not in caplog.text


def test_secrets_have_no_command_line_flags() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "reward_service.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--api-tokens", "--queue-keys ", "--redis-password"):
        assert flag not in help_text
    assert "--clients-file" in help_text


def test_a_stream_survives_unreadable_items_without_leaking_room(
    limited: ServerThread,
) -> None:
    """Items that cannot be read (NaN in options, absurd nesting) are answered `invalid` one by
    one; the client's in-flight room comes back (its limit is 2 here)."""
    nan = reward_pb2.ScoreRequest(id="nan", domain="test_echo", response="r", json="{}")
    nan.options.update({"x": float("nan")})
    deep = reward_pb2.ScoreRequest(
        id="deep", domain="test_echo", response="r", json="[" * 100_000 + "]" * 100_000
    )
    good = reward_pb2.ScoreRequest(id="ok", domain="test_echo", response="r", json="{}")
    with grpc.insecure_channel(limited.grpc_target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        token = [("authorization", f"Bearer {TOKEN_B}")]
        messages = [reward_pb2.ScoreStreamRequest(requests=[nan, deep, good])] * 3
        replies = stub.ScoreStream(iter(messages), timeout=20, metadata=token)
        results = [r for reply in replies for r in reply.results]
    statuses = sorted((r.id, r.status) for r in results)
    assert statuses == sorted(
        [
            ("nan", reward_pb2.STATUS_INVALID),
            ("deep", reward_pb2.STATUS_INVALID),
            ("ok", reward_pb2.STATUS_OK),
        ]
        * 3
    )
    assert limited.server is not None
    narrow = limited.server.access.clients.authenticate(f"Bearer {TOKEN_B}")
    assert narrow is not None and limited.server.access.admission.in_flight(narrow) == 0


def test_a_batch_above_the_in_flight_limit_is_refused_as_too_large(limited: ServerThread) -> None:
    reply = httpx.post(
        f"{limited.http_url}/v1/score/batch", json={"requests": [ECHO] * 3}, headers=bearer(TOKEN_B)
    )
    assert reply.status_code == 400 and "limit of 2 (max_in_flight)" in reply.json()["detail"]


def test_keygen_client_names(tmp_path: Path) -> None:
    clients, token = tmp_path / "clients.toml", tmp_path / "token"
    assert add_client(clients, "team.a", token)
    client = ClientRegistry(Settings(clients_file=clients)).authenticate(
        f"Bearer {token.read_text().strip()}"
    )
    assert client is not None and client.name == "team.a"
    with pytest.raises(ValueError, match="client name"):
        add_client(clients, "bad\n", tmp_path / "t2")


def test_a_swapped_env_pair_never_echoes_the_token() -> None:
    with pytest.raises(ClientsConfigError) as caught:
        ClientRegistry(Settings(api_tokens=f"{TOKEN_A}=team-a"))
    assert TOKEN_A not in str(caught.value)


def test_reload_sees_a_same_size_rewrite_and_keeps_clients_over_an_empty_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "clients.toml"
    path.write_text(f'[clients.one]\ntoken = "{TOKEN_A}"\n')
    registry = ClientRegistry(Settings(clients_file=path))
    stamp = path.stat().st_mtime_ns
    replacement = tmp_path / "new.toml"
    replacement.write_text(f'[clients.two]\ntoken = "{TOKEN_B}"\n'.replace("two", "one"))
    os.utime(replacement, ns=(stamp, stamp))
    os.replace(replacement, path)  # same size, same mtime: a new inode
    assert registry.reload_if_changed()
    assert registry.authenticate(f"Bearer {TOKEN_B}") is not None
    assert registry.authenticate(f"Bearer {TOKEN_A}") is None
    path.write_text("")  # truncated mid-edit: keeps the clients in force
    assert not registry.reload_if_changed()
    assert registry.authenticate(f"Bearer {TOKEN_B}") is not None


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[clients.a\n", "not valid TOML"),
        ('[clients.a]\ntoken = "short"\n', "clients.a.token"),
        ("[clients.a]\nrate = 1.0\n", "needs a credential"),
        (f'[clients.a]\ntoken = "{TOKEN_A}"\n[clients.b]\ntoken = "{TOKEN_A}"\n', "same token"),
        (f'[clients.a]\ntoken = "{TOKEN_A}"\nrate = -1\n', "clients.a.rate"),
        (f'[clients.a]\ntoken = "{TOKEN_A}"\ncolour = "red"\n', "clients.a.colour"),
    ],
)
def test_malformed_clients_files_are_refused_by_name(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "clients.toml"
    path.write_text(text)
    with pytest.raises(ClientsConfigError) as caught:
        ClientRegistry(Settings(clients_file=path))
    assert problem in str(caught.value) and str(path) in str(caught.value)
    assert TOKEN_A not in str(caught.value)


# --------------------------------------------------------------------------- safe defaults


def test_refuses_to_serve_a_public_address_without_authentication(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(ValueError, match=r"refusing to serve 0\.0\.0\.0 without authentication"):
        RewardServer(Settings(host="0.0.0.0", workers=1))
    RewardServer(Settings(host="0.0.0.0", workers=1, allow_unauthenticated=True))
    RewardServer(Settings(host="0.0.0.0", workers=1, api_tokens=f"ci={TOKEN_A}"))
    result = subprocess.run(
        [sys.executable, "-m", "reward_service.cli", "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to serve 0.0.0.0 without authentication" in result.stderr


def test_the_default_bind_address_is_loopback() -> None:
    assert Settings().host == "127.0.0.1"


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("pki")
    ca = TestCA(directory)
    other_ca = TestCA(directory, "some other CA")
    return {
        "ca": ca,
        "server": ca.issue("localhost", server=True),
        "client": ca.issue("trainer-c", server=False),
        "stranger": other_ca.issue("trainer-c", server=False),
        "other_ca": other_ca,
    }


@pytest.fixture(scope="module")
def tls_server(pki: dict[str, Any], clients_file: Path) -> Iterator[ServerThread]:
    with running_server(
        clients_file=clients_file,
        domains=["test_echo"],
        tls_cert_file=pki["server"].cert,
        tls_key_file=pki["server"].key,
    ) as server:
        yield server


def test_https_with_a_token(tls_server: ServerThread, pki: dict[str, Any]) -> None:
    assert tls_server.http_url.startswith("https://")
    reply = httpx.post(
        f"{tls_server.http_url}/v1/score",
        json=ECHO,
        headers=bearer(TOKEN_A),
        verify=ssl.create_default_context(cafile=pki["ca"].cert_file),
    )
    assert reply.status_code == 200 and reply.json()["reward"] == 1.0
    with pytest.raises(httpx.ConnectError):  # a CA the client does not trust
        httpx.post(f"{tls_server.http_url}/v1/score", json=ECHO, verify=True, timeout=5)


def test_plain_http_against_https_fails_cleanly(tls_server: ServerThread) -> None:
    plain = tls_server.http_url.replace("https://", "http://")
    started = time.monotonic()
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{plain}/v1/score", json=ECHO, headers=bearer(TOKEN_A), timeout=5)
    assert time.monotonic() - started < 5


def test_grpc_over_tls(tls_server: ServerThread, pki: dict[str, Any]) -> None:
    credentials = Credentials(token=TOKEN_A, ca_file=pki["ca"].cert_file)
    with RewardClient(tls_server.grpc_target, credentials=credentials) as client:
        assert client.score("test_echo", "r", {"reward": 0.75}).reward == 0.75
        with client.session() as session:
            future = session.submit("test_echo", "r", {"reward": 1.0})
        assert future.result(10).reward == 1.0
    # The server checks the name: 127.0.0.1 is in the certificate, as is localhost.
    target = tls_server.grpc_target.replace("127.0.0.1", "localhost")
    with RewardClient(target, credentials=credentials) as client:
        assert client.score("test_echo", "r", {"reward": 0.5}).reward == 0.5


def test_plaintext_grpc_against_tls_fails_cleanly(tls_server: ServerThread) -> None:
    started = time.monotonic()
    credentials = Credentials(token=TOKEN_A)
    with (
        RewardClient(tls_server.grpc_target, credentials=credentials, timeout_s=5, retries=0) as c,
        pytest.raises(RewardServiceError) as caught,
    ):
        c.score("test_echo", "r", {"reward": 1.0})
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 6


def test_grpc_refuses_a_server_signed_by_an_unknown_ca(
    tls_server: ServerThread, pki: dict[str, Any]
) -> None:
    credentials = Credentials(token=TOKEN_A, ca_file=pki["other_ca"].cert_file)
    with (
        RewardClient(tls_server.grpc_target, credentials=credentials, timeout_s=5, retries=0) as c,
        pytest.raises(RewardServiceError) as caught,
    ):
        c.score("test_echo", "r", {"reward": 1.0})
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def mtls_server(
    pki: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    path = tmp_path_factory.mktemp("mtls") / "clients.toml"
    write_clients(path, extra='\n[clients.trainer-c]\ncert_cn = "trainer-c"\nmax_batch_size = 1\n')
    with running_server(
        clients_file=path,
        domains=["test_echo"],
        tls_cert_file=pki["server"].cert,
        tls_key_file=pki["server"].key,
        tls_client_ca_file=pki["ca"].cert_file,
    ) as server:
        yield server


def test_mutual_tls_certificate_is_the_identity(
    mtls_server: ServerThread, pki: dict[str, Any]
) -> None:
    client_cert = Credentials(
        ca_file=pki["ca"].cert_file, cert_file=pki["client"].cert, key_file=pki["client"].key
    )
    with RewardClient(mtls_server.grpc_target, credentials=client_cert) as client:
        assert client.score("test_echo", "r", {"reward": 0.5}).reward == 0.5
        # The certificate's CN picked the client: its own limits apply.
        with pytest.raises(RewardServiceError, match=r"limit of 1 \(max_batch_size\)"):
            client.score_batch([ECHO, ECHO])


@pytest.mark.parametrize("who", ["no-certificate", "stranger"])
def test_mutual_tls_refuses_other_clients(
    mtls_server: ServerThread, pki: dict[str, Any], who: str
) -> None:
    if who == "stranger":  # a certificate with the right name from a CA the server does not know
        credentials = Credentials(
            ca_file=pki["ca"].cert_file,
            cert_file=pki["stranger"].cert,
            key_file=pki["stranger"].key,
        )
    else:
        credentials = Credentials(token=TOKEN_A, ca_file=pki["ca"].cert_file)
    with (
        RewardClient(mtls_server.grpc_target, credentials=credentials, timeout_s=5, retries=0) as c,
        pytest.raises(RewardServiceError) as caught,
    ):
        c.score("test_echo", "r", {"reward": 1.0})
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE  # the handshake fails


def test_tls_settings_are_checked_at_start(pki: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        RewardServer(Settings(tls_cert_file=pki["server"].cert, workers=1))
    with pytest.raises(ValueError, match="no such file"):
        RewardServer(
            Settings(tls_cert_file=tmp_path / "nope.pem", tls_key_file=pki["server"].key, workers=1)
        )
    with pytest.raises(ValueError, match="needs --tls-cert-file"):
        RewardServer(Settings(tls_client_ca_file=pki["ca"].cert_file, workers=1))


# --------------------------------------------------------------------------- limits


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    path = tmp_path_factory.mktemp("limits") / "clients.toml"
    digest = hashlib.sha256(TOKEN_B.encode()).hexdigest()
    path.write_text(
        f"[defaults]\nmax_batch_size = 8\n\n"
        f'[clients.slow]\ntoken = "{TOKEN_A}"\nrate = 1.0\nburst = 4\n\n'
        f'[clients.narrow]\ntoken_sha256 = "{digest}"\nmax_in_flight = 2\n'
        f"max_request_bytes = 2048\n"
    )
    with running_server(clients_file=path, domains=["test_echo"]) as server:
        yield server


def test_rate_limit_answers_429_and_resource_exhausted(limited: ServerThread) -> None:
    url = f"{limited.http_url}/v1/score"
    codes = [httpx.post(url, json=ECHO, headers=bearer(TOKEN_A)).status_code for _ in range(6)]
    assert codes[:4] == [200] * 4 and 429 in codes[4:]
    reply = httpx.post(url, json=ECHO, headers=bearer(TOKEN_A))
    assert reply.status_code == 429
    assert int(reply.headers["retry-after"]) >= 1
    assert reply.json()["status"] == "error" and "rate limit of 1 " in reply.json()["detail"]
    with RewardClient(
        limited.grpc_target, credentials=Credentials(token=TOKEN_A), retries=0
    ) as client:
        with pytest.raises(RewardServiceError) as caught:
            for _ in range(6):
                client.score("test_echo", "r", {"reward": 1.0})
        assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        time.sleep(1.2)  # the bucket refills (1 request/s): the client may call again
        assert client.score("test_echo", "r", {"reward": 1.0}).status == "ok"
    # Another client is not affected.
    other = httpx.post(url, json=ECHO, headers=bearer(TOKEN_B))
    assert other.status_code == 200


def test_a_stream_over_its_rate_waits_instead_of_failing(limited: ServerThread) -> None:
    time.sleep(1.1)
    started = time.monotonic()
    with RewardClient(limited.grpc_target, credentials=Credentials(token=TOKEN_A)) as client:
        with client.session() as session:
            futures = [session.submit("test_echo", "r", {"reward": 1.0}) for _ in range(10)]
        results = [f.result(30) for f in futures]
    assert all(r.status == "ok" for r in results)
    assert time.monotonic() - started > 1.0  # 10 requests at 4/s after a burst of 4


def test_in_flight_batch_and_size_limits(limited: ServerThread) -> None:
    url = f"{limited.http_url}/v1/score"
    slow = {"domain": "test_echo", "response": "r", "reference": {"reward": 1.0, "seconds": 1.0}}
    replies: list[int] = []

    def call() -> None:
        replies.append(httpx.post(url, json=slow, headers=bearer(TOKEN_B), timeout=30).status_code)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(replies) == [200, 200, 429, 429]
    batch = httpx.post(
        f"{limited.http_url}/v1/score/batch", json={"requests": [ECHO] * 9}, headers=bearer(TOKEN_A)
    )
    assert batch.status_code == 400 and "limit of 8 (max_batch_size)" in batch.json()["detail"]
    big = {**ECHO, "response": "x" * 4096}
    reply = httpx.post(url, json=big, headers=bearer(TOKEN_B))
    assert reply.status_code == 413 and "limit of 2048" in reply.json()["detail"]
    with RewardClient(limited.grpc_target, credentials=Credentials(token=TOKEN_B)) as client:
        with pytest.raises(RewardServiceError, match="limit of 2048"):
            client.score("test_echo", "x" * 4096, {"reward": 1.0})
        with pytest.raises(RewardServiceError, match=r"limit of 2 \(max_in_flight\)"):
            client.score_batch([ECHO] * 9)
    metrics = httpx.get(f"{limited.http_url}/metrics", headers=bearer(TOKEN_A)).text
    for reason in ("in_flight", "too_large"):  # what this test provoked
        assert f'reason="{reason}"' in metrics, reason


# --------------------------------------------------------------------------- fairness


class _Item:
    def __init__(self, client: str, n: int) -> None:
        self.client, self.n, self.done = client, n, False


def test_fair_queue_takes_turns_across_clients() -> None:
    queue: FairQueue[_Item] = FairQueue()
    for n in range(5):
        queue.append(_Item("flood", n))
    queue.append(_Item("quiet", 0))
    queue.append(_Item("quiet", 1))
    order = [(item.client, item.n) for item in (queue.popleft() for _ in range(4))]
    assert order == [("flood", 0), ("quiet", 0), ("flood", 1), ("quiet", 1)]
    back = _Item("quiet", 9)
    queue.appendleft(back)
    assert queue.popleft() is back
    items = list(queue)
    items[0].done = True
    assert queue.drop_done() == len(items) - 1 == len(queue)
    assert [i.n for i in (queue.popleft() for _ in range(len(queue)))] == [3, 4]
    with pytest.raises(IndexError):
        queue.popleft()


def test_a_flooding_client_does_not_starve_another(tmp_path: Path) -> None:
    """A client with 200 queued samples ahead of another's 5: the other's are served within
    a few turns, not after the flood."""
    path = tmp_path / "clients.toml"
    write_clients(path)
    with running_server(clients_file=path, domains=["test_sleep"], workers=1) as server:
        flood = [{"domain": "test_sleep", "response": "r", "reference": {"seconds": 0.01}}] * 200

        async def run() -> tuple[float, float]:
            async with httpx.AsyncClient(timeout=60) as http:
                started = time.monotonic()
                flooding = asyncio.create_task(
                    http.post(
                        f"{server.http_url}/v1/score/batch",
                        json={"requests": flood},
                        headers=bearer(TOKEN_A),
                    )
                )
                await asyncio.sleep(0.2)
                quiet = await http.post(
                    f"{server.http_url}/v1/score/batch",
                    json={"requests": flood[:5]},
                    headers=bearer(TOKEN_B),
                )
                quiet_s = time.monotonic() - started
                assert quiet.status_code == 200
                assert (await flooding).status_code == 200
                return quiet_s, time.monotonic() - started

        quiet_s, flood_s = asyncio.run(run())
    # FIFO would make the quiet client wait for the whole flood (about 2 s of work).
    assert quiet_s < 0.6 * flood_s, (quiet_s, flood_s)


def test_grpc_health_is_open_and_reflection_protected(secured: ServerThread) -> None:
    with grpc.insecure_channel(secured.grpc_target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListDomains(reward_pb2.ListDomainsRequest(), timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert caught.value.details() == "authentication required: missing or invalid credentials"
