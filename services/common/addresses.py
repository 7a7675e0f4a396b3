"""Client addresses, as the gateway's rate limiter and the auth service's log-in limits key them.

One rule for both: the address is the peer's, unless the peer is a trusted proxy (a configured
list of CIDRs); then `X-Forwarded-For` is read from the right, skipping trusted hops, and the first
address that is not a trusted proxy is the client. Everything to its left was written by that
client and is ignored, so a client cannot pick its own key by sending the header; an untrusted
peer's header is never read at all.

IPv6 clients are keyed by their /64: one subscriber usually holds a whole /64 and could otherwise
rotate through 2^64 addresses to get a fresh budget each time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(raw: str, setting: str = "trusted proxies") -> tuple[IpNetwork, ...]:
    """`10.0.0.0/8, 192.168.1.7` → networks (a bare address is a /32 or /128); `setting` names
    where the text came from in the error that stops start-up."""
    networks: list[IpNetwork] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SystemExit(f"setting {setting}: {item!r} is not an address or CIDR") from None
    return tuple(networks)


def parse_address(text: str) -> IpAddress | None:
    """An address, with or without a port (`1.2.3.4:5`, `[::1]:5`); None when it is none."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_trusted(address: IpAddress, trusted: Sequence[IpNetwork]) -> bool:
    return any(address in network for network in trusted)


def client_address(peer: str, forwarded: Sequence[str], trusted: Sequence[IpNetwork]) -> str:
    """The client behind a connection from `peer` (text) that carried `forwarded` (the
    `X-Forwarded-For` hops, left to right)."""
    parsed = parse_address(peer) if trusted else None  # parsed only when it may be a proxy
    if parsed is None or not is_trusted(parsed, trusted):
        return peer
    return _from_forwarded(forwarded, trusted) or peer


def _from_forwarded(hops: Sequence[str], trusted: Sequence[IpNetwork]) -> str | None:
    """Right to left: the first hop that is not a trusted proxy. An unparsable hop ends the walk
    (whatever is left of a trusted proxy's own entry is the client's to forge)."""
    last_trusted: str | None = None
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            return last_trusted
        if not is_trusted(address, trusted):
            return address.compressed
        last_trusted = address.compressed
    return last_trusted


def address_key(address: str) -> str:
    """A limiter's key of an address: itself for IPv4 (also IPv4-mapped IPv6), its /64 for IPv6."""
    parsed = parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return parsed.ipv4_mapped.compressed
        return ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)).compressed
    return parsed.compressed if parsed is not None else address or "unknown"
