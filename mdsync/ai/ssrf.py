"""Where a workspace's own `base_url` may point (docs/api.md "AI proxy"): `https://` on a host whose
every address is public, unless the URL starts with a prefix in `ai.allowed_base_urls`.

The check runs when the key is stored (PUT → 422 naming `base_url`) and again on every call:
calls to such a URL go through a connector whose resolver is `CheckedResolver`, so the
connection goes to the very addresses that were checked (a name that resolves to a private
address by the time of the call fails there, DNS rebinding included). The server's own
`ai.*.base_url` and allowed prefixes are trusted as configured.

The name lookup is injectable (`Lookup`): tests map names to private ranges without any DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from mdsync.api.errors import ValidationFailed

Lookup = Callable[[str], Awaitable[list[str]]]
LOOKUP_TIMEOUT = 5.0


async def system_lookup(host: str) -> list[str]:
    """The host's addresses from the system resolver (IPv4 and IPv6)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def is_public(address: str) -> bool:
    """False for loopback, private, link-local, unique-local, unspecified, reserved, multicast,
    and IPv4-mapped or NAT64-embedded forms of those."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(str(ip.ipv4_mapped))
        if ip in ipaddress.ip_network("64:ff9b::/96"):
            return is_public(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    return ip.is_global and not ip.is_multicast


def is_allowed(url: str, prefixes: list[str]) -> bool:
    """`url` starts with one of `prefixes` at a path boundary (`…:11434/v1` does not admit `…:11434/v10`)."""
    for prefix in prefixes:
        if url == prefix or (url.startswith(prefix) and (prefix.endswith("/") or url[len(prefix)] in "/?")):
            return True
    return False


def _host(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "")


async def check_base_url(url: str, prefixes: list[str], lookup: Lookup) -> None:
    """422 naming `base_url` unless `url` is allowed by a prefix or is https on public addresses."""
    def refuse(message: str) -> ValidationFailed:
        return ValidationFailed.field("base_url", message)

    if is_allowed(url, prefixes):
        return
    try:
        scheme, host = _host(url)
    except ValueError:
        raise refuse("is not a URL") from None
    if scheme != "https" or not host:
        raise refuse("must be an https:// URL (or start with a prefix in ai.allowed_base_urls)")
    if urlsplit(url).username is not None:
        raise refuse("must not carry credentials")
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = await asyncio.wait_for(lookup(host), LOOKUP_TIMEOUT)
        except (OSError, TimeoutError, UnicodeError):
            raise refuse(f"the host {host!r} does not resolve") from None
    if not addresses or not all(is_public(a) for a in addresses):
        raise refuse("must not point at a loopback, private, link-local or unique-local address")


class CheckedResolver(AbstractResolver):
    """aiohttp resolver for workspace base URLs: the addresses of a name, all of them public, or
    an OSError (aiohttp reports it as a connection error: 502 to the client)."""

    def __init__(self, lookup: Callable[[], Lookup]):
        self._lookup = lookup  # read at each call: tests replace the app's lookup after start

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = await asyncio.wait_for(self._lookup()(host), LOOKUP_TIMEOUT)
        if not addresses or not all(is_public(a) for a in addresses):
            raise OSError(f"{host} resolves to an address that is not public")
        results: list[ResolveResult] = []
        for address in addresses:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family not in (socket.AF_UNSPEC, fam):
                continue
            results.append({"hostname": host, "host": address, "port": port, "family": fam,
                            "proto": 0, "flags": socket.AI_NUMERICHOST})
        if not results:
            raise OSError(f"{host} has no address of the requested family")
        return results

    async def close(self) -> None:
        return None


def must_check(url: str, prefixes: list[str]) -> bool:
    """Calls to this workspace URL go through the checked resolver (and literals are checked here)."""
    return not is_allowed(url, prefixes)


def literal_is_public(url: str) -> bool:
    """For an IP-literal host (which aiohttp connects to without a resolver): is it public?"""
    _, host = _host(url)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True  # a name: the resolver decides
    return is_public(host)
