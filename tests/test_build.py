"""Which wire walker is loaded (mypyc-compiled or interpreted), and the interpreted fallback kept
correct: the walker's core differential checks run against the pure-Python source loaded straight
from wire.py, and the two builds must agree exactly (spans, fields and error messages)."""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import sampler.otlp.wire as loaded
from sampler.demo import build_template
from tests.spans import S, request
from tests.test_wire import KEYS, assert_same, ids_valid, mutated, upb_spans

SOURCE = Path(loaded.__file__).with_name("wire.py")


def _load_pure() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tailsampler_wire_pure", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PURE = _load_pure()


def outcome(module: ModuleType, data: bytes, keys: frozenset[str]) -> object:
    """Everything a walker tells the core about a request, or the error it refused it with."""
    try:
        spans = module.walk_request(data, keys)
    except module.WireError as exc:
        return ("refused", str(exc))
    return [
        (s.data, s.trace_id, s.is_root, s.name, s.kind, s.start, s.end, s.status, s.flags, s.trace_state,
         s.attrs, s.group.resource, s.group.scope, s.group.attrs, s.group.service)
        for s in spans
    ]


def test_compiled_flag_reports_the_loaded_module() -> None:
    assert loaded.COMPILED is (not loaded.__file__.endswith(".py"))
    assert PURE.COMPILED is False
    assert PURE.__file__ == str(SOURCE)


def test_a_built_extension_is_the_module_loaded() -> None:
    """An extension beside the source shadows it; with TAILSAMPLER_EXPECT_COMPILED=1 (set where the
    build must have compiled, e.g. CI after `pip install .`) the compiled modules are required."""
    built = [p for p in SOURCE.parent.glob("wire.*") if p.suffix in (".so", ".pyd")]
    if built or os.environ.get("TAILSAMPLER_EXPECT_COMPILED") == "1":
        assert loaded.COMPILED, f"compiled walker not loaded: {loaded.__file__}"
    if os.environ.get("TAILSAMPLER_EXPECT_COMPILED") == "1":
        import sampler.buffer
        import sampler.core
        import sampler.policy.hashing
        import sampler.summary

        for module in (sampler.core, sampler.summary, sampler.buffer, sampler.policy.hashing):
            assert not (module.__file__ or "").endswith(".py"), f"{module.__name__} is not compiled"


def test_pure_walker_matches_upb_on_realistic_requests() -> None:
    rng = random.Random(5)
    for _ in range(3):
        data = build_template(rng, spans_per_request=128).stamp(rng)
        assert_same(PURE.walk_request(data, KEYS), upb_spans(data))


def test_pure_walker_refuses_bad_ids_and_utf8() -> None:
    good = request([S(1, 1, attrs={"other": "xyzzy"})])
    with pytest.raises(PURE.WireError, match="UTF-8"):
        PURE.walk_request(good.replace(b"xyzzy", b"xy\xffzy"), KEYS)
    msg = ExportTraceServiceRequest()
    msg.resource_spans.add().scope_spans.add().spans.append(Span(span_id=b"12345678"))
    with pytest.raises(PURE.WireError, match="no trace_id"):
        PURE.walk_request(msg.SerializeToString(), KEYS)


def test_compiled_and_pure_agree_on_realistic_requests_with_many_key_sets() -> None:
    rng = random.Random(9)
    long_key = "k" * 70
    data = request([S(1, 1, attrs={long_key: "v", "é.ключ": "ü", "x" * 62: 1, "http.route": "/r"}),
                    S(1, 2, parent=1, attrs={"ratio": 0.25, "n": -5})])
    requests = [data] + [build_template(rng, spans_per_request=64).stamp(rng) for _ in range(2)]
    key_sets = [KEYS, frozenset(), frozenset({long_key, "é.ключ", "x" * 62, "ratio", "n", "http.route"})]
    for req in requests:
        for keys in key_sets:
            assert outcome(loaded, req, keys) == outcome(PURE, req, keys)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_pure_walker_differential_on_mutated_requests(data: bytes) -> None:
    """What upb refuses, the pure walker refuses; what upb accepts, it extracts the same fields;
    and the loaded (compiled) walker gives exactly the same answer or error message."""
    assert outcome(loaded, data, KEYS) == outcome(PURE, data, KEYS)
    try:
        parsed = upb_spans(data)
    except DecodeError:
        with pytest.raises(PURE.WireError):
            PURE.walk_request(data, KEYS)
        return
    if not ids_valid(data):
        with pytest.raises(PURE.WireError):
            PURE.walk_request(data, KEYS)
        return
    assert_same(PURE.walk_request(data, KEYS), parsed)
