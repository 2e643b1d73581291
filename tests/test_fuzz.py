"""Bad input, fuzzed: the OTLP protobuf walker, the OTLP/JSON decoder, the HTTP receiver end to end,
and the config/policy loader. No crash, no hang, every bad input a clear error of the documented kind.

Short by default (a few seconds each, part of `make test`). A long run:

    make fuzz   # TAILSAMPLER_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py --timeout 0

With the env var set, each test runs that many examples, and an input that takes over a second is
a failure (hypothesis' deadline). Every input is also timed against a generous hang guard.

The edge-case tests below keep what the fuzzing found once (deep JSON and YAML nesting, NaN and
Infinity literals, alias bombs, multi-line problems, a composite with no valid sub-policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import string
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import yaml
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

import sampler.otlp.split as split
import sampler.otlp.wire as loaded_wire
from sampler.config.yamlfile import ConfigError, Problem, parse_yaml
from sampler.otlp.jsonconv import json_to_protobuf, protobuf_to_dict
from sampler.otlp.split import Chunk, Splitter
from sampler.otlp.wire import WireError
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.loader import COMPOUND, SIMPLE, load_policies
from sampler.receivers.http import HttpReceiver
from sampler.server.settings import load_config
from tests.spans import S, request

EXAMPLES = int(os.environ.get("TAILSAMPLER_FUZZ_EXAMPLES", "0") or 0)
LONG = EXAMPLES > 0
HANG_SECONDS = 5.0  # any single input slower than this is a hang, long run or not

def fuzz(default: int) -> settings:
    """`default` examples in `make test`, TAILSAMPLER_FUZZ_EXAMPLES in a long run (then a 1 s deadline)."""
    return settings(
        max_examples=EXAMPLES or default,
        deadline=timedelta(seconds=1) if LONG else None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture],
        database=None,  # no .hypothesis directory written by `make test`
        print_blob=True,
    )


@contextlib.contextmanager
def hang_guard(what: object) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    elapsed = time.perf_counter() - t0
    assert elapsed < HANG_SECONDS, f"{elapsed:.1f}s on {what!r:.200}"


# --- the OTLP protobuf walker ------------------------------------------------------------------

class SplitWalker:
    """A splitter seen as a walker: the spans of its chunks (the receive path's entry point)."""

    WireError = WireError

    def __init__(self, split_request: Callable[[bytes, Splitter], list[Chunk]]) -> None:
        self.split_request = split_request

    def walk_request(self, data: bytes, keys: frozenset[str]) -> list[bytes]:
        chunks = self.split_request(data, Splitter(keys, lambda key, value: 0, lambda attrs: 0))
        return [span for chunk in chunks for span in chunk.spans]


Walker = ModuleType | SplitWalker
WALKERS = [pytest.param(loaded_wire, id="walker"), pytest.param(SplitWalker(split._split_request), id="interpreted")]
if split.COMPILED:
    WALKERS.append(pytest.param(SplitWalker(split.split_request), id="compiled"))

ATTR_KEYS = ["service.name", "http.route", "k", "url.path", "n", "", "é"]
texts = st.text(max_size=12) | st.sampled_from(ATTR_KEYS)


def any_values(depth: int = 3) -> st.SearchStrategy[AnyValue]:
    leaf = st.one_of(
        st.builds(AnyValue, string_value=texts),
        st.builds(AnyValue, bool_value=st.booleans()),
        st.builds(AnyValue, int_value=st.integers(-(2**63), 2**63 - 1)),
        st.builds(AnyValue, double_value=st.floats()),
        st.builds(AnyValue, bytes_value=st.binary(max_size=8)),
        st.just(AnyValue()),
    )
    if depth == 0:
        return leaf
    inner = any_values(depth - 1)
    return st.one_of(
        leaf,
        st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(inner, max_size=3)),
        st.builds(lambda kvs: AnyValue(kvlist_value=KeyValueList(values=kvs)),
                  st.lists(st.builds(KeyValue, key=texts, value=inner), max_size=3)),
    )


key_values = st.lists(st.builds(KeyValue, key=texts, value=any_values()), max_size=4)
ids16 = st.binary(min_size=16, max_size=16) | st.binary(max_size=20)
ids8 = st.binary(min_size=8, max_size=8) | st.binary(max_size=10)
u64 = st.integers(0, 2**64 - 1)

