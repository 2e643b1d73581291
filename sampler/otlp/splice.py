"""Build export requests by splicing stored bytes, with no re-encoding.

A protobuf message is the concatenation of its fields, so a ScopeSpans is its scope fields plus
one length-delimited field per stored span, and a ResourceSpans its resource fields plus one field
per ScopeSpans. Annotating a span is appending one more `attributes` field (a KeyValue) to it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from sampler.otlp.wire import Group

POLICY_KEY = "tailsampling.policy"
RATE_KEY = "tailsampling.sample_rate"


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


def _keyvalue(key: str, value: bytes) -> bytes:
    return field(0x4A, field(0x0A, key.encode()) + field(0x12, value))  # Span.attributes = 9


def annotation(policy: str | None, sample_rate: float) -> bytes:
    """The two attributes added to every span of a kept trace. The rate is an int when whole
    (the common case: 1, 10, 100) and a double otherwise."""
    name = field(0x0A, (policy or "").encode())  # AnyValue.string_value
    if sample_rate == int(sample_rate):
        rate = b"\x18" + varint(int(sample_rate) & 0xFFFFFFFFFFFFFFFF)  # AnyValue.int_value
    else:
        rate = b"\x21" + struct.pack("<d", sample_rate)  # AnyValue.double_value
    return _keyvalue(POLICY_KEY, name) + _keyvalue(RATE_KEY, rate)


Item = tuple[Iterable[bytes], Iterable[Group], bytes]  # spans, their groups, annotation suffix


def encode_request(items: Iterable[Item]) -> bytes:
    """An ExportTraceServiceRequest holding every span of `items`, regrouped by resource and scope."""
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
