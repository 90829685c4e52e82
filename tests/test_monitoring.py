"""The Grafana dashboard and the Prometheus alerts shipped in helm/files/ (and deploy/monitoring/):
every expression parses as PromQL, and asks only for series the service exports, with labels
those series carry; the dashboard's layout and variables are sound, and the alerts' annotations
name only labels their expressions keep.

The expressions are parsed by ``promql-parser`` (a port of Prometheus' own parser); the metric
names and labels come from the service's own metric objects. Prometheus' ``promtool`` then
checks the rule file and runs each alert over made-up series: it fires on the failure it is
for, and not on what looks like it but is normal. Last, a real Prometheus scrapes a gateway and
a worker in distributed mode: every panel's query runs, the panels show the traffic, and a
healthy service fires no alert.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import typing
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from reward_service.metrics import QueueMetrics, Role, ServiceMetrics
from reward_service.verifiers.base import Status
from tests.conftest import find_tool
from tests.distributed import (
    RedisServer,
    WorkerProcess,
    distributed_server,
    free_port,
    needs_redis,
    wait_for,
    wait_for_workers,
)
from trainer.client import RewardClient

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "helm" / "files" / "grafana-dashboard.json"
RULES = ROOT / "helm" / "files" / "prometheus-rules.yaml"
# Labels Prometheus adds to every scraped series (the job and target; Kubernetes discovery's).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
# Grafana's variables: the dashboard's own, and the built-in ones it uses.
GRAFANA_VALUES = {"namespace": ".*", "datasource": "prometheus"}
# Label values the service sets from a fixed set: a matcher on another value matches nothing.
KNOWN_VALUES = {"status": {s.value for s in Status}, "role": set(typing.get_args(Role))}


def exported_series() -> dict[str, set[str]]:
    """Every series name the service exports (``_total``, ``_bucket``...), with its labels."""
    metrics = ServiceMetrics("gateway")
    queue = QueueMetrics(metrics.registry)
    series: dict[str, set[str]] = {}
    for owner in (metrics, queue):
        for metric in vars(owner).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            name, labels = metric._name, set(metric._labelnames)
            suffixes = {
                "counter": {"_total": labels},
                "gauge": {"": labels},
                "histogram": {"_bucket": labels | {"le"}, "_sum": labels, "_count": labels},
            }[metric._type]
            for suffix, names in suffixes.items():
                series[name + suffix] = names
    for family in metrics.registry.collect():  # the build Info, set once and not kept
        if family.type == "info":
            series.update((sample.name, set(sample.labels)) for sample in family.samples)
    return series


SERIES = exported_series()


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_queries(rate_interval: str = "5m") -> list[tuple[str, str]]:
    """(where, expression) of every panel target, with Grafana's variables filled in."""
    values = {**GRAFANA_VALUES, "__rate_interval": rate_interval}
    queries = []
    for panel in dashboard_panels():
        for target in panel["targets"]:
            expr = re.sub(r"\$(\w+)", lambda m: values[m.group(1)], target["expr"])
            queries.append((f"panel {panel['title']!r} {target['refId']}", expr))
    return queries


ALL_QUERIES = dashboard_queries() + [(f"alert {r['alert']}", r["expr"]) for r in rules()]


def children(node: Any) -> list[Any]:
    kind = type(node).__name__
    if kind == "BinaryExpr":
        return [node.lhs, node.rhs]
    if kind in ("AggregateExpr", "ParenExpr", "UnaryExpr", "SubqueryExpr"):
        return [node.expr] + ([node.param] if kind == "AggregateExpr" and node.param else [])
    if kind == "Call":
        return list(node.args)
    if kind == "MatrixSelector":
        return [node.vector_selector]
    return []


def walk(node: Any) -> list[Any]:
    return [node, *(n for child in children(node) for n in walk(child))]


def selectors(node: Any) -> list[Any]:
    return [n for n in walk(node) if type(n).__name__ == "VectorSelector"]


