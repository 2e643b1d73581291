"""The recent decisions: a bounded ring of what was decided about the last N traces and why, for
/debug (CONTRACT "Explaining decisions"). Sans-I/O: times are the `now` values the core is given.

Each entry is the trace id, keep or drop, the deciding policy, every policy's vote as the engine cast
it (not recomputed), the reason (quiet, max_age, evicted, trace_limit, shutdown), the span count, the
root span's service and name, and the time. The ring is columnar and allocated up front, so its
memory is known at start and counted against the memory limit:

- ids: 16 bytes a slot in one bytearray (a lookup by id is one C-speed scan of it, no index kept);
- time (8), spans (4), policy (2, an index into a table of names), flags (1: keep, reason) in arrays;
- votes (8): a reference to one of a few distinct vote patterns, interned (a policy set yields few);
- root (8): a reference to an interned (service, name) pair; past MAX_ROOTS distinct pairs, a pair of
  the entry's own (its bytes counted, the name cut at MAX_NAME characters) while all such pairs
  together stay within OWN_BYTES per slot on average; past that, the entry has no root.

tracemalloc measures 54 bytes per entry with interned roots, 93 with distinct roots past the intern table
(tests/test_recent.py; docs/operations.md).
"""

from __future__ import annotations

import sys
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from sampler.policy.engine import VOTE_NAMES, VOTE_SAMPLED

REASONS = ("quiet", "max_age", "evicted", "trace_limit", "shutdown")
_REASON_CODE = {r: i for i, r in enumerate(REASONS)}

MAX_PATTERNS = 4096  # distinct vote patterns interned (per policy set)
MAX_ROOTS = 4096  # distinct (service, root name) pairs interned
MAX_NAME = 200  # a root name kept in an entry of its own is cut to this many characters
OWN_BYTES = 32  # roots held by entries alone, on average per slot at most
MAX_POLICIES = 65535  # policy names in the table (an index is 2 bytes); past it: "?"
SLOT_BYTES = 16 + 8 + 4 + 2 + 1 + 8 + 8 + 4  # one slot of every column
ROOT_BYTES = 180  # an interned root pair: tuple, two strings, its dict entry (a typical size)
PATTERN_BYTES = 200  # an interned vote pattern: tuple, bytes, dict entry

Root = tuple[str, str]
Pattern = tuple[tuple[str, ...], bytes]  # the policy names of the set in force, and their vote codes
_NO_VOTES: Pattern = ((), b"")


def bound(capacity: int) -> int:
    """What a ring of `capacity` may hold at most, for the memory plan: its columns, full intern
    tables (no larger than the ring), and roots of their own up to their budget."""
    return (capacity * (SLOT_BYTES + OWN_BYTES) + _table(MAX_ROOTS, capacity) * ROOT_BYTES
            + _table(MAX_PATTERNS, capacity) * PATTERN_BYTES + 2**16)


def _table(most: int, capacity: int) -> int:
    """An intern table's size: `most`, or less for a small ring (never under 256)."""
    return min(most, max(256, capacity))


def capacity_within(capacity: int, nbytes: int) -> int:
    """The largest ring of at most `capacity` entries whose bound fits in `nbytes` (at least 1,000)."""
    low, high = 1000, max(1000, capacity)
    while low < high:
        mid = (low + high + 1) // 2
        if bound(mid) <= nbytes:
            low = mid
        else:
            high = mid - 1
    return low


