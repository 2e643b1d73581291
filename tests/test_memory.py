"""Memory that stays bounded: no request payload outlives its request in a reference cycle."""

from __future__ import annotations

import asyncio
import gc
import random
import tracemalloc
from pathlib import Path

import grpc
import pytest
import yaml

from sampler.config.models import Config
from sampler.insight.recent import bound as recent_bound
from sampler.pipeline import memory
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core
from sampler.pipeline.decisions import DecisionCache
from sampler.pipeline.frames import Compression
from sampler.policy.loader import load_policies
from sampler.server import system
from sampler.server.app import App, StartupError
from sampler.server.settings import default_policies_doc, load_config
from tests.otlp_backend import EXPORT_METHOD, GRPC_OPTIONS, http_request
from tests.spans import S, parse, request


def _payload_holders(size: int) -> int:
    """Objects in unreachable reference cycles that refer to a bytes object of at least `size` bytes
    (bytes themselves are not tracked by the collector; what holds them is)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = 0
        for obj in gc.garbage:
            referents = obj.f_locals.values() if hasattr(obj, "f_locals") else gc.get_referents(obj)
            if any(isinstance(r, bytes) and len(r) >= size for r in referents):
                found += 1
        return found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _send_grpc(port: int, payloads: list[bytes]) -> list[str]:
    codes = []
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
        call = channel.unary_unary(EXPORT_METHOD)
        for data in payloads:
            try:
                call(data, timeout=10)
                codes.append("OK")
            except grpc.RpcError as exc:
                assert isinstance(exc, grpc.Call)
                codes.append(exc.code().name)
    return codes


def _send_http(port: int, payloads: list[bytes]) -> list[str]:
    codes = []
    for data in payloads:
        status = http_request(f"http://127.0.0.1:{port}/v1/traces", data,
                              {"Content-Type": "application/x-protobuf"}).status
        codes.append({200: "OK", 503: "UNAVAILABLE"}.get(status, str(status)))
    return codes


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_refused_requests_leave_no_payload_in_reference_cycles(tmp_path: Path, protocol: str) -> None:
    config = tmp_path / "tailsampler.yaml"
    config.write_text("""
