"""OTLP/JSON to wire bytes (sampler/otlp/jsonwire.py) held to protobuf's own json_format: the same
message for every document json_format accepts, a WireError for every one it refuses."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from sampler.otlp import jsonwire
from sampler.otlp.jsonconv import TRACES_SCHEMA, json_to_protobuf_stepwise, protobuf_to_dict
from sampler.otlp.wire import WireError
from tests.test_fuzz import mutated_docs


def _objects_where_messages_go(node: Any, desc: Descriptor) -> bool:
    """Whether every message in the document is a JSON object. json_format also takes a list or a
    string there, iterating it as if it were an object's keys (and ignoring them as unknown); the
    proto3 JSON mapping, and OTLP/JSON, want an object."""
    if not isinstance(node, dict):
        return False
    for key, value in node.items():
        f = desc.fields_by_camelcase_name.get(key) or desc.fields_by_name.get(key)
        if f is None or f.message_type is None or value is None:
            continue
        items = value if f.is_repeated and isinstance(value, list) else [value]
        if not all(i is None or _objects_where_messages_go(i, f.message_type) for i in items):
            return False
    return True


def reference(doc: Any) -> ExportTraceServiceRequest | None:
    """What protobuf makes of an OTLP/JSON document (ids hex -> base64 first), or None if it refuses."""
    if not _objects_where_messages_go(doc, ExportTraceServiceRequest.DESCRIPTOR):
        return None
    doc = json.loads(json.dumps(doc))

    def ids(obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        for key in ("traceId", "spanId", "parentSpanId"):
            if isinstance(obj.get(key), str):
                obj[key] = base64.b64encode(bytes.fromhex(obj[key])).decode()  # ValueError: not hex, refused

    def walk(node: Any) -> None:
        for rs in _dicts(node, "resourceSpans"):
            for ss in _dicts(rs, "scopeSpans"):
                for span in _dicts(ss, "spans"):
                    ids(span)
                    for link in _dicts(span, "links"):
                        ids(link)

    try:
        walk(doc)
        return json_format.ParseDict(doc, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, OverflowError, RecursionError):
        return None


def _dicts(obj: Any, key: str) -> list[Any]:
    items = obj.get(key) if isinstance(obj, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def ours(doc: Any) -> ExportTraceServiceRequest | None:
    try:
        return ExportTraceServiceRequest.FromString(jsonwire.encode(doc, TRACES_SCHEMA))
    except WireError:
        return None


scalars = st.one_of(
    st.text(max_size=8).map(lambda s: AnyValue(string_value=s)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: AnyValue(int_value=n)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: AnyValue(double_value=x)),
    st.binary(max_size=8).map(lambda b: AnyValue(bytes_value=b)),
)
any_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3).map(lambda vs: AnyValue(array_value={"values": vs}))
    | st.lists(st.tuples(st.text(max_size=4), inner), max_size=3).map(
        lambda kvs: AnyValue(kvlist_value={"values": [KeyValue(key=k, value=v) for k, v in kvs]})),
    max_leaves=6,
)
attributes = st.lists(st.tuples(st.text(max_size=6), any_values), max_size=4).map(
    lambda kvs: [KeyValue(key=k, value=v) for k, v in kvs])
u64 = st.integers(0, 2**64 - 1)


@st.composite
def spans(draw: st.DrawFn) -> Span:
    return Span(
        trace_id=draw(st.binary(min_size=16, max_size=16)), span_id=draw(st.binary(min_size=8, max_size=8)),
        parent_span_id=draw(st.sampled_from([b"", b"\x01" * 8])), name=draw(st.text(max_size=8)),
        trace_state=draw(st.text(max_size=6)), kind=draw(st.integers(0, 5)),  # type: ignore[arg-type]
        start_time_unix_nano=draw(u64), end_time_unix_nano=draw(u64), attributes=draw(attributes),
        dropped_attributes_count=draw(st.integers(0, 2**32 - 1)), flags=draw(st.integers(0, 2**32 - 1)),
        events=[Span.Event(time_unix_nano=draw(u64), name=draw(st.text(max_size=5)), attributes=draw(attributes))
                for _ in range(draw(st.integers(0, 2)))],
        links=[Span.Link(trace_id=draw(st.binary(min_size=16, max_size=16)),
                         span_id=draw(st.binary(min_size=8, max_size=8)), attributes=draw(attributes),
                         flags=draw(st.integers(0, 2**32 - 1)))
               for _ in range(draw(st.integers(0, 2)))],
        status=Status(code=draw(st.integers(0, 2)), message=draw(st.text(max_size=5))),  # type: ignore[arg-type]
    )


@st.composite
def requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    msg = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rs = msg.resource_spans.add()
        rs.resource.attributes.extend(draw(attributes))
        rs.schema_url = draw(st.text(max_size=5))
        for _ in range(draw(st.integers(1, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(st.text(max_size=5))
            ss.scope.version = draw(st.text(max_size=3))
            ss.spans.extend(draw(st.lists(spans(), max_size=3)))
    return msg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_every_request_round_trips_through_otlp_json(msg: ExportTraceServiceRequest) -> None:
    doc = protobuf_to_dict(msg.SerializeToString())
    assert ours(doc) == msg
    assert jsonwire.encode(doc, TRACES_SCHEMA) == msg.SerializeToString()  # and byte for byte, as protobuf writes it


def spans_in_context(data: bytes) -> list[tuple[bytes, bytes, bytes, str]]:
    msg = ExportTraceServiceRequest.FromString(data)
    return [(rs.resource.SerializeToString(), ss.scope.SerializeToString(), span.SerializeToString(), rs.schema_url)
            for rs in msg.resource_spans for ss in rs.scope_spans for span in ss.spans]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.integers(1, 4))
def test_a_body_encoded_step_by_step_is_the_same_request(msg: ExportTraceServiceRequest, step: int) -> None:
    """Encoded a few spans at a time (the HTTP receiver lets other requests run in between), every
    span keeps its resource and scope, in order."""
    body = json.dumps(protobuf_to_dict(msg.SerializeToString())).encode()
    stepwise = asyncio.run(json_to_protobuf_stepwise(body, step=step))
    assert spans_in_context(stepwise) == spans_in_context(msg.SerializeToString())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_docs())
def test_mutated_documents_are_refused_or_encoded_alike_step_by_step(doc: Any) -> None:
    body = json.dumps(doc).encode()
    try:
        whole = spans_in_context(jsonwire.encode(doc, TRACES_SCHEMA))
    except WireError:
        whole = None
    try:
        stepwise = spans_in_context(asyncio.run(json_to_protobuf_stepwise(body, step=1)))
    except WireError:
        stepwise = None
    assert stepwise == whole


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_docs())
def test_mutated_documents_are_refused_or_taken_as_protobuf_does(doc: Any) -> None:
    assert ours(doc) == reference(doc)


@pytest.mark.parametrize(("value", "accepted"), [
    ({"intValue": "12"}, True), ({"intValue": 12.0}, True), ({"intValue": "1e3"}, True),
    ({"intValue": 1.5}, False), ({"intValue": "9223372036854775808"}, False), ({"intValue": True}, False),
    ({"intValue": " 1"}, False), ({"doubleValue": "NaN"}, True), ({"doubleValue": "Infinity"}, True),
    ({"doubleValue": "nan"}, False), ({"doubleValue": "x"}, False), ({"boolValue": "true"}, False),
    ({"bytesValue": "AAE="}, True), ({"bytesValue": "AAE"}, True), ({"bytesValue": "A"}, False),
    ({"stringValue": "\ud800"}, False), ({"stringValue": 1}, False),
    ({"stringValue": "a", "intValue": 1}, False), ({"stringValue": None, "intValue": 1}, True),
])
def test_scalar_values_as_protobuf_reads_them(value: dict[str, Any], accepted: bool) -> None:
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": value}]}}]}
    assert (ours(doc) is not None) is accepted
    assert ours(doc) == reference(doc)


def test_enums_by_name_number_or_unknown_name() -> None:
    def span(kind: Any) -> dict[str, Any]:
        return {"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": kind, "name": "n"}]}]}]}

    for kind, want in (("SPAN_KIND_CLIENT", 3), (3, 3), ("3", 3), (42, 42), ("NOT_A_KIND", 0)):
        got = ours(span(kind))
        assert got is not None and got.resource_spans[0].scope_spans[0].spans[0].kind == want
        assert got == reference(span(kind))
    assert ours(span(2**31)) is None and reference(span(2**31)) is None
