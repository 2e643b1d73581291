"""Malformed input against a real `tailsampler run` subprocess: every bad request gets a clear
refusal (gRPC INVALID_ARGUMENT, HTTP 400/415) and the receivers keep serving valid requests."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from otlp_backend import (
    EXPORT_METHOD,
    GRPC_OPTIONS,
    HttpResult,
    OtlpBackend,
    Tailsampler,
    http_request,
    running_backend,
    start_tailsampler,
)

POLICIES = "policies:\n  - {name: errors, type: errors, errors: {}}\n"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def make_request(n_spans: int = 3, trace_id: bytes | None = None) -> ExportTraceServiceRequest:
    trace_id = trace_id if trace_id is not None else os.urandom(16)
    spans = [
        Span(trace_id=trace_id, span_id=os.urandom(8), name=f"op{i}", kind=Span.SPAN_KIND_SERVER,
             start_time_unix_nano=1_700_000_000_000_000_000 + i, end_time_unix_nano=1_700_000_000_100_000_000)
        for i in range(n_spans)
    ]
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="malformed-test"))])
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
    )


def otlp_json(n_spans: int = 2, trace_id: str | None = None) -> bytes:
    """An OTLP/JSON request as the OTLP spec defines it: hex ids, enums as integers, int64 as strings."""
    trace_id = trace_id if trace_id is not None else os.urandom(16).hex()
    spans = [
        {"traceId": trace_id, "spanId": os.urandom(8).hex(), "name": f"json-op{i}", "kind": 2,
         "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000050000000",
         "attributes": [{"key": "http.response.status_code", "value": {"intValue": "200"}}],
         "status": {"code": 0}}
        for i in range(n_spans)
    ]
    doc = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
        "scopeSpans": [{"scope": {"name": "tests"}, "spans": spans}],
    }]}
    return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def backend() -> Iterator[OtlpBackend]:
    with running_backend() as b:
        yield b


@pytest.fixture(scope="module")
def ts(tmp_path_factory: pytest.TempPathFactory, backend: OtlpBackend) -> Iterator[Tailsampler]:
    proc = start_tailsampler(tmp_path_factory.mktemp("malformed"), backend.endpoint, POLICIES, decision_wait="1s")
    try:
        yield proc
    finally:
        stopped = proc.stop()
    assert stopped.code == 0, stopped.stderr


@pytest.fixture
def export(ts: Tailsampler) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    """A generic Export call that sends and returns raw bytes."""
    channel = grpc.insecure_channel(ts.grpc_target, options=GRPC_OPTIONS)
    try:
        yield channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
    finally:
        channel.close()


def received(ts: Tailsampler, protocol: str) -> float:
    value = ts.metric("tailsampler_spans_received_total", {"protocol": protocol})
    assert value is not None
    return value


def post(ts: Tailsampler, body: bytes, content_type: str, encoding: str | None = None) -> HttpResult:
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    return http_request(ts.http_url, data=body, headers=headers, method="POST")


# --- gRPC ----------------------------------------------------------------------------------------


def _truncated() -> bytes:
    return make_request(3).SerializeToString()[:-7]


def _short_trace_id() -> bytes:
    return make_request(1, trace_id=b"\x01\x02\x03").SerializeToString()


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(b"\xff\xfe\xfd this is not protobuf \x00\x01", "malformed OTLP trace request", id="garbage"),
        pytest.param(_truncated(), "runs past the end", id="truncated"),
        pytest.param(_short_trace_id(), "trace_id has 3 bytes, want 16", id="trace_id-3-bytes"),
    ],
)
def test_grpc_malformed_is_invalid_argument_then_valid_succeeds(
    ts: Tailsampler, export: grpc.UnaryUnaryMultiCallable, body: bytes, detail: str
) -> None:
    before = received(ts, "grpc")
    with pytest.raises(grpc.RpcError) as info:
        export(body, timeout=5)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (err.details() or ""), err.details()
    assert received(ts, "grpc") == before, "spans of a refused request were counted"

    valid = make_request(4).SerializeToString()
    assert export(valid, timeout=5) == b""  # an empty ExportTraceServiceResponse: full success
    assert received(ts, "grpc") == before + 4


def test_grpc_refusals_are_counted(ts: Tailsampler, export: grpc.UnaryUnaryMultiCallable) -> None:
    labels = {"protocol": "grpc", "reason": "malformed"}
    before = ts.metric("tailsampler_requests_refused_total", labels) or 0
    with pytest.raises(grpc.RpcError):
        export(b"\x0a\x05\x01", timeout=5)
    assert ts.metric("tailsampler_requests_refused_total", labels) == before + 1


# --- HTTP ----------------------------------------------------------------------------------------


def _status(resp: HttpResult) -> status_pb2.Status:
    assert resp.content_type == PROTOBUF, resp
    return status_pb2.Status.FromString(resp.body)


def test_http_garbage_protobuf_is_400(ts: Tailsampler) -> None:
    before = received(ts, "http")
    resp = post(ts, b"\xff\xfe\xfd not protobuf at all", PROTOBUF)
    assert resp.status == 400, resp
    status = _status(resp)
    assert status.code == 3  # INVALID_ARGUMENT
    assert "malformed OTLP trace request" in status.message
    assert received(ts, "http") == before


def test_http_wrong_content_type_is_415(ts: Tailsampler) -> None:
    resp = post(ts, make_request(1).SerializeToString(), "text/plain")
    assert resp.status == 415, resp
    assert "Content-Type" in _status(resp).message


def test_http_truncated_gzip_is_400(ts: Tailsampler) -> None:
    before = received(ts, "http")
    body = gzip.compress(make_request(3).SerializeToString())[:-10]
    resp = post(ts, body, PROTOBUF, encoding="gzip")
    assert resp.status == 400, resp
    assert "gzip" in _status(resp).message
    assert received(ts, "http") == before


def test_http_json_bad_hex_trace_id_is_400_with_json_body(ts: Tailsampler) -> None:
    resp = post(ts, otlp_json(1, trace_id="zz" * 16), JSON)
    assert resp.status == 400, resp
    assert resp.content_type == JSON
    body = json.loads(resp.body)
    assert body["code"] == 3
    assert "traceId" in body["message"]


def test_http_invalid_json_is_400(ts: Tailsampler) -> None:
    resp = post(ts, b'{"resourceSpans": [', JSON)
    assert resp.status == 400, resp
    assert resp.content_type == JSON
    assert "invalid JSON" in json.loads(resp.body)["message"]


def test_http_valid_json_is_200_json(ts: Tailsampler) -> None:
    before = received(ts, "http")
    resp = post(ts, otlp_json(2), JSON)
    assert resp.status == 200, resp
    assert resp.content_type == JSON
    assert json.loads(resp.body) == {}
    assert received(ts, "http") == before + 2


def test_http_valid_gzip_protobuf_is_200_protobuf(ts: Tailsampler) -> None:
    before = received(ts, "http")
    resp = post(ts, gzip.compress(make_request(5).SerializeToString()), PROTOBUF, encoding="gzip")
    assert resp.status == 200, resp
    assert resp.content_type == PROTOBUF
    assert received(ts, "http") == before + 5


def test_http_valid_after_a_burst_of_bad_requests(ts: Tailsampler) -> None:
    valid = make_request(3).SerializeToString()
    bad: list[tuple[bytes, str, str | None, int]] = [
        (b"\x0a\xff\xff\xff\xff\x0f", PROTOBUF, None, 400),
        (valid, "text/plain", None, 415),
        (gzip.compress(valid)[:-10], PROTOBUF, "gzip", 400),
        (b"not gzip at all", PROTOBUF, "gzip", 400),
        (otlp_json(1, trace_id="zz" * 16), JSON, None, 400),
        (b"{", JSON, None, 400),
        (b"[1, 2]", JSON, None, 400),
        (valid, PROTOBUF, "br", 415),
    ]
    before = received(ts, "http")
    for body, ctype, encoding, want in bad:
        resp = post(ts, body, ctype, encoding)
        assert resp.status == want, (ctype, encoding, body[:20], resp)
    assert received(ts, "http") == before
    for _ in range(3):
        assert post(ts, valid, PROTOBUF).status == 200
        assert post(ts, otlp_json(2), JSON).status == 200
    assert received(ts, "http") == before + 3 * (3 + 2)
    refused = ts.metric("tailsampler_requests_refused_total", {"protocol": "http", "reason": "malformed"})
    assert refused is not None and refused >= 6