spans = st.builds(
    Span,
    trace_id=st.binary(min_size=16, max_size=16).filter(any) | ids16,
    span_id=st.binary(min_size=8, max_size=8).filter(any) | ids8,
    parent_span_id=st.just(b"") | ids8,
    trace_state=texts,
    name=texts,
    kind=st.integers(0, 5) | st.integers(-(2**31), 2**31 - 1),
    start_time_unix_nano=u64,
    end_time_unix_nano=u64,
    attributes=key_values,
    dropped_attributes_count=st.integers(0, 2**32 - 1),
    events=st.lists(st.builds(Span.Event, time_unix_nano=u64, name=texts, attributes=key_values), max_size=2),
    links=st.lists(st.builds(Span.Link, trace_id=ids16, span_id=ids8, trace_state=texts, attributes=key_values),
                   max_size=2),
    status=st.builds(Status, message=texts, code=st.integers(0, 2) | st.integers(-(2**31), 2**31 - 1)),
    flags=st.integers(0, 2**32 - 1),
)
requests = st.builds(
    ExportTraceServiceRequest,
    resource_spans=st.lists(st.builds(
        ResourceSpans,
        resource=st.builds(Resource, attributes=key_values),
        scope_spans=st.lists(st.builds(
            ScopeSpans,
            scope=st.builds(InstrumentationScope, name=texts, version=texts, attributes=key_values),
            spans=st.lists(spans, max_size=4),
            schema_url=texts,
        ), max_size=3),
        schema_url=texts,
    ), max_size=3),
)

# Unknown fields in every wire type, including groups, appended at the top level.
UNKNOWN = [bytes([0x98, 0x06, 0x05]), bytes([0x93, 0x06, 0x08, 0x01, 0x94, 0x06]), bytes([0x9D, 0x06, 1, 2, 3, 4]),
           bytes([0x99, 0x06]) + bytes(8), bytes([0xA2, 0x06, 0x02, 0xC3, 0xA9])]


def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set", "dup", "varint"]))
        pos = draw(st.integers(0, max(0, len(out) - 1)))
        if op == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=6))
        elif op == "delete":
            del out[pos : pos + draw(st.integers(1, 6))]
        elif op == "set" and out:
            out[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x0B, 0x0C, 0x08, 0x0D]))
        elif op == "dup":
            stop = pos + draw(st.integers(1, 32))
            out[pos:pos] = out[pos:stop]
        elif op == "varint":  # an over-long or huge length
            out[pos:pos] = draw(st.sampled_from([b"\xff" * 10, b"\x80" * 11, b"\xff\xff\xff\xff\x0f", b"\x80\x00"]))
    return bytes(out)


@st.composite
def wire_inputs(draw: st.DrawFn) -> bytes:
    data: bytes = draw(requests).SerializeToString()
    if draw(st.booleans()):
        data += b"".join(draw(st.lists(st.sampled_from(UNKNOWN), max_size=3)))
    if draw(st.integers(0, 3)) > 0:
        data = mutate(draw, data)
    return data


def upb_count(data: bytes) -> int | None:
    try:
        msg = ExportTraceServiceRequest.FromString(data)
    except DecodeError:
        return None
    return sum(len(ss.spans) for rs in msg.resource_spans for ss in rs.scope_spans)


def walk_checked(walker: Walker, data: bytes, keys: frozenset[str]) -> int | None:
    """Walk; only the walker's WireError may come out. The span count, or None when refused."""
    with hang_guard(data):
        try:
            return len(walker.walk_request(data, keys))
        except walker.WireError:
            return None


@pytest.mark.parametrize("walker", WALKERS)
@fuzz(150)
@given(data=wire_inputs(), keys=st.frozensets(st.sampled_from(ATTR_KEYS), max_size=4))
def test_walker_only_wire_error_and_counts_match_upb(walker: Walker, data: bytes, keys: frozenset[str]) -> None:
    walked = walk_checked(walker, data, keys)
    if walked is not None:
        # Accepted: protobuf accepts it too, with the same spans.
        assert upb_count(data) == walked


@pytest.mark.parametrize("walker", WALKERS)
@fuzz(50)
@given(msg=requests)
def test_walker_accepts_what_upb_accepts_with_valid_ids(walker: Walker, msg: ExportTraceServiceRequest) -> None:
    data = msg.SerializeToString()
    ids_ok = all(len(s.trace_id) == 16 and any(s.trace_id) and len(s.span_id) == 8 and any(s.span_id)
                 and len(s.parent_span_id) in (0, 8)
                 for rs in msg.resource_spans for ss in rs.scope_spans for s in ss.spans)
    walked = walk_checked(walker, data, frozenset(ATTR_KEYS))
    if ids_ok:
        assert walked == upb_count(data)


