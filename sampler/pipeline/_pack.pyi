"""Type stub of the Cython-compiled pack (_pack.pyx); the same contract as frames._pack_spans."""

from sampler.otlp.wire import Group

def pack_spans(spans: list[bytes], groups: list[Group]) -> tuple[bytes, tuple[Group, ...]]: ...
