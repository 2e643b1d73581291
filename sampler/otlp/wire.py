"""Walk OTLP trace requests in wire format without building protobuf objects.

The receive path needs, per span, its trace id, its serialized bytes and the few fields that the
loaded policies read. Parsing every span into objects and re-serializing it costs several times
more than walking the tags and slicing the request, so this module walks the bytes directly.

It must refuse exactly what protobuf (upb) refuses: truncation, bad lengths, invalid wire types and
invalid UTF-8 in string fields, anywhere in the request, so that one bad span can never reach a
backend inside an otherwise good batch. Which fields are strings and which are messages is taken
from the generated descriptors, so the walker agrees with the installed proto definitions.

This is the reference walker, kept interpreted: the receive path runs its compiled counterpart
(`_split.pyx`, which also groups spans by trace) when the build made one, and this module otherwise;
the tests hold both to protobuf and to each other. Rare paths (reloads, the demo's sink) use it too.
The common one-byte tag/length/varint reads are inline in the hot loops; the out-of-line helpers
handle the rest and raise the errors.
"""

from __future__ import annotations

import struct
from typing import Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

# Field kinds in the validation schema.
K_OTHER: Final = 0
K_STRING: Final = 1
K_MESSAGE: Final = 2

MAX_DEPTH: Final = 100  # upb's default recursion limit

AttrValue = str | int | float | bool


class WireError(ValueError):
    """The request is not a valid ExportTraceServiceRequest; the message says where and why."""


def _build_schema() -> tuple[list[dict[int, int]], list[dict[int, int]], dict[str, int]]:
    """Per message type (by index): field number -> kind, and field number -> message index."""
    kinds: list[dict[int, int]] = []
    subs: list[dict[int, int]] = []
    index: dict[str, int] = {}

    def add(desc: Descriptor) -> int:
        if desc.full_name in index:
            return index[desc.full_name]
        idx = len(kinds)
        index[desc.full_name] = idx
        fkinds: dict[int, int] = {}
        fsubs: dict[int, int] = {}
        kinds.append(fkinds)
        subs.append(fsubs)
        for f in desc.fields:
            if f.type == FieldDescriptor.TYPE_STRING:
                fkinds[f.number] = K_STRING
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                fkinds[f.number] = K_MESSAGE
                fsubs[f.number] = -1
        for f in desc.fields:
            if f.message_type is not None:
                fkinds[f.number] = K_MESSAGE
                fsubs[f.number] = add(f.message_type)
        return idx

    add(trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR)
    add(logs_service_pb2.ExportLogsServiceRequest.DESCRIPTOR)
    add(metrics_service_pb2.ExportMetricsServiceRequest.DESCRIPTOR)
    return kinds, subs, index


KINDS, SUBS, _INDEX = _build_schema()
M_RESOURCE: Final = _INDEX["opentelemetry.proto.resource.v1.Resource"]
M_SCOPE: Final = _INDEX["opentelemetry.proto.common.v1.InstrumentationScope"]
M_KEYVALUE: Final = _INDEX["opentelemetry.proto.common.v1.KeyValue"]
M_ANYVALUE: Final = _INDEX["opentelemetry.proto.common.v1.AnyValue"]
M_EVENT: Final = _INDEX["opentelemetry.proto.trace.v1.Span.Event"]
M_LINK: Final = _INDEX["opentelemetry.proto.trace.v1.Span.Link"]
M_STATUS: Final = _INDEX["opentelemetry.proto.trace.v1.Status"]
M_SPAN: Final = _INDEX["opentelemetry.proto.trace.v1.Span"]
M_SCOPESPANS: Final = _INDEX["opentelemetry.proto.trace.v1.ScopeSpans"]
M_RESOURCESPANS: Final = _INDEX["opentelemetry.proto.trace.v1.ResourceSpans"]
M_LOGRECORD: Final = _INDEX["opentelemetry.proto.logs.v1.LogRecord"]
M_SCOPELOGS: Final = _INDEX["opentelemetry.proto.logs.v1.ScopeLogs"]
M_METRICS_REQUEST: Final = _INDEX["opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest"]
ANYVALUE_KINDS: Final = KINDS[M_ANYVALUE]
ANYVALUE_SUBS: Final = SUBS[M_ANYVALUE]


