"""Memory that stays bounded: no request payload outlives its request in a reference cycle."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import grpc
import pytest

from sampler.app import App
from sampler.config import load_config
from tests.otlp_backend import EXPORT_METHOD, GRPC_OPTIONS, http_request
from tests.spans import S, request


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
