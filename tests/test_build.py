"""Which receive path is loaded (compiled or interpreted), and the two kept in agreement: the
compiled splitter (Cython, `_split.pyx`) and the interpreted one (`wire.walk_request` + grouping)
must give the same chunks for every request, refuse the same requests, and both agree with upb."""

from __future__ import annotations

import ast
import importlib
import os
import random
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import sampler.otlp.logs as logs
import sampler.otlp.split as split
from sampler.otlp.split import Chunk, Splitter
from sampler.otlp.wire import AttrValue, SpanFields, WireError
from sampler.tools.demo import build_template
from tests.spans import S, request
from tests.test_wire import KEYS, ids_valid, mutated, upb_spans

Split = Callable[[bytes, Splitter], list[Chunk]]
SPLITS: list[Split] = [split._split_request]
if split.COMPILED:
    from sampler.otlp._split import split_request as compiled_split

    SPLITS.append(compiled_split)


def _bit(*parts: object) -> int:
    return 1 << (zlib.crc32(repr(parts).encode()) % 9)


def value_bits(key: str, value: AttrValue) -> int:
    return _bit(key, type(value).__name__, value)


def resource_bits(attrs: Mapping[str, AttrValue]) -> int:
    return _bit(sorted(attrs.items()))


def span_bits(span: SpanFields) -> int:
    return _bit(span.name, span.kind, span.flags, span.trace_state, span.is_root, span.status, span.start, span.end)


def wide_value_bits(key: str, value: AttrValue) -> int:
    return value_bits(key, value) << 70  # an engine with more predicates than a C integer holds


BOUNDS_NS = (2_000_000, 10_000_000, 1_000_000_000)
DIMS = ("http.route", "n", "peer.service")


def tally_for(split_request: Split, max_series: int = 10_000) -> split.Tally:
    """Each splitter's own tally: the compiled one counts into the compiled class's C arrays."""
    if split_request is split._split_request:
        return split.SpanTally(BOUNDS_NS, DIMS, max_series)
    from sampler.otlp._split import Tally

    return Tally(BOUNDS_NS, DIMS, max_series)


def splitter(keys: frozenset[str], whole_spans: bool = False, wide: bool = False,
             tally: split.Tally | None = None) -> Splitter:
    return Splitter(keys, wide_value_bits if wide else value_bits, resource_bits, span_bits if whole_spans else None,
                    tally=tally, records=tally is not None)


def outcome(split_request: Split, data: bytes, keys: frozenset[str], whole_spans: bool = False,
            wide: bool = False, insight: bool = False) -> object:
    """Everything a splitter tells the core about a request, or that it refused it; with `insight`,
    what it counted in its tally and recorded for the service graph too."""
    tally = tally_for(split_request, 3) if insight else None
    try:
        chunks = split_request(data, splitter(keys, whole_spans, wide, tally))
    except WireError:
        return "refused"
    return [
        (c.trace_id, c.spans, [(g.resource, g.scope, g.attrs, g.service, g.match_bits) for g in c.groups],
         c.nbytes, c.min_start, c.max_end, c.status_mask, c.bits, c.root_name, c.root_attrs,
         None if c.root_group is None else c.root_group.resource, c.marked,
         None if c.graph is None else bytes(c.graph), c.peers)
        for c in chunks
    ], None if tally is None else tally.snapshot()


def test_compiled_flag_reports_the_loaded_module() -> None:
    assert split.COMPILED is (split.split_request is not split._split_request)
    assert logs.COMPILED is (logs.split_logs is not logs._split_logs)
    assert logs.COMPILED is split.COMPILED  # both splitters are in the one extension module, _split


def test_a_built_extension_is_the_module_loaded() -> None:
    """An extension beside the source is loaded; with TAILSAMPLER_EXPECT_COMPILED=1 (set where the
    build must have compiled, e.g. CI after `make`) every compiled module is required."""
    built = [p for p in Path(split.__file__).parent.glob("_split.*") if p.suffix in (".so", ".pyd")]
    if built or os.environ.get("TAILSAMPLER_EXPECT_COMPILED") == "1":
        assert split.COMPILED, "compiled splitter not loaded"
        assert logs.COMPILED, "compiled logs splitter not loaded"
    if os.environ.get("TAILSAMPLER_EXPECT_COMPILED") == "1":
        for name in _compiled_module_names():
            module = importlib.import_module(name)
            assert not (module.__file__ or "").endswith(".py"), f"{name} is not compiled"


