"""Type stub of the Cython-compiled splitters (_split.pyx): the same contracts as split._split_request
and logs._split_logs.
`Chunk` here declares the compiled class's fields; split.py has mypy check it satisfies split.Chunk."""

from sampler.otlp.logs import LogChunk
from sampler.otlp.split import Chunk as ChunkProtocol
from sampler.otlp.split import Splitter
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
    @property
    def bits(self) -> int: ...

def split_request(data: bytes, splitter: Splitter) -> list[ChunkProtocol]: ...
def split_logs(data: bytes, splitter: Splitter) -> list[LogChunk]: ...
