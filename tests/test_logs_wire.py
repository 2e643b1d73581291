"""The logs splitters against each other and against protobuf's own parser (upb).

`logs._split_logs` (interpreted) and `_split.split_logs` (compiled, when the build made it) must give
the same LogChunks for every request (trace ids, record bytes, groups and their identity, nbytes,
severity_max, marked) and refuse the same requests: exactly those upb refuses
(`ExportLogsServiceRequest.FromString`), plus records whose trace_id or span_id has a length OTLP
forbids. Requests are built with the protobuf classes (and raw bytes where protobuf cannot write them).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

import sampler.otlp.logs as logs
from sampler.otlp.logs import NO_TRACE, LogChunk
from sampler.otlp.splice import MARK_KEYS, POLICY_KEY, RATE_KEY, field, varint
from sampler.otlp.split import Splitter
from sampler.otlp.wire import MAX_DEPTH, WireError

SplitLogs = Callable[[bytes, Splitter], list[LogChunk]]
SPLITS: dict[str, SplitLogs] = {"interpreted": logs._split_logs}
try:
    from sampler.otlp._split import split_logs as compiled_split_logs
except ImportError:
    pass
else:
    SPLITS["compiled"] = compiled_split_logs

NOT_COMPILED = ("the compiled logs splitter (sampler.otlp._split.split_logs) is not built: the package was "
                "installed without compiling (TAILSAMPLER_NO_COMPILE, no Cython or C compiler)")
needs_compiled = pytest.mark.skipif("compiled" not in SPLITS, reason=NOT_COMPILED)
REFUSED = "refused"
PRIMITIVES = ("string_value", "bool_value", "int_value", "double_value")


def new_splitter() -> Splitter:
    return Splitter(frozenset({"http.route"}), lambda key, value: 1, lambda attrs: 2)


def view(chunks: list[LogChunk]) -> list[tuple[object, ...]]:
    """Everything a chunk says, groups by value and by identity (the index of each group object's
    first appearance)."""
    ids: dict[int, int] = {}
    return [
        (type(c), c.trace_id, c.records, c.nbytes, c.severity_max, c.marked,
         [(ids.setdefault(id(g), len(ids)), g.resource, g.scope, g.attrs, g.service, g.logs, g.match_bits)
          for g in c.groups])
        for c in chunks
    ]


def outcome(split_logs: SplitLogs, data: bytes, splitter: Splitter | None = None) -> object:
    try:
        return view(split_logs(data, splitter or new_splitter()))
    except WireError:
        return REFUSED


def _primitive(value: AnyValue) -> object:
    which = value.WhichOneof("value")
    return getattr(value, which) if which in PRIMITIVES else None


def upb_chunks(data: bytes) -> object:
    """The chunks as upb's parse of the request says they are (records and groups as messages,
    compared as their serializations); REFUSED when upb refuses it or an id has a wrong length."""
    try:
        msg = ExportLogsServiceRequest.FromString(data)
    except DecodeError:
        return REFUSED
    by_trace: dict[bytes, list[object]] = {}
    for rl in msg.resource_logs:
        resource = ResourceLogs()
        resource.CopyFrom(rl)
        resource.ClearField("scope_logs")
        attrs: dict[str, object] = {}
        for a in rl.resource.attributes:
            if a.key == "service.name" and _primitive(a.value) is not None:
                attrs[a.key] = _primitive(a.value)
        for sl in rl.scope_logs:
            scope = ScopeLogs()
            scope.CopyFrom(sl)
            scope.ClearField("log_records")
            for r in sl.log_records:
                if len(r.trace_id) not in (0, 16) or len(r.span_id) not in (0, 8):
                    return REFUSED
                tid = r.trace_id if r.trace_id and r.trace_id != bytes(16) else NO_TRACE
                chunk = by_trace.setdefault(tid, [tid, [], [], 0, False])
                chunk[1].append(r.SerializeToString())
                chunk[2].append((resource.SerializeToString(), scope.SerializeToString(), attrs))
                chunk[3] = max(chunk[3], r.severity_number)
                chunk[4] = chunk[4] or any(a.key in MARK_KEYS and _primitive(a.value) is not None for a in r.attributes)
    return [tuple(c) for c in by_trace.values()]


def reparsed(chunks: list[LogChunk]) -> list[tuple[object, ...]]:
    """A splitter's chunks in the terms of upb_chunks (each record and group parsed and reserialized)."""
    return [
        (c.trace_id, [LogRecord.FromString(r).SerializeToString() for r in c.records],
         [(ResourceLogs.FromString(g.resource).SerializeToString(), ScopeLogs.FromString(g.scope).SerializeToString(),
           g.attrs) for g in c.groups],
         c.severity_max, c.marked)
        for c in chunks
    ]


