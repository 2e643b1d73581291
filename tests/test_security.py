"""TLS (and mutual TLS) on both receivers and on the exporter, certificates reloaded when their files
change, and bearer-token authentication: real processes and real TLS clients and servers on
loopback, with a throwaway CA from trustme."""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import trustme
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from sampler.otlp.transport import LOGS_EXPORT_METHOD, METRICS_EXPORT_METHOD
from tests.otlp_backend import (
    EXPORT_METHOD,
    SERVICE,
    Tailsampler,
    clean_env,
    free_port,
    wait_until,
)
from tests.spans import L, S, logs_request, request, tid

ALWAYS = "policies: [{name: all, type: always_sample}]\n"


def pem(tmp: Path, name: str, blob: trustme.Blob) -> str:
    path = tmp / name
    blob.write_to_path(str(path))
    return str(path)


class Pki:
    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.ca = trustme.CA()
        self.ca_file = pem(tmp, "ca.pem", self.ca.cert_pem)
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file = pem(tmp, "server.pem", server.cert_chain_pems[0])
        self.key_file = pem(tmp, "server.key", server.private_key_pem)
        client = self.ca.issue_cert("client@example.com")
        self.client_cert = pem(tmp, "client.pem", client.cert_chain_pems[0])
        self.client_key = pem(tmp, "client.key", client.private_key_pem)

    def read(self, path: str) -> bytes:
        return Path(path).read_bytes()


def start(tmp: Path, receivers: str, extra: str = "", backend: str | None = None) -> Tailsampler:
    tmp.mkdir(parents=True, exist_ok=True)
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    (tmp / "policies.yaml").write_text(ALWAYS)
    exporter = "exporter: {protocol: stdout}\n" if backend is None else backend
    text = (receivers.format(**ports) + "buffer: {decision_wait: 300ms}\n" + exporter
            + f"admin: {{endpoint: '127.0.0.1:{ports['admin']}'}}\npolicies_file: policies.yaml\n" + extra)
    (tmp / "config.yaml").write_text(text)
    return Tailsampler([sys.executable, "-m", "sampler", "run", "--config", str(tmp / "config.yaml")], tmp,
                       clean_env(), admin_port=ports["admin"], grpc_port=ports["grpc"],
                       http_port=ports["http"]).start()


def tls_receivers(pki: Pki, mutual: bool = False) -> str:
    client_ca = f", client_ca_file: '{pki.ca_file}'" if mutual else ""
    tls = f"tls: {{cert_file: '{pki.cert_file}', key_file: '{pki.key_file}'{client_ca}}}"
    return ("receivers: {{otlp: {{grpc: {{endpoint: '127.0.0.1:{grpc}', " + tls.replace("{", "{{").replace("}", "}}")
            + "}}, http: {{endpoint: '127.0.0.1:{http}', " + tls.replace("{", "{{").replace("}", "}}") + "}}}}}}\n")


def grpc_export(target: str, creds: grpc.ChannelCredentials | None, data: bytes,
                metadata: tuple[tuple[str, str], ...] = ()) -> None:
    options = [("grpc.enable_http_proxy", 0), ("grpc.ssl_target_name_override", "localhost")]
    channel = grpc.secure_channel(target, creds, options) if creds else grpc.insecure_channel(target, options)
    with channel:
        channel.unary_unary(EXPORT_METHOD)(data, timeout=5, metadata=metadata)


