"""The wire walker against protobuf's own parser (upb): same spans, same fields, and it refuses
whatever upb refuses (plus ids of the wrong length, which the Collector also refuses)."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sampler.otlp.wire import SpanFields, WireError, walk_request
from sampler.tools.demo import build_template
from tests.spans import S, kv, request

KEYS = frozenset({"service.name", "http.route", "http.response.status_code", "app.cache_hit", "ratio"})


def upb_spans(data: bytes) -> list[tuple[Span, dict[str, object]]]:
    """Each span with its resource's attributes, as upb parses them."""
    msg = ExportTraceServiceRequest.FromString(data)
    out = []
    for rs in msg.resource_spans:
        rattrs = {a.key: a.value for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for span in ss.spans:
                out.append((span, rattrs))
    return out


def _primitive(value: object) -> object:
    which = value.WhichOneof("value")  # type: ignore[attr-defined]
    if which in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, which)
    return None


def _nan_safe(attrs: dict[str, object]) -> dict[str, object]:
    """NaN is a valid double attribute but never equals itself."""
    return {k: "NaN" if isinstance(v, float) and v != v else v for k, v in attrs.items()}


def assert_same(walked: list[SpanFields], parsed: list[tuple[Span, dict[str, object]]]) -> None:
    assert len(walked) == len(parsed)
    for w, (p, rattrs) in zip(walked, parsed, strict=True):
        assert Span.FromString(w.data) == p
        assert w.trace_id == p.trace_id
        assert w.is_root == (len(p.parent_span_id) == 0)
        assert (w.name, w.kind, w.start, w.end, w.status) == (
            p.name, p.kind, p.start_time_unix_nano, p.end_time_unix_nano, p.status.code)
        assert (w.flags, w.trace_state) == (p.flags, p.trace_state)
        expected = {}
        for a in p.attributes:
            value = _primitive(a.value)
            if a.key in KEYS and value is not None:
                expected[a.key] = value
        assert _nan_safe(w.attrs or {}) == _nan_safe(expected)
        service = _primitive(rattrs["service.name"]) if "service.name" in rattrs else ""
        assert w.group.service == (service if isinstance(service, str) else "")


def ids_valid(data: bytes) -> bool:
    for span, _ in upb_spans(data):
        if len(span.trace_id) != 16 or len(span.span_id) != 8 or len(span.parent_span_id) not in (0, 8):
            return False
    return True


def test_realistic_requests_match_upb() -> None:
    rng = random.Random(3)
    for _ in range(3):
        data = build_template(rng, spans_per_request=128).stamp(rng)
        assert_same(walk_request(data, KEYS), upb_spans(data))


def test_span_bytes_are_slices_that_reserialize_identically() -> None:
    data = request([S(1, 1, attrs={"http.route": "/a", "ratio": 0.5}), S(1, 2, parent=1), S(2, 3)])
    spans = walk_request(data, KEYS)
    assert [s.data for s in spans] == [p.SerializeToString() for p, _ in upb_spans(data)]
    assert spans[0].attrs == {"http.route": "/a", "ratio": 0.5}


def test_empty_request_has_no_spans() -> None:
    assert walk_request(b"", KEYS) == []


@pytest.mark.parametrize(
    ("span", "message"),
    [
        (Span(trace_id=b"abc", span_id=b"12345678"), "trace_id has 3 bytes"),
        (Span(trace_id=b"a" * 16, span_id=b"1234"), "span_id has 4 bytes"),
        (Span(trace_id=b"a" * 16, span_id=b"12345678", parent_span_id=b"1"), "parent_span_id"),
        (Span(span_id=b"12345678"), "no trace_id"),
    ],
)
def test_bad_ids_are_refused(span: Span, message: str) -> None:
    msg = ExportTraceServiceRequest()
    msg.resource_spans.add().scope_spans.add().spans.append(span)
    with pytest.raises(WireError, match=message):
        walk_request(msg.SerializeToString(), KEYS)


def test_invalid_utf8_in_a_skipped_string_is_refused() -> None:
    good = request([S(1, 1, attrs={"other": "xyzzy"})])
    bad = good.replace(b"xyzzy", b"xy\xffzy")
    with pytest.raises(DecodeError):
        ExportTraceServiceRequest.FromString(bad)
    with pytest.raises(WireError, match="UTF-8"):
        walk_request(bad, KEYS)


SEEDS = [
    request([S(1, 1, attrs={"http.route": "/x", "n": 3}), S(1, 2, parent=1, status=2), S(2, 3, service="b")]),
    request([S(5, 1, attrs={"app.cache_hit": True, "ratio": 1.5})], resource={"k8s.pod": "p"}),
]


def differential(data: bytes) -> None:
    """What upb refuses, the walker refuses; what upb accepts (with valid ids), the walker
    accepts with the same spans and fields."""
    try:
        parsed = upb_spans(data)
    except DecodeError:
        with pytest.raises(WireError):
            walk_request(data, KEYS)
        return
    if not ids_valid(data):
        with pytest.raises(WireError):
            walk_request(data, KEYS)
        return
    assert_same(walk_request(data, KEYS), parsed)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if not data:
            break
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        elif data:
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_differential_on_mutated_requests(data: bytes) -> None:
    differential(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_differential_on_random_bytes(data: bytes) -> None:
    differential(data)


def test_unknown_fields_and_groups_are_skipped_like_upb() -> None:
    base = request([S(1, 1)])
    # An unknown varint field (99), an unknown group (field 98) and an unknown fixed32 at top level.
    extra = bytes([0x98, 0x06, 0x05]) + bytes([0x93, 0x06, 0x08, 0x01, 0x94, 0x06]) + bytes([0x9D, 0x06, 1, 2, 3, 4])
    differential(base + extra)
    assert len(walk_request(base + extra, KEYS)) == 1


def test_attribute_values_of_every_type() -> None:
    keys = frozenset({"s", "i", "d", "b", "neg"})
    data = request([S(1, 1, attrs={"s": "x", "i": 7, "d": 2.5, "b": False, "neg": -3, "skip": "y"})])
    (span,) = walk_request(data, keys)
    assert span.attrs == {"s": "x", "i": 7, "d": 2.5, "b": False, "neg": -3}
    assert kv("a", 1).value.int_value == 1  # the helper builds what it says



def test_a_repeated_value_field_is_validated_in_every_occurrence() -> None:
    from sampler.otlp.splice import field
    from tests.spans import span_message

    # KeyValue{key "k", value {string: invalid UTF-8}, value {string "ok"}}: protobuf merges repeated
    # occurrences of a message field, so the first one must be valid too.
    kv = b"\x0a\x01k" + b"\x12\x04\x0a\x02\xff\xfe" + b"\x12\x04\x0a\x02ok"
    span = span_message(S(1, 1)).SerializeToString() + field(0x4A, kv)  # Span.attributes
    bad = field(0x0A, field(0x12, field(0x12, span)))  # request > resource_spans > scope_spans > spans
    with pytest.raises(DecodeError):
        ExportTraceServiceRequest.FromString(bad)
    with pytest.raises(WireError, match="UTF-8"):
        walk_request(bad, KEYS)
    good = field(0x0A, field(0x12, field(0x12, span.replace(b"\xff\xfe", b"no"))))
    assert len(walk_request(good, KEYS)) == 1 and ExportTraceServiceRequest.FromString(good)
