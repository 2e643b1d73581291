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
    peers: list[tuple[str | None, str | None, str | None]] | None
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

EdgeKeyT = tuple[str, str, str]
Peers = list[tuple[str | None, str | None, str | None]] | None

class Edges:
    index: dict[EdgeKeyT, int]
    keys: list[EdgeKeyT | None]
    exemplars: list[tuple[bytes, float, float] | None]
    max_edges: int
    def __init__(self, bounds: Sequence[float], display: Sequence[float], max_edges: int,
                 labels: tuple[str, str, str, str, str]) -> None: ...
    def add_request(self, key: EdgeKeyT, failed: bool, client_s: float, server_s: float, seconds: float,
                    exemplar: bytes | None) -> None: ...
    def add_trace(self, records: bytes | bytearray, groups: list[Group], peers: Peers, trace_id: bytes,
                  kept: bool, services: set[str], max_services: int) -> tuple[bool, dict[str, int] | None]: ...
    def row(self, row: int) -> tuple[int, int, list[tuple[list[int], int, float, float]]]: ...
    @property
    def nedges(self) -> int: ...

def trace_requests(
    records: bytes | bytearray, groups: list[Group], peers: Peers, labels: tuple[str, str, str, str, str]
) -> tuple[list[tuple[EdgeKeyT, bytes, bool, float, float, float]], dict[str, int], bool, list[str]]: ...
def exemplars(records: bytes | bytearray, trace_id: bytes, exemplars: dict[int, tuple[bytes, int]]) -> None: ...
def split_request(data: bytes, splitter: Splitter, count: bool = True) -> list[ChunkProtocol]: ...
def split_logs(data: bytes, splitter: Splitter) -> list[LogChunk]: ...
def cut_field(data: bytes, tag: int) -> tuple[bytes, bytes | None]: ...
