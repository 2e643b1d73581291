"""Shared helpers for tests that run tailsampler as a real subprocess.

- `OtlpBackend`: a real OTLP/gRPC backend (grpc server in a thread pool on 127.0.0.1, ephemeral
  port) that records every span, log record and metric data point it receives.
- `Tailsampler`: starts `python -m sampler run --config PATH` with a config written to a temp dir
  (loopback, free ports), waits for /readyz, and stops it with SIGTERM.
- Small helpers: free ports, HTTP on loopback without proxies, Prometheus text parsing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
EXPORT_METHOD = f"/{SERVICE}/Export"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
LOGS_EXPORT_METHOD = f"/{LOGS_SERVICE}/Export"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0
# Never route loopback test traffic through a proxy from the environment.
GRPC_OPTIONS = [("grpc.enable_http_proxy", 0)]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- small helpers -------------------------------------------------------------------------------


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (for ports that must go on a command line)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds have passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class HttpResult:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()


def http_request(url: str, data: bytes | None = None, headers: Mapping[str, str] | None = None,
                 method: str | None = None, timeout: float = 5.0) -> HttpResult:
    """One HTTP request on loopback (no proxy); error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return HttpResult(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return HttpResult(exc.code, dict(exc.headers.items()), exc.read())


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of the sample `name{labels...}` in Prometheus text (labels must match exactly)."""
    want = dict(labels or {})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and dict(sample.labels) == want:
                return float(sample.value)
    return None


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


# --- the backend ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # 32 lowercase hex
    span_id: str  # 16 lowercase hex
    parent_span_id: str  # "" for a root span
    name: str
    service: str | None
    attributes: dict[str, Any] = field(hash=False, compare=False)
    # every attribute key in wire order, repeats included (a dict would hide a duplicated key)
    attribute_keys: tuple[str, ...] = field(default=(), hash=False, compare=False)


@dataclass(frozen=True)
class ReceivedRecord:
    trace_id: str  # 32 lowercase hex, "" without one
    span_id: str
    body: Any
    severity: int
    service: str | None
    attributes: dict[str, Any] = field(hash=False, compare=False)


@dataclass(frozen=True)
class ReceivedPoint:
    metric: str
    service: str | None
    value: float


class OtlpBackend:
    """An OTLP/gRPC backend (TraceService, LogsService, MetricsService) that records every span, log
    record and metric data point it receives (thread-safe)."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._spans: list[ReceivedSpan] = []
        self._records: list[ReceivedRecord] = []
        self._points: list[ReceivedPoint] = []
        self.requests = 0
        self.delay = 0.0  # seconds each Export waits before answering (a slow backend); settable any time
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
        handlers = (
            (SERVICE, self._export, ExportTraceServiceRequest, ExportTraceServiceResponse),
            (LOGS_SERVICE, self._export_logs, ExportLogsServiceRequest, ExportLogsServiceResponse),
            (METRICS_SERVICE, self._export_metrics, ExportMetricsServiceRequest, ExportMetricsServiceResponse),
        )
        self.server.add_generic_rpc_handlers(tuple(
            grpc.method_handlers_generic_handler(service, {"Export": grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=request.FromString, response_serializer=response.SerializeToString)})
            for service, method, request, response in handlers
        ))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        if self.port == 0:
            raise OSError("cannot listen on 127.0.0.1 for the test backend")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _export(self, request: ExportTraceServiceRequest, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        if self.delay > 0:
            time.sleep(self.delay)
        received: list[ReceivedSpan] = []
        for rs in request.resource_spans:
            resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
            service = resource.get("service.name")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    received.append(ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        service=service,
                        attributes={kv.key: any_value(kv.value) for kv in span.attributes},
                        attribute_keys=tuple(kv.key for kv in span.attributes),
                    ))
        with self._cond:
            self.requests += 1
            self._spans.extend(received)
            self._cond.notify_all()
        return ExportTraceServiceResponse()

    def _export_logs(
        self, request: ExportLogsServiceRequest, context: grpc.ServicerContext,
    ) -> ExportLogsServiceResponse:
        received: list[ReceivedRecord] = []
        for rl in request.resource_logs:
            service = {kv.key: any_value(kv.value) for kv in rl.resource.attributes}.get("service.name")
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    received.append(ReceivedRecord(
                        trace_id=record.trace_id.hex(), span_id=record.span_id.hex(), body=any_value(record.body),
                        severity=record.severity_number, service=service,
                        attributes={kv.key: any_value(kv.value) for kv in record.attributes},
                    ))
        with self._cond:
            self.requests += 1
            self._records.extend(received)
            self._cond.notify_all()
        return ExportLogsServiceResponse()

    def _export_metrics(
        self, request: ExportMetricsServiceRequest, context: grpc.ServicerContext,
    ) -> ExportMetricsServiceResponse:
        received: list[ReceivedPoint] = []
        for rm in request.resource_metrics:
            service = {kv.key: any_value(kv.value) for kv in rm.resource.attributes}.get("service.name")
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points if kind else ():
                        summed = kind in ("histogram", "exponential_histogram", "summary")
                        value = point.sum if summed else (point.as_int or point.as_double)
                        received.append(ReceivedPoint(metric.name, service, float(value)))
        with self._cond:
            self.requests += 1
            self._points.extend(received)
            self._cond.notify_all()
        return ExportMetricsServiceResponse()

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    @property
    def records(self) -> list[ReceivedRecord]:
        with self._lock:
            return list(self._records)

    @property
    def points(self) -> list[ReceivedPoint]:
        with self._lock:
            return list(self._points)


    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float) -> bool:
        """Wait until `predicate(spans so far)` holds; False after `timeout` seconds."""
        return self._wait(lambda: self._spans, predicate, timeout)

    def wait_for_records(self, predicate: Callable[[list[ReceivedRecord]], bool], timeout: float) -> bool:
        """Wait until `predicate(log records so far)` holds; False after `timeout` seconds."""
        return self._wait(lambda: self._records, predicate, timeout)

    def wait_for_points(self, predicate: Callable[[list[ReceivedPoint]], bool], timeout: float) -> bool:
        """Wait until `predicate(metric data points so far)` holds; False after `timeout` seconds."""
        return self._wait(lambda: self._points, predicate, timeout)

    def _wait(self, items: Callable[[], list[Any]], predicate: Callable[[Any], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(items())):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def start(self) -> OtlpBackend:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)


