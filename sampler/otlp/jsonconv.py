"""OTLP/JSON <-> protobuf, for the three signals.

OTLP/JSON is not protobuf's canonical JSON mapping: trace and span ids are hex, not base64. Into
protobuf, documents go through `jsonwire` (straight to wire bytes, compiled); out of it (the `file`
exporter, tests), through the protobuf library, converting the id fields to hex.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Iterator
from typing import Any, NamedTuple

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sampler.otlp import jsonwire
from sampler.otlp.transport import LOGS, METRICS, TRACES
from sampler.otlp.wire import WireError


class Shape(NamedTuple):
    """How one signal's request nests: its top-level list, each resource's list of scopes, each
    scope's list of items; the message; and the encoder's tables for it."""

    resources: str
    scopes: str
    items: str
    message: type[Message]
    schema: jsonwire.Schema


SHAPES = {
    TRACES: Shape("resourceSpans", "scopeSpans", "spans", ExportTraceServiceRequest,
                  jsonwire.schema_of(ExportTraceServiceRequest.DESCRIPTOR)),
    LOGS: Shape("resourceLogs", "scopeLogs", "logRecords", ExportLogsServiceRequest,
                jsonwire.schema_of(ExportLogsServiceRequest.DESCRIPTOR)),
    METRICS: Shape("resourceMetrics", "scopeMetrics", "metrics", ExportMetricsServiceRequest,
                   jsonwire.schema_of(ExportMetricsServiceRequest.DESCRIPTOR)),
}
TRACES_SCHEMA = SHAPES[TRACES].schema
_ID_KEYS = ("traceId", "spanId", "parentSpanId")
_METRIC_DATA = ("gauge", "sum", "histogram", "exponentialHistogram", "summary")


def _ids(obj: dict[str, Any], convert: Any) -> None:
    for key in _ID_KEYS:
        if key in obj:
            obj[key] = convert(obj[key], key)


def _b64_to_hex(value: Any, key: str) -> str:
    return binascii.hexlify(base64.b64decode(value)).decode()


def _dicts(obj: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The mappings in obj[key] when it is a list; protobuf reports any other shape itself."""
    items = obj.get(key)
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _with_ids(doc: dict[str, Any], signal: str) -> Iterator[dict[str, Any]]:
    """Every object of a decoded request that carries trace or span ids."""
    shape = SHAPES[signal]
    for rs in _dicts(doc, shape.resources):
        for ss in _dicts(rs, shape.scopes):
            for item in _dicts(ss, shape.items):
                if signal == TRACES:
                    yield item
                    yield from _dicts(item, "links")
                elif signal == LOGS:
                    yield item
                else:
                    for kind in _METRIC_DATA:
                        data = item.get(kind)
                        if isinstance(data, dict):
                            for point in _dicts(data, "dataPoints"):
                                yield from _dicts(point, "exemplars")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_to_protobuf(body: bytes | str, signal: str = TRACES) -> bytes:
    """A serialized export request from an OTLP/JSON document; WireError when invalid."""
    return dict_to_protobuf(_load(body), signal)


def dict_to_protobuf(doc: Any, signal: str = TRACES) -> bytes:
    """A serialized export request from a decoded OTLP/JSON document; WireError when invalid."""
    shape = SHAPES[signal]
    if not isinstance(doc, dict):
        raise WireError(f"expected a JSON object with {shape.resources}")
    try:
        return jsonwire.encode(doc, shape.schema)
    except WireError as exc:
        raise WireError(f"invalid OTLP/JSON: {exc}") from None


def signal_of_document(doc: Any) -> str | None:
    """Which signal a decoded OTLP/JSON document holds (by its top-level key), if any."""
    if isinstance(doc, dict):
        for signal, shape in SHAPES.items():
            if shape.resources in doc:
                return signal
    return None


STEP_ITEMS = 256  # spans (log records, metrics) encoded between two chances for other requests to run
# A bare loop turn lets few other requests through (a gRPC call takes several turns to be read,
# handled and answered); a short pause lets those waiting be served.
STEP_PAUSE = 0.001


def _load(body: bytes | str) -> Any:
    try:
        # Python's json accepts NaN and Infinity, which JSON (and so OTLP/JSON) does not.
        return json.loads(body, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise WireError("invalid JSON: nested too deeply") from None


def _pieces(doc: dict[str, Any], step: int, shape: Shape) -> Iterator[dict[str, Any]]:
    """The document as documents of at most `step` items each: every resource entry cut into several
    with the same resource and scopes, each holding a slice of the items. A request is the
    concatenation of its resource entries, so the pieces' encodings, joined, are an equivalent
    request. Anything not shaped as OTLP expects is passed on whole, for the encoder to refuse."""
    resources = doc.get(shape.resources)
    if len(doc) != 1 or not isinstance(resources, list):
        yield doc
        return
    snake = "scope_" + shape.scopes[len("scope"):].lower()  # the proto field name also names the field
    for rs in resources:
        scopes = rs.get(shape.scopes) if isinstance(rs, dict) and snake not in rs else None
        if not isinstance(scopes, list) or not all(isinstance(ss, dict) and isinstance(ss.get(shape.items, []), list)
                                                   for ss in scopes):
            yield {shape.resources: [rs]}
            continue
        batch: list[dict[str, Any]] = []
        size = 0
        for ss in scopes:
            items = ss.get(shape.items) or []
            for at in range(0, max(1, len(items)), step):
                part = items[at:at + step]
                if size and size + len(part) > step:
                    yield {shape.resources: [{**rs, shape.scopes: batch}]}
                    batch, size = [], 0
                batch.append({**ss, shape.items: part} if shape.items in ss else ss)
                size += len(part)
        yield {shape.resources: [{**rs, shape.scopes: batch}]}


async def json_to_protobuf_stepwise(body: bytes, signal: str = TRACES, step: int = STEP_ITEMS) -> bytes:
    """json_to_protobuf, encoding at most `step` items at a time and letting the event loop run
    between steps: a body of megabytes would otherwise hold every other request behind it."""
    shape = SHAPES[signal]
    doc = _load(body)
    if not isinstance(doc, dict):
        raise WireError(f"expected a JSON object with {shape.resources}")
    parts = []
    for piece in _pieces(doc, step, shape):
        parts.append(dict_to_protobuf(piece, signal))
        await asyncio.sleep(STEP_PAUSE)
    return b"".join(parts)


def protobuf_to_dict(data: bytes, signal: str = TRACES) -> dict[str, Any]:
    msg = SHAPES[signal].message.FromString(data)
    doc: dict[str, Any] = json_format.MessageToDict(msg, use_integers_for_enums=True)
    for obj in _with_ids(doc, signal):
        _ids(obj, _b64_to_hex)
    return doc