@pytest.mark.parametrize("walker", WALKERS)
@fuzz(200)
@given(data=st.binary(max_size=300))
def test_walker_on_random_bytes(walker: Walker, data: bytes) -> None:
    walked = walk_checked(walker, data, frozenset({"k"}))
    if walked is not None:
        assert upb_count(data) == walked


@pytest.mark.parametrize("walker", WALKERS)
@pytest.mark.parametrize("depth", [50, 99, 100, 101, 5000])
def test_walker_deep_nesting_is_bounded(walker: Walker, depth: int) -> None:
    """AnyValue nested `depth` arrays deep, built by hand (protobuf will not build beyond its limit)."""
    inner = AnyValue(string_value="x").SerializeToString()
    for _ in range(depth):
        inner = b"\x0a" + _varint(len(inner)) + inner  # ArrayValue.values (1)
        inner = b"\x2a" + _varint(len(inner)) + inner  # AnyValue.array_value (5)
    kv_bytes = b"\x0a\x01k\x12" + _varint(len(inner)) + inner
    span_bytes = Span(trace_id=b"t" * 16, span_id=b"s" * 8).SerializeToString()
    span_bytes += b"\x4a" + _varint(len(kv_bytes)) + kv_bytes  # Span.attributes (9)
    ss = b"\x12" + _varint(len(span_bytes)) + span_bytes
    rs = b"\x12" + _varint(len(ss)) + ss
    req = b"\x0a" + _varint(len(rs)) + rs
    for keys in (frozenset({"k"}), frozenset()):  # extracted or only validated
        walked = walk_checked(walker, req, keys)
        assert walked == upb_count(req)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


# --- the OTLP/JSON decoder ---------------------------------------------------------------------

OTLP_KEYS = ["resourceSpans", "scopeSpans", "spans", "resource", "scope", "attributes", "key", "value",
             "stringValue", "intValue", "doubleValue", "boolValue", "bytesValue", "arrayValue", "kvlistValue",
             "values", "traceId", "spanId", "parentSpanId", "name", "kind", "startTimeUnixNano",
             "endTimeUnixNano", "status", "code", "message", "events", "links", "traceState", "flags",
             "droppedAttributesCount", "schemaUrl", "timeUnixNano"]
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(["", "0" * 32, "0" * 16, "zz", "1", "-1", "1e3", "SPAN_KIND_SERVER",
                                           "18446744073709551616", "AAAA", "NaN"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(OTLP_KEYS) | st.text(max_size=6),
                                                              inner, max_size=4),
    max_leaves=30,
)

SEED_DOCS = [
    protobuf_to_dict(request([S(1, 1, attrs={"http.route": "/x", "n": 3, "r": 0.5, "b": True}),
                              S(1, 2, parent=1, status=2, events=[("exception", {"k": "v"})])])),
    protobuf_to_dict(request([S(5, 1, trace_state="a=b", flags=1)], resource={"k8s.pod": "p"})),
]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


@st.composite
def mutated_docs(draw: st.DrawFn) -> Any:
    doc = json.loads(json.dumps(draw(st.sampled_from(SEED_DOCS))))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(json_values)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(OTLP_KEYS))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return doc


def decode_checked(body: bytes | str) -> bytes | None:
    """Decode; only WireError may come out. The protobuf bytes, or None when refused."""
    with hang_guard(body):
        try:
            data = json_to_protobuf(body)
        except WireError:
            return None
    ExportTraceServiceRequest.FromString(data)  # what it produces is protobuf
    return data


@fuzz(300)
@given(doc=json_values)
def test_json_arbitrary_documents(doc: Any) -> None:
    decode_checked(json.dumps(doc))
    decode_checked(json.dumps({"resourceSpans": doc}))


@fuzz(300)
@given(doc=mutated_docs())
def test_json_mutated_documents(doc: Any) -> None:
    data = decode_checked(json.dumps(doc).encode())
    if data is not None:
        walk_checked(SplitWalker(split.split_request), data, frozenset({"http.route"}))  # then only WireError


