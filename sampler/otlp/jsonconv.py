"""OTLP/JSON <-> protobuf.

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
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sampler.otlp import jsonwire
from sampler.otlp.wire import WireError

TRACES = jsonwire.schema_of(ExportTraceServiceRequest.DESCRIPTOR)

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


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


def _walk_spans(doc: dict[str, Any], convert: Any) -> None:
    for rs in _dicts(doc, "resourceSpans"):
        for ss in _dicts(rs, "scopeSpans"):
            for span in _dicts(ss, "spans"):
                _ids(span, convert)
                for link in _dicts(span, "links"):
                    _ids(link, convert)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_to_protobuf(body: bytes | str) -> bytes:
    """Serialized ExportTraceServiceRequest from an OTLP/JSON document; WireError when invalid."""
    return dict_to_protobuf(_load(body))


def dict_to_protobuf(doc: Any) -> bytes:
    """Serialized ExportTraceServiceRequest from a decoded OTLP/JSON document; WireError when invalid."""
    if not isinstance(doc, dict):
        raise WireError("expected a JSON object with resourceSpans")
    try:
        return jsonwire.encode(doc, TRACES)
    except WireError as exc:
        raise WireError(f"invalid OTLP/JSON: {exc}") from None


STEP_SPANS = 256  # spans encoded between two chances for other requests to run
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


def _pieces(doc: dict[str, Any], step: int) -> Iterator[dict[str, Any]]:
    """The document as documents of at most `step` spans each: every ResourceSpans cut into several
    with the same resource and scopes, each holding a slice of the spans. A request is the
    concatenation of its ResourceSpans, so the pieces' encodings, joined, are an equivalent request.
    Anything not shaped as OTLP expects is passed on whole, for the encoder to refuse."""
    resource_spans = doc.get("resourceSpans")
    if len(doc) != 1 or not isinstance(resource_spans, list):
        yield doc
        return
    for rs in resource_spans:
        scopes = rs.get("scopeSpans") if isinstance(rs, dict) and "scope_spans" not in rs else None
        if not isinstance(scopes, list) or not all(isinstance(ss, dict) and isinstance(ss.get("spans", []), list)
                                                   for ss in scopes):
            yield {"resourceSpans": [rs]}
            continue
        batch: list[dict[str, Any]] = []
        size = 0
        for ss in scopes:
            spans = ss.get("spans") or []
            for at in range(0, max(1, len(spans)), step):
                part = spans[at:at + step]
                if size and size + len(part) > step:
                    yield {"resourceSpans": [{**rs, "scopeSpans": batch}]}
                    batch, size = [], 0
                batch.append({**ss, "spans": part} if "spans" in ss else ss)
                size += len(part)
        yield {"resourceSpans": [{**rs, "scopeSpans": batch}]}


async def json_to_protobuf_stepwise(body: bytes, step: int = STEP_SPANS) -> bytes:
    """json_to_protobuf, encoding at most `step` spans at a time and letting the event loop run
    between steps: a body of megabytes would otherwise hold every other request behind it."""
    doc = _load(body)
    if not isinstance(doc, dict):
        raise WireError("expected a JSON object with resourceSpans")
    parts = []
    for piece in _pieces(doc, step):
        parts.append(dict_to_protobuf(piece))
        await asyncio.sleep(STEP_PAUSE)
    return b"".join(parts)


def protobuf_to_dict(data: bytes) -> dict[str, Any]:
    msg = ExportTraceServiceRequest.FromString(data)
    doc: dict[str, Any] = json_format.MessageToDict(msg, use_integers_for_enums=True)
    _walk_spans(doc, _b64_to_hex)
    return doc