def https_post(url: str, body: bytes, ctx: ssl.SSLContext | None, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/x-protobuf", **(headers or {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_tls_receivers(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    ts = start(tmp_path / "run", tls_receivers(pki))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=pki.read(pki.ca_file))
        grpc_export(ts.grpc_target, creds, request([S(1, 1)]))
        with pytest.raises(grpc.RpcError):
            grpc_export(ts.grpc_target, None, request([S(2, 2)]))  # plaintext is refused
        ctx = ssl.create_default_context(cafile=pki.ca_file)
        url = f"https://localhost:{ts.http_port}/v1/traces"
        assert https_post(url, request([S(3, 3)]), ctx) == 200
        assert wait_until(lambda: ts.metric("tailsampler_spans_received_total", {"protocol": "http"}) == 1, 5)
    finally:
        assert ts.stop().code == 0


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    ts = start(tmp_path / "run", tls_receivers(pki, mutual=True))
    try:
        ca = pki.read(pki.ca_file)
        with pytest.raises(grpc.RpcError):
            grpc_export(ts.grpc_target, grpc.ssl_channel_credentials(root_certificates=ca), request([S(1, 1)]))
        with_cert = grpc.ssl_channel_credentials(root_certificates=ca, private_key=pki.read(pki.client_key),
                                                 certificate_chain=pki.read(pki.client_cert))
        grpc_export(ts.grpc_target, with_cert, request([S(2, 2)]))
        url = f"https://localhost:{ts.http_port}/v1/traces"
        bare = ssl.create_default_context(cafile=pki.ca_file)
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            https_post(url, request([S(3, 3)]), bare)
        ctx = ssl.create_default_context(cafile=pki.ca_file)
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
        assert https_post(url, request([S(4, 4)]), ctx) == 200
    finally:
        assert ts.stop().code == 0


def test_rotated_receiver_certificates_are_used_without_a_restart(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    ts = start(tmp_path / "run", tls_receivers(pki))
    try:
        new = trustme.CA()
        cert = new.issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(pki.cert_file)
        cert.private_key_pem.write_to_path(pki.key_file)
        new_ca = tmp_path / "new-ca.pem"
        new.cert_pem.write_to_path(str(new_ca))
        creds = grpc.ssl_channel_credentials(root_certificates=new_ca.read_bytes())
        grpc_export(ts.grpc_target, creds, request([S(1, 1)]))  # the next handshake already uses it
        ctx = ssl.create_default_context(cafile=str(new_ca))
        url = f"https://localhost:{ts.http_port}/v1/traces"
        assert wait_until(lambda: _ok(url, ctx), 5)  # polled every second
    finally:
        assert ts.stop().code == 0


def _ok(url: str, ctx: ssl.SSLContext) -> bool:
    try:
        return https_post(url, request([S(9, 9)]), ctx) == 200
    except (ssl.SSLError, urllib.error.URLError, ConnectionError):
        return False


PLAIN = ("receivers: {{otlp: {{grpc: {{endpoint: '127.0.0.1:{grpc}'}}, http: {{endpoint: '127.0.0.1:{http}'}}}},"
         " auth: {{bearer_token_file: TOKENS}}}}\n")


def test_bearer_tokens_are_required_rotated_and_never_logged(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret-one\n")
    ts = start(tmp_path / "run", PLAIN.replace("TOKENS", str(tokens)), "log_level: debug\n")
    try:
        with pytest.raises(grpc.RpcError) as info:
            grpc_export(ts.grpc_target, None, request([S(1, 1)]))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError):
            grpc_export(ts.grpc_target, None, request([S(1, 1)]), (("authorization", "Bearer wrong"),))
        grpc_export(ts.grpc_target, None, request([S(2, 2)]), (("authorization", "Bearer s3cret-one"),))
        url = f"http://127.0.0.1:{ts.http_port}/v1/traces"
        assert https_post(url, request([S(3, 3)]), None) == 401
        assert https_post(url, request([S(4, 4)]), None, {"Authorization": "Bearer s3cret-one"}) == 200
        tokens.write_text("s3cret-two\n")  # rotation: the file is re-read
        assert wait_until(lambda: https_post(url, request([S(5, 5)]), None,
                                             {"Authorization": "Bearer s3cret-two"}) == 200, 5)
        assert https_post(url, request([S(6, 6)]), None, {"Authorization": "Bearer s3cret-one"}) == 401
        assert ts.metric("tailsampler_requests_refused_total", {"protocol": "grpc", "reason": "unauthenticated"}) == 2
        # logs and metrics take the same token, on both receivers
        logs_url = url.replace("/v1/traces", "/v1/logs")
        assert https_post(logs_url, logs_request([L(7, 7)]), None) == 401
        assert https_post(logs_url, logs_request([L(7, 7)]), None, {"Authorization": "Bearer s3cret-two"}) == 200
        assert https_post(url.replace("/v1/traces", "/v1/metrics"), b"", None) == 401
        with grpc.insecure_channel(ts.grpc_target) as channel:
            for method in (LOGS_EXPORT_METHOD, METRICS_EXPORT_METHOD):
                with pytest.raises(grpc.RpcError) as info:
                    channel.unary_unary(method)(b"", timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            channel.unary_unary(LOGS_EXPORT_METHOD)(logs_request([L(8, 8)]), timeout=10,
                                                    metadata=(("authorization", "Bearer s3cret-two"),))
        assert ts.metric("tailsampler_log_records_received_total", {"protocol": "http"}) == 1
        assert ts.metric("tailsampler_log_records_received_total", {"protocol": "grpc"}) == 1
    finally:
        stopped = ts.stop()
    assert stopped.code == 0
    assert "s3cret" not in stopped.stderr and "s3cret" not in stopped.stdout


def test_a_missing_token_source_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "config.yaml").write_text(
        "receivers: {otlp: {grpc: {endpoint: '127.0.0.1:0'}, http: null},"
        f" auth: {{bearer_token_file: {tmp_path / 'nope'}}}}}\nadmin: {{endpoint: null}}\n")
    result = subprocess.run([sys.executable, "-m", "sampler", "run", "--config", str(tmp_path / "config.yaml")],
                            capture_output=True, text=True, timeout=30, env=clean_env(), check=False)
    assert result.returncode == 1 and "cannot start" in result.stderr and "nope" in result.stderr


class TlsBackend:
    """An OTLP/gRPC backend behind TLS (optionally demanding a client certificate)."""

    def __init__(self, pki: Pki, mutual: bool) -> None:
        self.received: list[ExportTraceServiceRequest] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
        handler = grpc.unary_unary_rpc_method_handler(
            self._export, request_deserializer=ExportTraceServiceRequest.FromString,
            response_serializer=ExportTraceServiceResponse.SerializeToString)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),))
        creds = grpc.ssl_server_credentials([(pki.read(pki.key_file), pki.read(pki.cert_file))],
                                            root_certificates=pki.read(pki.ca_file) if mutual else None,
                                            require_client_auth=mutual)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def _export(self, req: ExportTraceServiceRequest, ctx: grpc.ServicerContext) -> ExportTraceServiceResponse:
        self.received.append(req)
        return ExportTraceServiceResponse()

    def trace_ids(self) -> set[bytes]:
        return {s.trace_id for r in self.received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans}


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_exporter_over_tls(tmp_path: Path, mutual: bool) -> None:
    pki = Pki(tmp_path / "pki")
    backend = TlsBackend(pki, mutual)
    client = f", cert_file: '{pki.client_cert}', key_file: '{pki.client_key}'" if mutual else ""
    exporter = (f"exporter: {{protocol: grpc, endpoint: 'https://localhost:{backend.port}', compression: none,"
                f" tls: {{ca_file: '{pki.ca_file}'{client}}},"
                " retry: {initial_interval: 100ms, max_interval: 200ms, max_elapsed_time: 10s}}\n")
    receivers = "receivers: {{otlp: {{grpc: {{endpoint: '127.0.0.1:{grpc}'}}, http: null}}}}\n"
    ts = start(tmp_path / "run", receivers, backend=exporter)
    try:
        grpc_export(ts.grpc_target, None, request([S(1, 1), S(2, 2)]))
        assert wait_until(lambda: backend.trace_ids() == {tid(1), tid(2)}, 10)
        assert ts.metric("tailsampler_export_failures_total") == 0
    finally:
        assert ts.stop().code == 0
        backend.server.stop(None)


