"""What an on-call engineer relies on, with real processes on loopback: nothing buffered is lost on
SIGTERM, traces queued while the backend is down arrive after it recovers, a broken policy edit
(through a kubelet-style symlink swap) keeps the last good policies, a gzip bomb is refused cheaply,
and backpressure is a retryable answer that the OpenTelemetry SDK's retry gets through."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from sampler.otlp.transport import RETRY_AFTER_SECONDS
from tests.otlp_backend import (
    EXPORT_METHOD,
    GRPC_OPTIONS,
    OtlpBackend,
    Tailsampler,
    clean_env,
    free_port,
    http_request,
    wait_until,
    write_config,
)
from tests.spans import S, request, tid

ALWAYS = "policies: [{name: all, type: always_sample}]\n"
ERRORS_ONLY = "policies: [{name: errors, type: errors}]\n"
SDK_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.grpc.exporter"


def send(ts: Tailsampler, data: bytes) -> None:
    with grpc.insecure_channel(ts.grpc_target, options=GRPC_OPTIONS) as channel:
        channel.unary_unary(EXPORT_METHOD)(data, timeout=10)


def start(workdir: Path, backend: str | None, policies: str, buffer: str = "{decision_wait: 1s}",
          extra: str = "") -> Tailsampler:
    workdir.mkdir(parents=True, exist_ok=True)
    path, ports = write_config(workdir, backend, policies, extra=f"buffer: {buffer}\n{extra}")
    return Tailsampler([sys.executable, "-m", "sampler", "run", "--config", str(path)], workdir, clean_env(),
                       admin_port=ports["admin"], grpc_port=ports["grpc"], http_port=ports["http"]).start()


def trace_ids(backend: OtlpBackend) -> set[str]:
    return {s.trace_id for s in backend.spans}


def test_sigterm_decides_every_buffered_trace_and_flushes_it(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    ts = start(tmp_path, otlp_backend.endpoint, ERRORS_ONLY, "{decision_wait: 60s, max_trace_age: 120s}")
    try:
        errors = [[S(n, n * 10, status=2), S(n, n * 10 + 1, parent=n * 10)] for n in range(1, 6)]
        normal = [[S(n, n * 10)] for n in range(6, 16)]
        for spans in errors + normal:
            send(ts, request(spans))
        assert wait_until(lambda: ts.metric("tailsampler_traces_in_buffer") == 15, 10)
        assert otlp_backend.spans == []  # nothing is due for a minute
    finally:
        stopped = ts.stop()
    assert stopped.code == 0, stopped.stderr
    assert trace_ids(otlp_backend) == {tid(n).hex() for n in range(1, 6)}
    assert len(otlp_backend.spans) == 10


def test_sigterm_flushes_traces_held_compressed(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    """Traces quiet for compress_after are held packed and compressed; at SIGTERM they are decided
    and the kept ones arrive whole, every span intact."""
    ts = start(tmp_path, otlp_backend.endpoint, ERRORS_ONLY,
               "{decision_wait: 60s, max_trace_age: 120s, compress_after: 100ms}")
    try:
        sent = {n: [S(n, n * 100 + i, parent=None if i == 0 else n * 100, status=2 if i == 3 else 0,
                      attrs={"http.route": "/checkout", "pad": "x" * 40}) for i in range(8)] for n in range(1, 41)}
        for spans in sent.values():
            send(ts, request(spans))
        assert wait_until(lambda: ts.metric("tailsampler_buffer_packed_frames_total") == 40, 10)
        assert wait_until(lambda: (ts.metric("tailsampler_compression_output_bytes_total") or 0) > 0, 10)
        assert otlp_backend.spans == []
    finally:
        stopped = ts.stop()
    assert stopped.code == 0, stopped.stderr
    assert len(otlp_backend.spans) == 40 * 8
    got = {(s.trace_id, s.span_id) for s in otlp_backend.spans}
    assert got == {(tid(n).hex(), (n * 100 + i + 1).to_bytes(8, "big").hex()) for n in sent for i in range(8)}
    assert {s.attributes["pad"] for s in otlp_backend.spans} == {"x" * 40}


def test_traces_queued_while_the_backend_is_down_arrive_after_it_recovers(tmp_path: Path) -> None:
    port = free_port()
    ts = start(tmp_path, f"http://127.0.0.1:{port}", ALWAYS, "{decision_wait: 200ms}",
               f"exporter: {{protocol: grpc, endpoint: 'http://127.0.0.1:{port}', compression: none, timeout: 1s,"
               " retry: {initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 60s}}\n")
    backend: OtlpBackend | None = None
    try:
        for n in range(1, 11):
            send(ts, request([S(n, n)]))
        assert wait_until(lambda: (ts.metric("tailsampler_export_failures_total") or 0) >= 2, 15)
        assert ts.metric("tailsampler_spans_exported_total") == 0
        backend = OtlpBackend(port).start()
        assert backend.wait_for(lambda spans: len(spans) == 10, 20)
        assert trace_ids(backend) == {tid(n).hex() for n in range(1, 11)}
        assert ts.metric("tailsampler_spans_dropped_total", {"reason": "export_failed"}) == 0
    finally:
        assert ts.stop().code == 0
        if backend is not None:
            backend.stop()


def kubelet_swap(directory: Path, version: str, content: str) -> None:
    """What the kubelet does on a ConfigMap update: write a new timestamped directory, then
    atomically repoint the `..data` symlink at it."""
    target = directory / f"..{version}"
    target.mkdir()
    (target / "policies.yaml").write_text(content)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(target.name)
    os.replace(tmp, directory / "..data")


def test_broken_policy_edit_keeps_the_last_good_policies(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    mounted = tmp_path / "configmap"
    mounted.mkdir()
    kubelet_swap(mounted, "v1", ERRORS_ONLY)
    (mounted / "policies.yaml").symlink_to("..data/policies.yaml")
    workdir = tmp_path / "run"
    workdir.mkdir()
    path, ports = write_config(workdir, otlp_backend.endpoint, None, decision_wait="300ms",
                               extra=f"policies_file: {mounted / 'policies.yaml'}\n")
    ts = Tailsampler([sys.executable, "-m", "sampler", "run", "--config", str(path)], workdir, clean_env(),
                     admin_port=ports["admin"], grpc_port=ports["grpc"], http_port=ports["http"]).start()
    try:
        kubelet_swap(mounted, "v2", "policies: [{name: broken, type: latency, latency: {threshold_ms: soon}}]\n")
        assert wait_until(lambda: ts.metric("tailsampler_policy_reloads_total", {"result": "failure"}) == 1, 5)
        assert http_request(f"{ts.admin_url}/readyz").status == 200
        assert "policies.yaml:1: policies[0].latency.threshold_ms:" in ts.stderr()
        send(ts, request([S(1, 1, status=2)]))
        send(ts, request([S(2, 2)]))
        # Both traces decided (one kept, one dropped) and the kept one exported: only then can the
        # backend's content say that nothing else was kept.
        assert wait_until(lambda: ts.metric("tailsampler_traces_decided_total", {"decision": "drop", "policy": ""})
                          == 1, 10)
        assert wait_until(lambda: ts.metric("tailsampler_spans_exported_total") == 1
                          and ts.metric("tailsampler_export_queue_bytes") == 0, 10)
        assert ts.metric("tailsampler_traces_decided_total", {"decision": "keep", "policy": "errors"}) == 1
        assert trace_ids(otlp_backend) == {tid(1).hex()}  # the old errors-only policies decided
        kubelet_swap(mounted, "v3", ALWAYS)
        assert wait_until(lambda: ts.metric("tailsampler_policy_reloads_total", {"result": "success"}) == 1, 5)
        send(ts, request([S(3, 3)]))
        assert otlp_backend.wait_for(lambda spans: tid(3).hex() in {s.trace_id for s in spans}, 10)
    finally:
        assert ts.stop().code == 0


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    ts = start(tmp_path, None, ALWAYS)
    try:
        assert ts.proc is not None
        before = peak_rss_kib(ts.proc.pid)
        bomb = gzip.compress(b"\0" * (256 * 2**20), compresslevel=9)  # 256 MiB inflated, ~250 KiB sent
        result = http_request(ts.http_url, bomb,
                              {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
        assert result.status == 413
        with grpc.insecure_channel(ts.grpc_target, options=GRPC_OPTIONS) as channel:
            call = channel.unary_unary(EXPORT_METHOD)
            try:
                call(b"\0" * (64 * 2**20), timeout=20, compression=grpc.Compression.Gzip)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            else:
                raise AssertionError("a 64 MiB gRPC message was accepted")
        grown = peak_rss_kib(ts.proc.pid) - before
        assert grown < 64 * 1024, f"peak RSS grew by {grown} KiB"
        send(ts, request([S(1, 1)]))  # and it goes on serving
    finally:
        assert ts.stop().code == 0


def test_backpressure_is_retryable_and_the_sdk_retry_succeeds(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    ts = start(tmp_path, otlp_backend.endpoint, ALWAYS,
               "{decision_wait: 1s, max_traces: 5, min_eviction_age: 30s}")
    try:
        for n in range(1, 6):
            send(ts, request([S(n, n)]))
        with grpc.insecure_channel(ts.grpc_target, options=GRPC_OPTIONS) as channel:
            try:
                channel.unary_unary(EXPORT_METHOD)(request([S(99, 99)]), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                assert any(k == "grpc-status-details-bin" for k, _ in exc.trailing_metadata() or ())
            else:
                raise AssertionError("a full buffer accepted a new trace")
        provider = TracerProvider(resource=Resource.create({"service.name": "sdk"}))
        exporter = OTLPSpanExporter(endpoint=ts.grpc_target, insecure=True, timeout=20)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("t").start_as_current_span("retried") as span:
            sdk_trace = format(span.get_span_context().trace_id, "032x")
        provider.shutdown()
        assert (ts.metric("tailsampler_requests_refused_total", {"protocol": "grpc", "reason": "buffer_full"})
                or 0) >= 2  # our probe, then the SDK's first attempt
        assert otlp_backend.wait_for(lambda spans: sdk_trace in {s.trace_id for s in spans}, 15)
    finally:
        assert ts.stop().code == 0


def test_the_sdk_exporter_waits_the_delay_the_pushback_hints(tmp_path: Path, otlp_backend: OtlpBackend,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """The OpenTelemetry Python exporter reads RetryInfo from a `google.rpc.retryinfo-bin` trailer, not
    from the status details; without it it backs off 1, 2, 4 s (+-20%) whatever the hint says. The buffer
    refuses for 4 s (full of traces too young to evict), so the exporter retries several times: every
    retry must wait exactly the hinted second."""
    ts = start(tmp_path, otlp_backend.endpoint, ALWAYS, "{decision_wait: 60s, max_traces: 5, min_eviction_age: 4s}")
    try:
        for n in range(1, 6):
            send(ts, request([S(n, n)]))
        with grpc.insecure_channel(ts.grpc_target, options=GRPC_OPTIONS) as channel, \
                pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(EXPORT_METHOD)(request([S(99, 99)]), timeout=10)
        trailers = dict(refused.value.trailing_metadata() or ())
        hint = RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay
        assert (hint.seconds, hint.nanos) == (RETRY_AFTER_SECONDS, 0)
        assert "grpc-status-details-bin" in trailers  # where grpc-go, grpc-java and the Collector look
        caplog.set_level(logging.WARNING, logger=SDK_EXPORTER_LOGGER)
        # The SDK's logger passes one record per message template every 20 s; lift that filter (and
        # only that: the exporter itself is untouched) so that every retry's line is seen.
        sdk_logger = logging.getLogger(SDK_EXPORTER_LOGGER)
        filters = list(sdk_logger.filters)
        sdk_logger.filters.clear()
        try:
            provider = TracerProvider(resource=Resource.create({"service.name": "sdk"}))
            provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=ts.grpc_target,
                                                                             insecure=True, timeout=30)))
            with provider.get_tracer("t").start_as_current_span("retried"):
                pass
            provider.shutdown()  # SimpleSpanProcessor exported (retries included) when the span ended
        finally:
            sdk_logger.filters[:] = filters
        assert ts.metric("tailsampler_spans_received_total", {"protocol": "grpc"}) == 6  # it got through
        retries = [r for r in caplog.records if r.name == SDK_EXPORTER_LOGGER and "Transient error" in r.getMessage()]
        # each refusal was one retry (the SDK's default backoff waits 1.6-2.4 s at the second)
        assert len(retries) >= 2, [r.getMessage() for r in retries]
        assert ts.metric("tailsampler_requests_refused_total", {"protocol": "grpc", "reason": "buffer_full"}) \
            == len(retries) + 1  # our probe too
        assert all(f"retrying in {RETRY_AFTER_SECONDS:.2f}s" in r.getMessage() for r in retries), \
            [r.getMessage() for r in retries]
        gaps = [b.created - a.created for a, b in itertools.pairwise(retries)]
        assert all(gap >= RETRY_AFTER_SECONDS - 0.01 for gap in gaps), gaps  # and it did wait that long
    finally:
        assert ts.stop().code == 0


def test_sigint_also_drains(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    ts = start(tmp_path, otlp_backend.endpoint, ALWAYS, "{decision_wait: 60s}")
    try:
        send(ts, request([S(1, 1)]))
        assert wait_until(lambda: ts.metric("tailsampler_traces_in_buffer") == 1, 10)
        assert ts.proc is not None
        ts.proc.send_signal(signal.SIGINT)
        assert ts.proc.wait(30) == 0
        assert trace_ids(otlp_backend) == {tid(1).hex()}
    finally:
        ts.stop()


def test_sigterm_with_more_kept_data_than_the_export_queue_holds_exports_all_of_it(
        tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    """About 100 MiB buffered, every trace kept, an export queue of 8 MiB: shutdown decides in steps
    as the queue drains, and every span arrives (on main, about one in ten did, and nothing said so)."""
    from tests.test_faults import grpc_exporter
    from tests.test_faults import start as start_with

    ts = start_with(tmp_path, ALWAYS, buffer="{decision_wait: 60s, max_trace_age: 120s, max_bytes: 256MiB,"
                                             " compress_after: 10m}",  # held as they came: 100 MiB
                    exporter=grpc_exporter(otlp_backend.endpoint, queue_max_bytes="8MiB"),
                    extra="memory_limit: null\n")
    pad = os.urandom(1000).hex()  # 2 KB of attribute a span
    sent: set[tuple[str, str]] = set()
    try:
        for r in range(100):  # 100 requests of 50 traces of 10 spans: 50,000 spans, 5,000 traces
            spans = [S(r * 50 + t, (r * 50 + t) * 10 + i, parent=None if i == 0 else (r * 50 + t) * 10,
                       attrs={"pad": pad}) for t in range(50) for i in range(10)]
            send(ts, request(spans))
            sent |= {(tid(s.trace).hex(), (s.span + 1).to_bytes(8, "big").hex()) for s in spans}
        assert ts.metric("tailsampler_traces_in_buffer") == 5000
        assert (ts.metric("tailsampler_buffer_bytes") or 0) > 100 * 2**20
        assert otlp_backend.spans == []  # nothing is due for a minute
    finally:
        t0 = time.monotonic()
        stopped = ts.stop(timeout=60)
        took = time.monotonic() - t0
    print(f"\n[sigterm] exit {stopped.code} after {took:.1f} s; "
          + "; ".join(line.split(": ", 1)[-1] for line in stopped.stderr.splitlines() if "shutdown:" in line))
    assert stopped.code == 0, stopped.stderr
    got = [(s.trace_id, s.span_id) for s in otlp_backend.spans]
    assert len(got) == len(set(got)) and set(got) == sent, f"{len(set(got) & sent)} of {len(sent)} arrived"
    assert "exported 50000 spans" in stopped.stderr, stopped.stderr
    assert "could not be exported" not in stopped.stderr


def test_sigterm_counts_and_logs_what_could_not_be_exported_within_shutdown_timeout(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: the backend is down for good
    ts = start(tmp_path, f"http://127.0.0.1:{port}", ALWAYS, "{decision_wait: 60s}",
               "shutdown_timeout: 2s\n")
    try:
        for n in range(1, 11):
            send(ts, request([S(n, n * 10), S(n, n * 10 + 1, parent=n * 10), S(n, n * 10 + 2, parent=n * 10)]))
        assert ts.metric("tailsampler_traces_in_buffer") == 10
    finally:
        assert ts.proc is not None
        t0 = time.monotonic()
        stopped = ts.stop(timeout=30)
        took = time.monotonic() - t0
    assert stopped.code == 0, stopped.stderr
    assert took < 10, took  # shutdown_timeout (2 s) bounds the flush, not the retry policy (10 s)
    assert re.search(r"shutdown: 30 spans of kept traces could not be exported", stopped.stderr), stopped.stderr


def test_an_otlp_json_client_does_not_stall_grpc_clients(tmp_path: Path) -> None:
    """OTLP/JSON bodies of ~2 MB posted back to back beside a gRPC client sending small requests
    back to back: the gRPC client keeps being served between JSON bodies. Counted as gRPC calls
    completed per JSON body (both rates move with the machine's speed, their ratio much less):
    decoding JSON on the loop with protobuf's json_format took ~0.3 s per MB, one or two gRPC calls
    got through per body."""
    from sampler.otlp.jsonconv import protobuf_to_dict

    ts = start(tmp_path, None, ALWAYS, "{decision_wait: 1s}")
    spans = [S(n, i, parent=None if i == 0 else 0, attrs={f"attr.{k}": f"value {k} {n}" for k in range(8)})
             for n in range(1, 200) for i in range(20)]
    body = json.dumps(protobuf_to_dict(request(spans))).encode()
    assert len(body) > 2 * 2**20
    posts = 8
    grpc_calls = [0]
    done = threading.Event()

    def grpc_client() -> None:
        with grpc.insecure_channel(ts.grpc_target, options=GRPC_OPTIONS) as channel:
            call = channel.unary_unary(EXPORT_METHOD)
            n = 10_000
            while not done.is_set():
                n += 1
                call(request([S(n, 1)]), timeout=30)
                grpc_calls[0] += 1

    thread = threading.Thread(target=grpc_client, daemon=True)
    try:
        thread.start()
        assert wait_until(lambda: grpc_calls[0] > 0, 10)
        first = None
        for _ in range(posts):
            status = http_request(ts.http_url, body, {"Content-Type": "application/json"}, timeout=60).status
            assert status == 200
            if first is None:
                first = grpc_calls[0]  # from the end of the first body on: the client is in steady state
        calls_per_body = (grpc_calls[0] - first) / (posts - 1)
        done.set()
        thread.join(30)
        assert calls_per_body >= 5, calls_per_body
    finally:
        done.set()
        assert ts.stop().code == 0
