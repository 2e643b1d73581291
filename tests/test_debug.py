"""/debug against a running `tailsampler run`: what /debug/traces says of each trace agrees with what
the backend received; /debug/explain agrees with the live decisions and spends no rate budget; the
bearer token guards /debug when receivers.auth is set; dry_run forwards everything, annotated."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from otlp_backend import (
    OtlpBackend,
    Tailsampler,
    clean_env,
    http_request,
    wait_until,
    write_config,
)

from tests.spans import S, request, tid

POLICIES = """\
policies:
  - {name: noisy, type: drop, drop: {drop_sub_policy: [
      {name: health, type: string_attribute, string_attribute: {key: http.route, values: [/health]}}]}}
  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
  - {name: budget, type: rate_limiting, rate_limiting: {spans_per_second: 1, burst_capacity: 22}}
"""
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    started: list[Tailsampler] = []

    def run(backend: OtlpBackend | None, policies: str, replace: dict[str, str] | None = None,
            extra: str = "", env: dict[str, str] | None = None) -> Tailsampler:
        workdir = tmp_path / f"ts{len(started)}"
        workdir.mkdir()
        path, ports = write_config(workdir, backend.endpoint if backend else None, policies, "2s", extra)
        text = path.read_text()
        for old, new in (replace or {}).items():
            assert old in text
            text = text.replace(old, new)
        path.write_text(text)
        import sys

        ts = Tailsampler([sys.executable, "-m", "sampler", "run", "--config", str(path)], workdir, clean_env(env),
                         admin_port=ports["admin"], grpc_port=ports["grpc"], http_port=ports["http"])
        started.append(ts)
        return ts.start()

    yield run
    for ts in started:
        ts.stop()


def _get(ts: Tailsampler, path: str, headers: dict[str, str] | None = None) -> object:
    resp = http_request(ts.admin_url + path, headers={"Accept": "application/json", **(headers or {})})
    assert resp.status == 200, (resp.status, resp.body)
    return json.loads(resp.body)


def _explain(ts: Tailsampler, body: bytes, headers: dict[str, str] | None = None) -> list[dict[str, object]]:
    resp = http_request(ts.admin_url + "/debug/explain", data=body, headers={**PROTOBUF, **(headers or {})},
                        method="POST")
    assert resp.status == 200, (resp.status, resp.body)
    out = json.loads(resp.body)
    assert isinstance(out, list)
    return out


def _send(ts: Tailsampler, body: bytes) -> None:
    assert http_request(ts.http_url, data=body, headers=PROTOBUF, method="POST").status == 200


HEALTH = [S(1, 1, name="GET /health", status=2, attrs={"http.route": "/health"}, service="web")]
ERROR = [S(2, 10, name="POST /pay", status=2, service="api"), S(2, 11, parent=10, service="db")]
LARGE = [S(3, 100 + i, parent=None if i == 0 else 100, status=2 if i == 5 else 0, name="GET /big")
         for i in range(60)]
PLAIN = [[S(n, 1000 * n + i, parent=None if i == 0 else 1000 * n, name="GET /plain") for i in range(10)]
         for n in (4, 5, 6)]


def test_debug_agrees_with_what_was_exported_and_explain_spends_nothing(
        start: object, otlp_backend: OtlpBackend) -> None:
    ts = start(otlp_backend, POLICIES, {"max_trace_age: 30s": "max_trace_age: 30s, max_spans_per_trace: 50"})  # type: ignore[operator]
    _send(ts, request(HEALTH))
    _send(ts, request(ERROR))
    # buffered: the policies' answer now, changing nothing
    buffered = _get(ts, f"/debug/traces/{tid(2).hex()}")
    assert buffered == {"trace_id": tid(2).hex(), "state": "buffered", "decision": "keep", "reason": None,
                        "policy": "errors", "votes": {"noisy": "not_sampled", "errors": "sampled", "budget": "sampled"},
                        "spans": 2, "root": {"service": "api", "name": "POST /pay"}}
    # 1,000 explains of a 10-span trace the budget (22 spans, 2 spent on trace 2) admits: none spends it
    probe = request([S(99, 9000 + i, parent=None if i == 0 else 9000) for i in range(10)])
    for _ in range(1000):
        (one,) = _explain(ts, probe)
        assert one["decision"] == "keep" and one["policy"] == "budget"
    _send(ts, request(LARGE))  # past max_spans_per_trace: decided at once
    _send(ts, request([s for trace in PLAIN for s in trace]))  # two fit the budget's 20 spans, the third not
    assert _get(ts, f"/debug/traces/{tid(3).hex()}")["reason"] == "trace_limit"  # type: ignore[index]
    decided = {tid(n).hex() for n in range(1, 7)}
    assert wait_until(lambda: all(_get(ts, f"/debug/traces/{t}")["state"] in ("kept", "dropped")  # type: ignore[index]
                                  for t in decided), 15)
    kept_ids = {tid(n).hex() for n in (2, 3)}
    assert otlp_backend.wait_for(lambda spans: {s.trace_id for s in spans} >= kept_ids, 10)
    # every kept span delivered (so a dropped trace's span, were one sent, would be here by now)
    assert wait_until(lambda: ts.metric("tailsampler_spans_exported_total") == 2 + 60 + 20, 10), ts.metrics()
    received = {s.trace_id: s for s in otlp_backend.spans}
    states = {}
    for t in sorted(decided):
        doc = _get(ts, f"/debug/traces/{t}")
        assert isinstance(doc, dict)
        states[t] = doc
        if doc["state"] == "kept":
            assert t in received, doc
            assert received[t].attributes["tailsampling.policy"] == doc["policy"]
        else:
            assert t not in received, doc
    assert states[tid(1).hex()]["policy"] == "noisy"
    assert states[tid(1).hex()]["votes"] == {"noisy": "dropped"}  # a veto: nobody after it was asked
    assert states[tid(2).hex()]["state"] == "kept" and states[tid(2).hex()]["reason"] == "quiet"
    assert states[tid(3).hex()]["state"] == "kept" and states[tid(3).hex()]["spans"] == 60
    plain = [states[tid(n).hex()] for n in (4, 5, 6)]
    # the live traffic was admitted at the full rate: the explains spent nothing
    assert sorted(d["state"] for d in plain) == ["dropped", "kept", "kept"], plain
    for d in plain:
        want = "sampled" if d["state"] == "kept" else "not_sampled"
        assert d["votes"] == {"noisy": "not_sampled", "errors": "not_sampled", "budget": want}
        assert d["policy"] == ("budget" if d["state"] == "kept" else None)
    assert len(otlp_backend.spans) == 2 + 60 + 20
    # explain on the same traces: the same decisions for every rule, one object per trace
    explained = _explain(ts, request(HEALTH + ERROR + LARGE))
    assert [(e["trace_id"], e["decision"], e["policy"]) for e in explained] == [
        (tid(1).hex(), "drop", "noisy"), (tid(2).hex(), "keep", "errors"), (tid(3).hex(), "keep", "errors")]
    # OTLP/JSON too
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
                              "scopeSpans": [{"spans": [{"traceId": tid(7).hex(), "spanId": "0102030405060708",
                                                         "name": "GET /health", "attributes": [
                                                             {"key": "http.route",
                                                              "value": {"stringValue": "/health"}}]}]}]}]}
    resp = http_request(ts.admin_url + "/debug/explain", data=json.dumps(doc).encode(),
                        headers={"Content-Type": "application/json"}, method="POST")
    assert resp.status == 200, resp.body
    assert [(e["trace_id"], e["state"], e["policy"]) for e in json.loads(resp.body)] == \
        [(tid(7).hex(), "dropped", "noisy")]
    # nothing explained was buffered or exported
    assert _get(ts, f"/debug/traces/{tid(99).hex()}")["state"] == "unknown"  # type: ignore[index]
    assert _get(ts, f"/debug/traces/{tid(7).hex()}")["state"] == "unknown"  # type: ignore[index]
    # the decisions list, filtered
    drops = _get(ts, "/debug/decisions?decision=drop")
    assert {d["trace_id"] for d in drops} == {tid(1).hex()} | {d["trace_id"] for d in plain if d["state"] == "dropped"}
    # newest first: trace 3 was decided at once (trace_limit), trace 2 when quiet, after it
    assert [d["trace_id"] for d in _get(ts, "/debug/decisions?policy=errors")] == [tid(2).hex(), tid(3).hex()]
    assert [d["trace_id"] for d in _get(ts, "/debug/decisions?service=web&limit=5")] == [tid(1).hex()]
    summary = _get(ts, "/debug/summary")
    assert {p["policy"]: p["kept_alone"] for p in summary["policies"]}["budget"] == 2  # type: ignore[index]
    assert http_request(ts.admin_url + "/debug/traces/xyz").status == 400
    page = http_request(ts.admin_url + "/debug/decisions", headers={"Accept": "text/html"})
    assert page.status == 200 and page.content_type == "text/html" and b'href="/graph"' in page.body
    metrics = ts.metrics()
    assert 'tailsampler_memory_bytes{component="recent_decisions"}' in metrics


INVERTED = """\
policies:
  - {name: not_health, type: string_attribute,
     string_attribute: {key: http.route, values: [/health], invert_match: true}}