@fuzz(200)
@given(body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
       extra=st.sampled_from([b"", b"NaN", b"Infinity", b"-Infinity", b"1e999", b"[" * 50, b"\xff", b"\x00"]))
def test_json_raw_bytes(body: bytes, extra: bytes) -> None:
    decode_checked(body + extra)
    seed = json.dumps(SEED_DOCS[0]).encode()
    at = len(body) % len(seed)
    decode_checked(seed[:at] + extra + seed[at:])


@pytest.mark.parametrize("body", [
    b"[" * 100_000,  # deep nesting: json's recursion limit
    b'{"a":' * 100_000,
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind": Infinity}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"status": {"code": -Infinity}}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind": NaN}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano": 1e999}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"a","value":{"doubleValue": NaN}}]}]}]}]}',
])
def test_json_edge_documents(body: bytes) -> None:
    with hang_guard(body), contextlib.suppress(WireError):
        json_to_protobuf(body)


# --- the HTTP receiver, end to end in-process --------------------------------------------------

class ReceiverUnderTest:
    """An HttpReceiver on 127.0.0.1:0 feeding a real Core, on its own event loop thread."""

    LIMIT = 64 * 1024

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        policies = ("policies: [{name: r, type: string_attribute, string_attribute: {key: http.route, "
                    "values: ['(a+)+$', '^/x'], enabled_regex_matching: true}}, "
                    "{name: o, type: ottl_condition, ottl_condition: {span: ['IsMatch(name, \"o.\")']}}]")
        self.core = Core(Buffer(10_000, 64 * 2**20, 1, 60), load_policies(parse_yaml(policies, "p.yaml")).engine(),
                         DecisionCache(1000, 1000), lambda t: None)
        self.refusals: list[str] = []
        self.receiver = HttpReceiver("127.0.0.1", 0, self._ingest, self.LIMIT, self.refusals.append)
        self.port = self.run(self.receiver.start())
        self.session: aiohttp.ClientSession = self.run(self._session())
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"

    def _ingest(self, data: bytes, protocol: str, signal: str) -> int:
        assert signal == "traces", signal
        n = self.core.ingest(data, protocol, time.monotonic())
        if len(self.core.buffer.entries()) > 1000:
            self.core.decide_all(time.monotonic())
        return n

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HANG_SECONDS), auto_decompress=False)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async def go() -> tuple[int, bytes]:
            async with self.session.post(self.url, data=body, headers=headers) as resp:
                return resp.status, await resp.read()
        result: tuple[int, bytes] = self.run(go())
        return result

    def close(self) -> None:
        self.run(self.session.close())
        self.run(self.receiver.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[ReceiverUnderTest]:
    r = ReceiverUnderTest()
    yield r
    r.close()


VALID_PB = request([S(1, 1, attrs={"http.route": "/x"}), S(1, 2, parent=1)])
VALID_JSON = json.dumps(protobuf_to_dict(VALID_PB)).encode()
CONTENT_TYPES = ["application/x-protobuf", "application/json", "application/json; charset=utf-8",
                 "APPLICATION/JSON", "application/x-protobuf; foo=bar", "text/plain", "", "application/",
                 "multipart/form-data; boundary=x", "application/protobuf", "*/*"]
ENCODINGS = ["", "identity", "gzip", "GZIP", "deflate", "br", "gzip, gzip", "x-gzip", " gzip"]


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    ctype = draw(st.sampled_from(CONTENT_TYPES) | st.text(string.ascii_letters + "/;=-+. ", max_size=30))
    kind = draw(st.sampled_from(["pb", "json", "mutated_pb", "mutated_json", "random", "bomb"]))
    if kind == "pb":
        body = draw(requests).SerializeToString()
    elif kind == "json":
        body = json.dumps(draw(mutated_docs())).encode()
    elif kind == "mutated_pb":
        body = mutate(draw, VALID_PB)
    elif kind == "mutated_json":
        body = mutate(draw, VALID_JSON)
    elif kind == "random":
        body = draw(st.binary(max_size=256))
    else:  # decompresses beyond the limit
        body = b"\x0a" * (ReceiverUnderTest.LIMIT * draw(st.integers(1, 20)))
    encoding = draw(st.sampled_from(ENCODINGS))
    if encoding.strip().lower() == "gzip" or (encoding == "" and kind == "bomb"):
        body = gzip.compress(body)
        if draw(st.booleans()):
            body = mutate(draw, body)
    headers = {"Content-Type": ctype}
    if encoding:
        headers["Content-Encoding"] = encoding
    if draw(st.booleans()) and len(body) < 100:  # oversized raw body
        body = body + bytes(ReceiverUnderTest.LIMIT)
    return body, headers


def assert_still_serves(receiver: ReceiverUnderTest) -> None:
    assert receiver.post(VALID_PB, {"Content-Type": "application/x-protobuf"})[0] == 200
    status, body = receiver.post(VALID_JSON, {"Content-Type": "application/json"})
    assert status == 200 and json.loads(body) == {}


@fuzz(150)
@given(case=http_requests())
def test_http_receiver_answers_200_400_413_415(receiver: ReceiverUnderTest, case: tuple[bytes, dict[str, str]]) -> None:
    body, headers = case
    with hang_guard(headers):
        status, answer = receiver.post(body, headers)
    assert status in (200, 400, 413, 415), (status, answer[:300])
    assert_still_serves(receiver)


@pytest.mark.parametrize("body", [
    b"[" * 50_000,
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind": Infinity}]}]}]}',
])
def test_http_receiver_json_edge_cases_are_400(receiver: ReceiverUnderTest, body: bytes) -> None:
    status, _ = receiver.post(body, {"Content-Type": "application/json"})
    assert status == 400
    assert_still_serves(receiver)


# --- the config and policy loader --------------------------------------------------------------

PROBLEM = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<field>.+?): (?P<reason>.+)$")  # one line: no DOTALL
REGEXES = ["(a+)+$", "(", "(a)\\1", "(?=x)", "^/api/v[0-9]+/", "[", "a{1001}", ".*", "\\", "é+"]
OTTL_TOKENS = ['name', '==', '!=', '>', '<=', '"x"', 'attributes["k"]', 'resource.attributes["service.name"]',
               'IsMatch(', ',', ')', '(', 'and', 'or', 'not', '1', '-1.5', 'nil', 'true', 'status.code',
               'STATUS_CODE_ERROR', 'SPAN_KIND_SERVER', 'kind', 'duration', '"(a+)+$"', '"("', '"\\\\1"',
               'Len(', '[', ']', '"', 'span_id', 'attributes', '.', 'trace_state', 'end_time_unix_nano']
