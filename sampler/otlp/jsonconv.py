"""OTLP/JSON <-> protobuf.

OTLP/JSON is not protobuf's canonical JSON mapping: trace and span ids are hex, not base64. The
protobuf library does the rest (lowerCamelCase keys, enums as integers, 64-bit integers as strings
or numbers, unknown fields ignored); this module only converts the id fields in both directions.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sampler.otlp.wire import WireError

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _ids(obj: dict[str, Any], convert: Any) -> None:
    for key in _ID_KEYS:
        if key in obj:
            obj[key] = convert(obj[key], key)


def _hex_to_b64(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise WireError(f"{key} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise WireError(f"{key} {value!r} is not valid hex") from None
    return base64.b64encode(raw).decode()


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
    if not isinstance(doc, dict):
        raise WireError("expected a JSON object with resourceSpans")
    _walk_spans(doc, _hex_to_b64)
    try:
        msg = json_format.ParseDict(doc, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, OverflowError, TypeError) as exc:
        raise WireError(f"invalid OTLP/JSON: {exc}") from None
    except RecursionError:
        raise WireError("invalid OTLP/JSON: nested too deeply") from None
    data: bytes = msg.SerializeToString()
    return data


def protobuf_to_dict(data: bytes) -> dict[str, Any]:
    msg = ExportTraceServiceRequest.FromString(data)
    doc: dict[str, Any] = json_format.MessageToDict(msg, use_integers_for_enums=True)
    _walk_spans(doc, _b64_to_hex)
    return doc
