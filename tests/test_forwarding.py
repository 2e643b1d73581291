"""Forwarding between sharded instances under stress, with real processes on loopback: forward
batches stay within the owner's request limit."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc

from sampler.peers import Membership
from tests.otlp_backend import (
    EXPORT_METHOD,
    GRPC_OPTIONS,
    OtlpBackend,
    Tailsampler,
    clean_env,
    free_port,
    wait_until,
)
from tests.spans import S, request, sid, tid
from tests.test_sharding_procs import metric_sum

KIB = 1024
POLICIES = (
    "policies:\n"
    "  - {name: errors, type: errors}\n"
    "  - {name: slow, type: latency, latency: {threshold_ms: 1000}}\n"
)


def start_member(workdir: Path, backend: OtlpBackend, port: int, peers: list[str], *, buffer: str = "",
                 receivers: str = "", policies: str = POLICIES, peer_settings: str = "",
                 extra: str = "") -> Tailsampler:
    """One member of a static sharding group (OTLP/gRPC only), exporting to `backend`."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policies.yaml").write_text(policies)
    admin = free_port()
    text = (
        "memory_limit: null\n"
        f"receivers: {{otlp: {{grpc: {{endpoint: '127.0.0.1:{port}'}}, http: null}}{receivers}}}\n"
        f"buffer: {{decision_wait: 1s, max_trace_age: 30s{buffer}}}\n"
        f"exporter: {{protocol: grpc, endpoint: '{backend.endpoint}', compression: none,"
        " retry: {initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 30s}}\n"
        f"admin: {{endpoint: '127.0.0.1:{admin}'}}\n"
        "policies_file: policies.yaml\n"
        f"peers: {{self: '127.0.0.1:{port}', static: {peers}{peer_settings}}}\n"
        + extra
    )
    path = workdir / "config.yaml"
    path.write_text(text)
    return Tailsampler([sys.executable, "-m", "sampler", "run", "--config", str(path)], workdir, clean_env(),
                       admin_port=admin, grpc_port=port).start()


def owned_by(owner: str, members: list[str], count: int, first: int = 1) -> list[int]:
    """`count` trace numbers (for tests.spans.tid) whose trace the member `owner` owns."""
    view = Membership(members[0], members)
    out: list[int] = []
    n = first
    while len(out) < count:
        if view.owner(tid(n)) == owner:
            out.append(n)
        n += 1
    return out


def test_large_spans_are_forwarded_in_batches_the_owner_accepts(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    """8 KiB spans: one request to the first member holds 5,000 of them (41 MB; it accepts requests up
    to 64 MiB), every one owned by the second member, which accepts requests up to 16 MiB. They reach
    the owner in batches under forward_batch_max_bytes, a single trace bigger than that in a batch of
    its own, and the kept trace arrives at the backend whole."""
    ports = [free_port() for _ in range(2)]
    peers = [f"127.0.0.1:{p}" for p in ports]
    settings = ", forward_max_elapsed: 2s, down_cooldown: 60s, queue_max_bytes: 128MiB"
    sender, owner = (start_member(tmp_path / f"i{i}", otlp_backend, port, peers, peer_settings=settings,
                                  receivers=", max_request_bytes: 64MiB" if i == 0 else "")
                     for i, port in enumerate(ports))
    try:
        pad = {"pad": "x" * (8 * KIB)}
        many, huge, kept = (owned_by(peers[1], peers, 360), *owned_by(peers[1], peers, 2, first=10_000))
        spans = [S(n, n * 100 + i, attrs=pad) for n in many for i in range(10)]  # 3,600 spans in 360 traces
        spans += [S(huge, 10**7 + i, attrs=pad) for i in range(1_200)]  # one trace of 9.8 MB
        spans += [S(kept, 2 * 10**7 + i, attrs=pad, status=2 if i == 0 else 0) for i in range(200)]
        body = request(spans)
        assert len(body) > 40 * 10**6
        with grpc.insecure_channel(sender.grpc_target, options=GRPC_OPTIONS) as channel:
            channel.unary_unary(EXPORT_METHOD)(body, timeout=30)
        assert wait_until(lambda: owner.metric("tailsampler_spans_received_total", {"protocol": "peer"})
                          == len(spans), 30)
        assert otlp_backend.wait_for(lambda got: len(got) >= 200, 30)
        assert {s.span_id for s in otlp_backend.spans} == {sid(2 * 10**7 + i).hex() for i in range(200)}
        assert sender.metric("tailsampler_spans_forwarded_total") == len(spans)
        assert metric_sum(sender.admin_port, "tailsampler_spans_forward_fallback_total") == 0
        assert sender.metric("tailsampler_peer_membership_changes_total") == 0
        assert wait_until(lambda: owner.metric("tailsampler_traces_decided_total",
                                               {"decision": "keep", "policy": "errors"}) == 1, 10)
    finally:
        sender.stop()
        owner.stop()