ottl_conditions = st.lists(st.sampled_from(OTTL_TOKENS), max_size=12).map(" ".join) | st.sampled_from([
    'IsMatch(name, "(a+)+$")', 'IsMatch(attributes["k"], "(a)\\\\1")', "(" * 300 + "true" + ")" * 300,
    "not " * 300 + "true", 'name == "x"' + ' and name == "x"' * 300,
])
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=10)
    | st.sampled_from(["", "10s", "-1", "1e400", "5MiB", "ERROR", "OK", "UNSET", "0.0.0.0:4317", ".inf", "~"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
INTS = st.integers(-5, 10**6) | st.sampled_from([0, 1, 2**63, -(2**63)])
PERCENT = st.floats(-10, 200) | st.sampled_from([0, 100, float("nan"), float("inf")])


def field_values(name: str, depth: int) -> st.SearchStrategy[Any]:
    sub = policies(depth + 1)
    plausible: dict[str, st.SearchStrategy[Any]] = {
        "values": st.lists(st.sampled_from(REGEXES) | st.text(max_size=8), max_size=4),
        "status_codes": st.lists(st.sampled_from(["OK", "ERROR", "UNSET", "BAD", 2]), max_size=3),
        "span": st.lists(ottl_conditions, max_size=3),
        "spanevent": st.lists(ottl_conditions, max_size=3),
        "error_mode": st.sampled_from(["propagate", "ignore", "silent", "x"]),
        "rules": st.lists(st.fixed_dictionaries(
            {"match": st.sampled_from([*REGEXES, "/checkout/*", "*a*a*a*b", ""]), "sample_percentage": PERCENT},
            optional={"regex": st.booleans() | junk}), max_size=3),
        "policy_order": st.lists(st.sampled_from(["p0", "p1", "x"]), max_size=3),
        "rate_allocation": st.lists(st.fixed_dictionaries({"policy": st.sampled_from(["p0", "p1"]),
                                                           "percent": INTS}), max_size=3),
        "and_sub_policy": st.lists(sub, max_size=3),
        "drop_sub_policy": st.lists(sub, max_size=3),
        "composite_sub_policy": st.lists(sub, max_size=3),
        "not_sub_policy": sub,
        "sampling_percentage": PERCENT,
        "default_percentage": PERCENT,
        "key": st.sampled_from(ATTR_KEYS),
        "attribute": st.sampled_from(ATTR_KEYS),
        "hash_salt": st.text(max_size=5),
        "enabled_regex_matching": st.booleans(),
        "invert_match": st.booleans(),
        "value": st.booleans(),
    }
    return plausible.get(name, INTS) | junk


MODELS = {**{k: m for k, (m, _) in SIMPLE.items()}, **COMPOUND}


@st.composite
def _policy(draw: st.DrawFn, depth: int) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(junk)
    kind = draw(st.sampled_from(sorted(MODELS)) if depth < 2 else st.sampled_from(sorted(SIMPLE)))
    body = {}
    for name in MODELS[kind].model_fields:
        if draw(st.booleans()):
            body[name] = draw(field_values(name, depth))
    if draw(st.integers(0, 5)) == 0:
        body[draw(st.text(max_size=6))] = draw(junk)
    item: dict[Any, Any] = {"name": draw(st.sampled_from(["p0", "p1", "", " "]) | junk), "type": kind, kind: body}
    if draw(st.integers(0, 9)) == 0:
        del item[draw(st.sampled_from(["name", "type", kind]))]
    return item


def policies(depth: int = 0) -> st.SearchStrategy[Any]:
    return _policy(depth)


@st.composite
def policy_documents(draw: st.DrawFn) -> Any:
    items = draw(st.lists(policies(), max_size=4) | junk)
    shape = draw(st.sampled_from(["bare", "block", "collector", "junk"]))
    if shape == "bare":
        return {"policies": items}
    if shape == "block":
        return {"tail_sampling": {"decision_wait": draw(junk), "policies": items}}
    if shape == "collector":
        return {"processors": {draw(st.sampled_from(["tail_sampling", "tail_sampling/x", "batch"])):
                               {"policies": items}}}
    return draw(junk)


def check_problems(exc: ConfigError, path: str | None, text: str) -> None:
    assert exc.problems
    n_lines = text.count("\n") + 2
    for p in exc.problems:
        assert isinstance(p, Problem)
        m = PROBLEM.match(str(p))
        assert m is not None, f"badly formatted problem: {str(p)!r}"
        assert (path is None or p.path == path) and p.line >= 1, p
        assert p.path != path or p.line <= n_lines, p
        assert p.field and p.reason.strip(), p


def load_checked(text: str) -> None:
    """Load; only ConfigError may come out, with well-formed problems."""
    with hang_guard(text):
        try:
            load_policies(parse_yaml(text, "p.yaml"))
        except ConfigError as exc:
            check_problems(exc, "p.yaml", text)


def dump(doc: Any) -> str:
    # block style, or flow style for some documents (both are what people write)
    flow = isinstance(doc, dict) and len(str(doc)) % 3 == 0
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, default_flow_style=flow)


@fuzz(200)
@given(doc=policy_documents())
def test_policy_loader_generated_documents(doc: Any) -> None:
    load_checked(dump(doc))


@st.composite
def mutated_text(draw: st.DrawFn, docs: st.SearchStrategy[Any]) -> str:
    text = dump(draw(docs))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "dup"]))
        if op == "insert":
            text = text[:pos] + draw(st.sampled_from([":", "- ", "\n", "  ", "&a ", "*a", "!!python/none", "{",
                                                      "[", "'", '"', "#", "\t", "? ", "|", "\x00", "%YAML 1.1\n"])
                                     | st.text(max_size=3)) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 5)):]
        else:
            text = text[:pos] + text[pos: pos + 20] + text[pos:]
    return text


