"""`tailsampler simulate`: recorded OTLP/JSON through the same core and policies, offline.

Every span is ingested before anything is decided, so each trace is judged whole, and decisions
come out in the order traces first appear (the buffer's first-seen order)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from sampler.buffer import Buffer
from sampler.core import Core, KeptTrace
from sampler.decisions import DecisionCache
from sampler.otlp.jsonconv import dict_to_protobuf
from sampler.otlp.wire import WireError
from sampler.policy.base import Policy, Vote
from sampler.policy.engine import Engine, Verdict
from sampler.policy.loader import load_policies
from sampler.summary import TraceSummary
from sampler.yamlfile import ConfigError, load_yaml

_UNBOUNDED = 1 << 62
_KEEP_VOTES = (Vote.SAMPLED, Vote.INVERT_SAMPLED)


def read_documents(path: Path) -> Iterator[Any]:
    """One OTLP/JSON document, or JSON Lines of them."""
    text = path.read_text(encoding="utf-8")
    try:
        yield json.loads(text)
        return
    except ValueError:
        pass
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise WireError(f"line {number}: invalid JSON: {exc}") from None


class _Tally:
    def __init__(self, policies: list[Policy], out: TextIO, jsonl: bool) -> None:
        self.policies = policies
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
        for p in self.policies:
            try:
                if p.evaluate(summary) in _KEEP_VOTES:
                    self.alone[p.name] += 1
            except Exception:  # an evaluation error abstains
                continue
        if self.jsonl:
            record = {"trace_id": summary.trace_id.hex(), "decision": "keep" if verdict.keep else "drop",
                      "policy": verdict.policy, "spans": summary.spans}
            self.out.write(json.dumps(record) + "\n")

    def table(self) -> None:
        pct = 100.0 * self.kept / self.traces if self.traces else 0.0
        w = self.out.write
        w(f"traces  {self.traces}\nspans   {self.spans}\nkept    {self.kept} ({pct:.1f}%)\n\n")
        w(f"{'policy':<28} {'decided keep':>12} {'alone would keep':>17}\n")
        for p in self.policies:
            w(f"{p.name:<28} {self.by_policy[p.name]:>12} {self.alone[p.name]:>17}\n")


def simulate(policies_path: Path, files: list[Path], fmt: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        policy_set = load_policies(load_yaml(policies_path))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    tally = _Tally(policy_set.policies, out, fmt == "jsonl")

    def ignore(trace: KeptTrace) -> None:
        return None

    core = Core(Buffer(_UNBOUNDED, _UNBOUNDED, 0.0, 0.0), Engine(policy_set.policies),
                DecisionCache(1, 2), ignore, on_decision=tally)
    for path in files:
        try:
            for doc in read_documents(path):
                core.ingest(dict_to_protobuf(doc), "file", 0.0)
        except (OSError, UnicodeDecodeError, WireError) as exc:
            print(f"{path}: cannot read recorded traces: {exc}", file=sys.stderr)
            return 1
    core.decide_all(0.0)
    if fmt == "table":
        tally.table()
    return 0
