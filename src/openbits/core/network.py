"""Is there a network at all? Loss of connectivity is not an error in BITS: the
job waits in TRANSIENT_ERROR with BG_E_NETWORK_DISCONNECTED, its no-progress
clock stopped, and is retried as soon as a route appears.

Routes are read from /proc (the main routing tables) rather than netlink: two
small reads every few seconds cost nothing and need no privileges.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def _routed_interfaces() -> set[str]:
    interfaces: set[str] = set()
    try:
        with open("/proc/net/route") as table:
            next(table, None)
            interfaces.update(line.split()[0] for line in table if line.strip())
    except OSError:
        pass
    try:
        with open("/proc/net/ipv6_route") as table:
            for line in table:
                fields = line.split()
                # skip link-local fe80::/64 routes: every interface that is up has one
                if fields and not fields[0].startswith("fe80"):
                    interfaces.add(fields[-1])
    except OSError:
        pass
    return interfaces - {"lo"}


def network_available() -> bool:
    """Some interface other than loopback has a route."""
    return bool(_routed_interfaces())


def needs_network(url: str) -> bool:
    """Loopback and file:// sources work without any network."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "file" or host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