def _compiled_module_names() -> list[str]:
    """The modules setup.py compiles (its CYTHON_MODULES and MYPYC_MODULES lists, read, not run)."""
    tree = ast.parse((Path(__file__).parent.parent / "setup.py").read_text())
    paths: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in ("CYTHON_MODULES", "MYPYC_MODULES")
                                                for t in node.targets):
            paths += ast.literal_eval(node.value)
    assert len(paths) > 20, paths
    return [p.rsplit(".", 1)[0].replace("/", ".") for p in paths]


def test_splitters_agree_on_realistic_requests_with_many_key_sets() -> None:
    rng = random.Random(9)
    long_key = "k" * 70
    data = request([S(1, 1, attrs={long_key: "v", "é.ключ": "ü", "x" * 62: 1, "http.route": "/r"}),
                    S(1, 2, parent=1, attrs={"ratio": 0.25, "n": -5, "big": 1 << 40, "t": True}),
                    S(2, 3, attrs={"n": 3, "s": "x" * 200}, trace_state="a=b", flags=0x301, status=2)])
    requests = [data] + [build_template(rng, spans_per_request=64).stamp(rng) for _ in range(2)]
    many = frozenset({f"k{i:03}" for i in range(70)} | {"n", "ratio"})  # "n" and "ratio" sort past the 64th
    key_sets = [KEYS, frozenset(), frozenset({long_key, "é.ключ", "x" * 62, "ratio", "n", "big", "t", "http.route"}),
                many]
    for req in requests:
        for keys in key_sets:
            for whole_spans in (False, True):
                for wide in (False, True):
                    for insight in (False, True):
                        outcomes = [outcome(s, req, keys, whole_spans, wide, insight) for s in SPLITS]
                        assert outcomes[0] != "refused"
                        assert all(o == outcomes[0] for o in outcomes), (keys, whole_spans, wide, insight)


def test_a_repeated_wanted_key_keeps_its_last_value_in_both() -> None:
    """OTLP forbids duplicate keys, but a request may carry them: the last value counts, as in a dict."""
    from sampler.otlp.splice import field
    from tests.spans import span_message

    dup = field(0x4A, b"\x0a\x01n\x12\x02\x18\x07") + field(0x4A, b"\x0a\x01n\x12\x02\x18\x09")
    span = span_message(S(1, 1)).SerializeToString() + dup
    data = field(0x0A, field(0x12, field(0x12, span)))
    keys = frozenset({"n"})
    for s in SPLITS:
        (chunk,) = s(data, splitter(keys))
        assert chunk.root_attrs == {"n": 9}
        assert chunk.bits == value_bits("n", 9) | resource_bits({})
    assert outcome(SPLITS[0], data, keys) == outcome(SPLITS[-1], data, keys)


