"""Who owns a trace: the member list (host:port strings, self included) and the owner of each trace id.

Every instance computes the same owner for a trace id from the same member list by rendezvous
hashing (the member with the highest hash of member + trace id wins), so when a member joins or
leaves only its own share of traces moves.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Callable, Sequence

from sampler.config.models import split_host_port

log = logging.getLogger("tailsampler.peers")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class Membership:
    """The member list (host:port strings, self included) and the owner of each trace id.

    A member that could not be reached within the forwarding bounds is taken out of the hashing
    for a cooldown: every survivor notices the same failure, so they agree again on one owner per
    trace instead of each keeping its own part of the dead member's traces.
    """

    def __init__(self, self_addr: str, members: Sequence[str], trusted_networks: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.self_addr = self_addr
        self.clock = clock
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_networks)
        self.members: tuple[str, ...] = ()
        self.down: dict[str, float] = {}  # member -> until when (clock time) it is left out
        self._keys: list[tuple[bytes, str]] = []
        self.changes = 0
        self.resolved: dict[str, frozenset[str]] = {}  # member host name -> its addresses
        self.addresses: frozenset[IP] = frozenset()  # every member's IP address: whom to trust
        self.set(members)

    @property
    def alive(self) -> tuple[str, ...]:
        return tuple(m for m in self.members if m not in self.down)

    def _rehash(self, reason: str, before: tuple[str, ...]) -> None:
        after = self.alive
        if before:
            self.changes += 1
            log.info("peer membership changed (%s): %s -> %s", reason, ",".join(before), ",".join(after))
        self._keys = [(m.encode(), m) for m in after]

    def set(self, members: Sequence[str]) -> bool:
        """Replace the member list (from configuration or discovery); True when it changed."""
        new = tuple(sorted(set(members) | {self.self_addr}))
        if new == self.members:
            return False
        before = self.alive
        self.members = new
        self.down = {m: t for m, t in self.down.items() if m in new}
        self._rehash("discovery", before)
        self.update_addresses()
        return True

    @property
    def host_names(self) -> list[str]:
        """Members given by name rather than IP address; their addresses come from `resolve_names`."""
        return sorted({h for h in map(_host, self.members) if _ip(h) is None})

    def update_addresses(self) -> None:
        hosts = set(map(_host, self.members))
        addresses = {_ip(h) for h in hosts} | {_ip(a) for h in hosts for a in self.resolved.get(h, ())}
        self.addresses = frozenset(a for a in addresses if a is not None)

    def trusts(self, peer: str) -> bool:
        """Whether a gRPC caller (`context.peer()`, e.g. `ipv4:10.0.0.2:51234`) is a member, whose
        `tailsampler-forwarded` header may be honoured. Any client can send that header; honouring
        it from one would let its spans skip their owner and split its traces."""
        scheme, _, rest = peer.partition(":")
        if scheme not in ("ipv4", "ipv6"):
            return False
        try:
            address = _ip(_host(urllib.parse.unquote(rest)))
        except ValueError:
            return False
        if address is None:
            return False
        return address in self.addresses or any(address in network for network in self.networks)

    def mark_down(self, member: str, cooldown: float) -> None:
        """Leave `member` out of the hashing for `cooldown` seconds (never self)."""
        if member == self.self_addr or member in self.down:
            return
        before = self.alive
        self.down[member] = self.clock() + cooldown
        self._rehash(f"{member} unreachable", before)

    def revive(self) -> None:
        """Give members whose cooldown is over another chance."""
        now = self.clock()
        back = [m for m, until in self.down.items() if until <= now]
        if back:
            before = self.alive
            for m in back:
                del self.down[m]
            self._rehash("cooldown over", before)

    def owner(self, trace_id: bytes) -> str:
        best = ""
        best_hash = -1
        for key, member in self._keys:
            h = int.from_bytes(hashlib.blake2b(key + trace_id, digest_size=8).digest(), "big")
            if h > best_hash:
                best, best_hash = member, h
        return best

    def route(self, trace_id: bytes) -> str | None:
        """The owner's address, or None when this instance owns the trace."""
        if len(self._keys) <= 1:
            return None
        owner = self.owner(trace_id)
        return None if owner == self.self_addr else owner


def _host(host_port: str) -> str:
    return split_host_port(host_port)[0]


def _ip(host: str) -> IP | None:
    """The address a host string spells, in one form whatever the spelling (`FD00::2`, `fd00::2`;
    an IPv4-mapped IPv6 address as its IPv4 address, the way gRPC reports such a peer); None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
