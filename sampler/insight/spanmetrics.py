"""RED metrics of every span received, as Grafana Tempo's metrics-generator names them.

The splitter counts each span as it reads it, into a tally (`sampler.otlp.split.SpanTally`, or the
compiled splitter's twin): per series (service, span name, kind, status code and the configured
dimensions) its calls, latency sum and latency buckets, at most `max_series` series and one
overflow series for any further label set. Nothing else happens per span. This module owns what
those counts mean: the label names and values Tempo uses (`span_kind="SPAN_KIND_SERVER"`,
`status_code="STATUS_CODE_ERROR"`), the buckets in seconds, and the exemplars: when a trace is
kept, each series its spans were counted in remembers it (trace id and latency), so a histogram
bucket points at a trace that exists in the backend, which a connector placed before a sampler
cannot do.

Spans are counted where they are first received: spans forwarded to the instance owning their
trace are not counted again there, and spans split again after a policy reload neither.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sampler.otlp.split import COMPILED, NO_SERIES, RECORD, SeriesKey, Tally, new_tally

if COMPILED:
    from sampler.otlp._split import exemplars as _exemplars

# Tempo's default span-metrics histogram buckets (seconds): prometheus.ExponentialBuckets(0.002, 2, 12).
TEMPO_BUCKETS: tuple[float, ...] = (0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
                                    4.096)
MAX_SERIES = 10_000

KIND_NAMES = ("SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
              "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER")
STATUS_NAMES = ("STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR")
LABELS = ("service", "span_name", "span_kind", "status_code")
OVERFLOW_LABEL = "otel_metric_overflow"

_NOT_A_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def label_name(attribute: str) -> str:
    """A span attribute's name as a Prometheus label (Tempo's sanitising: `http.route` -> `http_route`)."""
    name = _NOT_A_LABEL.sub("_", attribute)
    return "_" + name if not name or name[0].isdigit() else name


def kind_name(kind: int) -> str:
    return KIND_NAMES[kind] if 0 <= kind < len(KIND_NAMES) else f"SPAN_KIND_{kind}"


def status_name(status: int) -> str:
    return STATUS_NAMES[status] if 0 <= status < len(STATUS_NAMES) else f"STATUS_CODE_{status}"


@dataclass(frozen=True, slots=True)
class Series:
    """One series of the exposition: its label values (None for the overflow series), calls,
    latency sum in seconds, cumulative bucket counts (+Inf last), and exemplars per bucket."""

    labels: tuple[str, ...] | None
    calls: int
    seconds: float
    buckets: tuple[int, ...]
    exemplars: dict[int, tuple[str, float]]  # bucket index -> (trace id hex, latency seconds)


class SpanMetrics:
    def __init__(self, dimensions: Sequence[str] = (), max_series: int = MAX_SERIES,
                 buckets: Sequence[float] = TEMPO_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.dimensions = tuple(dimensions)
        self.labels = (*LABELS, *(label_name(d) for d in self.dimensions))
        self.tally: Tally = new_tally([round(b * 1e9) for b in self.buckets], self.dimensions, max_series)
        # per series index: the last kept trace counted in it, with its span's latency (ns)
        self.exemplars: dict[int, tuple[bytes, int]] = {}

    def kept(self, trace_id: bytes, records: bytes | bytearray) -> None:
        """A trace was kept: each series its spans were counted in takes it as its exemplar."""
        exemplars = self.exemplars
        if COMPILED:
            _exemplars(records, trace_id, exemplars)
            return
        for _, _, start, end, _, _, _, series in RECORD.iter_unpack(records):
            if series != NO_SERIES:
                exemplars[series] = (trace_id, end - start if end > start else 0)

    def series(self) -> list[Series]:
        """Every series with calls, the overflow series first when it has any."""
        bounds_ns = self.tally.bounds_ns
        out: list[Series] = []
        index = self.tally.index
        exemplar_of = self.exemplars
        for key, calls, sum_ns, counts in self.tally.snapshot():
            cumulative: list[int] = []
            running = 0
            for n in counts:
                running += n
                cumulative.append(running)
            exemplars: dict[int, tuple[str, float]] = {}
            found = exemplar_of.get(0 if key is None else index.get(key, -1))
            if found is not None:
                trace_id, ns = found
                bucket = next((i for i, bound in enumerate(bounds_ns) if ns <= bound), len(bounds_ns))
                exemplars[bucket] = (trace_id.hex(), ns / 1e9)
            out.append(Series(None if key is None else _labels(key), calls, sum_ns / 1e9, tuple(cumulative),
                              exemplars))
        return out

    @property
    def nbytes(self) -> int:
        return self.tally.nbytes + 150 * len(self.exemplars)


def _labels(key: SeriesKey) -> tuple[str, ...]:
    service, name, kind, status, dims = key
    return (service, name, kind_name(kind), status_name(status), *dims)
