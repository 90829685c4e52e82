"""docker-compose.yml: its structure (read with PyYAML), and `docker compose config` where a
compose client exists. Nothing here needs a Docker engine."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from reward_service.gateway.auth import ClientRegistry
from reward_service.queue.security import Keyring
from reward_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
REDIS_URL = "redis://redis:6379/0"
ALL_DOMAINS = {"math", "code", "stem", "reasoning_gym", "ifeval"}
SANDBOX_OPTIONS = {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"}
KEY_DIRECTORY = "/var/lib/reward-service/queue-keys"
API_DIRECTORY = "/var/lib/reward-service/api"
DEPENDS = {
    "redis": {"condition": "service_healthy"},
    "secrets": {"condition": "service_completed_successfully"},
}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves anchors and merge keys
    return compose["services"]


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in services.items()
        if service.get("command", [None])[0] == "worker"
    }


def test_redis_without_persistence(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert flag(redis["command"], "--save") == ""
    assert flag(redis["command"], "--appendonly") == "no"
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "ports" not in redis  # reachable by the other services only


def test_gateway_serves_from_redis_on_the_default_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    gateway = services["gateway"]
    assert gateway["command"][0] == "serve"
    assert flag(gateway["command"], "--redis-url") == REDIS_URL
    assert set(gateway["ports"]) == {"50051:50051", "8000:8000"}
    assert gateway["environment"]["REWARD_SERVICE_HOST"] == "0.0.0.0"
    assert gateway["depends_on"] == DEPENDS
    assert "8000/readyz" in " ".join(gateway["healthcheck"]["test"])


def test_workers_cover_every_domain_once(services: dict[str, dict[str, Any]]) -> None:
    found = workers(services)
    assert {"worker-code", "worker-cpu"} <= found.keys()
    served: list[str] = []
    for service in found.values():
        command = service["command"]
        assert flag(command, "--redis-url") == REDIS_URL
        assert int(flag(command, "--concurrency")) >= 1
        served += flag(command, "--domains").split(",")
    assert sorted(served) == sorted(ALL_DOMAINS)
    assert flag(found["worker-code"]["command"], "--domains") == "code"


def test_workers_are_scalable_and_drain(services: dict[str, dict[str, Any]]) -> None:
    for name, service in workers(services).items():
        # `docker compose up --scale NAME=N` needs no fixed name and no fixed host port.
        assert "container_name" not in service, name
        assert "ports" not in service, name
        assert service["depends_on"] == DEPENDS, name
        assert "9100/readyz" in " ".join(service["healthcheck"]["test"]), name
        # Longer than the worker's default --drain-timeout-s (30 s).
        assert service["stop_grace_period"].endswith("s")
        assert int(service["stop_grace_period"][:-1]) > 30, name


def test_secrets_made_once_and_mounted_read_only(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    secrets = services["secrets"]
    assert secrets["restart"] == "no"  # a one-shot
    assert secrets["volumes"] == [f"queue-keys:{KEY_DIRECTORY}", f"api-clients:{API_DIRECTORY}"]
    command = secrets["command"]
    key_file = flag(command, "--queue-keys")
    clients_file = flag(command, "--clients-file")
    assert key_file.startswith(KEY_DIRECTORY + "/")
    assert clients_file.startswith(API_DIRECTORY + "/")
    for name, service in services.items():
        if name in ("redis", "secrets", "embedded"):
            continue
        assert f"queue-keys:{KEY_DIRECTORY}:ro" in service["volumes"], name
        assert service["environment"]["REWARD_SERVICE_QUEUE_KEYS_FILE"] == key_file, name
        # Only the gateways see the API clients; workers never need them.
        has_clients = f"api-clients:{API_DIRECTORY}:ro" in service["volumes"]
        assert has_clients == (name == "gateway"), name
    for name in ("gateway", "embedded"):
        assert services[name]["environment"]["REWARD_SERVICE_CLIENTS_FILE"] == clients_file
    # The image makes the mount points the service user's (an empty volume copies its owner).
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert KEY_DIRECTORY in dockerfile and API_DIRECTORY in dockerfile
    # The one-shot's command, run here into temporary paths: the files are made once, kept on
    # the next run, secret ones of mode 0600, and they are what the service reads.
    here = {KEY_DIRECTORY: str(tmp_path), API_DIRECTORY: str(tmp_path)}
    local = [
        next((arg.replace(d, t) for d, t in here.items() if arg.startswith(d)), arg)
        for arg in command
    ]
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-m", "reward_service.cli", *local], check=True, timeout=60, cwd=ROOT
        )
    keys = tmp_path / Path(key_file).name
    token = tmp_path / Path(flag(command, "--token-file")).name
    assert stat.S_IMODE(keys.stat().st_mode) == stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(Keyring.from_file(keys).names) == 1
    registry = ClientRegistry(Settings(clients_file=tmp_path / Path(clients_file).name))
    client = registry.authenticate(f"Bearer {token.read_text().strip()}")
    assert client is not None and client.name == flag(command, "--client")


def test_only_code_sandboxes_get_relaxed_security(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name == "redis":
            continue
        options = set(service["security_opt"])
        assert "no-new-privileges:true" in options, name
        assert service["cap_drop"] == ["ALL"], name
        assert service["read_only"] is True, name
        assert any(t.startswith("/tmp") for t in service["tmpfs"]), name
        assert not service.get("privileged"), name
        assert "cap_add" not in service, name
        runs_code = name == "embedded" or (
            service["command"][0] == "worker" and "code" in flag(service["command"], "--domains")
        )
        if runs_code:
            assert options >= SANDBOX_OPTIONS, name
        else:
            assert not options & SANDBOX_OPTIONS, name


def test_embedded_mode_is_an_opt_in_profile(services: dict[str, dict[str, Any]]) -> None:
    embedded = services["embedded"]
    assert embedded["profiles"] == ["embedded"]
    assert embedded["command"] == ["serve"]
    # No Redis: the API client (its token) is all it waits for.
    assert embedded["depends_on"] == {"secrets": DEPENDS["secrets"]}
    assert "--redis-url" not in embedded["command"]
    assert "REWARD_SERVICE_REDIS_URL" not in embedded["environment"]
    for name, service in services.items():
        if name != "embedded":
            assert "profiles" not in service, name


def test_app_services_share_one_image(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name == "redis":
            continue
        assert service["image"] == "reward-service:latest", name
        assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
    assert (ROOT / "deploy" / "Dockerfile").is_file()


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        probe = subprocess.run(
            [standalone, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0 and "v2" in probe.stdout + probe.stderr:
            return [standalone]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("no Docker Compose v2 client (docker compose plugin or docker-compose v2)")
    for profile in ([], ["--profile", "embedded"]):
        result = subprocess.run(
            [*client, "-f", str(COMPOSE_FILE), *profile, "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