class RecentDecisions:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.epoch = 0.0  # added to the stored times when shown: wall clock minus the core's clock
        self.ids = bytearray(16 * capacity)
        self.times = array("d", bytes(8 * capacity))
        self.spans = array("I", bytes(4 * capacity))
        self.policy = array("H", bytes(2 * capacity))
        self.flags = bytearray(capacity)  # bit 0: kept; bits 1-3: reason code
        self.votes: list[Pattern] = [_NO_VOTES] * capacity
        self.roots: list[Root | None] = [None] * capacity
        self.own = array("I", bytes(4 * capacity))  # bytes of a root pair held by this entry alone
        self.head = 0  # the next slot written
        self.count = 0
        self.policy_names: list[str | None] = [None]  # index 0: no deciding policy
        self._policy_index: dict[str | None, int] = {None: 0}
        self._names: tuple[str, ...] = ()  # the policy set the patterns below are of
        self._patterns: dict[bytes, Pattern] = {}
        self._roots: dict[Root, Root] = {}
        self._own_bytes = 0
        self._own_budget = OWN_BYTES * capacity
        self._max_roots = _table(MAX_ROOTS, capacity)
        self._max_patterns = _table(MAX_PATTERNS, capacity)
        self._fixed = (len(self.ids) + self.times.itemsize * capacity + self.spans.itemsize * capacity
                       + self.policy.itemsize * capacity + capacity + sys.getsizeof(self.votes)
                       + sys.getsizeof(self.roots) + self.own.itemsize * capacity)

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        """Memory held: the columns (allocated up front), the intern tables, and roots held alone."""
        return (self._fixed + len(self._roots) * ROOT_BYTES + len(self._patterns) * PATTERN_BYTES
                + len(self.policy_names) * 80 + self._own_bytes)

    def add(self, trace_id: bytes, keep: bool, policy: str | None, reason: str, names: tuple[str, ...],
            votes: bytes, spans: int, service: str | None, name: str | None, now: float) -> None:
        """Record one decision: `names` are the policies in force, `votes` their codes as cast (in
        file order; policies not asked have none)."""
        i = self.head
        self.head = i + 1 if i + 1 < self.capacity else 0
        if self.count < self.capacity:
            self.count += 1
        self.ids[16 * i : 16 * i + 16] = trace_id
        self.times[i] = now
        self.spans[i] = spans if spans < 0xFFFFFFFF else 0xFFFFFFFF
        self.flags[i] = (1 if keep else 0) | (_REASON_CODE.get(reason, 0) << 1)
        p = self._policy_index.get(policy)
        if p is None:
            if len(self.policy_names) < MAX_POLICIES:
                p = self._policy_index[policy] = len(self.policy_names)
                self.policy_names.append(policy)
            else:
                p = 0
        self.policy[i] = p
        if names is not self._names:
            self._names = names
            self._patterns = {}
        pattern = self._patterns.get(votes)
        if pattern is None:
            pattern = (names, votes)
            if len(self._patterns) < self._max_patterns:
                self._patterns[votes] = pattern
        self.votes[i] = pattern
        self._own_bytes -= self.own[i]
        self.own[i] = 0
        if name is None and service is None:
            self.roots[i] = None
            return
        pair = (service or "", name or "")
        root = self._roots.get(pair)
        if root is None:
            if len(self._roots) < self._max_roots:
                root = self._roots[pair] = pair
            else:
                root = (pair[0], pair[1][:MAX_NAME])
                own = sys.getsizeof(root) + sys.getsizeof(root[0]) + sys.getsizeof(root[1])
                if self._own_bytes + own > self._own_budget:
                    self.roots[i] = None
                    return
                self.own[i] = own
                self._own_bytes += own
        self.roots[i] = root

    def _slots(self) -> Iterator[int]:
        """Slot indexes, newest first."""
        i = self.head
        for _ in range(self.count):
            i = i - 1 if i > 0 else self.capacity - 1
            yield i

    def find(self, trace_id: bytes) -> dict[str, Any] | None:
        """The newest entry for `trace_id`, or None when it is not in the ring."""
        if len(trace_id) != 16:
            return None
        ids = self.ids
        found: list[int] = []
        pos = ids.find(trace_id)
        while pos >= 0:
            if pos % 16 == 0 and pos // 16 < self._used():
                found.append(pos // 16)
            pos = ids.find(trace_id, pos + 1)
        if not found:
            return None
        newest = max(found, key=lambda i: (i - self.head) % self.capacity)
        return self.entry(newest)

    def _used(self) -> int:
        return self.capacity if self.count == self.capacity else self.head

    def entry(self, i: int) -> dict[str, Any]:
        """Slot i as CONTRACT's object (plus `time`, in seconds since the epoch)."""
        names, codes = self.votes[i]
        root = self.roots[i]
        flags = self.flags[i]
        return {
            "trace_id": self.ids[16 * i : 16 * i + 16].hex(),
            "state": "kept" if flags & 1 else "dropped",
            "reason": REASONS[flags >> 1],
            "policy": self.policy_names[self.policy[i]],
            "votes": votes_of(names, codes),
            "spans": self.spans[i],
            "root": None if root is None else {"service": root[0], "name": root[1]},
            "time": round(self.times[i] + self.epoch, 6),
        }

    def select(self, decision: str | None = None, policy: str | None = None, service: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
        """The newest entries matching every filter given, at most `limit`: `decision` keep|drop,
        `policy` the deciding policy, `service` the root's service."""
        out: list[dict[str, Any]] = []
        want_keep = None if decision is None else decision == "keep"
        pindex = -1 if policy is None else self._policy_index.get(policy, -2)
        if pindex == -2 or limit <= 0:
            return out
        flags, pol, roots = self.flags, self.policy, self.roots
        for i in self._slots():
            if want_keep is not None and bool(flags[i] & 1) != want_keep:
                continue
            if pindex >= 0 and pol[i] != pindex:
                continue
            if service is not None:
                root = roots[i]
                if root is None or root[0] != service:
                    continue
            out.append(self.entry(i))
            if len(out) >= limit:
                break
        return out

    def summary(self) -> dict[str, Any]:
        """Per policy, over the ring: traces it decided (kept, or dropped by its veto), and kept
        traces it alone voted to keep (no other policy would have kept them)."""
        decided: Counter[str] = Counter()
        kept: Counter[str] = Counter()
        patterns: Counter[int] = Counter()  # kept entries per vote pattern (by identity)
        by_id: dict[int, Pattern] = {}
        names_of = self.policy_names
        flags, pol, votes = self.flags, self.policy, self.votes
        for i in self._slots():
            name = names_of[pol[i]]
            if name is not None:
                decided[name] += 1
            if flags[i] & 1:
                if name is not None:
                    kept[name] += 1
                pattern = votes[i]
                patterns[id(pattern)] += 1
                by_id[id(pattern)] = pattern
        alone: Counter[str] = Counter()
        for key, n in patterns.items():
            names, codes = by_id[key]
            keepers = [names[j] for j, c in enumerate(codes) if c == VOTE_SAMPLED and j < len(names)]
            if len(keepers) == 1:
                alone[keepers[0]] += n
        policies = sorted(set(decided) | set(alone))
        return {
            "entries": self.count,
            "kept": sum(1 for i in self._slots() if flags[i] & 1),
            "policies": [{"policy": p, "decided": decided[p], "kept": kept[p], "kept_alone": alone[p]}
                         for p in policies],
        }


def votes_of(names: Sequence[str], codes: bytes) -> dict[str, str]:
    """CONTRACT's votes object: policy name -> vote, for the policies that voted."""
    return {names[j]: VOTE_NAMES[c] for j, c in enumerate(codes) if j < len(names) and c < len(VOTE_NAMES)}