def test_a_two_byte_value_length_is_not_taken_for_the_common_layout() -> None:
    """KeyValue{key "k", value: length varint 0x8E 0x0A (1294, past the end)}: the bytes after the
    key happen to look like a one-byte-framed string value; protobuf refuses, and so must both."""
    from sampler.otlp.splice import field
    from tests.spans import span_message

    kv = b"\x0a\x01k\x12" + bytes([0x8E, 0x0A, 0x8C]) + b"a" * 0x8C
    span = span_message(S(1, 1)).SerializeToString() + field(0x4A, kv)
    data = field(0x0A, field(0x12, field(0x12, span)))
    with pytest.raises(DecodeError):
        ExportTraceServiceRequest.FromString(data)
    for keys in (KEYS, frozenset({"k"})):
        assert [outcome(s, data, keys) for s in SPLITS] == ["refused"] * len(SPLITS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_splitters_differential_on_mutated_requests(data: bytes) -> None:
    """What upb refuses, every splitter refuses; what upb accepts, they split into the same spans;
    and the compiled and interpreted splitters give exactly the same chunks."""
    outcomes = [outcome(s, data, KEYS) for s in SPLITS]
    assert all(o == outcomes[0] for o in outcomes)
    counted = [outcome(s, data, KEYS, insight=True) for s in SPLITS]
    assert all(o == counted[0] for o in counted)
    try:
        parsed = upb_spans(data)
    except DecodeError:
        assert outcomes[0] == "refused"
        return
    if not ids_valid(data):
        assert outcomes[0] == "refused"
        return
    assert outcomes[0] != "refused"
    chunks = SPLITS[-1](data, splitter(KEYS))
    spans = sorted(Span.FromString(d).SerializeToString() for c in chunks for d in c.spans)
    assert spans == sorted(p.SerializeToString() for p, _ in parsed)


def test_splitters_agree_on_which_chunks_arrived_annotated() -> None:
    """A chunk is marked when a span of it carries `tailsampling.policy` or `tailsampling.sample_rate`
    with a primitive value (a tailsampler before this one annotated it), and only then; both splitters
    agree, whichever place the key has among the wanted ones."""
    from sampler.otlp.splice import MARK_KEYS, field
    from tests.spans import span_message

    array = field(0x4A, field(0x0A, b"tailsampling.policy") + field(0x12, field(0x2A, b"")))  # an array value
    as_array = span_message(S(4, 4)).SerializeToString() + array
    data = request([S(1, 1, attrs={"tailsampling.policy": "up", "a": "b"}), S(1, 2, parent=1),
                    S(2, 3, attrs={"tailsampling.sample_rate": 10}), S(3, 5, attrs={"tailsampling.other": "x"})])
    data += field(0x0A, field(0x12, field(0x12, as_array)))
    many = frozenset({f"k{i:03}" for i in range(70)})  # the marking keys sort past the 64th
    for keys in (MARK_KEYS, KEYS | MARK_KEYS, many | MARK_KEYS, KEYS):
        outcomes = [outcome(s, data, keys) for s in SPLITS]
        assert all(o == outcomes[0] for o in outcomes), keys
        marked = [c.marked for c in SPLITS[-1](data, splitter(keys))]
        assert marked == ([True, True, False, False] if keys & MARK_KEYS else [False] * 4), keys


@pytest.mark.parametrize("split_request", SPLITS)
def test_each_splitter_chunk_has_every_field_the_protocol_names(split_request: Split) -> None:
    """mypy checks the compiled stub against the Chunk protocol; this checks the compiled class
    against its stub, field by field, with the interpreted chunk's value types."""
    data = request([S(1, 1, name="root", attrs={"http.route": "/a"})])
    chunk = split_request(data, Splitter(KEYS, value_bits, resource_bits))[0]
    reference = split._split_request(data, Splitter(KEYS, value_bits, resource_bits))[0]
    fields = [*Chunk.__annotations__, "bits"]
    assert len(fields) == 14
    for name in fields:
        assert type(getattr(chunk, name)) is type(getattr(reference, name)), name


@pytest.mark.parametrize("max_series", [5, 10_000])
def test_splitters_agree_on_tallies_without_dimensions(max_series: int) -> None:
    """The compiled tally's memo of (service, name bytes, kind, status): many names (past the
    memo's clearing), long and non-ASCII ones, repeated across requests, and past max_series."""
    rng = random.Random(4)
    names = [f"op{i}" for i in range(3000)] + ["n" * 47, "n" * 48, "n" * 49, "ü" * 30, "é"]
    spans = [S(t, t * 10 + k, parent=None if k == 0 else t * 10, name=rng.choice(names), kind=rng.randint(0, 5),
               status=rng.randint(0, 2), service=rng.choice(("a", "b", "c")))
             for t in range(1, 400) for k in range(rng.randint(1, 12))]
    requests = [request(spans[i:i + 500]) for i in range(0, len(spans), 500)]
    outcomes = []
    for split_request in SPLITS:
        tally = (split.SpanTally if split_request is split._split_request else split.new_tally)(BOUNDS_NS, (),
                                                                                              max_series)
        graphs = []
        for data in requests * 2:
            graphs += [bytes(c.graph or b"") for c in split_request(data, splitter(KEYS, tally=tally))]
        outcomes.append((graphs, tally.snapshot()))
    assert all(o == outcomes[0] for o in outcomes)