@fuzz(150)
@given(text=mutated_text(policy_documents()))
def test_policy_loader_mutated_text(text: str) -> None:
    load_checked(text)


CONFIG_SECTIONS: dict[str, list[str]] = {
    "receivers": ["otlp", "auth", "max_request_bytes"],
    "buffer": ["decision_wait", "max_trace_age", "max_traces", "max_bytes", "max_spans_per_trace",
               "max_bytes_per_trace", "min_eviction_age", "decision_cache_kept", "decision_cache_dropped",
               "sweep_interval"],
    "exporter": ["protocol", "endpoint", "headers", "compression", "retry", "timeout", "queue_max_bytes",
                 "batch_max_spans", "annotate", "tls"],
    "admin": ["endpoint"],
    "peers": ["self", "static", "dns", "tls", "forward_max_elapsed", "down_cooldown"],
}
config_scalars = junk | st.sampled_from(["10s", "1.5m", "100ms", "5MiB", "1KB", "0", "-1s", "1e9h", "inf",
                                         "127.0.0.1:4317", "host:99999", "[::1]:4317", "grpc", "http", "gzip"])


@st.composite
def config_documents(draw: st.DrawFn) -> Any:
    doc: dict[str, Any] = {}
    for section, keys in CONFIG_SECTIONS.items():
        if draw(st.booleans()):
            doc[section] = {k: draw(config_scalars) for k in keys if draw(st.booleans())}
    if draw(st.booleans()):
        doc["policies"] = draw(st.lists(policies(), max_size=3) | junk)
    if draw(st.integers(0, 3)) == 0:
        doc["policies_file"] = draw(st.sampled_from(["policies.yaml", "missing.yaml", "", ".", "/", "\x00"])
                                    | st.text(max_size=8))
    for key in ("shutdown_timeout", "log_level", draw(st.text(max_size=6))):
        if draw(st.integers(0, 3)) == 0:
            doc[key] = draw(config_scalars)
    return doc if draw(st.integers(0, 9)) else draw(junk)