def result_labels(node: Any) -> set[str]:
    """The labels an expression's result keeps (enough for the forms the rules use)."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        return SERIES[node.name] | TARGET_LABELS
    if kind == "AggregateExpr":
        assert str(node.modifier.type).endswith("By"), "use `by (...)`: say what is kept"
        return set(node.modifier.labels)
    if kind == "BinaryExpr":
        sides = [s for s in (node.lhs, node.rhs) if type(s).__name__ != "NumberLiteral"]
        if str(node.op) == "or":
            return result_labels(node.lhs) & result_labels(node.rhs)
        return result_labels(sides[0])
    if kind == "Call" and node.func.name == "histogram_quantile":
        return result_labels(node.args[1]) - {"le"}
    if kind == "Call":
        return result_labels(node.args[0])
    if kind in ("ParenExpr", "MatrixSelector"):
        return result_labels(children(node)[0])
    raise AssertionError(f"no rule for {kind}")


@pytest.mark.parametrize(("where", "expr"), ALL_QUERIES, ids=[w for w, _ in ALL_QUERIES])
def test_expression_parses_and_names_only_exported_series(where: str, expr: str) -> None:
    tree = promql_parser.parse(expr)
    names = {s.name for s in selectors(tree)}
    unknown = names - SERIES.keys()
    assert not unknown, f"{where}: no such series {sorted(unknown)} (exported: {sorted(SERIES)})"
    available = set().union(*(SERIES[n] for n in names)) | TARGET_LABELS
    for selector in selectors(tree):
        for matcher in selector.matchers.matchers:
            assert matcher.name in SERIES[selector.name] | TARGET_LABELS, (
                f"{where}: {selector.name} has no label {matcher.name!r}"
            )
            allowed = KNOWN_VALUES.get(matcher.name)
            if allowed and str(matcher.op) in ("MatchOp.Equal", "MatchOp.NotEqual"):
                assert matcher.value in allowed, (
                    f"{where}: {matcher.name}={matcher.value!r} never occurs (one of {allowed})"
                )
    for node in walk(tree):
        modifier = getattr(node, "modifier", None)
        grouping = getattr(modifier, "labels", None) or getattr(
            getattr(modifier, "matching", None), "labels", None
        )
        missing = set(grouping or ()) - available
        assert not missing, f"{where}: groups or matches on {sorted(missing)}, which no series has"


def test_every_exported_series_family_is_on_the_dashboard() -> None:
    """An operator finds every metric the service exports on some panel."""

    def family(series: str) -> str:
        return re.sub(r"_(total|bucket|sum|count)$", "", series)

    shown = {
        family(selector.name)
        for _, expr in dashboard_queries()
        for selector in selectors(promql_parser.parse(expr))
    }
    missing = {family(name) for name in SERIES} - shown
    assert not missing, f"not on the dashboard: {sorted(missing)}"


def test_dashboard_layout_and_variables() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{panel['title']}: off the grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "namespace"}
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], f"{panel['title']}: say what the panel shows"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"]))
            assert used <= variables | {"__rate_interval"}, (panel["title"], used)
            assert 'namespace=~"$namespace"' in target["expr"], (
                f"{panel['title']}: every selector follows the namespace variable"
            )


def test_alerts_are_complete_and_name_only_labels_they_keep() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
        kept = result_labels(promql_parser.parse(rule["expr"]))
        for text in rule["annotations"].values():
            used = set(re.findall(r"\$labels\.(\w+)", text))
            assert used <= kept, f"{rule['alert']}: annotations use {used - kept}, not kept"


def test_deploy_folder_ships_the_same_files() -> None:
    for name in ("grafana-dashboard.json", "prometheus-rules.yaml"):
        shipped = ROOT / "deploy" / "monitoring" / name
        assert shipped.read_bytes() == (ROOT / "helm" / "files" / name).read_bytes()


# ------------------------------------------------------------------ the alerts, run by promtool


PROMTOOL = find_tool("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="no promtool in .venv/bin or on PATH (bash deploy/install.sh --dev takes it and "
    "prometheus from the distribution's prometheus package)",
)
# One gateway and one worker, as Prometheus labels their targets.
GATEWAY = {"job": "gateway", "instance": "gw-1:8000", "namespace": "rl"}
WORKER = {"job": "workers", "instance": "wk-1:9100", "namespace": "rl"}


def series(name: str, target: dict[str, str], values: str, **labels: str) -> dict[str, str]:
    selector = ", ".join(f'{k}="{v}"' for k, v in {**target, **labels}.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def build_info(target: dict[str, str], role: str, minutes: int) -> dict[str, str]:
    return series("reward_service_build_info", target, f"1x{minutes}", role=role, version="0")


def expected(alert: str, labels: dict[str, str], summary: str) -> dict[str, Any]:
    """An alert as promtool expects it: its labels, and its annotations with the summary
    rendered (the descriptions hold no templates)."""
    (rule,) = [r for r in rules() if r["alert"] == alert]
    return {
        "exp_labels": {**labels, **rule["labels"]},
        "exp_annotations": {**rule["annotations"], "summary": summary},
    }


def alert_cases() -> list[dict[str, Any]]:
    """promtool's test cases: each alert fires on the failure it is for, and not on what
    looks like it but is normal (a worker's own series, a domain scaled to zero with nothing
    to do, kills of samples past their budget)."""
    ns = {"namespace": "rl"}
    return [
        {
            "interval": "1m",
            "input_series": [
                series("reward_service_redis_up", GATEWAY, "1 1 0 0 0 0"),
                series("reward_service_redis_up", WORKER, "1 1 1 1 1 1"),
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "RewardServiceRedisDown", "exp_alerts": []},
                {
                    "eval_time": "4m",
                    "alertname": "RewardServiceRedisDown",
                    "exp_alerts": [
                        expected("RewardServiceRedisDown", GATEWAY, "gw-1:8000 cannot reach Redis")
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                # Two gateways report the same Redis; code has jobs and no worker, math none.
                *(
                    series(metric, {**GATEWAY, "instance": instance}, values, domain=domain)
                    for instance in ("gw-1:8000", "gw-2:8000")
                    for metric, domain, values in (
                        ("reward_service_workers_live", "code", "1 0x9"),
                        ("reward_service_stream_length", "code", "0 40x9"),
                        ("reward_service_workers_live", "math", "0x9"),
                        ("reward_service_stream_length", "math", "0x9"),
                    )
                )
            ],
            "alert_rule_test": [
                {
                    "eval_time": "5m",
                    "alertname": "RewardServiceNoWorkers",
                    "exp_alerts": [
                        expected(
                            "RewardServiceNoWorkers",
                            {**ns, "domain": "code"},
                            "code jobs wait and no code worker is alive",
                        )
                    ],
                }
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                build_info(GATEWAY, "gateway", 12),
                build_info(WORKER, "worker", 12),
                # math: 10% error at the gateway. code: errors only in the worker's counts
                # (what it scored), none answered to clients: no alert.
                *(
                    series("reward_service_requests_total", target, values, domain=d, status=s)
                    for target, d, s, values in (
                        (GATEWAY, "math", "ok", "0+90x12"),
                        (GATEWAY, "math", "error", "0+10x12"),
                        (GATEWAY, "code", "ok", "0+50x12"),
                        (WORKER, "code", "error", "0+50x12"),
                    )
                ),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "11m",
                    "alertname": "RewardServiceErrorShare",
                    "exp_alerts": [
                        expected(
                            "RewardServiceErrorShare",
                            {**ns, "domain": "math"},
                            "10% of math requests end error",
                        )
                    ],
                }
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                series(
                    "reward_service_dead_lettered_total",
                    WORKER,
                    "0 0 1 1 1",
                    domain="code",
                    reason="max_deliveries",
                ),
                series(
                    "reward_service_rejected_jobs_total",
                    WORKER,
                    "0 0 2 2 2",
                    domain="math",
                    reason="forged",
                ),
                series(
                    "reward_service_dropped_results_total",
                    GATEWAY,
                    "0+5x4",
                    reason="not_waited_for",
                ),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "3m",
                    "alertname": "RewardServiceDeadLetters",
                    "exp_alerts": [
                        expected(
                            "RewardServiceDeadLetters",
                            {**ns, "domain": "code", "reason": "max_deliveries"},
                            "code jobs dead-lettered (max_deliveries)",
                        )
                    ],
                },
                {
                    "eval_time": "3m",
                    "alertname": "RewardServiceForgedMessages",
                    "exp_alerts": [
                        expected(
                            "RewardServiceForgedMessages",
                            ns,
                            "Jobs or results on Redis whose signature does not verify",
                        )
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                series(
                    "reward_service_worker_restarts_total", WORKER, "0+10x10", reason="deadline"
                ),
                series("reward_service_worker_restarts_total", GATEWAY, "0+1x10", reason="crash"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "8m",
                    "alertname": "RewardServiceWorkerCrashes",
                    "exp_alerts": [
                        expected(
                            "RewardServiceWorkerCrashes",
                            GATEWAY,
                            "gw-1:8000 keeps replacing verifier processes that crash",
                        )
                    ],
                }
            ],
        },
    ]


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_each_alert_fires_on_its_failure_and_not_on_the_normal_case(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    cases = alert_cases()
    tested = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in rules()}, "every alert has a case"
    spec = tmp_path / "alerts-test.yaml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": cases})
    )
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------- the dashboard and alerts on a real Prometheus


PROMETHEUS = find_tool("prometheus")
SCRAPE_S = 1


class PrometheusServer:
    """A real ``prometheus`` scraping ``targets`` (job -> host:port) every second and
    evaluating the shipped rules, with its data in ``folder``."""

    def __init__(self, folder: Path, targets: dict[str, str]) -> None:
        assert PROMETHEUS is not None
        config = {
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(folder / "prometheus.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        response.raise_for_status()  # 503 while it starts
        reply = response.json()
        assert reply["status"] == "success", reply
        return reply["data"]

    def up(self) -> bool:
        try:
            targets = self.get("targets")["activeTargets"]
        except httpx.HTTPError:  # not listening yet, or not ready
            return False
        return bool(targets) and all(t["health"] == "up" for t in targets)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


@needs_redis
@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="no prometheus in .venv/bin or on PATH (bash deploy/install.sh --dev takes it from "
    "the distribution's prometheus package)",
)
def test_dashboard_and_alerts_on_a_real_prometheus(tmp_path: Path) -> None:
    """A gateway and a worker in distributed mode, scraped by a real Prometheus: every panel's
    query is accepted, the panels of a working service show its traffic (the joins on the
    role included), and a healthy service fires no alert."""
    redis_server = RedisServer(tmp_path).start()
    worker_port = free_port()
    worker = WorkerProcess(
        redis_server.url,
        "test_echo",
        extra=["--metrics-port", str(worker_port)],
        log_path=tmp_path / "worker.log",
    )
    try:
        wait_for_workers(redis_server.client(), "test_echo", 1)
        with distributed_server(redis_server.url) as server:
            gateway = httpx.URL(server.http_url)
            prometheus = PrometheusServer(
                tmp_path,
                {
                    "gateway": f"{gateway.host}:{gateway.port}",
                    "workers": f"127.0.0.1:{worker_port}",
                },
            )
            try:
                wait_for(prometheus.up, 30, "Prometheus scraping both targets", interval=0.5)
                with RewardClient(server.grpc_target) as client:
                    for round_ in range(8):  # traffic over several scrapes, for the rates
                        batch = [
                            {
                                "domain": "test_echo",
                                "response": f"{round_}/{i}",
                                "reference": {"reward": 0.5},
                            }
                            for i in range(20)
                        ]
                        assert {r.status for r in client.score_batch(batch)} == {"ok"}
                        time.sleep(SCRAPE_S)
                time.sleep(2 * SCRAPE_S)  # the last batch scraped
                answers = {}
                for where, expr in dashboard_queries(rate_interval="30s"):
                    answers[where] = prometheus.get("query", query=expr)["result"]
                alerts = prometheus.get("alerts")["alerts"]
                rule_health = {
                    rule["name"]: rule["health"]
                    for group in prometheus.get("rules")["groups"]
                    for rule in group["rules"]
                }
            finally:
                prometheus.close()
    finally:
        worker.close()
        redis_server.stop()
    showing = {where.split("'")[1] for where, result in answers.items() if result}
    for title in (
        "Requests/s by domain",
        "Requests/s by status",
        "Latency p50 by domain",
        "Redis reachable",
        "Live workers by domain",
        "Backlog by domain",
        "Results per post to Redis",
        "Scored/s by domain, on the workers",
        "Scoring time p99 by domain, on the workers",
        "Verifier processes",
    ):
        assert title in showing, f"panel {title!r} shows nothing for a working service"
    assert rule_health == dict.fromkeys(rule_health, "ok") and len(rule_health) == len(rules())
    assert alerts == [], f"a healthy service fires {alerts}"
