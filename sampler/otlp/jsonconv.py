"""OTLP/JSON <-> protobuf.

OTLP/JSON is not protobuf's canonical JSON mapping: trace and span ids are hex, not base64. Into
protobuf, documents go through `jsonwire` (straight to wire bytes, compiled); out of it (the `file`
exporter, tests), through the protobuf library, converting the id fields to hex.
"""

from __future__ import annotations

import base64
import binascii
import json
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
    try:
        # Python's json accepts NaN and Infinity, which JSON (and so OTLP/JSON) does not.
        doc = json.loads(body, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise WireError("invalid JSON: nested too deeply") from None
    return dict_to_protobuf(doc)


def dict_to_protobuf(doc: Any) -> bytes:
    """Serialized ExportTraceServiceRequest from a decoded OTLP/JSON document; WireError when invalid."""
    if not isinstance(doc, dict):
        raise WireError("expected a JSON object with resourceSpans")
    try:
        return jsonwire.encode(doc, TRACES)
    except WireError as exc:
        raise WireError(f"invalid OTLP/JSON: {exc}") from None


def protobuf_to_dict(data: bytes) -> dict[str, Any]:
    msg = ExportTraceServiceRequest.FromString(data)
    doc: dict[str, Any] = json_format.MessageToDict(msg, use_integers_for_enums=True)
    _walk_spans(doc, _b64_to_hex)
    return doc
