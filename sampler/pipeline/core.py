"""The sans-I/O pipeline: request bytes in -> buffer -> decisions -> kept traces out.

Receivers, `simulate` and the demo all drive this one object; it knows no sockets and reads time
only from the `now` values it is given, so tests drive it with a hand-advanced clock.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable

from sampler.insight.live import Insight
from sampler.insight.recent import RecentDecisions
from sampler.otlp.logs import NO_TRACE, LogChunk, split_logs
from sampler.otlp.splice import MARK_KEYS, encode_request
from sampler.otlp.split import Chunk, Splitter, split_request
from sampler.otlp.wire import Group
from sampler.pipeline.buffer import HOT_LISTS, Buffer, TraceEntry, spans_cost, trace_cost
from sampler.pipeline.decisions import DecisionCache
from sampler.pipeline.frames import Codec, Compression, Frame, compress, pack, unpack
from sampler.pipeline.pushback import Pushback
from sampler.policy.engine import Engine, Verdict
from sampler.policy.summary import TraceSummary

log = logging.getLogger("tailsampler")


class KeptTrace:
    """Spans of a kept trace (or late spans of one), ready to be spliced into an export request;
    with `logs`, its log records instead (in `spans` all the same: they are held, queued and spliced
    alike), for a logs request. `marked`: some of them arrived annotated already, so the exporter
    replaces their annotation. Untraced log records passed on (trace_id NO_TRACE) are not annotated.
    `probability`: the trace was kept by a probability (the exporter puts its threshold in each
    span's tracestate, then sets it to 0); `decision`: under dry_run, "keep" or "drop" (the exporter
    adds it as `tailsampling.decision`), else ""."""

    __slots__ = ("cost", "decision", "groups", "logs", "marked", "policy", "probability", "sample_rate", "spans",
                 "summary", "trace_id")

    def __init__(
        self, trace_id: bytes, spans: list[bytes], groups: list[Group], verdict: Verdict,
        summary: TraceSummary | None, marked: bool = False, logs: bool = False, decision: str = "",
        probability: float = 0.0,
    ) -> None:
        self.trace_id = trace_id
        self.spans = spans
        self.groups = groups
        self.policy = verdict.policy
        self.sample_rate = verdict.sample_rate
        self.summary = summary  # None for late spans
        self.marked = marked
        self.logs = logs
        self.decision = decision
        self.probability = probability
        # Memory held while it waits for export: the buffer's own measure of these spans and summary.
        if summary is not None and summary.log_records == 0:
            self.cost = trace_cost(summary.nbytes, summary.spans)
        else:
            nbytes = 0
            for s in spans:
                nbytes += len(s)
            self.cost = trace_cost(nbytes, len(spans))

    def part(self, start: int, stop: int) -> KeptTrace:
        """spans[start:stop] of this trace, to be sent in a request of their own (a trace too large
        for one export request is sent in parts)."""
        return KeptTrace(self.trace_id, self.spans[start:stop], self.groups[start:stop],
                         Verdict(True, self.policy, self.sample_rate), None, self.marked, self.logs, self.decision,
                         self.probability)


class Stats:
    """Plain counters; the metrics module exposes them at scrape time, so the hot path makes no
    metrics calls."""

    def __init__(self) -> None:
        self.spans_received: Counter[str] = Counter()
        self.records_received: Counter[str] = Counter()  # log records, by protocol
        self.records_dropped: Counter[str] = Counter()  # trace_dropped | untraced
        self.decided: Counter[tuple[str, str]] = Counter()  # (keep|drop, policy or "")
        self.evicted = 0
        self.limited = 0  # traces decided early at max_spans_per_trace / max_bytes_per_trace
        self.late_spans: Counter[str] = Counter()  # keep|drop
        self.late_records: Counter[str] = Counter()  # log records, keep|drop
        self.policy_errors: Counter[str] = Counter()
        # decision lag (decision time minus due time) of traces decided by the sweep, in LAG_BUCKETS:
        # lag_counts[i] counts lags <= LAG_BUCKETS[i] and above the bound before; the last slot is +Inf
        self.lag_counts = [0] * (len(LAG_BUCKETS) + 1)
        self.lag_sum = 0.0
        self.packed_frames = 0
        self.packed_bytes = 0  # serialized span bytes packed into frames
        self.compressed_in = 0  # packed bytes of the frames compressed...
        self.compressed_out = 0  # ...and what they became


Emit = Callable[[KeptTrace], None]

# The sweep runs every sweep_interval (100 ms by default), so lags cluster just below and above it:
# the buckets are finest there, or a p99 read off them would only say "between 0.1 and 0.25 s".
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Decision reasons, for logs and the decision-lag due time.
QUIET = "quiet"
MAX_AGE = "max_age"
EVICTED = "evicted"
LIMITED = "trace_limit"
SHUTDOWN = "shutdown"

# The deciding policy named for a trace whose decision raised: it is kept, since a kept trace can still
# be dropped downstream while a dropped one is gone.
POLICY_ERROR = "policy_error"
KEEP_ON_ERROR = Verdict(True, POLICY_ERROR, 1.0)
# What log records without a trace id are passed on with (when logs.untraced is pass): not a decision.
UNTRACED = Verdict(True, "", 1.0)


class Core:
    def __init__(
        self,
        buffer: Buffer,
        engine: Engine,
        decisions: DecisionCache,
        emit: Emit,
        on_decision: Callable[[TraceSummary, Verdict, str], None] | None = None,
        compression: Compression | None = None,
        insight: Insight | None = None,
    ) -> None:
        self.buffer = buffer
        self.insight = insight  # span metrics, service graph, exemplars (None: none of them)
        self.compression = compression or Compression()
        self._now = 0.0  # the time of the last sweep (dictionary sampling reads it)
        self.decisions = decisions
        self.emit = emit
        self.on_decision = on_decision
        self.stats = Stats()
        self.engine = engine
        self.splitter = _splitter(engine, insight)
        self.generation = 0  # of the policy set in force; a buffered trace's summary is of its own
        self._stale: deque[bytes] = deque()  # ids of traces buffered at the last reload, to re-summarise
        self.pushback = Pushback()
        # Sharding: the owner of a trace id when it is another instance, and where to send its chunks.
        self.route: Callable[[bytes], str | None] | None = None
        self.forward: Callable[[str, list[Chunk | LogChunk]], None] | None = None
        self.untraced_pass = True  # logs.untraced: records without a trace id are passed on, or dropped
        # dry_run: every trace is passed on, its decision ("keep" | "drop") in each span; stats count the real ones
        self.dry_run = False
        # debug.recent_decisions: every decision, with each policy's vote as cast, recorded here (/debug)
        self.recent: RecentDecisions | None = None
        engine.on_error = self._policy_error
        self._error_logged = False  # a decision that raised is logged once per policy set, then counted

    def _policy_error(self, policy: object, exc: Exception) -> None:
        self.stats.policy_errors[getattr(policy, "name", "?")] += 1

    def ingest(self, data: bytes, protocol: str, now: float) -> int:
        """Take one ExportTraceServiceRequest; returns its span count. Raises WireError when the
        request is malformed and Backpressure when the buffer cannot take it now, in both cases
        having changed nothing. Traces owned by another instance go to `forward`, except in requests
        that were themselves forwarded (protocol "peer"), which are always kept here; when the forward
        queues have no room for them, the request is refused (Backpressure "forward_queue_full")
        rather than its traces kept here, split from their spans at the owner."""
        pushback = self.pushback
        pushback.check()
        chunks = split_request(data, self.splitter, protocol != "peer")  # counted where first received
        nspans = 0
        for chunk in chunks:
            nspans += len(chunk.spans)
        local = chunks
        remote: dict[str, list[Chunk | LogChunk]] = {}
        if self.route is not None and protocol != "peer":
            local = []
            for chunk in chunks:
                owner = self.route(chunk.trace_id)
                if owner is None:
                    local.append(chunk)
                else:
                    remote.setdefault(owner, []).append(chunk)
            pushback.check_forward(remote)
        pushback.check_buffer(self.buffer, local, now)
        self.stats.spans_received[protocol] += nspans
        for chunk in local:
            self._add(chunk, now)
        if remote and self.forward is not None:
            for owner, owned in remote.items():
                self.forward(owner, owned)
        return nspans

    def ingest_logs(self, data: bytes, protocol: str, now: float) -> int:
        """Take one ExportLogsServiceRequest; returns its record count. Records are held with their
        trace and follow its decision, as spans do (routed to the trace's owner the same way);
        records without a trace id are passed on at once or dropped (`untraced_pass`). Raises as
        `ingest` does, having changed nothing."""
        pushback = self.pushback
        pushback.check()
        chunks = split_logs(data, self.splitter)
        nrecords = 0
        for chunk in chunks:
            nrecords += len(chunk.records)
        local: list[LogChunk] = []
        untraced: LogChunk | None = None
        remote: dict[str, list[Chunk | LogChunk]] = {}
        for chunk in chunks:
            if chunk.trace_id == NO_TRACE:
                untraced = chunk
                continue
            owner = self.route(chunk.trace_id) if self.route is not None and protocol != "peer" else None
            if owner is None:
                local.append(chunk)
            else:
                remote.setdefault(owner, []).append(chunk)
        pushback.check_forward(remote)
        pushback.check_buffer(self.buffer, local, now)
        self.stats.records_received[protocol] += nrecords
        if untraced is not None:
            if self.untraced_pass:
                self.emit(KeptTrace(NO_TRACE, untraced.records, untraced.groups, UNTRACED, None, untraced.marked,
                                    logs=True))
            else:
                self.stats.records_dropped["untraced"] += len(untraced.records)
        for chunk in local:
            self._add_logs(chunk, now)
        if remote and self.forward is not None:
            for owner, owned in remote.items():
                self.forward(owner, owned)
        return nrecords

    def keep_here(self, chunks: list[Chunk | LogChunk], now: float) -> None:
        """Keep chunks here that forwarding to their owner gave up on: no routing. Spans are split
        again, since the policies (and so the predicate bits) may have been reloaded meanwhile."""
        spans = [c for c in chunks if not isinstance(c, LogChunk)]
        if spans:
            body = encode_request((c.spans, c.groups, b"") for c in spans)
            for chunk in split_request(body, self.splitter, False):
                self._add(chunk, now)
        for item in chunks:
            if isinstance(item, LogChunk):
                self._add_logs(item, now)

    def _add_logs(self, chunk: LogChunk, now: float) -> None:
        buffer = self.buffer
        entry = self._held(chunk.trace_id, chunk.records, chunk.groups, now)
        if isinstance(entry, Verdict):
            self._late_logs(chunk, entry)
            return
        if chunk.marked:
            entry.marked = True
        entry.summary.merge_logs(chunk)
        buffer.touched(entry, now, len(chunk.records), spans_cost(chunk.nbytes, len(chunk.records)))
        if entry.nbytes > buffer.max_bytes_per_trace:
            self.stats.limited += 1
            self._decide(entry, now, LIMITED)
        self.make_room(now)

    def _late_logs(self, chunk: LogChunk, verdict: Verdict) -> None:
        if verdict.keep:
            self.stats.late_records["keep"] += len(chunk.records)
        else:
            self.stats.late_records["drop"] += len(chunk.records)
            if not self.dry_run:
                self.stats.records_dropped["trace_dropped"] += len(chunk.records)
                return
        self.emit(KeptTrace(chunk.trace_id, chunk.records, chunk.groups, verdict, None, chunk.marked, True,
                            self._dry(verdict)))

    def _held(self, trace_id: bytes, items: list[bytes], groups: list[Group], now: float) -> TraceEntry | Verdict:
        """The buffer entry of `trace_id` holding `items` (spans or log records) now: created for them,
        or extended with them; or the trace's recorded verdict when it was decided already (they are
        late)."""
        buffer = self.buffer
        entry = buffer.get(trace_id)
        if entry is None:
            verdict = self.decisions.get(trace_id)
            if verdict is not None:
                return verdict
            return buffer.create(trace_id, now, items, groups, self.generation)
        if entry.generation != self.generation:  # its summary first, then this chunk's (same policies)
            self._resummarise(entry)
        if entry.spans is None or entry.groups is None:  # packed since its last items: new hot lists
            entry.adopt(items, groups)
            buffer.recost(entry, HOT_LISTS)
        else:
            entry.spans.extend(items)
            entry.groups.extend(groups)
        return entry

    def _add(self, chunk: Chunk, now: float) -> None:
        buffer = self.buffer
        entry = self._held(chunk.trace_id, chunk.spans, chunk.groups, now)
        if isinstance(entry, Verdict):
            self._late(chunk, entry)
            return
        if chunk.marked:
            entry.marked = True
        entry.summary.merge(chunk, self.engine.reads_root_attrs)
        cost = spans_cost(chunk.nbytes, len(chunk.spans))
        if chunk.graph is not None:  # each span's record, and its group's slot in the summary
            cost += len(chunk.graph) + 8 * len(chunk.spans)
        buffer.touched(entry, now, len(chunk.spans), cost)
        if entry.summary.spans > buffer.max_spans_per_trace or entry.nbytes > buffer.max_bytes_per_trace:
            self.stats.limited += 1
            self._decide(entry, now, LIMITED)
        self.make_room(now)

    def make_room(self, now: float) -> int:
        """Decide the oldest traces early until the buffer is within its bounds (the bound on bytes
        may have just been lowered for lack of memory); returns how many were decided."""
        n = 0
        buffer = self.buffer
        while buffer.over_bounds():
            self._decide(buffer.oldest(), now, EVICTED)
            n += 1
        self.stats.evicted += n
        return n

    def _late(self, chunk: Chunk, verdict: Verdict) -> None:
        if verdict.keep:
            self.stats.late_spans["keep"] += len(chunk.spans)
        else:
            self.stats.late_spans["drop"] += len(chunk.spans)
            if not self.dry_run:
                return
        self.emit(KeptTrace(chunk.trace_id, chunk.spans, chunk.groups, verdict, None, chunk.marked, False,
                            self._dry(verdict), self._probability(verdict)))

    def _dry(self, verdict: Verdict) -> str:
        """The decision a span carries under dry_run; "" otherwise."""
        if not self.dry_run:
            return ""
        return "keep" if verdict.keep else "drop"

    def _probability(self, verdict: Verdict) -> float:
        """The probability a kept trace was kept with, when its keep is by probability; else 0."""
        if verdict.keep and verdict.sample_rate > 0 and verdict.policy in self.engine.by_probability:
            return 1.0 / verdict.sample_rate
        return 0.0

    def _decide(self, entry: TraceEntry, now: float, reason: str) -> None:
        if entry.generation != self.generation:
            self._resummarise(entry)
        summary = entry.summary
        recent = self.recent
        votes: bytearray | None = None if recent is None else bytearray()
        try:  # before the trace leaves the buffer: whatever happens, it is decided, never lost
            verdict = self.engine.decide(summary, votes)
        except Exception:
            verdict = self._undecidable(summary)
        self.buffer.remove(entry)
        if recent is not None and votes is not None:
            recent.add(summary.trace_id, verdict.keep, verdict.policy, reason, self.engine.names, bytes(votes),
                       summary.spans, summary.root_service, summary.root_name, now)
        self.decisions.record(summary.trace_id, verdict)
        self.stats.decided["keep" if verdict.keep else "drop", verdict.policy or ""] += 1
        if reason in (QUIET, MAX_AGE):
            due = min(entry.last_seen + self.buffer.decision_wait, entry.first_seen + self.buffer.max_trace_age)
            lag = max(0.0, now - due)
            self.stats.lag_counts[bisect_left(LAG_BUCKETS, lag)] += 1
            self.stats.lag_sum += lag
        if self.insight is not None:
            self.insight.decided(summary, verdict.keep, reason in (QUIET, MAX_AGE))
        if self.on_decision is not None:
            self.on_decision(summary, verdict, reason)
        if not verdict.keep and not self.dry_run:
            if summary.log_records:
                self.stats.records_dropped["trace_dropped"] += summary.log_records
            return
        spans, groups = _spans_of(entry)
        dry = self._dry(verdict)
        probability = self._probability(verdict)
        if summary.log_records == 0:
            self.emit(KeptTrace(summary.trace_id, spans, groups, verdict, summary, entry.marked, False, dry,
                                probability))
            return
        # Spans and log records leave in requests of their own signal.
        span_items, span_groups, records, record_groups = _by_signal(spans, groups)
        if span_items:
            self.emit(KeptTrace(summary.trace_id, span_items, span_groups, verdict, summary, entry.marked, False, dry,
                                probability))
        self.emit(KeptTrace(summary.trace_id, records, record_groups, verdict, summary, entry.marked, True, dry))

    def _undecidable(self, summary: TraceSummary) -> Verdict:
        """A decision raised (a policy's bug, not its abstention: those the engine handles): keep the
        trace, count it as a policy error, and log the first such failure with its traceback."""
        self.stats.policy_errors[POLICY_ERROR] += 1
        if not self._error_logged:
            self._error_logged = True
            log.exception("deciding trace %s failed; keeping it (policy %r); further failures are only "
                          "counted in tailsampler_policy_evaluation_errors_total", summary.trace_id.hex(), POLICY_ERROR)
        return KEEP_ON_ERROR

    def sweep(self, now: float, limit: int = 1 << 62) -> int:
        """Decide traces that have gone quiet or grown too old, at most `limit` of them (callers
        that must stay responsive sweep in chunks); returns how many were decided."""
        n = 0
        buffer = self.buffer
        while n < limit and (entry := buffer.next_quiet(now)) is not None:
            self._decide(entry, now, QUIET)
            n += 1
        while n < limit and (entry := buffer.next_aged(now)) is not None:
            self._decide(entry, now, MAX_AGE)
            n += 1
        return n

    def decide_oldest(self, now: float, limit: int) -> int:
        """Decide up to `limit` of the oldest buffered traces (shutdown, a step at a time, as the
        export queue makes room); returns how many were decided."""
        n = 0
        buffer = self.buffer
        while n < limit and len(buffer) > 0:
            self._decide(buffer.oldest(), now, SHUTDOWN)
            n += 1
        return n

    def decide_all(self, now: float, before: Callable[[TraceEntry], None] | None = None) -> int:
        """Decide every buffered trace at once (shutdown; the simulator, whose `before` sets its replay
        clock for each trace)."""
        entries = self.buffer.entries()
        for entry in entries:
            if before is not None:
                before(entry)
            self._decide(entry, now, SHUTDOWN)
        return len(entries)

    def set_engine(self, engine: Engine) -> None:
        """Swap in new policies. New spans are split under them at once; buffered traces are
        re-summarised under them (their stored spans split again: reloads are rare, so that is
        cheaper than keeping every attribute just in case) a few at a time by `resummarise`, and any
        trace still stale when a span of it arrives or it is decided is re-summarised right then, so
        no summary ever mixes two policy sets. Doing the whole buffer here, in one go, held the event
        loop, and so every receiver, for all of it."""
        engine.on_error = self._policy_error
        self.engine = engine
        self.splitter = _splitter(engine, self.insight)
        self._error_logged = False
        self.generation += 1
        self._stale = deque(self.buffer.by_first)

    def resummarise(self, max_spans: int) -> bool:
        """Re-summarise traces left stale by a reload, oldest first, until about `max_spans` spans
        have been split again (at least one trace); returns whether any are left."""
        stale = self._stale
        done = 0
        while stale and done < max_spans:
            entry = self.buffer.get(stale.popleft())
            if entry is not None and entry.generation != self.generation:
                done += self._resummarise(entry)
        return bool(stale)

    def _resummarise(self, entry: TraceEntry) -> int:
        """Split a trace's stored spans under the policies in force; returns its span count. The
        spans stay stored as they are (packed, compressed or hot): only the summary is new."""
        summary = self._summary_now(entry)
        entry.resummarised(summary)
        entry.generation = self.generation
        return summary.spans

    def _summary_now(self, entry: TraceEntry) -> TraceSummary:
        """A buffered trace's summary under the policies in force, made anew from its stored spans
        (the entry is left as it is). What it says of log records does not depend on the policies,
        and is carried over."""
        old = entry.summary
        summary = TraceSummary(entry.trace_id)
        spans, groups = _spans_of(entry)
        if old.log_records:
            spans, groups, records, _ = _by_signal(spans, groups)
            summary.first_service = old.first_service
            summary.log_records = old.log_records
            summary.log_severity_max = old.log_severity_max
            for record in records:
                summary.nbytes += len(record)
        for chunk in split_request(encode_request([(spans, groups, b"")]), self.splitter, False):
            summary.merge(chunk, self.engine.reads_root_attrs)
        return summary

    def peek_buffered(self, trace_id: bytes) -> tuple[TraceSummary, Verdict, bytes] | None:
        """For a buffered trace: its summary and what the policies would decide now, with their
        votes, changing nothing (no budget spent, the trace stays as it is); None when it is not
        buffered here."""
        entry = self.buffer.get(trace_id)
        if entry is None:
            return None
        summary = entry.summary if entry.generation == self.generation else self._summary_now(entry)
        verdict, votes = self._peek(summary)
        return summary, verdict, votes

    def peek_request(self, data: bytes) -> list[tuple[TraceSummary, Verdict, bytes]]:
        """For each trace of an ExportTraceServiceRequest, in order of first appearance: its summary
        and what the policies in force would decide, with their votes, changing nothing (nothing
        buffered, no budget spent). Raises WireError when the request is malformed."""
        summaries: dict[bytes, TraceSummary] = {}
        for chunk in split_request(data, self.splitter, False):  # not counted in span metrics
            summary = summaries.get(chunk.trace_id)
            if summary is None:
                summary = summaries[chunk.trace_id] = TraceSummary(chunk.trace_id)
            summary.merge(chunk, self.engine.reads_root_attrs)
        out: list[tuple[TraceSummary, Verdict, bytes]] = []
        for summary in summaries.values():
            verdict, votes = self._peek(summary)
            out.append((summary, verdict, votes))
        return out

    def _peek(self, summary: TraceSummary) -> tuple[Verdict, bytes]:
        votes = bytearray()
        try:
            verdict = self.engine.decide(summary, votes, True)
        except Exception:
            verdict = KEEP_ON_ERROR
        return verdict, bytes(votes)

    def detach_quiet(self, now: float, limit: int) -> list[PackJob]:
        """Hand the hot spans of up to `limit` traces quiet for `compress_after` to be packed and
        compressed off the loop (`pack_jobs`, then `packed`). Until then they are the trace's
        pending spans: still counted as they were, and still part of it if it is decided first."""
        buffer = self.buffer
        quiet_since = now - buffer.compress_after
        out: list[PackJob] = []
        while len(out) < limit and (entry := buffer.next_hot(quiet_since)) is not None:
            spans = entry.spans
            groups = entry.groups
            if not spans or groups is None:
                continue
            entry.detach()
            out.append((entry.trace_id, spans, groups))
        return out

    def packed(self, jobs: list[PackJob], frames: list[Frame], raw: list[bytes]) -> None:
        """Take what `pack_jobs` made of `jobs` (`raw`: each frame's packed bytes, before any
        compression): each trace still buffered holds its frame instead of those pending spans."""
        buffer = self.buffer
        stats = self.stats
        for (trace_id, spans, _), frame, data in zip(jobs, frames, raw, strict=True):
            nbytes = 0
            for span in spans:
                nbytes += len(span)
            stats.packed_frames += 1
            stats.packed_bytes += nbytes
            if frame.codec is not None:
                stats.compressed_in += len(data)
                stats.compressed_out += len(frame.data)
            self.compression.sample(data, self._now)
            entry = buffer.get(trace_id)
            if entry is None or not entry.attach(spans, frame):
                continue  # decided meanwhile, with these spans
            buffer.recost(entry, frame.cost - spans_cost(nbytes, len(spans)) - HOT_LISTS)

    def compress_quiet(self, now: float) -> int:
        """Pack and compress every quiet trace at once, here (tests, benchmarks; the server does it
        off the loop); returns how many frames were made."""
        jobs = self.detach_quiet(now, 1 << 62)
        self._now = now
        if jobs:
            frames, raw = pack_jobs(self.compression.codec, jobs)
            self.packed(jobs, frames, raw)
        return len(jobs)


PackJob = tuple[bytes, list[bytes], list[Group]]  # a trace id, and spans of it with their groups


def pack_jobs(codec: Codec | None, jobs: list[PackJob]) -> tuple[list[Frame], list[bytes]]:
    """Frames of the jobs' spans, compressed with `codec` when there is one, and each frame's packed
    bytes. Safe off the event loop: the jobs hold their lists (so their spans) until `Core.packed`
    takes the result, packing copies the spans without the GIL, and zstd releases it."""
    frames: list[Frame] = []
    raw: list[bytes] = []
    for _, spans, groups in jobs:
        frame = pack(spans, groups)
        raw.append(frame.data)
        if codec is not None:
            data = compress(codec, frame.data)
            if len(data) < len(frame.data):
                frame.data = data
                frame.codec = codec
        frames.append(frame)
    return frames, raw


def _spans_of(entry: TraceEntry) -> tuple[list[bytes], list[Group]]:
    """Every span of a buffered trace, unpacked, in arrival order, with its group: its frames, the
    spans being packed, then its hot spans."""
    if not entry.frames and not entry.pending and entry.spans is not None and entry.groups is not None:
        return entry.spans, entry.groups
    spans: list[bytes] = []
    groups: list[Group] = []
    for frame in entry.frames:
        s, g = unpack(frame)
        spans.extend(s)
        groups.extend(g)
    for s, g in entry.pending:
        spans.extend(s)
        groups.extend(g)
    if entry.spans is not None and entry.groups is not None:
        spans.extend(entry.spans)
        groups.extend(entry.groups)
    return spans, groups


def _by_signal(
    items: list[bytes], groups: list[Group],
) -> tuple[list[bytes], list[Group], list[bytes], list[Group]]:
    """A trace's stored items parted into its spans and its log records, each with their groups,
    in arrival order."""
    spans: list[bytes] = []
    span_groups: list[Group] = []
    records: list[bytes] = []
    record_groups: list[Group] = []
    for item, group in zip(items, groups, strict=True):
        if group.logs:
            records.append(item)
            record_groups.append(group)
        else:
            spans.append(item)
            span_groups.append(group)
    return spans, span_groups, records, record_groups


def _splitter(engine: Engine, insight: Insight | None = None) -> Splitter:
    """The splitter for an engine: the keys its policies read, and the annotation's keys (MARK_KEYS),
    whose presence marks a chunk for the exporter; counting spans in insight's tally and recording
    them for its decision-time graph, when there is one."""
    return Splitter(
        engine.keys | MARK_KEYS, engine.value_bits, engine.resource_bits,
        engine.span_bits if engine.span_predicates else None,
        tally=insight.tally if insight is not None else None,
        records=insight.records if insight is not None else False,
    )
