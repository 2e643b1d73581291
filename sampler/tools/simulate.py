"""`tailsampler simulate`: recorded OTLP/JSON through the same core and policies, offline. Recorded
log records are decided with their traces (the `errors` policy reads their severity).

Every span is ingested before anything is decided, so each trace is judged whole, and decisions
come out in the order traces first appear (the buffer's first-seen order)."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from sampler.config.yamlfile import ConfigError, load_yaml
from sampler.otlp.jsonconv import dict_to_protobuf, signal_of_document
from sampler.otlp.transport import LOGS, METRICS
from sampler.otlp.wire import WireError
from sampler.pipeline.buffer import Buffer, TraceEntry
from sampler.pipeline.core import Core, KeptTrace
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.base import KEEP_VOTES, Policy
from sampler.policy.engine import Engine, Verdict
from sampler.policy.loader import load_policies
from sampler.policy.summary import TraceSummary

_UNBOUNDED = 1 << 62
PROGRESS_MIN_BYTES = 2 * 2**20


def read_documents(path: Path) -> Iterator[tuple[Any, int]]:
    """One OTLP/JSON document, or JSON Lines of them; each with how far into the file it ends."""
    text = path.read_text(encoding="utf-8")
    try:
        yield json.loads(text), len(text)
        return
    except ValueError:
        pass
    reached = 0
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        reached += len(line)
        if line.strip():
            try:
                yield json.loads(line), reached
            except ValueError as exc:
                raise WireError(f"line {number}: invalid JSON: {exc}") from None


class _Tally:
    """Counts decisions; in table mode also what each policy alone would keep, asked of a separate
    set of policy instances so that stateful policies (rate limits) are not spent twice."""

    def __init__(self, policies: list[Policy], alone: list[Policy] | None, out: TextIO, jsonl: bool) -> None:
        self.policies = policies
        self.alone_policies = alone or []
        self.out = out
        self.jsonl = jsonl
        self.traces = 0
        self.spans = 0
        self.kept = 0
        self.by_policy: Counter[str] = Counter()
        self.alone: Counter[str] = Counter()

    def __call__(self, summary: TraceSummary, verdict: Verdict, reason: str) -> None:
        self.traces += 1
        self.spans += summary.spans
        if verdict.keep:
            self.kept += 1
            self.by_policy[verdict.policy or ""] += 1
        for p in self.alone_policies:
            try:
                if p.evaluate(summary) in KEEP_VOTES:
                    self.alone[p.name] += 1
            except Exception:  # an evaluation error abstains
                continue
        if self.jsonl:
            record = {"trace_id": summary.trace_id.hex(), "decision": "keep" if verdict.keep else "drop",
                      "policy": verdict.policy, "spans": summary.spans}
            self.out.write(json.dumps(record) + "\n")

    def _pct(self, n: int) -> str:
        return f"{100.0 * n / self.traces:5.1f}%" if self.traces else "    -"

    def table(self) -> None:
        w = self.out.write
        w(f"traces  {self.traces}\nspans   {self.spans}\nkept    {self.kept} ({self._pct(self.kept).strip()})\n\n")
        w(f"{'policy':<28} {'decided keep':>19} {'alone would keep':>19}\n")
        for p in self.policies:
            decided = self.by_policy[p.name]
            alone = self.alone[p.name]
            w(f"{p.name:<28} {decided:>12} {self._pct(decided)} {alone:>12} {self._pct(alone)}\n")


class _Progress:
    """A progress line on stderr, for inputs large enough to make someone wait."""

    def __init__(self, files: list[Path]) -> None:
        sizes = {}
        for f in files:
            try:
                sizes[f] = f.stat().st_size
            except OSError:
                sizes[f] = 0
        self.sizes = sizes
        self.total = sum(sizes.values())
        self.done = 0
        self.docs = 0
        self.shown = False
        self.active = self.total >= PROGRESS_MIN_BYTES
        self.last = 0.0

    def step(self, reached: int) -> None:
        """One more document read, `reached` characters into the current file."""
        self.docs += 1
        if self.active and time.monotonic() - self.last >= 0.5:
            self.last = time.monotonic()
            self.shown = True
            pct = min(100.0, 100.0 * (self.done + reached) / self.total)
            bar = "#" * int(pct / 5)
            print(f"\r[{bar:<20}] {pct:5.1f}% of {self.total / 2**20:.1f} MiB, {self.docs} documents",
                  end="", file=sys.stderr, flush=True)

    def file_done(self, path: Path) -> None:
        self.done += self.sizes.get(path, 0)

    def close(self) -> None:
        if self.shown:
            print(f"\r[{'#' * 20}] 100.0% of {self.total / 2**20:.1f} MiB, {self.docs} documents",
                  file=sys.stderr, flush=True)


class ReplayClock:
    """The stateful policies' clock (rate and bytes limits, composite shares): the recorded end of the
    trace being decided, in seconds, so they spend their budget at the rate the traces were recorded,
    the same on every run however fast the simulation goes."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def at(self, entry: TraceEntry) -> None:
        self.now = max(self.now, entry.summary.max_end / 1e9)


def simulate(policies_path: Path, files: list[Path], fmt: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    clock = ReplayClock()
    try:
        policy_set = load_policies(load_yaml(policies_path), clock=clock)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    alone = None
    if fmt == "table":
        alone = load_policies(load_yaml(policies_path), clock=clock).policies
        Engine(alone)  # assigns the same predicate bits as the deciding engine's, which the summaries carry
    tally = _Tally(policy_set.policies, alone, out, fmt == "jsonl")

    def ignore(trace: KeptTrace) -> None:
        return None

    core = Core(Buffer(_UNBOUNDED, _UNBOUNDED, 0.0, 0.0), policy_set.engine(),
                DecisionCache(1, 2), ignore, on_decision=tally)
    progress = _Progress(files)
    for path in files:
        try:
            for doc, reached in read_documents(path):
                signal = signal_of_document(doc)
                if signal == LOGS:
                    core.ingest_logs(dict_to_protobuf(doc, LOGS), "file", 0.0)
                elif signal != METRICS:  # metrics in a recording are not sampled: nothing to decide
                    core.ingest(dict_to_protobuf(doc), "file", 0.0)
                progress.step(reached)
        except (OSError, UnicodeDecodeError, WireError) as exc:
            print(f"{path}: cannot read recorded traces: {exc}", file=sys.stderr)
            return 1
        progress.file_done(path)
    progress.close()
    core.decide_all(0.0, clock.at)
    if fmt == "table":
        tally.table()
    return 0
