"""Sharding with real processes on loopback: three instances with static peers, fed by the
OpenTelemetry SDK so that the spans of each trace reach different instances; one instance stopped
mid-run; and `run --workers 2` sharing one port."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from tests.otlp_backend import (
    EXPORT_METHOD,
    GRPC_OPTIONS,
    OtlpBackend,
    Tailsampler,
    clean_env,
    free_port,
    http_request,
    metric_value,
    wait_until,
)
from tests.spans import S, request, tid

POLICIES = "policies: [{name: errors, type: errors}]\n"


def write(workdir: Path, backend: OtlpBackend, grpc_port: int, admin_port: int, peers: list[str] | None) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policies.yaml").write_text(POLICIES)
    text = (
        f"receivers: {{otlp: {{grpc: {{endpoint: '127.0.0.1:{grpc_port}'}}, http: null}}}}\n"
        "buffer: {decision_wait: 1s, max_trace_age: 30s}\n"
        f"exporter: {{protocol: grpc, endpoint: '{backend.endpoint}', compression: none,"
        " retry: {initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 10s}}\n"
        f"admin: {{endpoint: '127.0.0.1:{admin_port}'}}\n"
        "policies_file: policies.yaml\nshutdown_timeout: 10s\n"
    )
    if peers is not None:
        me = f"127.0.0.1:{grpc_port}"
        text += f"peers: {{self: '{me}', static: {peers}, forward_max_elapsed: 1s, down_cooldown: 60s}}\n"
    path = workdir / "config.yaml"
    path.write_text(text)
    return path


def group(tmp_path: Path, backend: OtlpBackend, n: int = 3) -> list[Tailsampler]:
    ports = [free_port() for _ in range(n)]
    peers = [f"127.0.0.1:{p}" for p in ports]
    out = []
    try:
        for i, port in enumerate(ports):
            admin = free_port()
            path = write(tmp_path / f"i{i}", backend, port, admin, peers)
            out.append(Tailsampler([sys.executable, "-m", "sampler", "run", "--config", str(path)], path.parent,
                                   clean_env(), admin_port=admin, grpc_port=port, http_port=0).start())
    except BaseException:
        for ts in out:
            ts.stop()
        raise
    return out


class Services:
    """One SDK TracerProvider per service, each exporting to its own instance."""

    def __init__(self, targets: list[str]) -> None:
        self.providers = []
        for i, target in enumerate(targets):
            provider = TracerProvider(resource=Resource.create({"service.name": f"svc{i}"}))
            provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=True)))
            self.providers.append(provider)

    def trace(self, error: bool) -> tuple[str, set[str]]:
        """One trace hopping through every service; returns its id and its span ids."""
        span_ids: set[str] = set()
        ctx = None
        spans = []
        for i, provider in enumerate(self.providers):
            span = provider.get_tracer("t").start_span(f"hop{i}", context=ctx)
            ctx = trace.set_span_in_context(span)
            spans.append(span)
        if error:
            spans[-1].set_status(Status(StatusCode.ERROR))
        for span in reversed(spans):
            span.end()
            span_ids.add(format(span.get_span_context().span_id, "016x"))
        return format(spans[0].get_span_context().trace_id, "032x"), span_ids

    def close(self) -> None:
        for p in self.providers:
            p.shutdown()


def metric_sum(admin: int, name: str) -> float:
    """The sum of every sample of `name` (all label sets) on one instance's /metrics."""
    text = http_request(f"http://127.0.0.1:{admin}/metrics").body.decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def settled(admins: list[int], decided: int) -> bool:
    """Nothing more can reach the backend from these instances: between them they decided at least
    `decided` traces, hold none, and have nothing queued or in flight to the backend."""
    return (sum(metric_sum(a, "tailsampler_traces_decided_total") for a in admins) >= decided
            and all(metric_sum(a, "tailsampler_traces_in_buffer") == 0 for a in admins)
            and all(metric_sum(a, "tailsampler_export_queue_bytes") == 0 for a in admins))


def check_exactly_once(admins: list[int], backend: OtlpBackend, errors: dict[str, set[str]], normal: set[str],
                       decided: int | None = None) -> None:
    """Every span of the error traces arrived once, and nothing of the others. `admins`: the admin
    ports of the instances still running; `decided`: how many traces they decided at least (default:
    every trace sent)."""
    want = sum(len(s) for s in errors.values())
    assert backend.wait_for(lambda spans: len({s.span_id for s in spans if s.trace_id in errors}) >= want, 20)
    expected = len(errors) + len(normal) if decided is None else decided
    assert wait_until(lambda: settled(admins, expected), 20)  # only then can absence mean anything
    spans = backend.spans
    counts = Counter(s.span_id for s in spans)
    assert max(counts.values()) == 1, "a span arrived twice"
    for trace_id, span_ids in errors.items():
        assert {s.span_id for s in spans if s.trace_id == trace_id} == span_ids
    assert not {s.trace_id for s in spans} & normal, "a dropped trace leaked"


def total(instances: list[Tailsampler], name: str, labels: dict[str, str] | None = None) -> float:
    return sum(ts.metric(name, labels) or 0 for ts in instances)


