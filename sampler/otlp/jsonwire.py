"""OTLP/JSON straight to protobuf wire bytes, driven by the installed message descriptors.

protobuf's own `json_format` parses a JSON document by walking the descriptors in Python and setting
fields one by one, slowly, on the event loop, so one client posting OTLP/JSON stalled every
receiver (docs/performance.md). Here the decoded JSON (dicts and lists from `json.loads`, which is C) is encoded
field by field into the bytes protobuf would accept, with tables built once per message type; the
module is compiled by the package build (mypyc).

It follows the proto3 JSON mapping as OTLP/JSON uses it: keys in lowerCamelCase or as the proto field
names; trace and span ids as hex (not base64, the OTLP exception); other bytes base64; 64-bit
integers as numbers or strings; enums as integers or names; `null` as the default; unknown keys
ignored. What protobuf's parser refuses is refused with WireError: a wrong JSON type, a number out of
its field's range, a fraction for an integer, bad hex or base64, two members of one oneof, null in a
list, unpaired surrogates. tests/test_jsonwire.py holds it to `json_format` on random documents.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from sampler.otlp.wire import WireError

# Field encodings.
VARINT: Final = 0  # int32, int64, uint32, uint64, enum, bool
SIGNED32: Final = 1  # int32 / enum: negative values take ten bytes, like int64
FIXED64: Final = 2
SFIXED64: Final = 3
FIXED32: Final = 4
SFIXED32: Final = 5
DOUBLE: Final = 6
FLOAT: Final = 7
BOOL: Final = 8
STRING: Final = 9
BYTES: Final = 10
HEX_ID: Final = 11  # OTLP's trace and span ids: hex in JSON
MESSAGE: Final = 12
ENUM: Final = 13
ZIGZAG: Final = 14  # sint32, sint64

_HEX_IDS = frozenset({"trace_id", "span_id", "parent_span_id"})
_INT_RANGES: Final = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOAT_MAX = 3.4028234663852886e38


class Field:
    """How one field is written: its key bytes, its encoding, and what its value may be."""

    __slots__ = ("enum", "high", "kind", "low", "name", "oneof", "packed", "repeated", "sub", "tag")

    def __init__(self, f: FieldDescriptor, sub: Schema | None) -> None:
        self.name = f.name
        self.repeated = f.is_repeated
        self.oneof = f.containing_oneof.name if f.containing_oneof is not None else ""
        self.sub = sub
        self.enum: dict[str, int] = {}
        self.low, self.high = _INT_RANGES.get(f.type, (0, 0))
        t = f.type
        wire = 0
        if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_UINT32):
            self.kind = VARINT
        elif t == FieldDescriptor.TYPE_INT32:
            self.kind = SIGNED32
        elif t == FieldDescriptor.TYPE_ENUM and f.enum_type is not None:
            self.kind = ENUM
            self.enum = {v.name: v.number for v in f.enum_type.values}
        elif t == FieldDescriptor.TYPE_BOOL:
            self.kind = BOOL
        elif t == FieldDescriptor.TYPE_FIXED64:
            self.kind, wire = FIXED64, 1
        elif t == FieldDescriptor.TYPE_SFIXED64:
            self.kind, wire = SFIXED64, 1
        elif t == FieldDescriptor.TYPE_FIXED32:
            self.kind, wire = FIXED32, 5
        elif t == FieldDescriptor.TYPE_SFIXED32:
            self.kind, wire = SFIXED32, 5
        elif t == FieldDescriptor.TYPE_DOUBLE:
            self.kind, wire = DOUBLE, 1
        elif t == FieldDescriptor.TYPE_FLOAT:
            self.kind, wire = FLOAT, 5
        elif t == FieldDescriptor.TYPE_STRING:
            self.kind, wire = STRING, 2
        elif t == FieldDescriptor.TYPE_BYTES:
            self.kind, wire = (HEX_ID if f.name in _HEX_IDS else BYTES), 2
        elif t == FieldDescriptor.TYPE_MESSAGE:
            self.kind, wire = MESSAGE, 2
        elif t in (FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64):
            self.kind = ZIGZAG
        else:  # groups: OTLP has none
            raise ValueError(f"unsupported field type {t} for {f.full_name}")
        # proto3 packs repeated numbers: one length-delimited field holding every value (metrics'
        # bucket counts and bounds), as protobuf writes them
        self.packed = self.repeated and wire in (0, 1, 5)
        self.tag = _varint((f.number << 3) | (2 if self.packed else wire))


class Schema:
    """The fields of one message type, by JSON name and by proto name."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: dict[str, Field] = {}


