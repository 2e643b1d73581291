"""Buffered spans packed and compressed (sampler/pipeline/frames.py): every span byte comes back exactly, in
order, with its resource and scope; traces keep working after compression (late spans, reloads,
decisions); and the packed form is what the buffer counts."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampler.config.yamlfile import parse_yaml
from sampler.otlp.wire import Group
from sampler.pipeline import frames
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core, KeptTrace, pack_jobs
from sampler.pipeline.decisions import DecisionCache
from sampler.pipeline.frames import Codec, Compression, compress, pack, train, unpack
from sampler.policy.loader import load_policies
from tests.spans import S, parse, request, tid

GROUPS = [Group(b"r%d" % i, b"s%d" % i, {}) for i in range(4)]
PACKERS = [frames._pack_spans] + ([frames.pack_spans] if frames.pack_spans is not frames._pack_spans else [])


@pytest.mark.parametrize("pack_spans", PACKERS)
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 3)), max_size=60))
def test_the_compiled_and_interpreted_packing_agree(pack_spans: Any, items: list[tuple[bytes, int]]) -> None:
    spans = [data for data, _ in items]
    groups = [GROUPS[g] for _, g in items]
    assert pack_spans(spans, groups) == frames._pack_spans(spans, groups)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 3)), max_size=60), st.booleans())
def test_every_span_byte_comes_back_in_order_with_its_group(items: list[tuple[bytes, int]], compressed: bool) -> None:
    spans = [data for data, _ in items]
    groups = [GROUPS[g] for _, g in items]
    frame = pack(spans, groups)
    assert frame.spans == len(spans) and frame.size == len(frame.data)
    if compressed:
        codec = Codec()
        frame.data = compress(codec, frame.data)
        frame.codec = codec
    got_spans, got_groups = unpack(frame)
    assert got_spans == spans
    assert all(a is b for a, b in zip(got_groups, groups, strict=True))


def test_a_dictionary_trained_on_frames_compresses_them_better_and_old_frames_stay_readable() -> None:
    rng = random.Random(3)
    keys = [f"attribute.key.number.{i}".encode() for i in range(30)]
    values = [f"a value seen often {i}".encode() for i in range(40)]

    def span() -> bytes:  # what makes spans alike: the same keys and values, in the same layout
        return b"".join(k + b"=" + rng.choice(values) + rng.randbytes(2) for k in keys[: rng.randint(10, 30)])

    frames = [pack([span()], [GROUPS[0]]) for _ in range(600)]
    plain = Codec()
    before = [compress(plain, f.data) for f in frames[300:]]
    dictionary = train([f.data for f in frames[:300]])
    assert dictionary is not None
    trained = Codec(dictionary)
    after = [compress(trained, f.data) for f in frames[300:]]
    assert sum(map(len, after)) < 0.8 * sum(map(len, before))
    old, new = frames[300], frames[301]
    old.data, old.codec = before[0], plain
    new.data, new.codec = after[1], trained
    assert unpack(old)[0] == unpack(pack(*unpack(old)))[0]  # each frame decompresses with its own codec
    assert len(unpack(new)[0]) == 1


def test_compression_trains_a_dictionary_from_samples_and_replaces_it_later() -> None:
    c = Compression()
    first = c.codec
    assert c.due(0.0) is None  # no samples yet
    for n in range(12000):
        c.sample(b"x" * 1000 + n.to_bytes(4, "big"), 0.0)
    samples = c.due(0.0)
    assert samples is not None and c.due(0.0) is None and c.nbytes == 0  # handed over, training
    c.trained(train(samples), 1.0)
    assert c.codec is not first and c.codec is not None and c.codec.dict_id != 0
    c.sample(b"y" * 1000, 2.0)
    assert c.nbytes == 0  # no samples held while the dictionary is fresh


KEEP_ALL = "policies: [{name: all, type: always_sample}]"


def core(policies: str = KEEP_ALL, compression: Compression | None = None) -> tuple[Core, list[KeptTrace]]:
    kept: list[KeptTrace] = []
    c = Core(Buffer(10**6, 2**40, 5.0, 60.0, compress_after=0.5),
             load_policies(parse_yaml(policies, "p.yaml")).engine(), DecisionCache(100, 100), kept.append,
             compression=compression or Compression(dictionary=False))
    return c, kept


def span_ids(kept: list[KeptTrace]) -> list[int]:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    return [int.from_bytes(Span.FromString(d).span_id, "big") for t in kept for d in t.spans]


def test_a_compressed_trace_takes_more_spans_and_is_exported_whole_in_order() -> None:
    c, kept = core()
    first = request([S(1, i, parent=None if i == 0 else 0, service=f"svc{i % 3}") for i in range(10)])
    c.ingest(first, "grpc", 0.0)
    c.ingest(request([S(2, 100)]), "grpc", 0.0)
    assert c.compress_quiet(0.6) == 2
    entry = c.buffer.get(tid(1))
    assert entry is not None and entry.spans is None and len(entry.frames) == 1
    assert entry.frames[0].codec is not None  # compressed
    c.ingest(request([S(1, 10, parent=0), S(1, 11, parent=0)]), "grpc", 1.0)  # late in the trace's life
    assert entry.spans is not None and len(entry.spans) == 2
    c.compress_quiet(2.0)
    c.ingest(request([S(1, 12, parent=0)]), "grpc", 2.1)
    assert len(entry.frames) == 2 and entry.spans is not None
    assert c.buffer.spans == 14
    c.decide_all(3.0)
    by_trace = {t.trace_id: t for t in kept}
    arrived = [(int.from_bytes(sp.span_id, "big"), rs.resource.attributes[0].value.string_value)
               for rs in parse(first).resource_spans for ss in rs.scope_spans for sp in ss.spans]
    assert span_ids([by_trace[tid(1)]]) == [n for n, _ in arrived] + [11, 12, 13]  # every span once, in order
    assert [g.service for g in by_trace[tid(1)].groups[:10]] == [service for _, service in arrived]
    assert c.buffer.nbytes == 0 and c.buffer.spans == 0


def test_a_reload_resummarises_compressed_traces_from_their_frames() -> None:
    c, kept = core("policies: [{name: none, type: probabilistic, probabilistic: {sampling_percentage: 0}}]")
    c.ingest(request([S(1, 1, attrs={"tier": "gold"}), S(1, 2, parent=1)]), "grpc", 0.0)
    c.ingest(request([S(2, 3, attrs={"tier": "free"})]), "grpc", 0.0)
    c.compress_quiet(1.0)
    gold = "policies: [{name: gold, type: string_attribute, string_attribute: {key: tier, values: [gold]}}]"
    c.set_engine(load_policies(parse_yaml(gold, "p.yaml")).engine())
    while c.resummarise(1):
        pass
    entry = c.buffer.get(tid(1))
    assert entry is not None and entry.spans is None  # still compressed: only the summary is new
    c.decide_all(2.0)
    assert [t.trace_id for t in kept] == [tid(1)] and len(kept[0].spans) == 2


def test_a_trace_decided_while_its_spans_are_being_packed_is_decided_with_them() -> None:
    c, kept = core()
    c.ingest(request([S(1, 1), S(2, 2)]), "grpc", 0.0)
    jobs = c.detach_quiet(1.0, 10)
    assert len(jobs) == 2
    entry = c.buffer.get(tid(2))
    assert entry is not None and entry.spans is None and len(entry.pending) == 1
    c.ingest(request([S(2, 3)]), "grpc", 1.1)  # more spans meanwhile: a new hot list
    c.decide_oldest(1.5, 1)  # trace 1 decided (and exported) while its spans were being packed
    frames, raw = pack_jobs(c.compression.codec, jobs)
    c.packed(jobs, frames, raw)  # the result for trace 1 is ignored; trace 2 holds its frame
    assert entry.pending == () and len(entry.frames) == 1 and entry.spans is not None
    c.decide_all(2.0)
    assert sorted(span_ids(kept)) == [2, 3, 4]
    assert c.buffer.nbytes == 0