def differential(data: bytes) -> None:
    """Every splitter gives the same outcome, and it is upb's: refused exactly when upb refuses (or an
    id length is wrong), otherwise the records and groups upb reads, grouped by trace."""
    outcomes = {name: outcome(split, data) for name, split in SPLITS.items()}
    assert all(o == outcomes["interpreted"] for o in outcomes.values()), outcomes
    expected = upb_chunks(data)
    if expected == REFUSED:
        assert outcomes["interpreted"] == REFUSED
        return
    assert outcomes["interpreted"] != REFUSED
    for split in SPLITS.values():
        chunks = split(data, new_splitter())
        assert reparsed(chunks) == expected
        assert all(c.nbytes == sum(map(len, c.records)) for c in chunks)


# Building requests


def any_value(v: object) -> AnyValue:
    """An AnyValue from a plain value: None is an empty AnyValue, lists arrays, dicts kvlists."""
    out = AnyValue()
    if v is None:
        return out
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int):
        out.int_value = v
    elif isinstance(v, float):
        out.double_value = v
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, bytes):
        out.bytes_value = v
    elif isinstance(v, list):
        out.array_value.values.extend(any_value(x) for x in v)
        if not v:
            out.array_value.SetInParent()
    else:
        assert isinstance(v, dict)
        out.kvlist_value.values.extend(KeyValue(key=k, value=any_value(x)) for k, x in v.items())
        if not v:
            out.kvlist_value.SetInParent()
    return out


def kv(key: str, value: object) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def record(trace: bytes = b"", span: bytes = b"", severity: int = 0, body: object = "hello",
           attrs: dict[str, object] | None = None, text: str = "") -> LogRecord:
    r = LogRecord(trace_id=trace, span_id=span, severity_number=severity, severity_text=text,
                  time_unix_nano=1_700_000_000_000_000_000, flags=1 if trace else 0)
    if body is not None:
        r.body.CopyFrom(any_value(body))
    r.attributes.extend(kv(k, v) for k, v in (attrs or {}).items())
    return r


def request(resources: list[tuple[dict[str, object], list[tuple[str, list[LogRecord]]]]]) -> bytes:
    """[(resource attributes, [(scope name, records)])] serialized."""
    req = ExportLogsServiceRequest()
    for rattrs, scopes in resources:
        rl = req.resource_logs.add()
        rl.resource.attributes.extend(kv(k, v) for k, v in rattrs.items())
        rl.schema_url = "https://opentelemetry.io/schemas/1.26.0"
        for name, records in scopes:
            sl = rl.scope_logs.add()
            sl.scope.name = name
            sl.scope.version = "1.2"
            sl.log_records.extend(records)
    return req.SerializeToString()


def rich_request() -> bytes:
    """Several resources and scopes (two of them the same bytes), records with and without trace
    ids, all-zero ids, severities of every sign, marking attributes, nested bodies."""
    nested = {"user": {"id": 7, "tags": ["a", "b", {"deep": [1.5, None, b"\x00"]}]}, "ok": True}
    a = [record(tid(1), b"s" * 8, 9, "GET /a 200", {"http.route": "/a", POLICY_KEY: "errors"}),
         record(severity=5, body=nested, attrs={"n": 3, "f": 0.5}),
         record(bytes(16), b"", 17, ["x", 1, 2.5], {"é.ключ": "ü"}),
         record(tid(2), b"t" * 8, -3, None, {RATE_KEY: 10.0}, text="WARN"),
         record(tid(1), b"u" * 8, 2**31 - 1, "again")]
    b = [record(tid(2), b"v" * 8, -(2**31), {"k": {}}, {"arr": [], POLICY_KEY: ["not", "primitive"]}),
         record(tid(3), b"", 21, "", {RATE_KEY: b"bytes"}),
         record(bytes(16), b"w" * 8, 0, 42)]
    return request([
        ({"service.name": "checkout", "host": "h1"}, [("lib.a", a), ("lib.b", b), ("lib.empty", [])]),
        ({"service.name": "checkout", "host": "h1"}, [("lib.a", b)]),  # the same resource and scope bytes
        ({"host": "h2", "service.name": 5}, [("", a[:2])]),
        ({}, []),
    ])


