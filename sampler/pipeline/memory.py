"""One memory limit for the whole process: a plan that sizes every bounded structure within it, and
a governor that holds the resident memory under it whatever the accounting misses.

The plan (at start): the process's own baseline (interpreter, libraries, servers: its resident
memory once listening) plus the bounds of every structure that grows with load (decision caches,
export queue, forward queues, request bodies in flight, splitter caches) must fit within TARGET of
the limit; `buffer.max_bytes: auto` gets what is left.

The governor (every sweep, from the resident memory read then): allocator fragmentation, gRPC's own
buffers and anything else uncounted show up in the resident set, not in the plan. Above SOFT of the
limit the buffer's effective bound is lowered by the excess, so the oldest traces are decided early
(and freed memory is handed back to the system); once back under it, the bound rises again toward
`max_bytes` by the room measured. Above HARD of the limit receivers refuse requests with retryable
errors until the resident memory falls. The rest of the limit is the margin for what arrives
between two sweeps.

Everything here takes plain values: reading the resident memory and the container's limit, and
asking the C allocator to give memory back, is sampler/server/system.py's.
"""

from __future__ import annotations

from collections.abc import Mapping

from sampler.config.models import AUTO, Config
from sampler.insight.recent import bound as recent_bound
from sampler.insight.recent import capacity_within

TARGET = 0.85  # the plan fills this share of the limit
SOFT = 0.88  # resident memory above this: decide the oldest traces early
HARD = 0.93  # ...above this: refuse requests until it falls
AUTO_SHARE = 0.80  # memory_limit: auto takes this share of the container's limit
MIN_BUFFER = 8 * 2**20  # a plan leaving the buffer less than this is refused at start
SPLITTER_BOUND = 8 * 2**20  # the splitters' caches: the current one's bound, and a reloaded one's
# Compression's own memory: the samples a dictionary is trained on, zstd's working memory while it
# trains (a constant, not the samples' size: docs/performance.md), one batch of frames on
# its way through the compression thread.
COMPRESSION_BOUND = 24 * 2**20
TRIM_SETTLE = 2.0  # seconds: above SOFT, a trim is tried before traces are given up, this often at most
TRIM_OTHER = 0.20  # below SOFT, trim when the memory resident beyond everything counted exceeds this
TRIM_EVERY = 30.0  # ...share of the limit, this often at most (a trim holds the heap's lock a while)

NORMAL = 0
DECIDING_EARLY = 1
REFUSING = 2

NO_LIMIT_BUFFER = 256 * 2**20  # buffer.max_bytes: auto without a memory_limit
NO_LIMIT_QUEUE = 64 * 2**20  # exporter.queue_max_bytes: auto without a memory_limit
NO_LIMIT_FORWARD = 32 * 2**20  # peers.queue_max_bytes: auto without a memory_limit
JSON_COST = 9  # memory to decode an OTLP/JSON body, per byte of it (the body, its objects, the protobuf made)
PROTOBUF_COST = 2  # ...a protobuf body: itself and the span bytes split from it


def effective_limit(config: Config, container: int | None) -> int | None:
    """memory_limit in bytes: as set, AUTO_SHARE of the container's limit for auto, or None."""
    if config.memory_limit == AUTO:
        return None if container is None else int(container * AUTO_SHARE)
    return config.memory_limit if isinstance(config.memory_limit, int) else None


def _auto(setting: int | str, limit: int | None, share: float, low: int, high: int, without: int) -> int:
    if isinstance(setting, int):
        return setting
    return without if limit is None else max(low, min(high, int(limit * share)))


RECENT_SHARE = 0.01  # the recent-decisions ring (/debug) takes at most this share of memory_limit


def recent_capacity(config: Config, limit: int | None) -> int:
    """debug.recent_decisions, lowered (to no fewer than 1,000) so that the ring takes at most
    RECENT_SHARE of the limit: a debugging aid must not leave the buffer too little room."""
    wanted = config.debug.recent_decisions
    if not wanted or limit is None or recent_bound(wanted) <= limit * RECENT_SHARE:
        return wanted
    return min(wanted, capacity_within(wanted, int(limit * RECENT_SHARE)))


