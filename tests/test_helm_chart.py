"""The Helm chart in helm/: lint, render with several value sets, schema-check every manifest,
and check the properties the deployment relies on (sandbox security, egress lockdown,
autoscaling on the right streams, disruption budgets, value validation, and access control:
generated credentials, TLS, signed queue jobs, a password on Redis, no secret on a command line).

Needs a real `helm` (``bash deploy/k8s-tools.sh`` puts one in .venv/bin); no cluster.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from reward_service.gateway.auth import ClientRegistry
from reward_service.settings import Settings
from tests.conftest import find_tool

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm"
RELEASE = "rs"
NAMESPACE = "rl"
PREFIX = f"{RELEASE}-reward-service"
DOMAINS = ("math", "code", "stem", "reasoning_gym", "ifeval")
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema known.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


HELM = find_tool("helm")
pytestmark = pytest.mark.skipif(
    HELM is None, reason="no helm binary in .venv/bin or on PATH (run: bash deploy/k8s-tools.sh)"
)

# Kinds outside the Kubernetes schemas (CRDs): checked against these minimal schemas of the
# fields the chart relies on, instead of kubernetes_validate.


def obj(properties: dict[str, Any], *required: str, closed: bool = True) -> dict[str, Any]:
    """The JSON schema of an object with these properties (``closed``: and no others)."""
    schema: dict[str, Any] = {"type": "object", "required": list(required)}
    if closed:
        schema["additionalProperties"] = False
    return {**schema, "properties": properties}


def crd(spec: dict[str, Any]) -> dict[str, Any]:
    return obj({"metadata": _META, "spec": spec}, "metadata", "spec", closed=False)


_META = obj(
    {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}, "name", closed=False
)
_STRING = {"type": "string"}
_SECRET_KEY = obj(
    {"name": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1}},
    "name",
    "key",
)
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): crd(
        obj(
            {
                "scaleTargetRef": obj(
                    {
                        "apiVersion": {"const": "apps/v1"},
                        "kind": {"const": "Deployment"},
                        "name": _STRING,
                    },
                    "name",
                ),
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer"},
                "cooldownPeriod": {"type": "integer"},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": obj(
                        {
                            "type": {"const": "redis-streams"},
                            "name": _STRING,
                            "authenticationRef": obj({"name": _STRING}, "name", closed=False),
                            # KEDA reads every metadata value as a string.
                            "metadata": {
                                "type": "object",
                                "required": ["stream"],
                                "additionalProperties": _STRING,
                            },
                        },
                        "type",
                        "metadata",
                    ),
                },
            },
            "scaleTargetRef",
            "triggers",
            "minReplicaCount",
            "maxReplicaCount",
        )
    ),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): crd(
        obj(
            {
                "secretTargetRef": {
                    "type": "array",
                    "items": obj(
                        {
                            # redis-streams' parameters; tls/ca/cert/key are KEDA >= 2.10's TLS.
                            "parameter": {
                                "enum": [
                                    "address",
                                    "password",
                                    "username",
                                    "tls",
                                    "ca",
                                    "cert",
                                    "key",
                                ]
                            },
                            "name": {"type": "string", "minLength": 1},
                            "key": {"type": "string", "minLength": 1},
                        },
                        "parameter",
                        "name",
                        "key",
                    ),
                }
            },
            "secretTargetRef",
            closed=False,
        )
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): crd(
        obj(
            {
                "selector": obj({"matchLabels": {"type": "object"}}, "matchLabels", closed=False),
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": obj(
                        {
                            "port": _STRING,
                            "path": _STRING,
                            "interval": _STRING,
                            "scrapeTimeout": _STRING,
                            "scheme": {"enum": ["http", "https"]},
                            "tlsConfig": obj(
                                {
                                    "ca": obj({"secret": _SECRET_KEY, "configMap": _SECRET_KEY}),
                                    "serverName": _STRING,
                                    "insecureSkipVerify": {"type": "boolean"},
                                }
                            ),
                            "authorization": obj(
                                {"type": {"const": "Bearer"}, "credentials": _SECRET_KEY},
                                "type",
                                "credentials",
                            ),
                        },
                        "port",
                    ),
                },
            },
            "selector",
            "endpoints",
            closed=False,
        )
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): crd(
        obj(
            {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": obj(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": obj(
                                    {
                                        "alert": {"type": "string", "minLength": 1},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                        "labels": {"type": "object"},
                                        "annotations": {"type": "object"},
                                    },
                                    "alert",
                                    "expr",
                                ),
                            },
                        },
                        "name",
                        "rules",
                    ),
                }
            },
            "groups",
        )
    ),
    ("cert-manager.io/v1", "Certificate"): crd(
        obj(
            {
                "secretName": {"type": "string", "minLength": 1},
                "dnsNames": {"type": "array", "minItems": 1, "items": _STRING},
                "issuerRef": obj(
                    {
                        "name": {"type": "string", "minLength": 1},
                        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                        "group": _STRING,
                    },
                    "name",
                ),
                "duration": _STRING,
                "renewBefore": _STRING,
                "privateKey": {"type": "object"},
            },
            "secretName",
            "issuerRef",
            "dnsNames",
        )
    ),
}

EXTERNAL_URL = "rediss://default:s3cret@redis.example.com:6380/2"
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "keda": {"autoscaling": {"mode": "keda"}},
    "keda-lag": {
        "autoscaling": {"mode": "keda", "keda": {"trigger": "lagCount", "activationBacklog": 1}}
    },
    "hpa": {"autoscaling": {"mode": "hpa"}},
    "external-redis": {
        "redis": {"bundled": {"enabled": False}, "external": {"url": EXTERNAL_URL}},
        "autoscaling": {"mode": "keda"},
    },
    "external-redis-secret": {
        "redis": {
            "bundled": {"enabled": False},
            "external": {
                "existingSecret": "redis-creds",
                "existingSecretAddressKey": "address",
                "existingSecretPasswordKey": "password",
            },
        },
        "networkPolicy": {"redisTo": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
        "autoscaling": {"mode": "keda"},
    },
    "service-monitor": {
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "prometheusAnnotations": True,
            "grafanaDashboard": {
                "enabled": True,
                "namespace": "monitoring",
                "annotations": {"grafana_folder": "RL"},
            },
            "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
        }
    },
    "stem-disabled": {"workers": {"stem": {"enabled": False}}},
    "grouped-workers": {
        "workers": {
            "math": {"enabled": False},
            "ifeval": {"enabled": False},
            "cpu": {"enabled": True, "concurrency": 8, "domains": ["math", "ifeval"]},
        },
        "autoscaling": {"mode": "keda"},
    },
    "no-user-namespace": {"sandbox": {"userNamespace": False}},
    # Every credential from a Secret of the user's instead of a generated one.
    "existing-secrets": {
        "auth": {
            "existingSecret": "api-clients",
            "existingSecretKey": "clients",
            "openMetrics": False,
        },
        "tls": {"existingSecret": "gateway-cert", "clientCA": {"secretName": "trainer-ca"}},
        "queue": {"existingSecret": "queue-keys", "existingSecretKey": "keys"},
        "redis": {"bundled": {"auth": {"existingSecret": "redis-pass", "existingSecretKey": "pw"}}},
        "metrics": {
            "serviceMonitor": {
                "enabled": True,
                "bearerTokenSecret": {"name": "prometheus-token", "key": "token"},
            }
        },
        "autoscaling": {"mode": "keda"},
    },
    # Health and metrics behind the token too, per-client default limits.
    "protected": {
        "auth": {
            "openHealth": False,
            "openMetrics": False,
            "clientLimits": {"rate": 200.5, "burst": 400, "maxInFlight": 64},
        },
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusAnnotations": True},
    },
    "cert-manager": {
        "tls": {
            "certManager": {
                "issuerRef": {"name": "internal-ca", "kind": "ClusterIssuer"},
                "duration": "2160h",
            },
            "extraDnsNames": ["rewards.example.com"],
        }
    },
    # An external Redis over TLS with a private CA and a client certificate, the password and
    # user apart from the URL.
    "external-redis-tls": {
        "redis": {
            "bundled": {"enabled": False},
            "external": {
                "url": "rediss://redis.example.com:6380/0",
                "passwordSecret": {"name": "redis-pass", "key": "password"},
                "username": "reward",
                "tlsCASecret": {"name": "redis-ca", "key": "ca.crt"},
                "tlsClientSecret": "redis-client",
            },
        },
        "autoscaling": {"mode": "keda"},
    },
    # Everything off, each explicitly.
    "insecure": {
        "auth": {"enabled": False, "allowUnauthenticated": True},
        "tls": {"enabled": False},
        "queue": {"allowUnsigned": True},
    },
    "everything-else": {
        "redis": {"bundled": {"persistence": {"enabled": True}, "maxmemory": "2gb"}},
        "judge": {
            "baseUrl": "https://judge.example.com/v1",
            "model": "gpt-4o",
            "apiKeySecret": {"name": "judge-key"},
        },
        "maxStreamLength": 100000,
        "visibilityTimeoutS": 60,
        "autoscaling": {
            "mode": "hpa",
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 120}},
        },
        "gateway": {
            "service": {"type": "LoadBalancer"},
            "podDisruptionBudget": {"minAvailable": 1},
        },
        "tmp": {"medium": "Memory"},
    },
}


# ------------------------------------------------------------------------------------- helpers


def helm(
    *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None
) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    command = [HELM, *args]
    if values:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        command += ["-f", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def render(tmp: Path, values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    result = helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra, values=values, tmp=tmp
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return {
        name: render(tmp_path_factory.mktemp(name), values) for name, values in VALUE_SETS.items()
    }


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def worker_name(key: str) -> str:
    return f"{PREFIX}-worker-{key.replace('_', '-')}"


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")]


# ------------------------------------------------------------------------- lint and schemas


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict(name: str, tmp_path: Path) -> None:
    result = helm("lint", "--strict", str(CHART), values=VALUE_SETS[name], tmp=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_matches_its_schema(
    name: str, version: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[name]
    assert docs
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']} ({name})"
        crd_schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if crd_schema is not None:
            try:
                jsonschema.validate(doc, crd_schema)
            except jsonschema.ValidationError as error:
                pytest.fail(f"{where}: {error.message} at {list(error.absolute_path)}")
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{where} against Kubernetes {version}: {error.message} at {list(error.path)}"
            )


def test_chart_kube_version_floor_is_enforced() -> None:
    result = helm("template", RELEASE, str(CHART), "--kube-version", "1.29.0")
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr or "incompatible" in result.stderr


# ------------------------------------------------------------------------------- workloads


def test_one_worker_deployment_per_domain_with_its_domains(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    deployments = of_kind(rendered["default"], "Deployment")
    assert set(deployments) == {f"{PREFIX}-gateway"} | {worker_name(d) for d in DOMAINS}
    for domain in DOMAINS:
        (container,) = containers(deployments[worker_name(domain)])
        assert container["args"][0] == "worker"
        assert flag(container["args"], "--domains") == domain
        assert flag(container["args"], "--concurrency") == "4"
        assert flag(container["args"], "--metrics-port") == "9100"
        assert "REWARD_SERVICE_REDIS_URL" in env_of(container)
        assert env_of(container)["REWARD_SERVICE_HOST"]["value"] == "0.0.0.0"
    assert worker_name("reasoning_gym").endswith("worker-reasoning-gym")


def test_grouped_worker_serves_all_its_domains(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployments = of_kind(rendered["grouped-workers"], "Deployment")
    assert worker_name("math") not in deployments and worker_name("ifeval") not in deployments
    (container,) = containers(deployments[worker_name("cpu")])
    assert flag(container["args"], "--domains") == "math,ifeval"
    assert flag(container["args"], "--concurrency") == "8"
    (scaled,) = [
        s
        for s in of_kind(rendered["grouped-workers"], "ScaledObject").values()
        if s["spec"]["scaleTargetRef"]["name"] == worker_name("cpu")
    ]
    streams = [t["metadata"]["stream"] for t in scaled["spec"]["triggers"]]
    assert streams == ["reward:jobs:math", "reward:jobs:ifeval"]


def test_gateway_serves_with_redis_on_its_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    gateway = of_kind(docs, "Deployment")[f"{PREFIX}-gateway"]
    (container,) = containers(gateway)
    assert container["args"][0] == "serve"
    env = env_of(container)
    assert env["REWARD_SERVICE_REDIS_URL"]["value"] == f"redis://{PREFIX}-redis:6379/0"
    assert env["REWARD_SERVICE_REDIS_PREFIX"]["value"] == "reward"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": 50051,
        "http": 8000,
    }
    service = of_kind(docs, "Service")[f"{PREFIX}-gateway"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 50051, "http": 8000}


def test_probes_and_graceful_drain(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for deployment in of_kind(rendered["default"], "Deployment").values():
        (container,) = containers(deployment)
        # The gateway serves HTTPS by default; workers' metrics port is plain HTTP.
        if deployment["metadata"]["name"].endswith("gateway"):
            port = {"port": "http", "scheme": "HTTPS"}
        else:
            port = {"port": "metrics"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", **port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", **port}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", **port}
        if container["args"][0] == "worker":
            drain = float(flag(container["args"], "--drain-timeout-s"))
            grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            assert grace > drain + 5


def test_every_service_and_pdb_selects_pods(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in rendered.items():
        pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads(docs)]

        def selects(
            selector: dict[str, str], labels_list: list[dict[str, str]] = pod_labels
        ) -> bool:
            return any(selector.items() <= labels.items() for labels in labels_list)

        for service in of_kind(docs, "Service").values():
            assert selects(service["spec"]["selector"]), (name, service["metadata"]["name"])
        for pdb in of_kind(docs, "PodDisruptionBudget").values():
            assert selects(pdb["spec"]["selector"]["matchLabels"]), (name, pdb["metadata"]["name"])
        for workload in workloads(docs):
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()


def test_pod_disruption_budget_for_every_deployment(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name in ("default", "keda", "stem-disabled", "grouped-workers"):
        docs = rendered[name]
        pdbs = of_kind(docs, "PodDisruptionBudget")
        for deployment in of_kind(docs, "Deployment").values():
            pdb = pdbs[deployment["metadata"]["name"]]
            assert (
                pdb["spec"]["selector"]["matchLabels"]
                == deployment["spec"]["selector"]["matchLabels"]
            )
            assert pdb["spec"].get("maxUnavailable") == 1
    gateway_pdb = of_kind(rendered["everything-else"], "PodDisruptionBudget")[f"{PREFIX}-gateway"]
    assert gateway_pdb["spec"] == {**gateway_pdb["spec"], "minAvailable": 1}
    assert "maxUnavailable" not in gateway_pdb["spec"]


def test_disabled_domain_leaves_nothing_behind(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["stem-disabled"]
    names = {doc["metadata"]["name"] for doc in docs}
    assert worker_name("stem") not in names
    assert worker_name("code") in names
    for doc in docs:
        if doc["kind"] == "Deployment":
            (container,) = containers(doc)
            assert "stem" not in container["args"]


# -------------------------------------------------------------------------------- security


def test_no_container_is_privileged_and_all_drop_capabilities(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        for workload in workloads(docs):
            pod = workload["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False
            assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
            for container in containers(workload):
                where = (name, workload["metadata"]["name"], container["name"])
                security = container["securityContext"]
                assert security.get("privileged") is False, where
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["capabilities"] == {"drop": ["ALL"]}, where
                assert security["readOnlyRootFilesystem"] is True, where
                non_root = security.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot"))
                assert non_root is True, where
                assert pod["securityContext"].get("runAsUser", 0) != 0, where


def test_code_worker_gets_exactly_the_sandbox_settings(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    deployments = of_kind(rendered["default"], "Deployment")
    code = deployments[worker_name("code")]
    pod = code["spec"]["template"]["spec"]
    (container,) = containers(code)
    # What bubblewrap needs: user namespaces (seccomp), mount (AppArmor), a fresh /proc for
    # its pid namespace (unmasked /proc, which Kubernetes allows only with hostUsers: false).
    assert pod["hostUsers"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "Unconfined"},
        "appArmorProfile": {"type": "Unconfined"},
        "procMount": "Unmasked",
    }
    assert pod["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    assert pod["securityContext"]["runAsUser"] == 10001
    assert env_of(container)["REWARD_SERVICE_SANDBOX_BACKEND"]["value"] == "bwrap"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    # Everybody else keeps the restricted profile.
    for name, deployment in deployments.items():
        if name == worker_name("code"):
            continue
        spec = deployment["spec"]["template"]["spec"]
        (other,) = containers(deployment)
        assert "hostUsers" not in spec, name
        assert other["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert "appArmorProfile" not in other["securityContext"], name
        assert "procMount" not in other["securityContext"], name
        assert "REWARD_SERVICE_SANDBOX_BACKEND" not in env_of(other), name


def test_code_worker_without_pod_user_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    code = of_kind(rendered["no-user-namespace"], "Deployment")[worker_name("code")]
    (container,) = containers(code)
    assert "hostUsers" not in code["spec"]["template"]["spec"]
    assert "procMount" not in container["securityContext"]
    assert container["securityContext"]["seccompProfile"] == {"type": "Unconfined"}


def _egress(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    policy = of_kind(docs, "NetworkPolicy")[name]
    assert "Egress" in policy["spec"]["policyTypes"]
    return policy["spec"].get("egress", [])


def _is_dns(rule: dict[str, Any]) -> bool:
    return bool(rule.get("to")) and {p["port"] for p in rule["ports"]} == {53}


def test_code_worker_egress_is_redis_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    redis_pods = {
        "app.kubernetes.io/name": "reward-service",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "redis",
    }
    rules = _egress(rendered["default"], worker_name("code"))
    redis_rules = [rule for rule in rules if not _is_dns(rule)]
    assert redis_rules == [
        {
            "to": [{"podSelector": {"matchLabels": redis_pods}}],
            "ports": [{"port": 6379, "protocol": "TCP"}],
        }
    ]
    for rule in rules:
        assert rule.get("to"), f"an egress rule without `to` allows every destination: {rule}"
        assert all("ipBlock" not in peer for peer in rule["to"])
    # The policy selects the code worker's pods, and only them.
    policy = of_kind(rendered["default"], "NetworkPolicy")[worker_name("code")]
    deployment = of_kind(rendered["default"], "Deployment")[worker_name("code")]
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == deployment["spec"]["selector"]["matchLabels"]
    )
    # The LLM judge's egress goes to stem workers only.
    stem_rules = _egress(rendered["default"], worker_name("stem"))
    assert any(p["port"] == 443 for rule in stem_rules for p in rule.get("ports", []))
    assert not any(p["port"] == 443 for rule in rules for p in rule.get("ports", []))


def test_code_worker_egress_with_external_redis(rendered: dict[str, list[dict[str, Any]]]) -> None:
    rules = _egress(rendered["external-redis"], worker_name("code"))
    (redis_rule,) = [rule for rule in rules if not _is_dns(rule)]
    assert redis_rule["ports"] == [{"port": 6380, "protocol": "TCP"}]  # from the URL
    rules = _egress(rendered["external-redis-secret"], worker_name("code"))
    (redis_rule,) = [rule for rule in rules if not _is_dns(rule)]
    assert redis_rule == {
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
        "ports": [{"port": 6379, "protocol": "TCP"}],
    }


def test_every_pod_is_covered_by_a_network_policy(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        selectors = [
            p["spec"]["podSelector"]["matchLabels"] for p in of_kind(docs, "NetworkPolicy").values()
        ]
        for workload in workloads(docs):
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert any(s.items() <= labels.items() for s in selectors), (
                name,
                workload["metadata"]["name"],
            )
        for policy in of_kind(docs, "NetworkPolicy").values():
            for rule in policy["spec"].get("egress", []):
                assert rule.get("to") or rule.get("ports"), ("allow-all egress", name, policy)
    redis_policy = of_kind(rendered["keda"], "NetworkPolicy")[f"{PREFIX}-redis"]
    assert redis_policy["spec"]["egress"] == []
    sources = redis_policy["spec"]["ingress"][0]["from"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}
    } in sources


# ----------------------------------------------------------------------------- autoscaling


def test_no_autoscaler_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {doc["kind"] for doc in rendered["default"]}
    assert not kinds & {"ScaledObject", "HorizontalPodAutoscaler", "TriggerAuthentication"}
    for deployment in of_kind(rendered["default"], "Deployment").values():
        assert "replicas" in deployment["spec"]


def test_keda_scales_each_worker_on_its_stream_length(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["keda"]
    scaled = of_kind(docs, "ScaledObject")
    assert set(scaled) == {worker_name(d) for d in DOMAINS}
    for domain in DOMAINS:
        spec = scaled[worker_name(domain)]["spec"]
        assert spec["scaleTargetRef"]["name"] == worker_name(domain)
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis-streams"
        meta = trigger["metadata"]
        assert meta["stream"] == f"reward:jobs:{domain}"
        assert meta["address"] == f"{PREFIX}-redis:6379"
        # XLEN = waiting + in-progress (acked entries are deleted). KEDA ignores streamLength
        # and counts XPENDING as soon as consumerGroup is set, so it must not be.
        assert int(meta["streamLength"]) >= 1
        assert "consumerGroup" not in meta
        # An autoscaled Deployment leaves its replica count to the autoscaler.
        assert "replicas" not in of_kind(docs, "Deployment")[worker_name(domain)]["spec"]
    assert of_kind(docs, "Deployment")[f"{PREFIX}-gateway"]["spec"]["replicas"] == 2


def test_keda_lag_trigger_uses_the_workers_group(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for scaled in of_kind(rendered["keda-lag"], "ScaledObject").values():
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["metadata"]["consumerGroup"] == "workers"
        assert "lagCount" in trigger["metadata"] and "streamLength" not in trigger["metadata"]
        assert int(trigger["metadata"]["activationLagCount"]) >= 1


def test_keda_with_external_redis_authenticates_from_a_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["external-redis"]
    assert not of_kind(docs, "StatefulSet")
    secret = of_kind(docs, "Secret")[f"{PREFIX}-redis-url"]
    assert secret["stringData"] == {
        "url": EXTERNAL_URL,
        "address": "redis.example.com:6380",
        "password": "s3cret",
        "username": "default",
    }
    (auth,) = of_kind(docs, "TriggerAuthentication").values()
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {
        "address",
        "password",
        "username",
    }
    for scaled in of_kind(docs, "ScaledObject").values():
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert trigger["metadata"]["enableTLS"] == "true"
        assert trigger["metadata"]["databaseIndex"] == "2"
        assert "address" not in trigger["metadata"]
    for deployment in of_kind(docs, "Deployment").values():
        (container,) = containers(deployment)
        ref = env_of(container)["REWARD_SERVICE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"{PREFIX}-redis-url", "key": "url"}
    docs = rendered["external-redis-secret"]
    (auth,) = of_kind(docs, "TriggerAuthentication").values()
    assert {(r["parameter"], r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]} == {
        ("address", "redis-creds", "address"),
        ("password", "redis-creds", "password"),
    }


def test_hpa_scales_on_the_external_backlog_metric(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["hpa"]
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {worker_name(d) for d in DOMAINS}
    for domain in DOMAINS:
        spec = hpas[worker_name(domain)]["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": worker_name(domain),
        }
        assert spec["minReplicas"] >= 1
        (metric,) = spec["metrics"]
        assert metric["type"] == "External"
        assert metric["external"]["metric"] == {
            "name": "reward_service_stream_length",
            "selector": {"matchLabels": {"domain": domain}},
        }
        assert metric["external"]["target"]["type"] == "AverageValue"


# ------------------------------------------------------------------------ metrics and misc


def test_service_monitors(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert not of_kind(rendered["default"], "ServiceMonitor")
    docs = rendered["service-monitor"]
    monitors = of_kind(docs, "ServiceMonitor")
    assert {m["spec"]["endpoints"][0]["port"] for m in monitors.values()} == {"http", "metrics"}
    services = of_kind(docs, "Service")
    for monitor in monitors.values():
        selector = monitor["spec"]["selector"]["matchLabels"]
        port = monitor["spec"]["endpoints"][0]["port"]
        matching = [
            s
            for s in services.values()
            if selector.items() <= s["metadata"]["labels"].items()
            and port in {p["name"] for p in s["spec"]["ports"]}
        ]
        assert matching, monitor["metadata"]["name"]
    worker = of_kind(docs, "Deployment")[worker_name("math")]
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9100"


def test_dashboard_and_alerts_ship_the_files_as_they_are(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for kind in ("ConfigMap", "PrometheusRule"):
        assert not of_kind(rendered["default"], kind)
    docs = rendered["service-monitor"]
    dashboard = of_kind(docs, "ConfigMap")[f"{PREFIX}-dashboard"]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "RL"}
    shipped = (CHART / "files" / "grafana-dashboard.json").read_text()
    assert dashboard["data"]["reward-service.json"] == shipped.strip()
    rule = of_kind(docs, "PrometheusRule")[PREFIX]
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())


def test_redis_bundled_without_persistence_by_default(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (redis,) = of_kind(rendered["default"], "StatefulSet").values()
    assert redis["spec"]["serviceName"] == f"{PREFIX}-redis"
    assert of_kind(rendered["default"], "Service")[f"{PREFIX}-redis"]["spec"]["clusterIP"] == "None"
    (container,) = containers(redis)
    args = container["args"]
    assert flag(args, "--save") == "" and flag(args, "--appendonly") == "no"
    assert flag(args, "--maxmemory-policy") == "noeviction"
    assert "volumeClaimTemplates" not in redis["spec"]
    (redis,) = of_kind(rendered["everything-else"], "StatefulSet").values()
    assert flag(containers(redis)[0]["args"], "--appendonly") == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_judge_settings_reach_stem_workers_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, deployment in of_kind(rendered["everything-else"], "Deployment").items():
        env = env_of(containers(deployment)[0])
        assert env["REWARD_SERVICE_MAX_STREAM_LENGTH"]["value"] == "100000"
        if name == worker_name("stem"):
            assert env["REWARD_SERVICE_JUDGE_BASE_URL"]["value"] == "https://judge.example.com/v1"
            assert env["REWARD_SERVICE_JUDGE_MODEL"]["value"] == "gpt-4o"
            assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {
                "name": "judge-key",
                "key": "OPENAI_API_KEY",
            }
        else:
            assert not {"REWARD_SERVICE_JUDGE_BASE_URL", "OPENAI_API_KEY"} & env.keys(), name


# ------------------------------------------------------- access control and transport security

GATEWAY = f"{PREFIX}-gateway"
GATEWAY_DNS = [GATEWAY, f"{GATEWAY}.{NAMESPACE}", f"{GATEWAY}.{NAMESPACE}.svc"]


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's contents, decoded."""
    data = {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}
    return {**data, **secret.get("stringData", {})}


