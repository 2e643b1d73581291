"""Type stub of the Cython-compiled splitter (_split.pyx); the same contract as split._split_request."""

from sampler.otlp.split import Chunk, Splitter

def split_request(data: bytes, splitter: Splitter) -> list[Chunk]: ...