@contextlib.contextmanager
def running_backend() -> Iterator[OtlpBackend]:
    backend = OtlpBackend().start()
    try:
        yield backend
    finally:
        backend.stop()


# --- tailsampler as a subprocess -----------------------------------------------------------------


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any TAILSAMPLER_* variable (they would override the config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILSAMPLER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra or {})
    return env


@dataclass
class Stopped:
    code: int
    stdout: str
    stderr: str


class Tailsampler:
    """A `tailsampler run` subprocess; its stdout/stderr go to files (no pipe can fill up and block)."""

    def __init__(self, args: list[str], workdir: Path, env: Mapping[str, str], admin_port: int,
                 grpc_port: int | None = None, http_port: int | None = None) -> None:
        self.args = args
        self.workdir = workdir
        self.env = dict(env)
        self.admin_port = admin_port
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.stdout_path = workdir / "tailsampler.stdout"
        self.stderr_path = workdir / "tailsampler.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: Stopped | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace") if self.stderr_path.exists() else ""

    def start(self, ready_timeout: float = READY_TIMEOUT) -> Tailsampler:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.args, cwd=self.workdir, env=self.env, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL)
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        try:
            return http_request(f"{self.admin_url}/readyz", timeout=1.0).status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"tailsampler exited with {self.proc.returncode} before becoming ready; stderr:\n{self.stderr()}"
                )
            if self._ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"tailsampler not ready within {timeout:.0f}s; stderr:\n{self.stderr()}")

    def metrics(self) -> str:
        resp = http_request(f"{self.admin_url}/metrics")
        assert resp.status == 200, resp
        return resp.body.decode()

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        return metric_value(self.metrics(), name, labels)

    def stop(self, timeout: float = STOP_TIMEOUT) -> Stopped:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Idempotent; returns exit code and output."""
        if self.result is not None:
            return self.result
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.result = Stopped(self.proc.returncode, self.stdout(), self.stderr())
        return self.result


StartTailsampler = Callable[..., Tailsampler]


def write_config(workdir: Path, backend_endpoint: str | None, policies_yaml: str | None = None,
                 decision_wait: str = "1s", extra: str = "") -> tuple[Path, dict[str, int]]:
    """A config file (and policies file) in `workdir` on loopback free ports; returns path and ports."""
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    if backend_endpoint is None:
        exporter = "exporter: {protocol: stdout}\n"
    else:
        exporter = (
            "exporter:\n"
            "  protocol: grpc\n"
            f"  endpoint: {backend_endpoint!r}\n"
            "  compression: none\n"
            "  timeout: 5s\n"
            "  retry: {initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 10s}\n"
        )
    text = (
        "receivers:\n"
        "  otlp:\n"
        f"    grpc: {{endpoint: '127.0.0.1:{ports['grpc']}'}}\n"
        f"    http: {{endpoint: '127.0.0.1:{ports['http']}'}}\n"
        f"buffer: {{decision_wait: {decision_wait}, max_trace_age: 30s}}\n"
        + exporter
        + f"admin: {{endpoint: '127.0.0.1:{ports['admin']}'}}\n"
        "shutdown_timeout: 10s\n"
    )
    if policies_yaml is not None:
        (workdir / "policies.yaml").write_text(policies_yaml, encoding="utf-8")
        text += "policies_file: policies.yaml\n"
    text += extra
    path = workdir / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path, ports


def start_tailsampler(workdir: Path, backend_endpoint: str | None, policies_yaml: str | None = None,
                      decision_wait: str = "1s", extra: str = "") -> Tailsampler:
    """Write a config into `workdir` and start `python -m sampler run --config PATH`, ready to use."""
    workdir.mkdir(parents=True, exist_ok=True)
    path, ports = write_config(workdir, backend_endpoint, policies_yaml, decision_wait, extra)
    ts = Tailsampler([sys.executable, "-m", "sampler", "run", "--config", str(path)], workdir, clean_env(),
                     admin_port=ports["admin"], grpc_port=ports["grpc"], http_port=ports["http"])
    return ts.start()
