"""Forwarding between sharded instances under stress, with real processes on loopback: an owner that
pushes back is waited for, not written off; forward batches stay within the owner's request limit;
batches on their way at SIGTERM are delivered or decided here, and counted."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sampler.otlp.transport import retry_details as _retry_details
from sampler.otlp.transport import retry_hint
from sampler.sharding.membership import Membership
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
PUSHBACK = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
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


def send_until_accepted(call: grpc.UnaryUnaryMultiCallable, body: bytes, deadline: float) -> bool:
    """Send as an OTLP SDK does: a pushback answer (UNAVAILABLE or RESOURCE_EXHAUSTED with RetryInfo)
    is retried after its delay. True once accepted, False at `deadline`; any other error fails the
    test."""
    while True:
        try:
            call(body, timeout=10)
            return True
        except grpc.RpcError as exc:
            delay = retry_hint(exc.trailing_metadata())
            if exc.code() not in PUSHBACK or delay is None:
                raise AssertionError(f"not a pushback answer: {exc}") from None
        if time.monotonic() + delay > deadline:
            return False
        time.sleep(delay)


@dataclass
class Background:
    """Senders of fat, uninteresting traces (whole in one request, OK status, 10 ms), one thread per
    instance at a fixed rate. Refused requests are not retried; accepted ones are counted."""

    targets: list[str]
    rate: float  # requests per second per instance
    traces: int = 16  # per request
    spans: int = 4  # per trace
    pad: int = 4 * KIB  # bytes of attribute per span
    stop: threading.Event = field(default_factory=threading.Event)
    accepted: Counter[str] = field(default_factory=Counter)  # target -> requests accepted
    refused: Counter[str] = field(default_factory=Counter)
    threads: list[threading.Thread] = field(default_factory=list)

    def template(self) -> tuple[list[bytes], list[tuple[int, int]]]:
        """A request with placeholder trace ids, cut around them so fresh ids can be spliced in."""
        msg = ExportTraceServiceRequest.FromString(request(
            [S(0, k * self.spans + j, parent=None if j == 0 else k * self.spans, attrs={"pad": "x" * self.pad},
               service="background") for k in range(self.traces) for j in range(self.spans)]))
        for rs in msg.resource_spans:
            for ss in rs.scope_spans:
                for n, span in enumerate(ss.spans):
                    span.trace_id = b"\xfa\xce" + bytes(10) + (n // self.spans).to_bytes(4, "big")
        pieces = re.split(rb"(\xfa\xce\x00{10}[\x00-\xff]{4})", msg.SerializeToString(), flags=re.DOTALL)
        slots = [(i, int.from_bytes(pieces[i][-4:], "big")) for i in range(1, len(pieces), 2)]
        assert len(slots) == self.traces * self.spans
        return pieces, slots

    def _run(self, index: int, target: str) -> None:
        pieces, slots = self.template()
        nonce = os.urandom(6) + index.to_bytes(2, "big")
        seq = 0
        with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
            call = channel.unary_unary(EXPORT_METHOD)
            due = time.monotonic()
            while not self.stop.wait(max(0.0, due - time.monotonic())):
                due += 1 / self.rate
                ids = []
                for _ in range(self.traces):
                    seq += 1
                    ids.append(nonce + seq.to_bytes(8, "big"))
                for i, k in slots:
                    pieces[i] = ids[k]
                try:
                    call(b"".join(pieces), timeout=10)
                    self.accepted[target] += 1
                except grpc.RpcError as exc:
                    if exc.code() not in PUSHBACK:
                        raise
                    self.refused[target] += 1

    def start(self) -> Background:
        for index, target in enumerate(self.targets):
            thread = threading.Thread(target=self._run, args=(index, target), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def finish(self) -> int:
        """Stop; the number of traces accepted."""
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive()
        return sum(self.accepted.values()) * self.traces


def test_an_owner_that_pushes_back_is_waited_for_not_written_off(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    """Three members; the third has a buffer so small that the load makes it push back for many
    seconds. Error and slow traces hop through all three. Nobody is marked down, no trace is decided in
    two places, every kept trace arrives whole and once, and what was accepted is never lost.

    Each test trace's interesting span (the error, or the slow one) is sent first, to the busy member,
    and the rest only once it is accepted (as an SDK exporting spans in the order they end). So
    whichever member owns the trace, that span reaches the owner first and the trace is kept even if
    its other spans, held back by the owner's pushback, arrive after the decision (late spans follow
    it). The opposite order would depend on the owner's decision_wait against its retry delay, with
    or without sharding: that is not what this test is about."""
    ports = [free_port() for _ in range(3)]
    peers = [f"127.0.0.1:{p}" for p in ports]
    settings = ", forward_max_elapsed: 1s, down_cooldown: 60s, queue_max_bytes: 8MiB"
    instances: list[Tailsampler] = []
    background: Background | None = None
    try:
        for i, port in enumerate(ports):
            instances.append(start_member(tmp_path / f"i{i}", otlp_backend, port, peers, peer_settings=settings,
                                          buffer=", max_bytes: 4MiB, min_eviction_age: 2s, compress_after: 10m"
                                          if i == 2 else ""))
        admins = [ts.admin_port for ts in instances]
        busy = instances[2]
        background = Background([ts.grpc_target for ts in instances], rate=20).start()
        # The busy member pushes back on its own clients, and forwards to it are pushed back too.
        assert wait_until(lambda: metric_sum(busy.admin_port, "tailsampler_requests_refused_total") > 0, 30)
        assert wait_until(lambda: sum(metric_sum(a, "tailsampler_forward_failures_total") for a in admins[:2]) > 0,
                          30)

        kinds = {n: "error" if n % 2 else "slow" for n in range(1, 61)}
        accepted: dict[str, set[str]] = {}  # trace id -> span ids the senders got OK for
        lock = threading.Lock()
        channels = [grpc.insecure_channel(ts.grpc_target, options=GRPC_OPTIONS) for ts in instances]
        calls = [c.unary_unary(EXPORT_METHOD) for c in channels]

        begin = time.monotonic()

        def one_trace(n: int) -> None:
            time.sleep(max(0.0, begin + n * 0.15 - time.monotonic()))  # spread over the load's 9 s
            first = S(n, n * 10, name="hop2", service="svc2", start_ms=0, end_ms=1500 if kinds[n] == "slow" else 10,
                      status=2 if kinds[n] == "error" else 0)
            rest = [S(n, n * 10 + 1, parent=n * 10, name="hop0", service="svc0", start_ms=100, end_ms=200),
                    S(n, n * 10 + 2, parent=n * 10, name="hop1", service="svc1", start_ms=110, end_ms=190)]
            deadline = time.monotonic() + 60
            for target, span in ((2, first), (0, rest[0]), (1, rest[1])):
                if not send_until_accepted(calls[target], request([span]), deadline):
                    return
                with lock:
                    accepted.setdefault(tid(n).hex(), set()).add(sid(span.span).hex())

        try:
            with futures.ThreadPoolExecutor(len(kinds)) as pool:
                list(pool.map(one_trace, kinds))
        finally:
            sent = background.finish()
            for c in channels:
                c.close()
        assert all(len(accepted.get(tid(n).hex(), ())) == 3 for n in kinds), "a sender gave up"
        assert sum(background.refused.values()) > 0 and sent > 0

        expected = len(kinds) + sent  # every trace decided once, by its owner

        def settled() -> bool:
            return (sum(metric_sum(a, "tailsampler_traces_decided_total") for a in admins) >= expected
                    and all(metric_sum(a, "tailsampler_traces_in_buffer") == 0 for a in admins)
                    and all(metric_sum(a, "tailsampler_export_queue_bytes") == 0 for a in admins)
                    and all(ts.metric("tailsampler_memory_bytes", {"component": "forward_queues"}) == 0
                            for ts in instances))

        assert wait_until(settled, 60)
        spans = otlp_backend.spans
        counts = Counter(s.span_id for s in spans)
        arrived = {trace_id: {s.span_id for s in spans if s.trace_id == trace_id} for trace_id in accepted}
        whole = Counter(kinds[n] for n in kinds if arrived[tid(n).hex()] == accepted[tid(n).hex()])
        assert whole == {"error": 30, "slow": 30}, f"traces that arrived whole: {dict(whole)}"
        assert max(counts.values()) == 1, "a span arrived twice"
        assert {s.trace_id for s in spans} <= set(accepted), "a background trace was kept"
        # Forwards were pushed back, yet nobody was written off, nothing was kept away from its owner,
        # and every trace was decided once.
        assert sum(metric_sum(a, "tailsampler_forward_pushbacks_total") for a in admins[:2]) > 0
        assert [metric_sum(a, "tailsampler_peer_membership_changes_total") for a in admins] == [0, 0, 0]
        assert [metric_sum(a, "tailsampler_spans_forward_fallback_total") for a in admins] == [0, 0, 0]
        assert sum(metric_sum(a, "tailsampler_traces_decided_total") for a in admins) == expected
        assert [metric_sum(a, "tailsampler_spans_dropped_total") for a in admins] == [0, 0, 0]
    finally:
        if background is not None:
            background.stop.set()
        for ts in instances:
            ts.stop()


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


class FakeOwner:
    """A member that is not tailsampler: an OTLP/gRPC server that either holds every call for
    `hold` seconds before accepting it, or refuses every call with a pushback answer. It records the
    span ids of the calls it accepted whose caller was still waiting for the answer."""

    def __init__(self, hold: float = 0.0, refuse: bool = False) -> None:
        self.hold = hold
        self.refuse = refuse
        self.calls = 0
        self.accepted: list[str] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(self._export)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService",
                                                  {"Export": handler}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.calls += 1
        if self.refuse:  # as tailsampler's receivers push back
            context.set_trailing_metadata(_retry_details("overloaded; retry later"))
            context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded; retry later")
        time.sleep(self.hold)
        if context.is_active():
            ids = [s.span_id.hex() for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                   for ss in rs.scope_spans for s in ss.spans]
            with self.lock:
                self.accepted.extend(ids)
        return b""

    def stop(self) -> None:
        self.server.stop(None).wait(5)


STOPPED = re.compile(r"forwarding stopped: (\d+) spans delivered to their owners, (\d+) kept here \((.*)\)")


def sigterm_with_forwards_in_flight(tmp_path: Path, backend: OtlpBackend, fake: FakeOwner,
                                    started: Callable[[], bool]) -> tuple[set[str], Counter[str], re.Match[str]]:
    """One member forwarding to `fake` (everything is owned by it), SIGTERMed once `started()`: the
    span ids sent, where each one ended up (owner / backend), and the member's closing log line."""
    port = free_port()
    peers = [f"127.0.0.1:{port}", f"127.0.0.1:{fake.port}"]
    member = start_member(tmp_path, backend, port, peers, policies="policies: [{name: all, type: always_sample}]\n",
                          peer_settings=", forward_max_elapsed: 30s", extra="shutdown_timeout: 1s\n")
    try:
        numbers = owned_by(peers[1], peers, 50)
        sent: set[str] = set()
        with grpc.insecure_channel(member.grpc_target, options=GRPC_OPTIONS) as channel:
            for batch in range(5):  # the first is sent at once, the rest wait in the forward queue
                spans = [S(n, n * 10 + i) for n in numbers[batch * 10:batch * 10 + 10] for i in range(4)]
                channel.unary_unary(EXPORT_METHOD)(request(spans), timeout=10)
                sent |= {sid(s.span).hex() for s in spans}
        assert wait_until(started, 10)
    finally:
        stopped = member.stop()
    assert stopped.code == 0, stopped.stderr[-3000:]
    # The member has exited: its exports are done, and what the owner accepted it has recorded.
    where = Counter({"owner": len(fake.accepted), "backend": len(backend.spans)})
    delivered = set(fake.accepted) | {s.span_id for s in backend.spans}
    assert sum(where.values()) == len(sent) and delivered == sent, f"lost or duplicated: {dict(where)} of {len(sent)}"
    line = STOPPED.search(stopped.stderr)
    assert line is not None, stopped.stderr[-3000:]
    return sent, where, line


