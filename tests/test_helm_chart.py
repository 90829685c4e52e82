"""The Helm chart in helm/: lint, render with several value sets, schema-check every manifest,
and check the properties the deployment relies on (sandbox security, egress lockdown,
autoscaling on the right streams, disruption budgets, value validation).

Needs a real `helm` (``bash deploy/k8s-tools.sh`` puts one in .venv/bin); no cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm"
RELEASE = "rs"
NAMESPACE = "rl"
PREFIX = f"{RELEASE}-reward-service"
DOMAINS = ("math", "code", "stem", "reasoning_gym", "ifeval")
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema known.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def find_helm() -> str | None:
    for candidate in (Path(sys.executable).parent / "helm", ROOT / ".venv" / "bin" / "helm"):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("helm")


HELM = find_helm()
pytestmark = pytest.mark.skipif(
    HELM is None, reason="no helm binary in .venv/bin or on PATH (run: bash deploy/k8s-tools.sh)"
)

# Kinds outside the Kubernetes schemas (CRDs): checked against these minimal schemas of the
# fields the chart relies on, instead of kubernetes_validate.
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers", "minReplicaCount", "maxReplicaCount"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "apiVersion": {"const": "apps/v1"},
                            "kind": {"const": "Deployment"},
                            "name": {"type": "string"},
                        },
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer"},
                    "cooldownPeriod": {"type": "integer"},
                    "advanced": {"type": "object"},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"const": "redis-streams"},
                                "name": {"type": "string"},
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {"name": {"type": "string"}},
                                },
                                # KEDA reads every metadata value as a string.
                                "metadata": {
                                    "type": "object",
                                    "required": ["stream"],
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["secretTargetRef"],
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {
                                "parameter": {"enum": ["address", "password", "username"]},
                                "name": {"type": "string", "minLength": 1},
                                "key": {"type": "string", "minLength": 1},
                            },
                        },
                    }
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {
                        "type": "object",
                        "required": ["matchLabels"],
                        "properties": {"matchLabels": {"type": "object"}},
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": {"type": "string"},
                                "scrapeTimeout": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
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
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusAnnotations": True}
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
        port = "http" if deployment["metadata"]["name"].endswith("gateway") else "metrics"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
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
    ],
)
def test_inconsistent_values_fail_the_render(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    result = helm("template", RELEASE, str(CHART), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
