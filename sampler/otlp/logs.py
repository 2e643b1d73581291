"""Split an OTLP logs request into per-trace chunks of log records.

An ExportLogsServiceRequest has the shape of a traces request (ResourceLogs, ScopeLogs and records in
the same field numbers), so records are held, packed and spliced into export requests exactly as
spans are: as their bytes, each with its resource and scope (a Group marked `logs`). What a trace's
decision reads of its records is their count and their highest severity (the `errors` policy).

A record's trace id (LogRecord field 9) is 16 bytes or absent; an all-zero one counts as absent, as
the specification says of invalid ids. Records without one form the chunk whose trace_id is b"".
Validation is protobuf's (framing, wire types, UTF-8 in string fields, the recursion limit), plus
the OTLP id lengths, as for spans.

The package build compiles this step (`_split.pyx`, `split_logs`); `COMPILED` says which is loaded.
"""

from __future__ import annotations

from collections.abc import Callable

from sampler.otlp.splice import MARK_KEYS
from sampler.otlp.split import Splitter
from sampler.otlp.wire import (
    K_MESSAGE,
    K_OTHER,
    K_STRING,
    KINDS,
    M_LOGRECORD,
    M_SCOPELOGS,
    SUBS,
    AttrValue,
    Group,
    WireError,
    _attributes,
    _check_utf8,
    _length,
    _skip,
    _tag,
    _varint,
    check_message,
    resource_parts,
    scope_parts,
)

NO_TRACE = b""  # the trace_id of the chunk of records that have none
_ZERO_ID = bytes(16)
GROUP_KEYS = frozenset({"service.name"})  # what a log group keeps of its resource's attributes


class LogChunk:
    """The log records of one trace in one request (trace_id NO_TRACE: the records without one).
    `groups[i]` is the resource and scope of `records[i]`; `marked`: some record carries an attribute
    of MARK_KEYS (annotated by a tailsampler before this one)."""

    __slots__ = ("groups", "marked", "nbytes", "records", "severity_max", "trace_id")

    def __init__(self, trace_id: bytes) -> None:
        self.trace_id = trace_id
        self.records: list[bytes] = []
        self.groups: list[Group] = []
        self.nbytes = 0
        self.severity_max = 0
        self.marked = False


def _read_record(data: bytes, pos: int, end: int) -> tuple[bytes, int, bool]:
    """Validate one LogRecord; its trace id (NO_TRACE when none), severity_number and whether it
    carries a MARK_KEYS attribute."""
    depth = 3  # request 0 > ResourceLogs 1 > ScopeLogs 2 > LogRecord 3, as upb counts
    trace_id = NO_TRACE
    severity = 0
    marked = False
    kinds = KINDS[M_LOGRECORD]
    while pos < end:
        tag, pos = _tag(data, pos, end)
        wt = tag & 7
        fno = tag >> 3
        if wt == 2:
            n, pos = _length(data, pos, end)
            stop = pos + n
            if fno == 9:
                if n != 16 and n != 0:
                    raise WireError(f"log record trace_id has {n} bytes, want 16 or none")
                trace_id = data[pos:stop] if n and data[pos:stop] != _ZERO_ID else NO_TRACE
            elif fno == 10:
                if n != 8 and n != 0:
                    raise WireError(f"log record span_id has {n} bytes, want 8 or none")
            elif fno == 6:
                if _attributes(data, pos, stop, MARK_KEYS, None, depth + 1):
                    marked = True
            else:
                kind = kinds.get(fno, K_OTHER)
                if kind == K_STRING:
                    _check_utf8(data, pos, stop)
                elif kind == K_MESSAGE:
                    check_message(data, pos, stop, SUBS[M_LOGRECORD][fno], depth + 1)
            pos = stop
        elif tag == 0x10:  # severity_number, an int32 enum
            v, pos = _varint(data, pos, end)
            v &= 0xFFFFFFFF
            severity = v - (1 << 32) if v >= 1 << 31 else v
        elif wt == 4:
            raise WireError(f"unexpected end-group at byte {pos}")
        else:
            pos = _skip(data, pos, end, tag, depth)
    return trace_id, severity, marked


class _Split:
    def __init__(self, data: bytes, splitter: Splitter) -> None:
        self.data = data
        self.splitter = splitter
        self.by_trace: dict[bytes, LogChunk] = {}

    def scope_logs(self, pos: int, end: int, resource: bytes, rattrs: dict[str, AttrValue]) -> None:
        data = self.data
        scope, ranges = scope_parts(data, pos, end, M_SCOPELOGS)
        if not ranges:
            return
        group = self.splitter.log_group(resource, scope)
        if group is None:
            group = self.splitter.add_log_group(Group(resource, scope, rattrs, logs=True))
        for i in range(0, len(ranges), 2):
            start, stop = ranges[i], ranges[i + 1]
            trace_id, severity, marked = _read_record(data, start, stop)
            chunk = self.by_trace.get(trace_id)
            if chunk is None:
                chunk = self.by_trace[trace_id] = LogChunk(trace_id)
            chunk.records.append(data[start:stop])
            chunk.groups.append(group)
            chunk.nbytes += stop - start
            if severity > chunk.severity_max:
                chunk.severity_max = severity
            if marked:
                chunk.marked = True

    def resource_logs(self, pos: int, end: int) -> None:
        resource, rattrs, scopes = resource_parts(self.data, pos, end, GROUP_KEYS)
        for i in range(0, len(scopes), 2):
            self.scope_logs(scopes[i], scopes[i + 1], resource, rattrs)


def _split_logs(data: bytes, splitter: Splitter) -> list[LogChunk]:
    """Interpreted: split an ExportLogsServiceRequest into per-trace LogChunks, in order of first
    appearance; WireError if protobuf would refuse it."""
    walk = _Split(data, splitter)
    end = len(data)
    pos = 0
    while pos < end:
        tag, pos = _tag(data, pos, end)
        if tag == 0x0A:
            n, pos = _length(data, pos, end)
            walk.resource_logs(pos, pos + n)
            pos += n
        elif tag & 7 == 4:
            raise WireError(f"unexpected end-group at byte {pos}")
        else:
            pos = _skip(data, pos, end, tag, 0)
    return list(walk.by_trace.values())


split_logs: Callable[[bytes, Splitter], list[LogChunk]]
try:
    from sampler.otlp._split import split_logs
except ImportError:  # no compiled module (TAILSAMPLER_NO_COMPILE, no compiler): the interpreted path
    split_logs = _split_logs
    COMPILED = False
else:
    COMPILED = True