receivers: {otlp: {grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}}}
buffer: {max_bytes: 150000, decision_wait: 1h, min_eviction_age: 1h}
exporter: {protocol: stdout}
admin: {endpoint: null}
policies: [{name: all, type: always_sample}]
""")
    payloads = [request([S(n, i, attrs={"pad": "x" * 400}) for i in range(200)]) for n in range(40)]
    size = min(map(len, payloads))

    async def main() -> tuple[list[str], int]:
        app = App(load_config(config, environ={}))
        await app.start()
        gc.collect()
        gc.disable()  # what a rare collection would leave meanwhile: everything in a cycle
        try:
            send = _send_grpc if protocol == "grpc" else _send_http
            codes = await asyncio.to_thread(send, app.ports[protocol], payloads)
            return codes, _payload_holders(size)
        finally:
            gc.enable()
            await app.shutdown()

    codes, holders = asyncio.run(main())
    assert codes[0] == "OK" and codes[1:] == ["UNAVAILABLE"] * (len(payloads) - 1)  # every other one refused
    assert holders == 0


def _traffics() -> dict[str, list[bytes]]:
    from sampler.tools.demo import build_template

    rng = random.Random(5)
    templates = [build_template(rng) for _ in range(8)]
    return {
        "realistic": [templates[i % 8].stamp(rng) for i in range(40)],
        "one-span traces": [request([S(n * 1000 + i, i) for i in range(500)]) for n in range(40)],
        "500-span traces": [request([S(n, i, parent=None if i == 0 else 0) for i in range(500)]) for n in range(40)],
    }


@pytest.mark.parametrize("state", ["hot", "packed", "compressed"])
@pytest.mark.parametrize("traffic", ["realistic", "one-span traces", "500-span traces"])
def test_the_buffer_holds_the_bytes_it_counts(traffic: str, state: str) -> None:
    """`buffer.nbytes` (tailsampler_buffer_bytes) is the memory the buffered traces hold, overhead
    included, within 20% of what tracemalloc sees: spans as they arrive, packed, and compressed."""
    requests = _traffics()[traffic]
    core = Core(Buffer(10**9, 2**40, 1e9, 1e9, compress_after=0.0), load_policies(default_policies_doc()).engine(),
                DecisionCache(10, 10), lambda t: None,
                compression=Compression(enabled=state == "compressed", dictionary=False))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for data in requests:
            core.ingest(data, "grpc", 0.0)
        if state != "hot":
            assert core.compress_quiet(1.0) == len(core.buffer)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert core.buffer.spans == sum(len(ss.spans) for d in requests for rs in parse(d).resource_spans
                                    for ss in rs.scope_spans)
    assert abs(core.buffer.nbytes - held) <= 0.2 * held, (core.buffer.nbytes, held)


def _fake_root(tmp_path: Path, cgroup: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for rel, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_container_limit_reads_cgroup_v2(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, "0::/kubepods/pod1/ctr\n", {"kubepods/pod1/ctr/memory.max": "536870912\n"})
    assert system.container_limit(root, {}) == 512 * 2**20


def test_container_limit_v2_inside_a_namespace_and_unlimited(tmp_path: Path) -> None:
    assert system.container_limit(_fake_root(tmp_path / "a", "0::/\n", {"memory.max": "268435456\n"}), {}) == 2**28
    assert system.container_limit(_fake_root(tmp_path / "b", "0::/\n", {"memory.max": "max\n"}), {}) is None


def test_container_limit_reads_cgroup_v1(tmp_path: Path) -> None:
    cgroup = "5:cpu,cpuacct:/x\n4:memory:/process_api/abc\n0::/\n"
    root = _fake_root(tmp_path / "a", cgroup, {"memory/process_api/abc/memory.limit_in_bytes": "1073741824\n"})
    assert system.container_limit(root, {}) == 2**30
    unlimited = _fake_root(tmp_path / "b", cgroup, {"memory/process_api/abc/memory.limit_in_bytes":
                                                    "9223372036854771712\n"})
    assert system.container_limit(unlimited, {}) is None


def test_container_limit_where_the_container_sees_its_cgroup_at_the_root(tmp_path: Path) -> None:
    v1 = _fake_root(tmp_path / "a", "4:memory:/kubepods/burstable/pod1/ctr\n",
                    {"memory/memory.limit_in_bytes": "536870912\n"})
    assert system.container_limit(v1, {}) == 512 * 2**20
    v2 = _fake_root(tmp_path / "b", "0::/kubepods/pod1/ctr\n", {"memory.max": "268435456\n"})
    assert system.container_limit(v2, {}) == 256 * 2**20


def test_container_limit_from_the_downward_api_wins(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, "0::/\n", {"memory.max": "268435456\n"})
    assert system.container_limit(root, {system.CONTAINER_LIMIT_ENV: "536870912"}) == 512 * 2**20
    assert system.container_limit(root, {system.CONTAINER_LIMIT_ENV: "0"}) == 256 * 2**20


def test_container_limit_without_cgroups(tmp_path: Path) -> None:
    assert system.container_limit(tmp_path, {}) is None
    assert system.container_limit(_fake_root(tmp_path / "a", "0::/\n", {}), {}) is None


def test_read_rss_is_this_process(tmp_path: Path) -> None:
    rss = system.read_rss()
    assert 10 * 2**20 < rss < 4 * 2**30
    (tmp_path / "statm").write_text("garbage")
    assert system.read_rss(tmp_path / "statm") == 0


def _config(text: str) -> Config:
    return Config.model_validate(yaml.safe_load(text) or {})


def test_auto_sizes_follow_the_limit() -> None:
    cfg = _config("memory_limit: auto")
    assert memory.effective_limit(cfg, None) is None
    assert memory.effective_limit(cfg, 1000 * 2**20) == 800 * 2**20
    assert memory.effective_limit(_config("memory_limit: 300MiB"), 1000 * 2**20) == 300 * 2**20
    assert memory.effective_limit(_config("memory_limit: null"), 1000 * 2**20) is None
    limited = memory.bounds(cfg, 256 * 2**20, 7, sharding=False)
    ring = memory.recent_capacity(cfg, 256 * 2**20)
    assert 10_000 < ring < 100_000 and memory.recent_capacity(cfg, 2**30) == 100_000
    assert limited == {"decision_cache": 7, "recent_decisions": recent_bound(ring),
                       "export_queue": int(256 * 2**20 * 0.1), "forward_queues": 0,
                       "requests": int(256 * 2**20 * 0.1), "splitter": memory.SPLITTER_BOUND,
                       "compression": memory.COMPRESSION_BOUND}
    unlimited = memory.bounds(cfg, None, 7, sharding=True)
    assert unlimited["export_queue"] == 64 * 2**20 and unlimited["forward_queues"] == 32 * 2**20
    assert unlimited["requests"] is None
    explicit = memory.bounds(_config("exporter: {queue_max_bytes: 5MiB}\nreceivers: {max_inflight_bytes: 3MiB}"),
                             256 * 2**20, 7, sharding=False)
    assert explicit["export_queue"] == 5 * 2**20 and explicit["requests"] == 3 * 2**20


def test_a_plan_gives_the_buffer_what_the_limit_leaves() -> None:
    plan = memory.Plan(256 * 2**20, 80 * 2**20, {"a": 20 * 2**20, "b": None})
    assert plan.buffer == int(256 * 2**20 * memory.TARGET) - 100 * 2**20
    plan.check()
    too_small = memory.Plan(128 * 2**20, 80 * 2**20, {"export_queue": 30 * 2**20})
    with pytest.raises(ValueError, match=r"memory_limit 128MiB is too small.*export_queue 30MiB"):
        too_small.check()


def test_the_governor_trims_first_then_sheds_what_is_over_soft_and_refuses_over_hard() -> None:
    mib = 2**20
    g = memory.Governor(limit=100 * mib, max_bytes=40 * mib)  # soft 88 MiB, hard 93 MiB
    assert not g.update(rss=50 * mib, buffer_bytes=10 * mib, other=0, now=0.0, trimming=False)
    assert (g.bound, g.pressure, g.refusing) == (40 * mib, memory.NORMAL, False)  # room: up to max_bytes
    # 2 MiB over soft: first a trim; meanwhile the buffer may not grow
    assert g.update(rss=90 * mib, buffer_bytes=30 * mib, other=0, now=1.0, trimming=False)
    assert g.bound == 30 * mib and g.pressure == memory.DECIDING_EARLY
    assert not g.update(rss=90 * mib, buffer_bytes=30 * mib, other=0, now=1.1, trimming=True)  # still trimming
    assert g.bound == 30 * mib
    # the trim gave nothing back: the buffer gives up the excess, and what that frees is trimmed
    assert g.update(rss=90 * mib, buffer_bytes=30 * mib, other=0, now=1.2, trimming=False)
    assert g.bound == 28 * mib
    assert not g.update(rss=94 * mib, buffer_bytes=28 * mib, other=0, now=1.3, trimming=True)
    assert g.refusing and g.pressure == memory.REFUSING and g.bound == 28 * mib
    g.update(rss=90 * mib, buffer_bytes=28 * mib, other=0, now=1.4, trimming=True)
    assert g.refusing  # under hard but over soft: still refusing (no flapping)
    assert not g.update(rss=83 * mib, buffer_bytes=22 * mib, other=0, now=1.5, trimming=False)
    assert not g.refusing and g.pressure == memory.NORMAL and g.bound == 27 * mib
    # far below soft, but much resident beyond what is counted: an occasional trim
    assert g.update(rss=60 * mib, buffer_bytes=10 * mib, other=30 * mib, now=40.0, trimming=False)
    assert not g.update(rss=60 * mib, buffer_bytes=10 * mib, other=30 * mib, now=41.0, trimming=False)
    g.update(rss=200 * mib, buffer_bytes=5 * mib, other=0, now=41.5, trimming=False)
    g.update(rss=200 * mib, buffer_bytes=5 * mib, other=0, now=41.6, trimming=False)
    assert g.bound == 0


def test_tune_malloc_and_trim_run_here() -> None:
    assert system.tune_malloc()
    system.malloc_trim()  # returns whether memory was released: either is fine


def test_inflight_admits_within_its_bound() -> None:
    inflight = memory.InFlight(100)
    assert inflight.admit(60) is None
    assert inflight.admit(50) == "memory"
    assert inflight.admit(101) == "too_large"
    inflight.release(60)
    assert inflight.admit(100) is None and inflight.nbytes == 100
    unbounded = memory.InFlight(None)
    assert unbounded.admit(10**12) is None


def test_a_limit_too_small_for_the_process_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "tailsampler.yaml"
    config.write_text("""
memory_limit: 64MiB
receivers: {otlp: {grpc: {endpoint: "127.0.0.1:0"}, http: null}}
exporter: {protocol: stdout}
admin: {endpoint: null}
""")

    async def main() -> None:
        app = App(load_config(config, environ={}))
        await app.start()

    with pytest.raises(StartupError, match="memory_limit 64MiB is too small"):
        asyncio.run(main())
