"""Build export requests by splicing stored bytes, with no re-encoding.

A protobuf message is the concatenation of its fields, so a ScopeSpans is its scope fields plus
one length-delimited field per stored span, and a ResourceSpans its resource fields plus one field
per ScopeSpans. Annotating a span is appending one more `attributes` field (a KeyValue) to it; a span
that arrived annotated already (by a tailsampler in front of this one) first has those attributes cut
out, so it leaves with one of each, ours.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from sampler.otlp.wire import Group, _length, _skip, _tag

POLICY_KEY = "tailsampling.policy"
RATE_KEY = "tailsampling.sample_rate"
DECISION_KEY = "tailsampling.decision"  # dry_run only: keep | drop
# The splitters mark a chunk whose spans carry any of these attributes (Chunk.marked): only the spans
# of such traces are walked again at export, to cut them out.
MARK_KEYS = frozenset({POLICY_KEY, RATE_KEY, DECISION_KEY})
_MARK_KEYS_UTF8 = frozenset(k.encode() for k in MARK_KEYS)


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_prefix(tag: int, n: int) -> bytes:
    """A one-byte tag and the varint length of an n-byte payload: one small bytes object, built
    directly for the common sizes (every span of a kept trace gets one)."""
    if n < 0x80:
        return bytes((tag, n))
    if n < 0x4000:
        return bytes((tag, (n & 0x7F) | 0x80, n >> 7))
    return bytes((tag,)) + varint(n)


def field(tag: int, payload: bytes) -> bytes:
    return varint(tag) + varint(len(payload)) + payload


SPAN_ATTRIBUTES = 0x4A  # Span.attributes (field 9), length-delimited
RECORD_ATTRIBUTES = 0x32  # LogRecord.attributes (field 6), length-delimited


def _keyvalue(key: str, value: bytes, tag: int) -> bytes:
    return field(tag, field(0x0A, key.encode()) + field(0x12, value))


def annotation(policy: str | None, sample_rate: float, logs: bool = False) -> bytes:
    """The two attributes added to every span (or, with `logs`, log record) of a kept trace. The
    rate is an int when whole (the common case: 1, 10, 100) and a double otherwise."""
    name = field(0x0A, (policy or "").encode())  # AnyValue.string_value
    if sample_rate == int(sample_rate):
        rate = b"\x18" + varint(int(sample_rate) & 0xFFFFFFFFFFFFFFFF)  # AnyValue.int_value
    else:
        rate = b"\x21" + struct.pack("<d", sample_rate)  # AnyValue.double_value
    tag = RECORD_ATTRIBUTES if logs else SPAN_ATTRIBUTES
    return _keyvalue(POLICY_KEY, name, tag) + _keyvalue(RATE_KEY, rate, tag)


def decision_attribute(decision: str, logs: bool = False) -> bytes:
    """`tailsampling.decision` (dry_run): the decision the policies made, though the item is passed on."""
    return _keyvalue(DECISION_KEY, field(0x0A, decision.encode()), RECORD_ATTRIBUTES if logs else SPAN_ATTRIBUTES)


def strip_annotation(span: bytes, logs: bool = False) -> bytes:
    """The span (or log record) without its `tailsampling.policy` / `tailsampling.sample_rate`
    attributes (itself when it has none). Every other field is kept byte for byte, in order; it was
    validated when it was received."""
    attributes = RECORD_ATTRIBUTES if logs else SPAN_ATTRIBUTES
    end = len(span)
    pos = 0
    kept_from = 0
    parts: list[bytes] = []
    while pos < end:
        start = pos
        tag, pos = _tag(span, pos, end)
        if tag == attributes:
            n, pos = _length(span, pos, end)
            if _key(span, pos, pos + n) in _MARK_KEYS_UTF8:
                parts.append(span[kept_from:start])
                kept_from = pos + n
            pos += n
        else:
            pos = _skip(span, pos, end, tag, 0)
    if not parts:
        return span
    parts.append(span[kept_from:])
    return b"".join(parts)


def _key(data: bytes, pos: int, end: int) -> bytes:
    """The key of the KeyValue in data[pos:end], as UTF-8 (the last one, should it repeat)."""
    key = b""
    while pos < end:
        tag, pos = _tag(data, pos, end)
        if tag == 0x0A:
            n, pos = _length(data, pos, end)
            key = data[pos : pos + n]
            pos += n
        else:
            pos = _skip(data, pos, end, tag, 0)
    return key


def _varint_size(n: int) -> int:
    return 1 if n < 0x80 else 2 if n < 0x4000 else 3 if n < 0x200000 else 4 if n < 0x10000000 else 5


def span_size(data: bytes, suffix: int) -> int:
    """Bytes one span takes in an export request: a ScopeSpans.spans field, with `suffix` bytes of
    annotation appended."""
    size = len(data) + suffix
    return 1 + _varint_size(size) + size


def spans_size(spans: list[bytes], suffix: int) -> int:
    n = 0
    for data in spans:
        n += span_size(data, suffix)
    return n


def group_size(group: Group) -> int:
    """At most what one resource and scope add to an export request besides its spans: their fields
    and the tags and lengths of the ResourceSpans and ScopeSpans holding them (for requests under
    4 GiB). Groups sharing a resource share it in the request, so this bounds, not measures."""
    return len(group.resource) + len(group.scope) + 12


Item = tuple[Iterable[bytes], Iterable[Group], bytes]  # spans, their groups, annotation suffix


def encode_request(items: Iterable[Item]) -> bytes:
    """An ExportTraceServiceRequest holding every span of `items`, regrouped by resource and scope;
    or, given log records and their groups, an ExportLogsServiceRequest (the same field numbers).
    One request holds one signal: the groups are all of spans or all of records."""
    tree: dict[bytes, dict[bytes, list[bytes]]] = {}
    for spans, groups, suffix in items:
        last: Group | None = None
        bucket: list[bytes] = []
        for data, group in zip(spans, groups, strict=True):
            if group is not last:
                last = group
                bucket = tree.setdefault(group.resource, {}).setdefault(group.scope, [])
            bucket.append(length_prefix(0x12, len(data) + len(suffix)))
            bucket.append(data)
            if suffix:
                bucket.append(suffix)
    parts: list[bytes] = []
    for resource, scopes in tree.items():
        scope_parts: list[bytes] = []
        for scope, span_parts in scopes.items():
            size = len(scope) + sum(len(p) for p in span_parts)
            scope_parts.append(length_prefix(0x12, size))
            scope_parts.append(scope)
            scope_parts.extend(span_parts)
        size = len(resource) + sum(len(p) for p in scope_parts)
        parts.append(length_prefix(0x0A, size))
        parts.append(resource)
        parts.extend(scope_parts)
    return b"".join(parts)