def test_three_instances_decide_each_trace_once_and_whole(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    instances = group(tmp_path, otlp_backend)
    services = Services([ts.grpc_target for ts in instances])
    try:
        errors: dict[str, set[str]] = {}
        normal: set[str] = set()
        for n in range(30):
            trace_id, span_ids = services.trace(error=n % 3 == 0)
            if n % 3 == 0:
                errors[trace_id] = span_ids
            else:
                normal.add(trace_id)
        check_exactly_once([ts.admin_port for ts in instances], otlp_backend, errors, normal)
        forwarded = total(instances, "tailsampler_spans_forwarded_total")
        assert forwarded > 0
        # members trust each other's forwarded header: the spans arrive at their owner as "peer"
        assert total(instances, "tailsampler_spans_received_total", {"protocol": "peer"}) == forwarded
        assert total(instances, "tailsampler_traces_decided_total", {"decision": "keep", "policy": "errors"}) == 10
        assert all(ts.metric("tailsampler_peer_members") == 3 for ts in instances)
    finally:
        services.close()
        for ts in instances:
            assert ts.stop().code == 0


def test_stopping_one_instance_loses_nothing(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    instances = group(tmp_path, otlp_backend)
    services = Services([ts.grpc_target for ts in instances])
    survivors = instances[:2]
    try:
        errors: dict[str, set[str]] = {}
        normal: set[str] = set()
        for n in range(15):
            trace_id, span_ids = services.trace(error=n % 3 == 0)
            if n % 3 == 0:
                errors[trace_id] = span_ids
            else:
                normal.add(trace_id)
        # Every trace sits whole at its owner once forwarding is done; then stop one of them.
        assert wait_until(lambda: total(instances, "tailsampler_traces_in_buffer") == 15, 10)
        assert instances[2].stop().code == 0  # it decides and flushes what it held
        services.close()
        # The survivors notice the dead member on their next forward to it, and agree on the rest.
        with grpc.insecure_channel(survivors[0].grpc_target, options=GRPC_OPTIONS) as c0, \
                grpc.insecure_channel(survivors[1].grpc_target, options=GRPC_OPTIONS) as c1:
            probes = request([S(1000 + n, 1000 + n) for n in range(30)])
            c0.unary_unary(EXPORT_METHOD)(probes, timeout=10)
            c1.unary_unary(EXPORT_METHOD)(probes, timeout=10)
        assert wait_until(lambda: all(ts.metric("tailsampler_peer_members") == 2 for ts in survivors), 10)
        later = Services([ts.grpc_target for ts in survivors])
        try:
            for n in range(15):
                trace_id, span_ids = later.trace(error=n % 3 == 0)
                if n % 3 == 0:
                    errors[trace_id] = span_ids
                else:
                    normal.add(trace_id)
        finally:
            later.close()
        # the survivors decided at least the 15 later traces and the 30 probes
        check_exactly_once([ts.admin_port for ts in survivors], otlp_backend, errors,
                           normal | {tid(1000 + n).hex() for n in range(30)}, decided=45)
        assert total(survivors, "tailsampler_spans_forward_fallback_total", {"reason": "owner_unreachable"}) > 0
    finally:
        services.close()
        for ts in instances:
            ts.stop()


def free_port_pair() -> int:
    """A loopback port p such that p and p + 1 are both free."""
    import socket

    for _ in range(50):
        p = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise AssertionError("no two consecutive free ports")


def worker_metric(admin: int, index: int, name: str, labels: dict[str, str] | None = None) -> float:
    body = http_request(f"http://127.0.0.1:{admin + index}/metrics").body.decode()
    return metric_value(body, name, labels) or 0.0


def test_workers_share_one_port_and_shard_between_them(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    port, admin = free_port(), free_port_pair()  # worker 1 serves its admin endpoints on admin + 1
    path = write(tmp_path, otlp_backend, port, admin, None)
    ts = Tailsampler([sys.executable, "-m", "sampler", "run", "--config", str(path), "--workers", "2"], tmp_path,
                     clean_env(), admin_port=admin, grpc_port=port, http_port=0).start()
    try:
        def second_ready() -> bool:
            try:
                return http_request(f"http://127.0.0.1:{admin + 1}/readyz").status == 200
            except OSError:  # not listening yet
                return False

        assert wait_until(second_ready, 20)
        # Many connections, so that the kernel spreads them over both workers.
        options = [*GRPC_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(16)]
        errors: dict[str, set[str]] = {}
        normal: set[str] = set()
        try:
            for n in range(24):
                failing = n % 3 == 0
                spans = [S(n + 1, n * 10 + i, parent=None if i == 0 else n * 10, status=2 if failing and i == 3 else 0)
                         for i in range(4)]
                for i, s in enumerate(spans):
                    channels[(n + i) % 16].unary_unary(EXPORT_METHOD)(request([s]), timeout=10)
                ids = {(n * 10 + i + 1).to_bytes(8, "big").hex() for i in range(4)}
                if failing:
                    errors[tid(n + 1).hex()] = ids
                else:
                    normal.add(tid(n + 1).hex())
        finally:
            for c in channels:
                c.close()
        check_exactly_once([admin, admin + 1], otlp_backend, errors, normal)
        forwarded = sum(worker_metric(admin, i, "tailsampler_spans_forwarded_total") for i in range(2))
        assert forwarded > 0
    finally:
        stopped = ts.stop()
        assert stopped.code == 0, stopped.stderr[-3000:]
