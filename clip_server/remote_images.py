"""Images that a client names by `http(s)://` URL, fetched only where the operator allows it.

The server fetches nothing on a client's behalf by default: such a URL is refused with a message
that says to send the image itself. An operator may list hosts (`fetch_images: {hosts: [...]}` under
the gateway's `uses_with:`); even then a host that resolves to a private, loopback, link-local or
otherwise non-public address is refused (no reaching the server's own network through it),
redirects are not followed (they could lead there), and each fetch has a timeout and a size cap.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from clip_server.types import ConfigurationError, InvalidInputError


@dataclass(frozen=True)
class ImageFetching:
    """Which hosts images may be fetched from, how long a fetch may take, and how large it may be."""

    hosts: tuple[str, ...] = ()
    timeout_seconds: float = 5.0
    max_bytes: int = 10 * 2**20

    @classmethod
    def from_option(cls, option: dict | None) -> ImageFetching:
        """From the gateway's `fetch_images` option (None: fetch nothing)."""
        option = dict(option or {})
        unknown = set(option) - {'hosts', 'timeout_seconds', 'max_bytes'}
        if unknown:
            raise ConfigurationError(f'fetch_images takes hosts, timeout_seconds and max_bytes, not {sorted(unknown)}')
        hosts = tuple(host.lower() for host in option.pop('hosts', ()) or ())
        return cls(hosts, **option)

    def fetch(self, url: str) -> bytes:
        """The bytes at `url`, or InvalidInputError saying why they are not fetched."""
        host = (urlsplit(url).hostname or '').lower()
        if not self.hosts:
            raise InvalidInputError(
                'this server does not fetch image URLs: send the image itself as a data:image/...;base64 URI'
            )
        if host not in self.hosts:
            raise InvalidInputError(f'host {host!r} is not one this server fetches images from (fetch_images.hosts)')
        _require_public(host)
        try:
            with _OPENER.open(url, timeout=self.timeout_seconds) as response:
                data = response.read(self.max_bytes + 1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise InvalidInputError(f'could not fetch {url}: {getattr(exc, "reason", exc)}') from exc
        if len(data) > self.max_bytes:
            raise InvalidInputError(f'{url} is over fetch_images.max_bytes ({self.max_bytes:,})')
        return data


def _require_public(host: str) -> None:
    """Refuse a host that resolves to any non-public address."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError as exc:
        raise InvalidInputError(f'host {host!r} does not resolve') from exc
    if not all(is_public(address) for address in addresses):
        raise InvalidInputError(f'host {host!r} resolves to a private or local address: not fetched')


def is_public(address: str) -> bool:
    return ipaddress.ip_address(address.split('%')[0]).is_global


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.URLError(f'redirected to {newurl}, and redirects are not followed')


_OPENER = urllib.request.build_opener(_NoRedirects)