class Group:
    """The resource and scope shared by a run of spans, kept as re-emittable field bytes.

    `resource` is every field of the ResourceSpans except its scope_spans; `scope` is every field
    of the ScopeSpans except its spans. Export requests are spliced from these and the span bytes.
    A group of log records (`logs`) holds the same of a ResourceLogs and ScopeLogs (the field
    numbers are the same), and its records travel in a trace's span lists: the group says which
    request each item belongs in.
    """

    __slots__ = ("attrs", "logs", "match_bits", "resource", "scope", "service")

    def __init__(self, resource: bytes, scope: bytes, attrs: dict[str, AttrValue], logs: bool = False) -> None:
        self.resource = resource
        self.scope = scope
        self.logs = logs
        self.attrs = attrs
        value = attrs.get("service.name")
        self.service = value if isinstance(value, str) else ""
        self.match_bits = -1  # resource-level predicate bits; set when the Splitter interns the group


class SpanFields:
    """What the core reads from one span; the span itself stays bytes."""

    __slots__ = (
        "attrs",
        "data",
        "end",
        "flags",
        "group",
        "is_root",
        "kind",
        "name",
        "parent_span_id",
        "span_id",
        "start",
        "status",
        "trace_id",
        "trace_state",
    )

    def __init__(self, data: bytes, group: Group) -> None:
        self.data = data
        self.group = group
        self.trace_id = b""
        self.is_root = True
        self.name = ""
        self.span_id = b""
        self.parent_span_id = b""  # empty for a root span
        self.kind = 0
        self.start = 0
        self.end = 0
        self.status = 0
        self.flags = 0
        self.trace_state = ""
        self.attrs: dict[str, AttrValue] | None = None


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos < end:
        b = data[pos]
        if b < 0x80:
            return b, pos + 1
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError(f"truncated varint at byte {pos}")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if shift >= 63:  # only a tenth byte can set bits past 64
                result &= 0xFFFFFFFFFFFFFFFF
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def _tag(data: bytes, pos: int, end: int) -> tuple[int, int]:
    tag, pos = _varint(data, pos, end)
    if tag >> 3 == 0 or tag > 0xFFFFFFFF:
        raise WireError(f"invalid field number at byte {pos}")
    return tag, pos


def _length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    n, pos = _varint(data, pos, end)
    if n > end - pos:
        raise WireError(f"length {n} at byte {pos} runs past the end of its message")
    return n, pos


def _utf8(data: bytes, start: int, stop: int) -> str:
    try:
        return data[start:stop].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"invalid UTF-8 in a string field at byte {start + exc.start}") from None


def _check_utf8(data: bytes, start: int, stop: int) -> None:
    """Validate a string field nobody reads (decoding is the fastest check interpreted)."""
    _utf8(data, start, stop)


def _fixed64(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 8], "little")


def _skip(data: bytes, pos: int, end: int, tag: int, depth: int) -> int:
    """Skip one field's value whose tag was just read; validate strings and messages it contains
    if the field is known (unknown fields only need valid framing)."""
    wt = tag & 7
    if wt == 0:
        return _varint(data, pos, end)[1]
    if wt == 1:
        if end - pos < 8:
            raise WireError(f"truncated fixed64 at byte {pos}")
        return pos + 8
    if wt == 5:
        if end - pos < 4:
            raise WireError(f"truncated fixed32 at byte {pos}")
        return pos + 4
    if wt == 2:
        n, pos = _length(data, pos, end)
        return pos + n
    if wt == 3:
        return _skip_group(data, pos, end, tag >> 3, depth + 1)
    raise WireError(f"invalid wire type {wt} at byte {pos}")