def realistic_request(rng: random.Random, n: int = 100) -> bytes:
    """Bodies of 80-200 bytes, 3-6 attributes, 80% of records with trace ids (as bench/logsplit.py)."""
    records = []
    traces = [rng.randbytes(16) for _ in range(max(1, n // 5))]
    for _ in range(n):
        traced = rng.random() < 0.8
        attrs: dict[str, object] = {"http.route": f"/api/v1/item/{rng.randrange(50)}",
                                    "http.response.status_code": rng.choice([200, 200, 404, 500])}
        for j in range(rng.randint(1, 4)):
            attrs[f"app.field{j}"] = rng.choice(["x" * rng.randint(3, 30), rng.random(), rng.randrange(10**6), True])
        body = "".join(rng.choice("abcdefghij klmnop=:/") for _ in range(rng.randint(80, 200)))
        records.append(record(rng.choice(traces) if traced else b"", rng.randbytes(8) if traced else b"",
                              rng.choice([5, 9, 9, 9, 13, 17]), body, attrs))
    return request([({"service.name": f"svc{s}"}, [(f"lib{s}.{c}", records[s * 50 + c * 25:s * 50 + c * 25 + 25])
                                                   for c in range(2)]) for s in range(n // 50)])


# Agreement on valid requests


def test_rich_request_matches_upb_in_both() -> None:
    differential(rich_request())


@needs_compiled
def test_compiled_and_interpreted_give_identical_chunks() -> None:
    rng = random.Random(5)
    for data in [rich_request(), b"", *(realistic_request(rng) for _ in range(3))]:
        interpreted = outcome(logs._split_logs, data)
        assert interpreted != REFUSED
        assert outcome(SPLITS["compiled"], data) == interpreted


def test_rich_request_chunks() -> None:
    data = rich_request()
    for split in SPLITS.values():
        chunks = split(data, new_splitter())
        assert [c.trace_id for c in chunks] == [tid(1), NO_TRACE, tid(2), tid(3)]
        assert [len(c.records) for c in chunks] == [3, 5, 3, 2]
        assert [c.severity_max for c in chunks] == [2**31 - 1, 17, 0, 21]  # tid(2): all negative
        assert [c.marked for c in chunks] == [True, False, True, False]
        assert all(type(c) is LogChunk and type(c.nbytes) is int and type(c.severity_max) is int
                   and type(c.marked) is bool and all(type(r) is bytes for r in c.records) for c in chunks)
        msg = ExportLogsServiceRequest.FromString(data)
        first = [r.SerializeToString() for r in msg.resource_logs[0].scope_logs[0].log_records]
        assert chunks[0].records[:2] == [first[0], first[4]]  # records are the request's bytes, in order


def test_groups_are_interned_per_resource_and_scope_and_shared_by_both() -> None:
    """The same (resource, scope) bytes give the same Group object, within a request, across
    requests and across the two splitters (they intern through the same Splitter)."""
    data = rich_request()
    splitter = new_splitter()
    first = logs._split_logs(data, splitter)
    groups = {id(g): g for c in first for g in c.groups}
    assert len(groups) == 3  # lib.a (in two ResourceLogs of the same bytes) and lib.b of checkout, h2's scope
    assert all(g.logs and g.match_bits == 0 for g in groups.values())
    assert sorted(str(g.attrs) for g in groups.values()) == sorted(
        ["{'service.name': 'checkout'}"] * 2 + ["{'service.name': 5}"])
    assert {g.service for g in groups.values()} == {"checkout", ""}
    assert splitter.groups == {} and len(splitter.log_groups) == 3
    for split in SPLITS.values():
        again = split(data, splitter)
        assert [[id(g) for g in c.groups] for c in again] == [[id(g) for g in c.groups] for c in first]


def test_severities_are_int32_as_upb_reads_them() -> None:
    """severity_number is an int32 enum: a varint's low 32 bits, signed; the last occurrence counts."""
    base = record(tid(1)).SerializeToString()
    cases = [(-5, b""), (0, b""), (2**31 - 1, b""), (-(2**31), b"")]
    raw = [2**40 + 7, 2**32 - 1, 2**64 - 1, 2**63, 2**31, 300]
    datas = [request([({}, [("s", [record(tid(1), severity=s)])])]) for s, _ in cases]
    for v in raw:
        rec = base + b"\x10" + varint(v)
        datas.append(field(0x0A, field(0x12, field(0x12, rec))))
    rec = base + b"\x10\x05" + b"\x10" + varint(2**64 - 2)  # two occurrences: -2 counts
    datas.append(field(0x0A, field(0x12, field(0x12, rec))))
    for data in datas:
        differential(data)
    got = [SPLITS[name](d, new_splitter())[0].severity_max for d in datas for name in SPLITS]
    want = [max(0, ExportLogsServiceRequest.FromString(d).resource_logs[0].scope_logs[0].log_records[0].severity_number)
            for d in datas for _ in SPLITS]
    assert got == want
    assert want[len(cases) * len(SPLITS)] == 7  # 2**40 + 7 keeps its low bits


@pytest.mark.parametrize(("value", "marked"), [
    ("errors", True), (10.0, True), (3, True), (False, True),
    (["a"], False), ({"k": "v"}, False), (b"x", False), (None, False),
])
@pytest.mark.parametrize("key", sorted(MARK_KEYS))
def test_marked_by_a_mark_key_with_a_primitive_value(key: str, value: object, marked: bool) -> None:
    data = request([({}, [("s", [record(tid(1), attrs={"a": 1, key: value}), record(tid(1))])])])
    for split in SPLITS.values():
        assert [c.marked for c in split(data, new_splitter())] == [marked]
    differential(data)


def test_mark_keys_elsewhere_do_not_mark() -> None:
    """In the body, nested in a kvlist attribute, or on the resource: not the record's attribute."""
    data = request([({POLICY_KEY: "x"}, [("s", [record(tid(1), body={POLICY_KEY: "x"},
                                                        attrs={"m": {RATE_KEY: 1}, "tailsampling.other": "x"})])])])
    for split in SPLITS.values():
        assert [c.marked for c in split(data, new_splitter())] == [False]


def test_unknown_fields_at_every_level_are_kept_in_records_and_groups() -> None:
    # an unknown varint (99), group (98) with a fixed32 inside, fixed32 (97), fixed64 (96) and bytes (95)
    extra = (b"\x98\x06\x05" + b"\x93\x06\x0d\x01\x02\x03\x04\x94\x06" + b"\x8d\x06\x01\x02\x03\x04"
             + b"\x81\x06" + bytes(8) + b"\xfa\x05\x02\xff\xfe")
    rec = record(tid(4), body={"k": [1]}).SerializeToString() + extra
    scope = field(0x0A, field(0x0A, b"lib") + extra) + extra + field(0x12, rec)
    resource = field(0x0A, field(0x0A, field(0x0A, b"service.name") + field(0x12, field(0x0A, b"s")) + extra)
                     + extra) + extra + field(0x12, scope)
    data = field(0x0A, resource) + extra
    differential(data)
    for split in SPLITS.values():
        (chunk,) = split(data, new_splitter())
        assert chunk.records == [rec]
        assert chunk.groups[0].attrs == {"service.name": "s"}
        assert chunk.groups[0].scope == field(0x0A, field(0x0A, b"lib") + extra) + extra


# Refusals


def test_truncation_at_every_byte_agrees_with_upb() -> None:
    data = rich_request()
    for n in range(len(data)):
        differential(data[:n])


@pytest.mark.parametrize(("trace", "span", "message"), [
    (b"t" * 15, b"", "trace_id has 15 bytes"), (b"t" * 17, b"s" * 8, "trace_id has 17 bytes"),
    (b"t", b"", "trace_id has 1 bytes"), (b"t" * 16, b"s" * 7, "span_id has 7 bytes"),
    (b"", b"s" * 9, "span_id has 9 bytes"), (b"", b"s" * 16, "span_id has 16 bytes"),
])
def test_wrong_id_lengths_are_refused_though_upb_accepts(trace: bytes, span: bytes, message: str) -> None:
    data = request([({}, [("s", [record(tid(1)), record(trace, span)])])])
    ExportLogsServiceRequest.FromString(data)
    for split in SPLITS.values():
        with pytest.raises(WireError, match=message):
            split(data, new_splitter())
    differential(data)


MARKER = "XYZZY"


@pytest.mark.parametrize("where", [
    "body", "nested body key", "nested body string", "attribute key", "attribute value", "mark attribute value",
    "severity_text", "event_name", "scope name", "scope attribute", "resource attribute key",
    "resource attribute value",
])
def test_invalid_utf8_is_refused_where_upb_refuses_it(where: str) -> None:
    r = record(tid(1), b"s" * 8, 9, "ok", {"a": 1})
    rattrs: dict[str, object] = {"service.name": "svc"}
    scope = "lib"
    if where == "body":
        r.body.string_value = MARKER
    elif where == "nested body key":
        r.body.CopyFrom(any_value({MARKER: 1}))
    elif where == "nested body string":
        r.body.CopyFrom(any_value([1, {"k": [MARKER]}]))
    elif where == "attribute key":
        r.attributes.append(kv(MARKER, 1))
    elif where == "attribute value":
        r.attributes.append(kv("k", MARKER))
    elif where == "mark attribute value":
        r.attributes.append(kv(POLICY_KEY, MARKER))
    elif where == "severity_text":
        r.severity_text = MARKER
    elif where == "event_name":
        r.event_name = MARKER
    elif where == "scope name":
        scope = MARKER
    elif where == "resource attribute key":
        rattrs[MARKER] = "v"
    elif where == "resource attribute value":
        rattrs["service.name"] = MARKER
    good = request([(rattrs, [(scope, [record(tid(2)), r])])])
    if where == "scope attribute":
        req = ExportLogsServiceRequest.FromString(good)
        req.resource_logs[0].scope_logs[0].scope.attributes.append(kv("k", MARKER))
        good = req.SerializeToString()
    differential(good)
    bad = good.replace(MARKER.encode(), b"XY\xffZY")
    assert bad != good
    with pytest.raises(DecodeError):
        ExportLogsServiceRequest.FromString(bad)
    for split in SPLITS.values():
        with pytest.raises(WireError, match="UTF-8"):
            split(bad, new_splitter())


def _at_every_level(payload: bytes) -> list[bytes]:
    """`payload` appended to the request, a ResourceLogs, a ScopeLogs, a LogRecord and its body."""
    rec = record(tid(1), body={"k": "v"}).SerializeToString()
    body_only = record(tid(1), body=None).SerializeToString()
    body = any_value({"k": "v"}).SerializeToString()

    def wrap(rec: bytes, scope_extra: bytes = b"", resource_extra: bytes = b"") -> bytes:
        return field(0x0A, field(0x12, field(0x12, rec) + scope_extra) + resource_extra)

    return [wrap(rec) + payload, wrap(rec, resource_extra=payload), wrap(rec, scope_extra=payload),
            wrap(rec + payload), wrap(body_only + field(0x2A, body + payload))]


@pytest.mark.parametrize(("name", "payload"), [
    ("wire type 6", b"\xa6\x06\x01"), ("wire type 7", b"\x0f\x01"), ("stray end-group", b"\x9c\x06"),
    ("unterminated group", b"\x9b\x06\x08\x01"), ("mismatched end-group", b"\x9b\x06\xa4\x06"),
    ("field number 0", b"\x00\x01"), ("field number 0 as bytes", b"\x02\x00"),
    ("varint of 11 bytes", b"\x98\x06" + b"\xff" * 10 + b"\x01"), ("truncated fixed64", b"\x81\x06\x01\x02"),
    ("truncated fixed32", b"\x8d\x06\x01"), ("length past the end", b"\xfa\x05\x7f"),
    ("known field, wrong wire type", b"\x28\x01"), ("known message as fixed32", b"\x0d\x01\x02\x03\x04"),
    ("field number past 2**29", b"\x80\x80\x80\x80\x20\x00"),
])
def test_bad_framing_and_wire_types_at_every_level(name: str, payload: bytes) -> None:
    for data in _at_every_level(payload):
        differential(data)


def _nested(levels: int, odd: bool) -> bytes:
    """An AnyValue `levels` arrays deep (two messages a level), around a kvlist when `odd` (three
    more), so both parities of the total depth are reached."""
    v = field(0x0A, b"x")
    if odd:
        v = field(0x32, field(0x0A, field(0x0A, b"k") + field(0x12, v)))
    for _ in range(levels):
        v = field(0x2A, field(0x0A, v))
    return v


def _deep_request(where: str, levels: int, odd: bool) -> bytes:
    value = _nested(levels, odd)
    base = record(tid(1)).SerializeToString()
    scope = b""
    resource = b""
    if where == "body":
        base += field(0x2A, value)
    elif where in ("attribute", "mark attribute"):
        key = POLICY_KEY if where == "mark attribute" else "k"
        base += field(0x32, field(0x0A, key.encode()) + field(0x12, value))
    elif where == "scope attribute":
        scope = field(0x0A, field(0x1A, field(0x0A, b"k") + field(0x12, value)))
    elif where == "resource attribute":
        resource = field(0x0A, field(0x0A, field(0x0A, b"service.name") + field(0x12, value)))
    elif where == "unknown groups":
        base += b"\x9b\x06" * levels + b"\x9c\x06" * levels
    return field(0x0A, resource + field(0x12, scope + field(0x12, base)))


@pytest.mark.parametrize("where", ["body", "attribute", "mark attribute", "scope attribute", "resource attribute"])
def test_nesting_beyond_the_recursion_limit_is_refused_exactly_where_upb_refuses(where: str) -> None:
    verdicts = []
    for levels in range(MAX_DEPTH // 2 - 6, MAX_DEPTH // 2 + 1):
        for odd in (False, True):
            data = _deep_request(where, levels, odd)
            differential(data)
            verdicts.append(upb_chunks(data) == REFUSED)
    assert verdicts[0] is False and verdicts[-1] is True  # the range spans the limit


def test_deeply_nested_unknown_groups_agree_with_upb() -> None:
    for levels in (1, 10, 95, 96, 97, 98, 99, 100, 101, 150):
        differential(_deep_request("unknown groups", levels, False))


# Properties


@st.composite
def plain_values(draw: st.DrawFn) -> object:
    leaf = st.one_of(st.none(), st.text(max_size=6), st.integers(-(2**63), 2**63 - 1), st.booleans(),
                     st.floats(allow_nan=True), st.binary(max_size=4))
    return draw(st.recursive(leaf, lambda ch: st.one_of(st.lists(ch, max_size=3),
                                                        st.dictionaries(st.text(max_size=3), ch, max_size=3)),
                             max_leaves=6))


KEYS = ["k", "service.name", "http.route", POLICY_KEY, RATE_KEY, "é", ""]
IDS = [b"", bytes(16), tid(1), tid(2), b"\xff" * 16]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    req = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rl = req.resource_logs.add()
        rl.resource.attributes.extend(kv(draw(st.sampled_from(KEYS)), draw(plain_values()))
                                      for _ in range(draw(st.integers(0, 2))))
        rl.schema_url = draw(st.sampled_from(["", "u"]))
        for _ in range(draw(st.integers(0, 3))):
            sl = rl.scope_logs.add()
            sl.scope.name = draw(st.sampled_from(["", "a", "b"]))
            for _ in range(draw(st.integers(0, 4))):
                r = sl.log_records.add()
                r.trace_id = draw(st.sampled_from(IDS))
                r.span_id = draw(st.sampled_from([b"", b"s" * 8]))
                r.severity_number = draw(st.one_of(st.sampled_from([0, 9, 17, -1]),
                                                   st.integers(-(2**31), 2**31 - 1)))
                r.severity_text = draw(st.sampled_from(["", "INFO"]))
                if draw(st.booleans()):
                    r.body.CopyFrom(any_value(draw(plain_values())))
                r.attributes.extend(kv(draw(st.sampled_from(KEYS)), draw(plain_values()))
                                    for _ in range(draw(st.integers(0, 3))))
                r.time_unix_nano = draw(st.integers(0, 2**64 - 1))
    data = req.SerializeToString()
    if draw(st.booleans()):  # unknown fields at the top level
        data += b"\x98\x06" + varint(draw(st.integers(0, 2**64 - 1)))
    return data


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_random_requests_agree_with_upb(data: bytes) -> None:
    differential(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.one_of(requests(), st.just(rich_request()))))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        else:
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_requests_agree_with_upb(data: bytes) -> None:
    """Compiled, interpreted and upb: the same acceptance, and the same chunks when accepted."""
    differential(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_agree_with_upb(data: bytes) -> None:
    differential(data)
