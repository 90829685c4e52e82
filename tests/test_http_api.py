"""The HTTP API over real HTTP on loopback: scoring, bad input of every kind, probes."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import ServerThread


@pytest.fixture(scope="module")
def http(server: ServerThread) -> httpx.Client:
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


def test_score_returns_the_verifiers_reward(http: httpx.Client) -> None:
    reply = http.post(
        "/v1/score",
        json={"id": "a1", "domain": "test_echo", "response": "abc", "reference": {"reward": 0.25}},
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["id"] == "a1" and body["reward"] == 0.25 and body["status"] == "ok"
    assert body["metrics"]["length"] == 3


def test_generated_id_when_none_given(http: httpx.Client) -> None:
    body = http.post("/v1/score", json={"domain": "test_echo", "response": ""}).json()
    assert len(body["id"]) == 32


def test_batch_results_come_in_request_order(http: httpx.Client) -> None:
    requests = [
        {"id": str(i), "domain": "test_echo", "response": "x", "reference": {"reward": i / 10}}
        for i in range(10)
    ]
    results = http.post("/v1/score/batch", json={"requests": requests}).json()["results"]
    assert [r["id"] for r in results] == [str(i) for i in range(10)]
    assert [r["reward"] for r in results] == [i / 10 for i in range(10)]


@pytest.mark.parametrize(
    ("body", "expected_detail"),
    [
        ({"domain": "nope", "response": "x"}, "unknown domain 'nope'"),
        (
            {"domain": "math", "response": "x", "reference": {}},
            "reference.ground_truth: Field required",
        ),
        (
            {"domain": "math", "response": "x", "reference": {"ground_truth": 3}},
            "reference.ground_truth",
        ),
        (
            {"domain": "math", "response": "x", "reference": {"ground_truth": "1", "extra": 1}},
            "reference.extra: Extra inputs are not permitted",
        ),
        ({"domain": "test_echo", "response": 5}, "response: Input should be a valid string"),
        ({"domain": "test_echo"}, "response: Field required"),
        ({"response": "x"}, "domain: Field required"),
        (
            {"domain": "test_echo", "response": "x", "reference": []},
            "reference: Input should be a valid dictionary",
        ),
        (
            {"domain": "test_echo", "response": "x", "options": {"timeout_s": 0}},
            "options.timeout_s: Input should be greater than 0",
        ),
        (
            {"domain": "test_echo", "response": "x", "options": {"bogus": 1}},
            "options.bogus: Extra inputs",
        ),
        ({"domain": "test_echo", "response": "x", "truncated": "maybe"}, "truncated"),
        ({"domain": "test_echo", "response": "x", "surprise": 1}, "surprise: Extra inputs"),
    ],
)
def test_invalid_requests_get_400_with_what_is_wrong(
    http: httpx.Client, body: dict, expected_detail: str
) -> None:
    reply = http.post("/v1/score", json=body)
    assert reply.status_code == 400
    result = reply.json()
    assert result["status"] == "invalid" and result["reward"] == 0.0
    assert expected_detail in result["detail"]


def test_malformed_json(http: httpx.Client) -> None:
    reply = http.post(
        "/v1/score", content=b'{"domain": "math",', headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json()["detail"].startswith("malformed JSON")


def test_body_that_is_not_json(http: httpx.Client) -> None:
    reply = http.post("/v1/score", content=b"domain=math", headers={"content-type": "text/plain"})
    assert reply.status_code == 400
    assert "expected a JSON body" in reply.json()["detail"]


def test_oversized_payload_is_refused_with_413(http: httpx.Client) -> None:
    body = {"domain": "test_echo", "response": "x" * (70 * 1024)}
    reply = http.post("/v1/score", json=body)
    assert reply.status_code == 413
    assert "above the limit of 65536 (max_request_bytes)" in reply.json()["detail"]


def test_oversized_chunked_payload_is_refused(http: httpx.Client) -> None:
    payload = json.dumps({"domain": "test_echo", "response": "x" * (70 * 1024)}).encode()

    def chunks():
        for start in range(0, len(payload), 8192):
            yield payload[start : start + 8192]

    reply = http.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
    assert reply.status_code == 413


@pytest.mark.parametrize("header", ["nan", "soon", "-1", "0", "inf"])
@pytest.mark.parametrize("path", ["/v1/score", "/v1/score/batch"])
def test_malformed_request_timeout_header_is_invalid(
    http: httpx.Client, path: str, header: str
) -> None:
    item = {"id": "t", "domain": "test_echo", "response": "x"}
    body = item if path == "/v1/score" else {"requests": [item]}
    reply = http.post(path, json=body, headers={"X-Request-Timeout": header})
    assert reply.status_code == 400
    assert reply.json()["status"] == "invalid"
    assert (
        f"X-Request-Timeout must be a positive number of seconds, got {header!r}"
        == (reply.json()["detail"])
    )


def test_request_timeout_header_bounds_the_sample(http: httpx.Client) -> None:
    body = {"domain": "test_sleep", "response": "", "reference": {"seconds": 5}}
    reply = http.post("/v1/score", json=body, headers={"X-Request-Timeout": "0.3"})
    assert reply.status_code == 200 and reply.json()["status"] == "timeout"
    assert reply.elapsed.total_seconds() < 2


def test_empty_and_oversized_batches(http: httpx.Client) -> None:
    empty = http.post("/v1/score/batch", json={"requests": []})
    assert empty.status_code == 400 and empty.json()["detail"] == "batch is empty"
    many = [{"domain": "test_echo", "response": ""}] * 513
    too_many = http.post("/v1/score/batch", json={"requests": many})
    assert too_many.status_code == 400
    assert "above the limit of 512 (max_batch_size)" in too_many.json()["detail"]
    not_a_list = http.post("/v1/score/batch", json={"requests": "all of them"})
    assert not_a_list.status_code == 400 and "requests" in not_a_list.json()["detail"]


def test_bad_items_in_a_batch_do_not_spoil_the_others(http: httpx.Client) -> None:
    requests = [
        {"id": "good", "domain": "test_echo", "response": "x", "reference": {"reward": 1.0}},
        {"id": "bad-domain", "domain": "nope", "response": "x"},
        {"id": "bad-type", "domain": "test_echo", "response": ["x"]},
        "not even an object",
    ]
    results = http.post("/v1/score/batch", json={"requests": requests}).json()["results"]
    assert [r["status"] for r in results] == ["ok", "invalid", "invalid", "invalid"]
    assert [r["id"] for r in results] == ["good", "bad-domain", "bad-type", ""]
    assert "requests[2].response" in results[2]["detail"]
    assert "requests[3]: Input should be a valid dictionary" in results[3]["detail"]


def test_probes_metrics_domains_and_docs(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"status": "ready"}
    http.post("/v1/score", json={"domain": "test_echo", "response": "x"})
    metrics = http.get("/metrics").text
    assert 'reward_service_requests_total{domain="test_echo",status="ok"}' in metrics
    assert "reward_service_request_duration_seconds_bucket" in metrics
    assert "reward_service_inflight_requests" in metrics
    assert "reward_service_workers_ready 2.0" in metrics
    domains = {d["name"]: d for d in http.get("/v1/domains").json()["domains"]}
    assert "math" in domains and "test_echo" in domains
    assert "ground_truth" in domains["math"]["reference_schema"]["properties"]
    assert http.get("/docs").status_code == 200
    assert "/v1/score" in http.get("/openapi.json").json()["paths"]


def test_openrlhf_compatible_route(http: httpx.Client) -> None:
    body = {
        "query": ["Q: 1+1? A: \\boxed{2}", "Q: 2+2? A: \\boxed{5}", "Q: echo"],
        "prompts": ["Q: 1+1? A:", "Q: 2+2? A:", "Q:"],
        "labels": ["2", "4", json.dumps({"domain": "test_echo", "reference": {"reward": 0.5}})],
    }
    reply = http.post("/get_reward", json=body).json()
    assert reply["rewards"] == [1.0, 0.0, 0.5]
    assert reply["scores"] == reply["rewards"]
    assert reply["extra_logs"]["valid"] == [1.0, 1.0, 1.0]
    too_many = http.post("/get_reward", json={"query": ["x"] * 513, "labels": ["1"] * 513})
    assert too_many.status_code == 400 and "max_batch_size" in too_many.json()["detail"]
    mismatch = http.post("/get_reward", json={"query": ["a"], "labels": []})
    assert mismatch.status_code == 400