def file_env(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each REWARD_SERVICE_*_FILE variable of a container, as (Secret, key) of the file its
    path names; fails unless the path is in a read-only Secret volume that the kubelet keeps up
    to date (a whole-volume mount, no subPath)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    files = {}
    for name, entry in env_of(container).items():
        if not (name.startswith("REWARD_SERVICE_") and name.endswith("_FILE")):
            continue
        directory, _, filename = entry["value"].rpartition("/")
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
        assert mount.get("readOnly") is True and "subPath" not in mount, (name, mount)
        secret = volumes[mount["name"]]["secret"]
        (item,) = [i for i in secret["items"] if i["path"] == filename]
        files[name] = (secret["secretName"], item["key"])
    return files


def gateway_of(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = of_kind(docs, "Deployment")[GATEWAY]
    (container,) = containers(deployment)
    return container, deployment["spec"]["template"]["spec"]


def test_default_gateway_requires_a_generated_token(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    docs = rendered["default"]
    container, pod = gateway_of(docs)
    files = file_env(container, pod)
    assert files["REWARD_SERVICE_CLIENTS_FILE"] == (f"{PREFIX}-auth", "clients.toml")
    env = env_of(container)
    assert "REWARD_SERVICE_ALLOW_UNAUTHENTICATED" not in env
    assert env["REWARD_SERVICE_OPEN_HEALTH"]["value"] == "true"  # for the kubelet's probes
    assert env["REWARD_SERVICE_OPEN_METRICS"]["value"] == "false"  # it names clients
    # The Secret holds the token (for NOTES.txt and the ServiceMonitor) and a clients file
    # with only its digest; the gateway gets only the clients file.
    data = secret_data(of_kind(docs, "Secret")[f"{PREFIX}-auth"])
    token = data["token"]
    assert re.fullmatch(r"[A-Za-z0-9]{40}", token)
    assert token not in data["clients.toml"]
    assert hashlib.sha256(token.encode()).hexdigest() in data["clients.toml"]
    volume = next(
        v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == f"{PREFIX}-auth"
    )
    assert [item["key"] for item in volume["secret"]["items"]] == ["clients.toml"]
    # The service itself accepts the file, and the token, as client "default".
    path = tmp_path / "clients.toml"
    path.write_text(data["clients.toml"])
    registry = ClientRegistry(Settings(clients_file=path))
    client = registry.authenticate(f"Bearer {token}")
    assert client is not None and client.name == "default"
    assert registry.authenticate("Bearer " + "x" * 40) is None
    # Workers take no API calls: no clients file, no server certificate.
    for name, deployment in of_kind(docs, "Deployment").items():
        if name != GATEWAY:
            (worker,) = containers(deployment)
            assert not {"REWARD_SERVICE_CLIENTS_FILE", "REWARD_SERVICE_TLS_CERT_FILE"} & set(
                env_of(worker)
            ), name


def test_default_gateway_serves_tls_with_a_generated_certificate(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    docs = rendered["default"]
    container, pod = gateway_of(docs)
    tls_secret = f"{GATEWAY}-tls"
    tls_files = {k: v for k, v in file_env(container, pod).items() if "_TLS_" in k}
    assert tls_files == {  # and no client CA: mutual TLS is opt-in
        "REWARD_SERVICE_TLS_CERT_FILE": (tls_secret, "tls.crt"),
        "REWARD_SERVICE_TLS_KEY_FILE": (tls_secret, "tls.key"),
    }
    secret = of_kind(docs, "Secret")[tls_secret]
    assert secret["type"] == "kubernetes.io/tls"
    data = secret_data(secret)
    certificate = x509.load_pem_x509_certificate(data["tls.crt"].encode())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns_names = names.get_values_for_type(x509.DNSName)
    assert set(GATEWAY_DNS) | {f"{GATEWAY}.{NAMESPACE}.svc.cluster.local"} <= set(dns_names)
    # A client that trusts ca.crt accepts the key pair for the Service's name.
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / name).write_text(data[name])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    _handshake(server, client, f"{GATEWAY}.{NAMESPACE}.svc")
    # The kubelet probes speak HTTPS to it (and do not check the certificate).
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake between the two contexts over a socket pair (fails on a bad chain or
    name)."""
    left, right = socket.socketpair()
    with left, right:
        server_side = server.wrap_socket(left, server_side=True, do_handshake_on_connect=False)
        client_side = client.wrap_socket(
            right, server_hostname=hostname, do_handshake_on_connect=False
        )
        server_side.setblocking(False)
        client_side.setblocking(False)
        done = {"server": False, "client": False}
        deadline = time.monotonic() + 10
        while not all(done.values()):
            assert time.monotonic() < deadline, "TLS handshake timed out"
            for side, sock in (("server", server_side), ("client", client_side)):
                if not done[side]:
                    try:
                        sock.do_handshake()
                        done[side] = True
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass


def test_queue_keys_reach_the_gateway_and_every_worker(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["default"]
    keys = secret_data(of_kind(docs, "Secret")[f"{PREFIX}-queue-keys"])["queue-keys"]
    # One NAME=SECRET line (the first signs, all verify), a long random secret.
    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,64}=[A-Za-z0-9]{48}\n", keys)
    for name, deployment in of_kind(docs, "Deployment").items():
        (container,) = containers(deployment)
        files = file_env(container, deployment["spec"]["template"]["spec"])
        assert files["REWARD_SERVICE_QUEUE_KEYS_FILE"] == (f"{PREFIX}-queue-keys", "queue-keys")
        assert "REWARD_SERVICE_ALLOW_UNSIGNED_QUEUE" not in env_of(container), name


def test_bundled_redis_requires_its_password(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    password_ref = {"name": f"{PREFIX}-redis-auth", "key": "password"}
    assert re.fullmatch(
        r"[A-Za-z0-9]{32}", secret_data(of_kind(docs, "Secret")[password_ref["name"]])["password"]
    )
    (redis,) = of_kind(docs, "StatefulSet").values()
    (container,) = containers(redis)
    script = " ".join(container["command"])
    assert "requirepass" in script and "$REDIS_PASSWORD" in script
    env = env_of(container)
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):  # the server's, and the probes' redis-cli
        assert env[name]["valueFrom"]["secretKeyRef"] == password_ref
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "-a " not in " ".join(container[probe]["exec"]["command"])
    for deployment in of_kind(docs, "Deployment").values():
        (app,) = containers(deployment)
        assert (
            env_of(app)["REWARD_SERVICE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
            == password_ref
        )
        assert "@" not in env_of(app)["REWARD_SERVICE_REDIS_URL"]["value"]
    # KEDA's scaler authenticates with the same Secret.
    (auth,) = of_kind(rendered["keda"], "TriggerAuthentication").values()
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", **password_ref}]
    for scaled in of_kind(rendered["keda"], "ScaledObject").values():
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server on PATH")
def test_bundled_redis_start_command_sets_the_password(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Runs the StatefulSet's command with a local redis-server: a password with quotes,
    backslashes and spaces must work, and appear on no command line."""
    (redis,) = of_kind(rendered["default"], "StatefulSet").values()
    (container,) = containers(redis)
    password = "pa\"ss\\wo rd$x'y-0123456789"
    sock = tmp_path / "redis.sock"
    args = ["--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(tmp_path)]
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password}
    server = subprocess.Popen(
        [*container["command"], *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

        def ping(auth: str | None) -> str:
            cli_env = {"PATH": os.environ["PATH"], **({"REDISCLI_AUTH": auth} if auth else {})}
            result = subprocess.run(
                ["redis-cli", "-s", str(sock), "ping"],
                env=cli_env,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            return result.stdout + result.stderr

        assert "PONG" in ping(password)
        assert "NOAUTH" in ping(None)
        assert "PONG" not in ping("wrong-password")
        # The shell exec'd redis-server (it gets SIGTERM), and its command line holds no password.
        proc = Path(f"/proc/{server.pid}/cmdline")
        if proc.exists():  # Linux
            cmdline = proc.read_bytes().decode(errors="replace")
            assert "redis-server" in cmdline
            assert password not in cmdline and "requirepass" not in cmdline
    finally:
        server.terminate()
        assert server.wait(timeout=20) == 0


def test_no_secret_on_a_command_line(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Whatever the values, no secret value reaches a container's command or args (ps shows
    them), nor a plain env value: secrets come from files or secretKeyRef."""
    for name, docs in rendered.items():
        secrets = {"s3cret"}
        for secret in of_kind(docs, "Secret").values():
            secrets |= {value for value in secret_data(secret).values() if len(value) >= 16}
        for workload in workloads(docs):
            for container in containers(workload):
                where = (name, workload["metadata"]["name"], container["name"])
                words = container.get("command", []) + container.get("args", [])
                words += [e["value"] for e in container.get("env", []) if "value" in e]
                for word in words:
                    assert not any(secret in word for secret in secrets), (where, word)
                for entry in container.get("env", []):
                    if re.search(r"PASSWORD|TOKEN|_KEYS$|REDISCLI_AUTH|API_KEY", entry["name"]):
                        assert "valueFrom" in entry, (where, entry["name"])


def test_every_service_setting_exists(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Each REWARD_SERVICE_* variable the chart sets names a field of the service's Settings
    (the service refuses unknown ones)."""
    for name, docs in rendered.items():
        for deployment in of_kind(docs, "Deployment").values():
            for variable in env_of(containers(deployment)[0]):
                if variable.startswith("REWARD_SERVICE_"):
                    field = variable.removeprefix("REWARD_SERVICE_").lower()
                    assert field in Settings.model_fields, (name, variable)


def test_existing_secrets_replace_the_generated_ones(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["existing-secrets"]
    assert not of_kind(docs, "Secret")  # nothing generated
    container, pod = gateway_of(docs)
    assert file_env(container, pod) == {
        "REWARD_SERVICE_CLIENTS_FILE": ("api-clients", "clients"),
        "REWARD_SERVICE_TLS_CERT_FILE": ("gateway-cert", "tls.crt"),
        "REWARD_SERVICE_TLS_KEY_FILE": ("gateway-cert", "tls.key"),
        "REWARD_SERVICE_TLS_CLIENT_CA_FILE": ("trainer-ca", "ca.crt"),
        "REWARD_SERVICE_QUEUE_KEYS_FILE": ("queue-keys", "keys"),
    }
    password_ref = {"name": "redis-pass", "key": "pw"}
    for deployment in of_kind(docs, "Deployment").values():
        (app,) = containers(deployment)
        assert (
            env_of(app)["REWARD_SERVICE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
            == password_ref
        )
    (redis,) = of_kind(docs, "StatefulSet").values()
    assert (
        env_of(containers(redis)[0])["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == password_ref
    )
    (auth,) = of_kind(docs, "TriggerAuthentication").values()
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", **password_ref}]


def test_protected_metrics_make_the_service_monitor_send_a_token(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    tls_config = {
        "ca": {"secret": {"name": f"{GATEWAY}-tls", "key": "ca.crt"}},
        "serverName": f"{GATEWAY}.{NAMESPACE}.svc",
    }
    for name, token_ref, tls_secret in (
        ("protected", {"name": f"{PREFIX}-auth", "key": "token"}, f"{GATEWAY}-tls"),
        ("existing-secrets", {"name": "prometheus-token", "key": "token"}, "gateway-cert"),
    ):
        monitors = of_kind(rendered[name], "ServiceMonitor")
        (endpoint,) = monitors[f"{PREFIX}-gateway"]["spec"]["endpoints"]
        assert endpoint["scheme"] == "https"
        assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": tls_secret, "key": "ca.crt"}
        assert endpoint["authorization"] == {"type": "Bearer", "credentials": token_ref}, name
        # Workers' metrics port is theirs alone: plain, open.
        (endpoint,) = monitors[f"{PREFIX}-worker"]["spec"]["endpoints"]
        assert "authorization" not in endpoint and "scheme" not in endpoint
    # Protected metrics are the default: the generated token, over TLS.
    (endpoint,) = of_kind(rendered["service-monitor"], "ServiceMonitor")[f"{PREFIX}-gateway"][
        "spec"
    ]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == tls_config
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": f"{PREFIX}-auth", "key": "token"},
    }
    container, _ = gateway_of(rendered["protected"])
    env = env_of(container)
    assert env["REWARD_SERVICE_OPEN_METRICS"]["value"] == "false"
    assert env["REWARD_SERVICE_OPEN_HEALTH"]["value"] == "false"
    assert env["REWARD_SERVICE_CLIENT_RATE"]["value"] == "200.5"
    assert env["REWARD_SERVICE_CLIENT_BURST"]["value"] == "400"
    assert env["REWARD_SERVICE_CLIENT_MAX_IN_FLIGHT"]["value"] == "64"
    # The kubelet cannot send a token: with protected health the probes only open the port.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "http"}
    annotations = of_kind(rendered["protected"], "Deployment")[GATEWAY]["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"


def test_cert_manager_issues_the_gateway_certificate(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["cert-manager"]
    (certificate,) = of_kind(docs, "Certificate").values()
    spec = certificate["spec"]
    assert spec["secretName"] == f"{GATEWAY}-tls"
    assert spec["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer"}
    assert set(GATEWAY_DNS) | {"rewards.example.com"} <= set(spec["dnsNames"])
    assert spec["duration"] == "2160h"
    assert f"{GATEWAY}-tls" not in of_kind(docs, "Secret")  # cert-manager writes it
    container, pod = gateway_of(docs)
    assert file_env(container, pod)["REWARD_SERVICE_TLS_CERT_FILE"] == (f"{GATEWAY}-tls", "tls.crt")


def test_external_redis_over_tls_with_its_own_secrets(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["external-redis-tls"]
    for deployment in of_kind(docs, "Deployment").values():
        (container,) = containers(deployment)
        env = env_of(container)
        assert env["REWARD_SERVICE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "redis-pass",
            "key": "password",
        }
        assert env["REWARD_SERVICE_REDIS_USERNAME"]["value"] == "reward"
        files = file_env(container, deployment["spec"]["template"]["spec"])
        assert files["REWARD_SERVICE_REDIS_TLS_CA_FILE"] == ("redis-ca", "ca.crt")
        assert files["REWARD_SERVICE_REDIS_TLS_CERT_FILE"] == ("redis-client", "tls.crt")
        assert files["REWARD_SERVICE_REDIS_TLS_KEY_FILE"] == ("redis-client", "tls.key")
    # KEDA: TLS with the CA and client certificate from the TriggerAuthentication (which KEDA
    # refuses together with enableTLS), `tls: enable` from a Secret of the chart's.
    (auth,) = of_kind(docs, "TriggerAuthentication").values()
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    keda_secret = f"{PREFIX}-keda-redis"
    assert refs == {
        "address": (f"{PREFIX}-redis-url", "address"),
        "password": ("redis-pass", "password"),
        "username": (keda_secret, "username"),
        "tls": (keda_secret, "tls"),
        "ca": ("redis-ca", "ca.crt"),
        "cert": ("redis-client", "tls.crt"),
        "key": ("redis-client", "tls.key"),
    }
    assert secret_data(of_kind(docs, "Secret")[keda_secret]) == {
        "tls": "enable",
        "username": "reward",
    }
    for scaled in of_kind(docs, "ScaledObject").values():
        (trigger,) = scaled["spec"]["triggers"]
        assert "enableTLS" not in trigger["metadata"]


def test_security_can_be_turned_off_only_explicitly(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["insecure"]
    assert not of_kind(docs, "Secret").keys() - {f"{PREFIX}-redis-auth"}
    container, pod = gateway_of(docs)
    env = env_of(container)
    assert env["REWARD_SERVICE_ALLOW_UNAUTHENTICATED"]["value"] == "true"
    assert env["REWARD_SERVICE_ALLOW_UNSIGNED_QUEUE"]["value"] == "true"
    assert not file_env(container, pod)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


# -------------------------------------------------------------------------- bad values fail


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workers": {"code": {"concurrency": 0}}}, "concurrency"),
        ({"autoscaling": {"mode": "sometimes"}}, "autoscaling.mode"),
        ({"workers": {"Code-Workers": {"enabled": True, "concurrency": 1}}}, "workers"),
        ({"workers": {"math": {"domains": ["algebra"]}}}, "domains"),
        ({"sandbox": {"seccompProfile": {"type": "Whatever"}}}, "seccompProfile"),
        ({"gateway": {"grpcPort": 70000}}, "grpcPort"),
        ({"redis": {"external": {"url": "http://redis:6379"}}}, "url"),
        ({"unknownKey": 1}, "unknownKey"),
        ({"auth": {"clientName": "a b"}}, "clientName"),
        ({"auth": {"clientLimits": {"rate": -1}}}, "rate"),
        ({"tls": {"selfSigned": {"validityDays": 0}}}, "validityDays"),
        ({"redis": {"external": {"passwordSecret": {"name": "Not_A_Name"}}}}, "passwordSecret"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    result = helm("template", RELEASE, str(CHART), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert "schema" in result.stderr and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": {"external": {"url": "redis://elsewhere:6379/0"}}}, "exactly one of"),
        ({"redis": {"bundled": {"enabled": False}}}, "exactly one of"),
        (
            {
                "redis": {"bundled": {"enabled": False}, "external": {"existingSecret": "s"}},
                "autoscaling": {"mode": "keda"},
            },
            "existingSecretAddressKey",
        ),
        ({"workers": {"cpu": {"enabled": True, "concurrency": 2}}}, "is not a domain"),
        ({"autoscaling": {"mode": "keda", "keda": {"trigger": "lagCount"}}}, "activationBacklog"),
        ({"auth": {"enabled": False}}, "set auth.allowUnauthenticated=true to confirm"),
        ({"queue": {"allowUnsigned": True, "existingSecret": "k"}}, "queue.allowUnsigned"),
        ({"tls": {"enabled": False, "clientCA": {"secretName": "ca"}}}, "needs tls.enabled"),
        (
            {"tls": {"existingSecret": "c", "certManager": {"issuerRef": {"name": "i"}}}},
            "not both",
        ),
        (
            {
                "auth": {"existingSecret": "clients", "openMetrics": False},
                "metrics": {"serviceMonitor": {"enabled": True}},
            },
            "bearerTokenSecret",
        ),
        (
            {
                "redis": {
                    "bundled": {"enabled": False},
                    "external": {
                        "url": "redis://redis:6379/0",
                        "tlsCASecret": {"name": "ca", "key": "ca.crt"},
                    },
                }
            },
            "need TLS",
        ),
    ],
)
def test_inconsistent_values_fail_the_render(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    result = helm("template", RELEASE, str(CHART), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