CONFIG_DIR = Path(tempfile.mkdtemp(prefix="tailsampler-fuzz-"))


@fuzz(100)
@given(doc=config_documents(), policies_doc=policy_documents(), mutate_text=st.booleans(), data=st.data())
def test_config_loader_generated_files(doc: Any, policies_doc: Any, mutate_text: bool, data: st.DataObject) -> None:
    text = data.draw(mutated_text(st.just(doc))) if mutate_text else dump(doc)
    path = CONFIG_DIR / "config.yaml"
    path.write_text(text, encoding="utf-8")
    policies_text = dump(policies_doc)
    (CONFIG_DIR / "policies.yaml").write_text(policies_text, encoding="utf-8")
    with hang_guard(text):
        try:
            load_config(path, environ={})
        except ConfigError as exc:
            check_problems(exc, None, text)


@pytest.mark.parametrize("text", [
    "[" * 5000,  # PyYAML's composer recurses per nesting level
    "policies:\n" + "".join("  " * i + "- \n" for i in range(1, 2000)),
    "policies: [{name: p, type: and, and: {and_sub_policy: " + "[" * 3000 + "]" * 3000 + "}}]",
    "policies: [{name: p, type: and, and: {and_sub_policy: " + "[" * 50 + "]" * 50 + "}}]",
])
def test_policy_loader_deep_nesting_is_a_config_error(text: str) -> None:
    refused(text)


def refused(text: str) -> ConfigError:
    """Loading must fail with a ConfigError whose problems are well formed."""
    with pytest.raises(ConfigError) as info:
        load_policies(parse_yaml(text, "p.yaml"))
    check_problems(info.value, "p.yaml", text)
    return info.value


def _laughs(levels: int, width: int = 9) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\npolicies: [{name: p, type: always_sample}]\n"


def test_policy_loader_alias_expansion_is_bounded() -> None:
    """Six lines of YAML aliases name 10**6 nodes: loading must refuse or finish quickly, not expand them.
    (Each further line multiplies the cost by 10: 9 lines would take hours.)"""
    t0 = time.perf_counter()
    assert "too large" in str(refused(_laughs(6, width=10)))
    assert time.perf_counter() - t0 < 0.5


def test_composite_with_only_invalid_sub_policies_is_a_config_error() -> None:
    refused("policies: [{name: c, type: composite, composite: {max_total_spans_per_second: 1, "
            "composite_sub_policy: [{}]}}]")


def test_newline_in_a_key_is_a_one_line_problem() -> None:
    problem = refused('policies: [{name: p, type: always_sample, "a\\nb": 1}]').problems[0]
    assert "\n" not in str(problem)


def test_control_character_is_a_one_line_problem() -> None:
    problem = refused("\x1fpolicies: []\n").problems[0]
    assert "\n" not in str(problem)


def test_problem_format_helper_rejects_bad_lines() -> None:
    assert PROBLEM.match("p.yaml:3: policies[0].type: unknown policy type 'x'")
    assert not PROBLEM.match("p.yaml: policies[0]: x")
    assert not PROBLEM.match("p.yaml:3: policies[0].type: a\nb")