"""


def test_evicted_and_max_age_decisions_and_inverted_votes_agree_with_the_export(
        start: object, otlp_backend: OtlpBackend) -> None:
    """Through running processes: a trace decided early to make room (evicted) with an inverted
    match's veto, one decided when quiet, and one at max_trace_age; /debug says what the backend saw."""
    full = start(otlp_backend, INVERTED,  # type: ignore[operator]
                 {"max_trace_age: 30s": "max_trace_age: 30s, max_traces: 2, min_eviction_age: 0s"})
    health = S(21, 1, name="GET /health", attrs={"http.route": "/health"})
    _send(full, request([health]))
    _send(full, request([S(22, 2, attrs={"http.route": "/pay"})]))
    _send(full, request([S(23, 3, attrs={"http.route": "/pay"})]))  # a third trace: the oldest is evicted
    evicted = _get(full, f"/debug/traces/{tid(21).hex()}")
    assert evicted == {"trace_id": tid(21).hex(), "state": "dropped", "reason": "evicted", "policy": None,
                       "votes": {"not_health": "inverted_not_sampled"}, "spans": 1,
                       "root": {"service": "svc", "name": "GET /health"}, "time": evicted["time"]}  # type: ignore[index]
    assert wait_until(lambda: all(_get(full, f"/debug/traces/{tid(n).hex()}")["state"] == "kept"  # type: ignore[index]
                                  for n in (22, 23)), 15)
    assert otlp_backend.wait_for(lambda spans: {s.trace_id for s in spans} >= {tid(22).hex(), tid(23).hex()}, 10)
    for n in (22, 23):
        doc = _get(full, f"/debug/traces/{tid(n).hex()}")
        assert doc["reason"] == "quiet" and doc["votes"] == {"not_health": "sampled"}  # type: ignore[index]
    assert wait_until(lambda: full.metric("tailsampler_spans_exported_total") == 2, 10)
    assert tid(21).hex() not in {s.trace_id for s in otlp_backend.spans}

    aged = start(otlp_backend, INVERTED,  # type: ignore[operator]
                 {"decision_wait: 2s, max_trace_age: 30s": "decision_wait: 30s, max_trace_age: 1s"})
    _send(aged, request([S(24, 4, attrs={"http.route": "/orders"})]))
    assert wait_until(lambda: _get(aged, f"/debug/traces/{tid(24).hex()}")["state"] == "kept", 10)  # type: ignore[index]
    doc = _get(aged, f"/debug/traces/{tid(24).hex()}")
    assert doc["reason"] == "max_age" and doc["policy"] == "not_health"  # type: ignore[index]
    assert otlp_backend.wait_for(lambda spans: tid(24).hex() in {s.trace_id for s in spans}, 10)
    received = next(s for s in otlp_backend.spans if s.trace_id == tid(24).hex())
    assert received.attributes["tailsampling.policy"] == "not_health"