def test_peers_forward_with_the_shared_bearer_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("peer-token\n")
    ports = [free_port(), free_port()]
    peers = [f"127.0.0.1:{p}" for p in ports]
    instances = []
    try:
        for i, port in enumerate(ports):
            receivers = (f"receivers: {{{{otlp: {{{{grpc: {{{{endpoint: '127.0.0.1:{port}'}}}}, http: null}}}},"
                         f" auth: {{{{bearer_token_file: '{tokens}'}}}}}}}}\n")
            extra = f"peers: {{self: '{peers[i]}', static: {peers}}}\n"
            ts = start(tmp_path / f"i{i}", receivers, extra)
            ts.grpc_port = port
            instances.append(ts)
        data = request([S(n, n) for n in range(1, 21)])
        grpc_export(instances[0].grpc_target, None, data, (("authorization", "Bearer peer-token"),))
        def delivered() -> bool:
            sent = instances[0].metric("tailsampler_spans_forwarded_total") or 0
            got = instances[1].metric("tailsampler_spans_received_total", {"protocol": "peer"}) or 0
            return 0 < sent == got

        assert wait_until(delivered, 10)
        assert instances[0].metric("tailsampler_forward_failures_total") == 0
        refused = {"protocol": "grpc", "reason": "unauthenticated"}
        assert instances[1].metric("tailsampler_requests_refused_total", refused) == 0
    finally:
        for ts in instances:
            assert ts.stop().code == 0