def test_a_forward_in_flight_at_sigterm_completes(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    """The owner holds each call for 3 s, longer than the member waits for its forward queues to
    drain (shutdown_timeout 1s) but within one call's timeout (5 s): the call in flight is waited for
    and delivered; what was still queued is decided here."""
    fake = FakeOwner(hold=3.0)
    try:
        sent, where, line = sigterm_with_forwards_in_flight(tmp_path, otlp_backend, fake, lambda: fake.calls > 0)
    finally:
        fake.stop()
    assert where["owner"] == 40 and where["backend"] == len(sent) - 40
    assert (int(line[1]), int(line[2])) == (40, len(sent) - 40) and "shutdown" in line[3], line[0]


def test_forwards_refused_until_sigterm_are_decided_here(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    """The owner pushes back on every call: at SIGTERM the batch waiting to be retried and the queue
    behind it come back, are decided here, and say so."""
    fake = FakeOwner(refuse=True)
    try:
        sent, where, line = sigterm_with_forwards_in_flight(tmp_path, otlp_backend, fake, lambda: fake.calls >= 2)
    finally:
        fake.stop()
    assert where["owner"] == 0 and where["backend"] == len(sent)
    assert (int(line[1]), int(line[2])) == (0, len(sent)) and "shutdown" in line[3], line[0]


def test_a_member_refuses_requests_its_forward_queue_cannot_take(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    """The owner pushes back; the member keeps its spans queued for it until the queue is full, then
    refuses its own clients with a retryable error (counted) instead of keeping their traces. Once
    the owner accepts again, everything queued reaches it, and the client's retry succeeds."""
    fake = FakeOwner(refuse=True)
    port = free_port()
    peers = [f"127.0.0.1:{port}", f"127.0.0.1:{fake.port}"]
    member = start_member(tmp_path, otlp_backend, port, peers,
                          peer_settings=", forward_max_elapsed: 1s, queue_max_bytes: 256KiB")
    try:
        numbers = owned_by(peers[1], peers, 30)
        bodies = [request([S(n, n * 10 + i, attrs={"pad": "x" * 5000}) for n in numbers[k * 10:k * 10 + 10]
                           for i in range(2)]) for k in range(3)]  # 100 kB each: two fit in 256 KiB
        with grpc.insecure_channel(member.grpc_target, options=GRPC_OPTIONS) as channel:
            call = channel.unary_unary(EXPORT_METHOD)
            call(bodies[0], timeout=10)
            call(bodies[1], timeout=10)
            assert wait_until(lambda: fake.calls >= 2, 10)  # refused, and refused again after its delay
            try:
                call(bodies[2], timeout=10)
                raise AssertionError("the member took a request its forward queue had no room for")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and retry_hint(exc.trailing_metadata()) == 1.0
            assert member.metric("tailsampler_requests_refused_total",
                                 {"protocol": "grpc", "reason": "forward_queue_full"}) == 1
            assert member.metric("tailsampler_spans_received_total", {"protocol": "grpc"}) == 40  # not the third
            fake.refuse = False
            assert send_until_accepted(call, bodies[2], time.monotonic() + 30)
        assert wait_until(lambda: len(fake.accepted) == 60, 20)
        assert sorted(fake.accepted) == sorted(sid(n * 10 + i).hex() for n in numbers for i in range(2))
        assert member.metric("tailsampler_peer_membership_changes_total") == 0
        assert metric_sum(member.admin_port, "tailsampler_spans_forward_fallback_total") == 0
        assert member.metric("tailsampler_forward_pushbacks_total") >= 2  # type: ignore[operator]
    finally:
        member.stop()
        fake.stop()
