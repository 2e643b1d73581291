"""Type stub of the Cython-compiled splitters (_split.pyx): the same contracts as split._split_request
and logs._split_logs.
`Chunk` here declares the compiled class's fields; split.py has mypy check it satisfies split.Chunk."""

from collections.abc import Sequence

from sampler.otlp.logs import LogChunk
from sampler.otlp.split import Chunk as ChunkProtocol
from sampler.otlp.split import SeriesKey, Splitter
from sampler.otlp.wire import AttrValue, Group

class Chunk:
    trace_id: bytes
    spans: list[bytes]
    groups: list[Group]
    nbytes: int
    min_start: int
    max_end: int
    status_mask: int
    marked: bool
    root_name: str | None
    root_attrs: dict[str, AttrValue] | None
    root_group: Group | None
    graph: bytearray | None
    peers: list[tuple[int, str | None, str | None, str | None]] | None
    @property
    def bits(self) -> int: ...

class Tally:
    bounds_ns: tuple[int, ...]
    dims: tuple[str, ...]
    max_series: int
    index: dict[SeriesKey, int]
    keys: list[SeriesKey | None]
    def __init__(self, bounds_ns: Sequence[int], dims: Sequence[str] = ..., max_series: int = ...) -> None: ...
    def series(self, key: SeriesKey) -> int: ...
    def add(self, series: int, duration_ns: int) -> None: ...
    def snapshot(self) -> list[tuple[SeriesKey | None, int, int, list[int]]]: ...
    @property
    def nbytes(self) -> int: ...

def split_request(data: bytes, splitter: Splitter, count: bool = True) -> list[ChunkProtocol]: ...
def split_logs(data: bytes, splitter: Splitter) -> list[LogChunk]: ...