def _skip_group(data: bytes, pos: int, end: int, field: int, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise WireError("message nesting exceeds the recursion limit")
    while pos < end:
        tag, pos = _tag(data, pos, end)
        if tag & 7 == 4:
            if tag >> 3 != field:
                raise WireError(f"mismatched end-group at byte {pos}")
            return pos
        pos = _skip(data, pos, end, tag, depth)
    raise WireError("unterminated group")


def check_message(data: bytes, pos: int, end: int, msg: int, depth: int) -> None:
    """Validate a message of schema type `msg` occupying data[pos:end]."""
    if depth > MAX_DEPTH:
        raise WireError("message nesting exceeds the recursion limit")
    kinds = KINDS[msg]
    while pos < end:
        tag, pos = _tag(data, pos, end)
        if tag & 7 == 2:
            n, pos = _length(data, pos, end)
            kind = kinds.get(tag >> 3, K_OTHER)
            if kind == K_STRING:
                _check_utf8(data, pos, pos + n)
            elif kind == K_MESSAGE:
                check_message(data, pos, pos + n, SUBS[msg][tag >> 3], depth + 1)
            pos += n
        elif tag & 7 == 4:
            raise WireError(f"unexpected end-group at byte {pos}")
        else:
            pos = _skip(data, pos, end, tag, depth)


def _any_value(data: bytes, pos: int, end: int, depth: int, want: bool) -> AttrValue | None:
    """Decode a primitive AnyValue (validating the whole value); arrays and maps give None.
    When the value is not `want`ed it is only validated, and the result is None."""
    value: AttrValue | None = None
    while pos < end:
        b = data[pos]
        if 8 <= b < 0x80:
            tag = b
            pos += 1
        else:
            tag, pos = _tag(data, pos, end)
        if tag == 0x0A:  # string_value
            n: int = data[pos] if pos < end else 0x80
            if n < 0x80 and n < end - pos:
                pos += 1
            else:
                n, pos = _length(data, pos, end)
            if want:
                value = _utf8(data, pos, pos + n)
            else:
                _check_utf8(data, pos, pos + n)
            pos += n
        elif tag == 0x10:  # bool_value
            v = data[pos] if pos < end else 0x80
            if v < 0x80:
                pos += 1
            else:
                v, pos = _varint(data, pos, end)
            value = v != 0
        elif tag == 0x18:  # int_value
            v = data[pos] if pos < end else 0x80
            if v < 0x80:
                pos += 1
                value = v
            else:
                v, pos = _varint(data, pos, end)
                value = v - (1 << 64) if v >= 1 << 63 else v
        elif tag == 0x21:  # double_value
            if end - pos < 8:
                raise WireError(f"truncated fixed64 at byte {pos}")
            if want:
                value = struct.unpack_from("<d", data, pos)[0]
            pos += 8
        elif tag & 7 == 2:
            n, pos = _length(data, pos, end)
            fno = tag >> 3
            kind = ANYVALUE_KINDS.get(fno, K_OTHER)
            if kind == K_MESSAGE:
                check_message(data, pos, pos + n, ANYVALUE_SUBS[fno], depth + 1)
                value = None
            elif kind == K_STRING:
                _check_utf8(data, pos, pos + n)
            elif fno == 7:
                value = None
            pos += n
        elif tag & 7 == 4:
            raise WireError(f"unexpected end-group at byte {pos}")
        else:
            pos = _skip(data, pos, end, tag, depth)
    return value if want else None


def _attributes(
    data: bytes, pos: int, end: int, keys: frozenset[str], out: dict[str, AttrValue] | None, depth: int
) -> dict[str, AttrValue] | None:
    """Validate one KeyValue; when its key is wanted, record its primitive value into `out`."""
    key: str | None = None
    vstart = -1
    vend = -1
    while pos < end:
        b = data[pos]
        if 8 <= b < 0x80:
            tag = b
            pos += 1
        else:
            tag, pos = _tag(data, pos, end)
        if tag == 0x0A or tag == 0x12:
            n = data[pos] if pos < end else 0x80
            if n < 0x80 and n < end - pos:
                pos += 1
            else:
                n, pos = _length(data, pos, end)
            stop = pos + n
            if tag == 0x0A:
                key = _utf8(data, pos, stop)
            else:
                if vstart >= 0:  # a repeated value field (protobuf merges them): the earlier one must be valid too
                    check_message(data, vstart, vend, M_ANYVALUE, depth + 1)
                vstart = pos
                vend = stop
            pos = stop
        elif tag & 7 == 4:
            raise WireError(f"unexpected end-group at byte {pos}")
        else:
            pos = _skip(data, pos, end, tag, depth)
    if vstart >= 0:
        want = key is not None and key in keys
        value = _any_value(data, vstart, vend, depth + 1, want)
        if want and value is not None:
            if out is None:
                out = {}
            assert key is not None
            out[key] = value
    return out


def _resource_attrs(data: bytes, pos: int, end: int, keys: frozenset[str], depth: int) -> dict[str, AttrValue]:
    attrs: dict[str, AttrValue] | None = {}
    while pos < end:
        tag, pos = _tag(data, pos, end)
        fno = tag >> 3
        if fno == 1 and tag & 7 == 2:
            n, pos = _length(data, pos, end)
            attrs = _attributes(data, pos, pos + n, keys, attrs, depth + 1)
            pos += n
        elif tag & 7 == 2:
            n, pos = _length(data, pos, end)
            if KINDS[M_RESOURCE].get(fno, K_OTHER) == K_MESSAGE:
                check_message(data, pos, pos + n, SUBS[M_RESOURCE][fno], depth + 1)
            pos += n
        elif tag & 7 == 4:
            raise WireError(f"unexpected end-group at byte {pos}")
        else:
            pos = _skip(data, pos, end, tag, depth)
    return attrs if attrs is not None else {}


def _status_code(data: bytes, pos: int, end: int, depth: int) -> int:
    code = 0
    while pos < end:
        tag, pos = _tag(data, pos, end)
        fno = tag >> 3
        if fno == 3 and tag & 7 == 0:
            v, pos = _varint(data, pos, end)
            code = v & 0xFFFFFFFF
        elif fno == 2 and tag & 7 == 2:
            n, pos = _length(data, pos, end)
            _check_utf8(data, pos, pos + n)
            pos += n
        elif tag & 7 == 4:
            raise WireError(f"unexpected end-group at byte {pos}")
        else:
            pos = _skip(data, pos, end, tag, depth)
    return code


def _read_span(data: bytes, pos: int, end: int, keys: frozenset[str], span: SpanFields) -> None:
    depth = 3
    has_trace_id = False
    has_span_id = False
    while pos < end:
        b = data[pos]
        if 8 <= b < 0x80:
            tag = b
            pos += 1
        else:
            tag, pos = _tag(data, pos, end)
        wt = tag & 7
        if wt == 2:
            n: int = data[pos] if pos < end else 0x80
            if n < 0x80 and n < end - pos:
                pos += 1
            else:
                n, pos = _length(data, pos, end)
            stop = pos + n
            fno = tag >> 3
            if fno == 9:
                span.attrs = _attributes(data, pos, stop, keys, span.attrs, depth + 1)
            elif fno == 1:
                if n != 16:
                    raise WireError(f"span trace_id has {n} bytes, want 16")
                span.trace_id = data[pos:stop]
                has_trace_id = True
            elif fno == 2:
                if n != 8:
                    raise WireError(f"span span_id has {n} bytes, want 8")
                span.span_id = data[pos:stop]
                has_span_id = True
            elif fno == 4:
                if n != 0 and n != 8:
                    raise WireError(f"span parent_span_id has {n} bytes, want 8 or none")
                span.is_root = n == 0
                span.parent_span_id = data[pos:stop]
            elif fno == 5:
                span.name = _utf8(data, pos, stop)
            elif fno == 3:
                span.trace_state = _utf8(data, pos, stop)
            elif fno == 15:
                span.status = _status_code(data, pos, stop, depth + 1)
            elif fno == 11:
                check_message(data, pos, stop, M_EVENT, depth + 1)
            elif fno == 13:
                check_message(data, pos, stop, M_LINK, depth + 1)
            pos = stop
        elif tag == 0x39:  # start_time_unix_nano, fixed64
            if end - pos < 8:
                raise WireError(f"truncated fixed64 at byte {pos}")
            span.start = _fixed64(data, pos)
            pos += 8
        elif tag == 0x41:  # end_time_unix_nano, fixed64
            if end - pos < 8:
                raise WireError(f"truncated fixed64 at byte {pos}")
            span.end = _fixed64(data, pos)
            pos += 8
        elif tag == 0x30:  # kind, varint
            v = data[pos] if pos < end else 0x80
            if v < 0x80:
                pos += 1
            else:
                v, pos = _varint(data, pos, end)
            span.kind = v & 0xFFFFFFFF
        elif tag == 0x85:  # flags (field 16), fixed32
            if end - pos < 4:
                raise WireError(f"truncated fixed32 at byte {pos}")
            span.flags = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        elif wt == 4:
            raise WireError(f"unexpected end-group at byte {pos}")
        else:
            pos = _skip(data, pos, end, tag, depth)
    if not has_trace_id:
        raise WireError("span has no trace_id")
    if not has_span_id:
        raise WireError("span has no span_id")


def scope_parts(data: bytes, pos: int, end: int, msg: int) -> tuple[bytes, list[int]]:
    """Walk a ScopeSpans or ScopeLogs (`msg`): validate its header fields, return them as bytes and
    the [start, stop) ranges of its items (field 2: spans or log records), left for the caller."""
    header: list[bytes] = []
    ranges: list[int] = []
    kinds = KINDS[msg]
    while pos < end:
        fstart = pos
        tag, pos = _tag(data, pos, end)
        fno = tag >> 3
        if fno == 2 and tag & 7 == 2:
            n, pos = _length(data, pos, end)
            ranges.append(pos)
            ranges.append(pos + n)
            pos += n
            continue
        if tag & 7 == 2:
            n, pos = _length(data, pos, end)
            kind = kinds.get(fno, K_OTHER)
            if kind == K_MESSAGE:
                check_message(data, pos, pos + n, SUBS[msg][fno], 3)
            elif kind == K_STRING:
                _check_utf8(data, pos, pos + n)
            pos += n
        elif tag & 7 == 4:
            raise WireError(f"unexpected end-group at byte {pos}")
        else:
            pos = _skip(data, pos, end, tag, 2)
        header.append(data[fstart:pos])
    return b"".join(header), ranges


def resource_parts(data: bytes, pos: int, end: int, keys: frozenset[str]
                   ) -> tuple[bytes, dict[str, AttrValue], list[int]]:
    """Walk a ResourceSpans or ResourceLogs: validate its resource (reading the attributes named in
    `keys`) and schema_url; return its header bytes, those attributes and the [start, stop) ranges of
    its scopes (field 2), left for the caller."""
    header: list[bytes] = []
    scopes: list[int] = []
    rattrs: dict[str, AttrValue] = {}
    while pos < end:
        fstart = pos
        tag, pos = _tag(data, pos, end)
        fno = tag >> 3
        if fno == 2 and tag & 7 == 2:
            n, pos = _length(data, pos, end)
            scopes.append(pos)
            scopes.append(pos + n)
            pos += n
            continue
        if fno == 1 and tag & 7 == 2:
            n, pos = _length(data, pos, end)
            rattrs.update(_resource_attrs(data, pos, pos + n, keys, 2))
            pos += n
        elif fno == 3 and tag & 7 == 2:
            n, pos = _length(data, pos, end)
            _check_utf8(data, pos, pos + n)
            pos += n
        elif tag & 7 == 4:
            raise WireError(f"unexpected end-group at byte {pos}")
        else:
            pos = _skip(data, pos, end, tag, 1)
        header.append(data[fstart:pos])
    return b"".join(header), rattrs, scopes


def _scope_spans(
    data: bytes, pos: int, end: int, resource: bytes, rattrs: dict[str, AttrValue],
    keys: frozenset[str], out: list[SpanFields],
) -> None:
    scope, ranges = scope_parts(data, pos, end, M_SCOPESPANS)
    if not ranges:
        return
    group = Group(resource, scope, rattrs)
    for i in range(0, len(ranges), 2):
        start = ranges[i]
        stop = ranges[i + 1]
        span = SpanFields(data[start:stop], group)
        _read_span(data, start, stop, keys, span)
        out.append(span)


def _resource_spans(data: bytes, pos: int, end: int, keys: frozenset[str], out: list[SpanFields]) -> None:
    resource, rattrs, scopes = resource_parts(data, pos, end, keys)
    for i in range(0, len(scopes), 2):
        _scope_spans(data, scopes[i], scopes[i + 1], resource, rattrs, keys, out)


def walk_request(data: bytes, keys: frozenset[str]) -> list[SpanFields]:
    """Split an ExportTraceServiceRequest into its spans; raise WireError if protobuf would refuse it.

    `keys` names the attributes whose primitive values are extracted (span and resource level).
    """
    out: list[SpanFields] = []
    end: int = len(data)
    pos: int = 0
    while pos < end:
        tag, pos = _tag(data, pos, end)
        fno = tag >> 3
        if fno == 1 and tag & 7 == 2:
            n, pos = _length(data, pos, end)
            _resource_spans(data, pos, pos + n, keys, out)
            pos += n
        elif tag & 7 == 4:
            raise WireError(f"unexpected end-group at byte {pos}")
        else:
            pos = _skip(data, pos, end, tag, 0)
    return out


def span_fields(data: bytes, group: Group, keys: frozenset[str]) -> SpanFields:
    """Re-read a stored span (after a policy reload changed which attributes matter)."""
    span = SpanFields(data, group)
    _read_span(data, 0, len(data), keys, span)
    return span


def resource_attrs(header: bytes, keys: frozenset[str]) -> dict[str, AttrValue]:
    """Re-extract the wanted resource attributes from a Group's stored ResourceSpans fields."""
    attrs: dict[str, AttrValue] = {}
    pos: int = 0
    end: int = len(header)
    while pos < end:
        tag, pos = _tag(header, pos, end)
        if tag == 0x0A:
            n, pos = _length(header, pos, end)
            attrs.update(_resource_attrs(header, pos, pos + n, keys, 2))
            pos += n
        else:
            pos = _skip(header, pos, end, tag, 1)
    return attrs