def bounds(config: Config, limit: int | None, decision_cache: int, sharding: bool) -> dict[str, int | None]:
    """Every component's bound in bytes, `auto` resolved (None: unbounded, only without a limit)."""
    inflight = config.receivers.max_inflight_bytes
    recent = recent_capacity(config, limit)
    return {
        "decision_cache": decision_cache,
        "recent_decisions": recent_bound(recent) if recent else 0,
        "export_queue": _auto(config.exporter.queue_max_bytes, limit, 0.10, 4 * 2**20, 64 * 2**20, NO_LIMIT_QUEUE),
        "forward_queues": _auto(config.peers.queue_max_bytes, limit, 1 / 16, 2 * 2**20, 32 * 2**20,
                                NO_LIMIT_FORWARD) if sharding else 0,
        "requests": inflight if isinstance(inflight, int) else (None if limit is None else int(limit * 0.10)),
        "splitter": SPLITTER_BOUND,
        "compression": COMPRESSION_BOUND if config.buffer.compression == "zstd" else 0,
    }


class Plan:
    """How the limit is shared: the baseline, each component's bound, and the buffer's share."""

    def __init__(self, limit: int, baseline: int, bounds: Mapping[str, int | None]) -> None:
        self.limit = limit
        self.baseline = baseline
        self.bounds = {name: n or 0 for name, n in bounds.items()}
        self.buffer = int(limit * TARGET) - baseline - sum(self.bounds.values())

    def check(self) -> None:
        if self.buffer < MIN_BUFFER:
            parts = ", ".join(f"{name} {_mib(n)}" for name, n in sorted(self.bounds.items()))
            raise ValueError(
                f"memory_limit {_mib(self.limit)} is too small: {TARGET:.0%} of it minus the process itself "
                f"({_mib(self.baseline)}) and the other bounds ({parts}) leaves the buffer "
                f"{_mib(max(0, self.buffer))}, below {_mib(MIN_BUFFER)}; raise memory_limit or lower those bounds"
            )


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}MiB"


class InFlight:
    """Bytes of request bodies being received, inflated and decoded at once (as estimated cost),
    within a bound: a request that does not fit now is refused with a retryable error, one that could
    never fit as too large."""

    def __init__(self, bound: int | None) -> None:
        self.bound = bound
        self.nbytes = 0

    def admit(self, cost: int) -> str | None:
        """Take `cost` bytes (release them later), or say why not: "memory" or "too_large"."""
        if self.bound is not None:
            if cost > self.bound:
                return "too_large"
            if self.nbytes + cost > self.bound:
                return "memory"
        self.nbytes += cost
        return None

    def release(self, cost: int) -> None:
        self.nbytes -= cost


class Governor:
    """Turns readings of the resident memory into the buffer's effective bound, the receivers'
    refusal, and when to hand freed memory back to the system, for one limit. `update` is called
    every sweep; between calls, `bound` and `refusing` hold.

    Memory freed by decided traces mostly stays in the C heap, resident, until `malloc_trim` hands
    it back: so above SOFT the first answer is a trim, and the buffer gives up traces only when the
    resident memory is still above SOFT after one. Below SOFT, a trim also runs now and then when
    what is resident beyond everything counted has grown large, so the next burst starts lower.
    """

    def __init__(self, limit: int, max_bytes: int) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.soft = int(limit * SOFT)
        self.hard = int(limit * HARD)
        self.bound = max_bytes  # what the buffer may hold now (<= max_bytes)
        self.refusing = False
        self.rss = 0
        self.last_trim = -1e18

    def update(self, rss: int, buffer_bytes: int, other: int, now: float, trimming: bool) -> bool:
        """Take a reading (`other`: resident memory beyond everything counted); True when a trim
        should start now. Refuse from HARD until back under SOFT (so refusals do not flap). While a
        trim runs, the resident memory does not yet show what it will give back: the bound is held
        (above SOFT, no higher than what the buffer holds now).
        Above SOFT after a recent trim, the bound drops by the excess (the buffer then decides its
        oldest traces until under it, and what that frees is trimmed); below SOFT it may grow by
        the room left, up to max_bytes."""
        self.rss = rss
        if rss >= self.hard:
            self.refusing = True
        elif rss < self.soft:
            self.refusing = False
        if rss >= self.soft:  # whatever a trim gives back, the buffer does not grow meanwhile
            self.bound = min(self.bound, buffer_bytes)
        if trimming:
            return False
        if rss >= self.soft and now - self.last_trim > TRIM_SETTLE:
            self.last_trim = now  # first see what a trim gives back
            return True
        self.bound = max(0, min(self.max_bytes, buffer_bytes + self.soft - rss))
        if rss >= self.soft or (other > self.limit * TRIM_OTHER and now - self.last_trim > TRIM_EVERY):
            self.last_trim = now
            return True
        return False

    @property
    def pressure(self) -> int:
        if self.refusing:
            return REFUSING
        return DECIDING_EARLY if self.rss >= self.soft else NORMAL