def schema_of(desc: Descriptor, built: dict[str, Schema] | None = None) -> Schema:
    """The encoding tables of a message type and every type it contains."""
    built = {} if built is None else built
    found = built.get(desc.full_name)
    if found is not None:
        return found
    schema = built[desc.full_name] = Schema(desc.full_name)
    for f in desc.fields:
        sub = schema_of(f.message_type, built) if f.message_type is not None else None
        field = Field(f, sub)
        schema.fields[f.json_name] = field
        schema.fields[f.name] = field
    return schema


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    return _varint(n)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _integer(value: object, field: Field, where: str) -> int:
    """An integer field's value from a JSON number or string (as protobuf's parser reads them: a
    float or numeric string only when integral), range-checked."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise WireError(f"{where}: expected an integer, got {_type_name(value)}")
    n: int
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise WireError(f"{where}: {value} is not an integer")
        n = int(value)
    else:
        if " " in value:
            raise WireError(f"{where}: {value!r} is not an integer")
        try:
            n = int(value)
        except ValueError:
            try:
                f = float(value)
            except ValueError:
                raise WireError(f"{where}: {value!r} is not an integer") from None
            if not f.is_integer():
                raise WireError(f"{where}: {value!r} is not an integer") from None
            n = int(f)
    if n < field.low or n > field.high:
        raise WireError(f"{where}: {n} is out of range")
    return n


def _float(value: object, field: Field, where: str) -> float:
    """A floating-point field's value: a JSON number, or a string protobuf's parser reads as one
    ("NaN", "Infinity", "-Infinity" included)."""
    if not isinstance(value, int | float | str):
        raise WireError(f"{where}: expected a number, got {_type_name(value)}")
    if value == "nan":
        raise WireError(f"{where}: 'nan' is not a number (use \"NaN\")")
    try:
        x = float(value)
    except ValueError:
        if value == "NaN":
            return math.nan
        if value == "Infinity":
            return math.inf
        if value == "-Infinity":
            return -math.inf
        raise WireError(f"{where}: {value!r} is not a number") from None
    if field.kind == FLOAT and isinstance(value, float) and abs(x) > _FLOAT_MAX:
        raise WireError(f"{where}: {value!r} is out of range for a float")
    return x


def _enum(value: object, field: Field, where: str) -> int | None:
    """An enum's number from its name or a number; None for a name this schema does not know
    (ignored, like an unknown key)."""
    if isinstance(value, str) and value in field.enum:
        return field.enum[value]
    if not isinstance(value, int | float | str):
        raise WireError(f"{where}: expected an enum name or number, got {_type_name(value)}")
    try:
        n = int(value)
    except ValueError:
        return None
    except OverflowError:
        raise WireError(f"{where}: {value!r} is out of range") from None
    if n < field.low or n > field.high:
        raise WireError(f"{where}: {n} is out of range")
    return n


def _scalar(value: object, field: Field, where: str) -> bytes | None:
    """The wire bytes of one scalar value (without its tag); None for an enum name this schema does
    not know (ignored, like an unknown key)."""
    kind = field.kind
    if kind == STRING:
        if not isinstance(value, str):
            raise WireError(f"{where}: expected a string, got {_type_name(value)}")
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError(f"{where}: unpaired surrogate in a string") from None
        return _length(len(data)) + data
    if kind in (VARINT, SIGNED32):
        return _varint(_integer(value, field, where) & 0xFFFFFFFFFFFFFFFF)
    if kind == ZIGZAG:
        n = _integer(value, field, where)
        return _varint(((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF)
    if kind == ENUM:
        number = _enum(value, field, where)
        return None if number is None else _varint(number & 0xFFFFFFFFFFFFFFFF)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise WireError(f"{where}: expected true or false, got {_type_name(value)}")
        return b"\x01" if value else b"\x00"
    if kind in (FIXED64, SFIXED64):
        return (_integer(value, field, where) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
    if kind in (FIXED32, SFIXED32):
        return (_integer(value, field, where) & 0xFFFFFFFF).to_bytes(4, "little")
    if kind == DOUBLE:
        return struct.pack("<d", _float(value, field, where))
    if kind == FLOAT:
        return struct.pack("<f", _float(value, field, where))
    if kind == HEX_ID:
        if not isinstance(value, str):
            raise WireError(f"{where}: expected a hex string, got {_type_name(value)}")
        try:
            data = bytes.fromhex(value)
        except ValueError:
            raise WireError(f"{where}: {value!r} is not valid hex") from None
        return _length(len(data)) + data
    if kind == BYTES:
        if not isinstance(value, str):
            raise WireError(f"{where}: expected a base64 string, got {_type_name(value)}")
        try:  # as protobuf's parser does: either alphabet, padding optional
            encoded = value.encode("utf-8")
            data = base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise WireError(f"{where}: {value!r} is not valid base64") from None
        return _length(len(data)) + data
    raise WireError(f"{where}: cannot encode")


def encode_message(obj: object, schema: Schema, where: str) -> bytes:
    """The wire bytes of one message (its fields, not its own tag and length)."""
    if not isinstance(obj, dict):
        raise WireError(f"{where}: expected an object, got {_type_name(obj)}")
    parts: list[bytes] = []
    fields = schema.fields
    seen_oneof = ""
    for key, value in obj.items():
        field = fields.get(key)
        if field is None or value is None:
            continue  # unknown keys are ignored, null means the default
        if field.oneof:
            if seen_oneof == field.oneof:
                raise WireError(f"{where}: more than one member of {field.oneof}")
            seen_oneof = field.oneof
        path = f"{where}.{key}"
        if field.repeated:
            if not isinstance(value, list):
                raise WireError(f"{path}: expected a list, got {_type_name(value)}")
            if field.packed:
                values: list[bytes] = []
                for i, item in enumerate(value):
                    if item is None:
                        raise WireError(f"{path}[{i}]: null in a list")
                    data = _scalar(item, field, f"{path}[{i}]")
                    if data is not None:
                        values.append(data)
                if values:
                    packed = b"".join(values)
                    parts.append(field.tag)
                    parts.append(_length(len(packed)))
                    parts.append(packed)
                continue
            for i, item in enumerate(value):
                if item is None:
                    raise WireError(f"{path}[{i}]: null in a list")
                if field.sub is not None:
                    body = encode_message(item, field.sub, f"{path}[{i}]")
                    parts.append(field.tag)
                    parts.append(_length(len(body)))
                    parts.append(body)
                else:
                    data = _scalar(item, field, f"{path}[{i}]")
                    if data is not None:
                        parts.append(field.tag)
                        parts.append(data)
        elif field.sub is not None:
            body = encode_message(value, field.sub, path)
            parts.append(field.tag)
            parts.append(_length(len(body)))
            parts.append(body)
        else:
            data = _scalar(value, field, path)
            # proto3 leaves a singular scalar at its default (all its bytes zero: 0, "", false,
            # +0.0 but not -0.0) off the wire; a oneof member is written whatever its value.
            if data is not None and (field.oneof or data.strip(b"\0")):
                parts.append(field.tag)
                parts.append(data)
    return b"".join(parts)


def encode(doc: object, schema: Schema) -> bytes:
    """A request message's wire bytes from its decoded OTLP/JSON document; WireError if invalid."""
    try:
        return encode_message(doc, schema, schema.name.rsplit(".", 1)[-1])
    except RecursionError:
        raise WireError("OTLP/JSON nested too deeply") from None
