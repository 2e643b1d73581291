"""Finding the members: a headless Service's DNS records re-resolved on an interval, and the addresses
of members given by name (their forwarded spans are trusted by address)."""

from __future__ import annotations

import asyncio
import logging
import socket

from sampler.sharding.membership import Membership

log = logging.getLogger("tailsampler.peers")


async def resolve_names(membership: Membership, interval: float) -> None:
    """Keep the addresses of members given by name current, so their forwarded spans are trusted;
    a failed lookup keeps the addresses last seen."""
    loop = asyncio.get_running_loop()
    while True:
        for name in membership.host_names:
            try:
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("peer %s: cannot resolve its address (%s); its forwarded spans are routed anew", name, exc)
                continue
            membership.resolved[name] = frozenset(str(info[4][0]) for info in infos)
        membership.update_addresses()
        await asyncio.sleep(interval)


async def resolve(name: str, port: int) -> list[str]:
    """host:port of every address a (headless Service) DNS name resolves to."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    hosts = sorted({str(info[4][0]) for info in infos})
    return [f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts]


async def watch_dns(membership: Membership, name: str, port: int, interval: float) -> None:
    """Re-resolve the member list every `interval`; a failed lookup keeps the last known members."""
    while True:
        try:
            members = await resolve(name, port)
        except OSError as exc:
            log.warning("peer discovery: cannot resolve %s (%s); keeping %d members", name, exc,
                        len(membership.members))
        else:
            if members:
                membership.set(members)
        await asyncio.sleep(interval)