def test_peers_forward_with_the_token_in_force_after_a_rotation(tmp_path: Path) -> None:
    """The token a peer forwards with is read per send: after the file is rotated to a new token only
    (the old one no longer accepted anywhere), forwarded spans still reach their owner."""
    tokens = tmp_path / "tokens"
    tokens.write_text("token-one\n")
    ports = [free_port(), free_port()]
    peers = [f"127.0.0.1:{p}" for p in ports]
    instances: list[Tailsampler] = []
    try:
        for i, port in enumerate(ports):
            receivers = (f"receivers: {{{{otlp: {{{{grpc: {{{{endpoint: '127.0.0.1:{port}'}}}}, http: null}}}},"
                         f" auth: {{{{bearer_token_file: '{tokens}'}}}}}}}}\n")
            extra = f"peers: {{self: '{peers[i]}', static: {peers}, forward_max_elapsed: 2s}}\n"
            ts = start(tmp_path / f"i{i}", receivers, extra)
            ts.grpc_port = port
            instances.append(ts)
        sender, owner = instances

        def decided() -> float:
            return sum(ts.metric("tailsampler_traces_decided_total", {"decision": "keep", "policy": "all"}) or 0
                       for ts in instances)

        grpc_export(sender.grpc_target, None, request([S(n, n) for n in range(1, 21)]),
                    (("authorization", "Bearer token-one"),))
        assert wait_until(lambda: decided() == 20, 15)
        before = sender.metric("tailsampler_spans_forwarded_total") or 0
        assert before > 0
        tokens.write_text("token-two\n")
        assert wait_until(lambda: all("bearer tokens reloaded" in ts.stderr() for ts in instances), 10)
        grpc_export(sender.grpc_target, None, request([S(n, n) for n in range(21, 41)]),
                    (("authorization", "Bearer token-two"),))
        assert wait_until(lambda: decided() == 40, 20)  # forwarded or, failing that, kept by the sender
        forwarded = sender.metric("tailsampler_spans_forwarded_total") or 0
        assert forwarded > before
        assert owner.metric("tailsampler_spans_received_total", {"protocol": "peer"}) == forwarded
        unauthenticated = {"protocol": "grpc", "reason": "unauthenticated"}
        for ts in instances:
            assert ts.metric("tailsampler_requests_refused_total", unauthenticated) == 0
            assert ts.metric("tailsampler_forward_failures_total") == 0
            for reason in ("owner_left", "owner_unreachable", "owner_busy", "rejected", "error"):
                assert ts.metric("tailsampler_spans_forward_fallback_total", {"reason": reason}) == 0, reason
    finally:
        for ts in instances:
            assert ts.stop().code == 0