def test_debug_needs_the_bearer_token_when_receivers_have_auth(start: object, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    ts = start(None, POLICIES, extra=f"receivers:\n  auth: {{bearer_token_file: {str(token)!r}}}\n")  # type: ignore[operator]
    for method, path, body in (("GET", "/debug/decisions", None), ("GET", f"/debug/traces/{tid(1).hex()}", None),
                               ("GET", "/debug/summary", None), ("POST", "/debug/explain", request(ERROR))):
        refused = http_request(ts.admin_url + path, data=body, headers=PROTOBUF, method=method)
        assert refused.status == 401, path
        wrong = http_request(ts.admin_url + path, data=body, method=method,
                             headers={**PROTOBUF, "Authorization": "Bearer nope"})
        assert wrong.status == 401, path
        ok = http_request(ts.admin_url + path, data=body, method=method,
                          headers={**PROTOBUF, "Authorization": "Bearer s3cret"})
        assert ok.status == 200, (path, ok.body)
    assert http_request(ts.admin_url + "/metrics").status == 200  # the rest of the admin port is as it was


def test_dry_run_forwards_every_trace_with_its_decision(start: object, otlp_backend: OtlpBackend) -> None:
    policies = """\
policies:
  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
  - {name: tenth, type: probabilistic, probabilistic: {sampling_percentage: 10}}
"""
    ts = start(otlp_backend, policies, extra="dry_run: true\n")  # type: ignore[operator]
    traces = [[S(n, 10 * n + i, parent=None if i == 0 else 10 * n, status=2 if n % 4 == 0 and i == 1 else 0)
               for i in range(3)] for n in range(1, 41)]
    _send(ts, request([s for t in traces for s in t]))
    assert otlp_backend.wait_for(lambda spans: len(spans) >= 120, 15)
    assert wait_until(lambda: ts.metric("tailsampler_spans_exported_total") == 120, 10), ts.metrics()
    spans = otlp_backend.spans
    assert len(spans) == 120 and len({(s.trace_id, s.span_id) for s in spans}) == 120  # every span, once
    by_trace: dict[str, set[tuple[str, str]]] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, set()).add((s.attributes["tailsampling.decision"],
                                                    s.attributes.get("tailsampling.policy", "")))
    kept = 0
    for n in range(1, 41):
        doc = _get(ts, f"/debug/traces/{tid(n).hex()}")
        assert isinstance(doc, dict)
        (decision,) = by_trace[tid(n).hex()]  # one decision for all its spans
        assert decision[0] == ("keep" if doc["state"] == "kept" else "drop"), (n, doc)
        if n % 4 == 0:
            assert decision == ("keep", "errors")
        kept += doc["state"] == "kept"
    assert 10 <= kept < 40  # some dropped, by the policies; all forwarded all the same
    metrics = ts.metrics()
    from otlp_backend import metric_value

    real_drops = metric_value(metrics, "tailsampler_traces_decided_total", {"decision": "drop", "policy": ""})
    assert real_drops == 40 - kept
