"""OTLP metrics requests, passed through unsampled: validated as protobuf would, and their data points
counted, walking the wire bytes (the request itself is forwarded as it came).

Metric.data is one of gauge (5), sum (7), histogram (9), exponential_histogram (10) or summary (11);
each holds its points in field 1.
"""

from __future__ import annotations

from sampler.otlp.wire import M_METRICS_REQUEST, _length, _skip, _tag, check_message

_DATA_FIELDS = frozenset({5, 7, 9, 10, 11})


def _count_in(data: bytes, pos: int, end: int, field: int) -> int:
    """How many times length-delimited `field` occurs in the message at data[pos:end]."""
    n = 0
    while pos < end:
        tag, pos = _tag(data, pos, end)
        if tag == (field << 3) | 2:
            n += 1
        pos = _skip(data, pos, end, tag, 0)
    return n


def _fields(data: bytes, pos: int, end: int, field: int) -> list[tuple[int, int]]:
    """The (start, end) of each length-delimited `field` in the message at data[pos:end]."""
    out: list[tuple[int, int]] = []
    while pos < end:
        tag, pos = _tag(data, pos, end)
        if tag == (field << 3) | 2:
            n, pos = _length(data, pos, end)
            out.append((pos, pos + n))
            pos += n
        else:
            pos = _skip(data, pos, end, tag, 0)
    return out


def count_points(data: bytes) -> int:
    """The data points of an ExportMetricsServiceRequest; WireError if protobuf would refuse it."""
    check_message(data, 0, len(data), M_METRICS_REQUEST, 0)
    points = 0
    for rs in _fields(data, 0, len(data), 1):  # resource_metrics
        for ss in _fields(data, *rs, 2):  # scope_metrics
            for pos, end in _fields(data, *ss, 2):  # metrics
                while pos < end:
                    tag, pos = _tag(data, pos, end)
                    if tag & 7 == 2 and tag >> 3 in _DATA_FIELDS:
                        n, pos = _length(data, pos, end)
                        points += _count_in(data, pos, pos + n, 1)  # data_points
                        pos += n
                    else:
                        pos = _skip(data, pos, end, tag, 0)
    return points
