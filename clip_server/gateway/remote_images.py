"""Images that a client names by `http(s)://` URL, fetched only where the operator allows it.

The server fetches nothing on a client's behalf by default: such a URL is refused with a message
that says to send the image itself. An operator may list hosts (`fetch_images: {hosts: [...]}` under
the gateway's `uses_with:`); even then a fetch may not reach the server's own network:

- the host is resolved once, every address it resolves to must be public (not private, loopback,
  link-local, ...), and the fetch connects to one of those checked addresses, never to a second
  answer (a DNS server that answers differently the second time cannot rebind it to loopback);
  the Host header, TLS SNI and certificate verification still use the host name;
- redirects are not followed (they could lead anywhere);
- `timeout_seconds` bounds the whole fetch (connecting, TLS, headers and body), not each read, so a
  server that sends a byte at a time cannot hold it; `max_bytes` caps the size;
- fetches run on a pool of `max_concurrent` threads of their own: a request's URLs are fetched side
  by side up to that bound, further fetches queue, and none holds the event loop or its default
  executor, which the rest of the gateway shares.

Tests replace `socket.getaddrinfo` (called in `_public_addresses` only) and `is_public` to make a
local server count as an allowed public host.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import ipaddress
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from clip_server.types import ConfigurationError, InvalidInputError

OPTIONS = ('hosts', 'timeout_seconds', 'max_bytes', 'max_concurrent')
DEFAULT_PORTS = {'http': 80, 'https': 443}
REDIRECTS = frozenset({301, 302, 303, 307, 308})
REQUEST_HEADERS = {'User-Agent': 'clip_server', 'Accept': 'image/*', 'Connection': 'close'}
_TLS_CONTEXT = ssl.create_default_context()  # verifies the certificate against the host name


@dataclass(frozen=True)
class ImageFetching:
    """Which hosts images may be fetched from, how long a fetch may take, how large it may be, and
    how many fetches may run at once."""

    hosts: tuple[str, ...] = ()
    timeout_seconds: float = 5.0
    max_bytes: int = 10 * 2**20
    max_concurrent: int = 8
    _pool: ThreadPoolExecutor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require_positive('timeout_seconds', self.timeout_seconds, (int, float))
        _require_positive('max_bytes', self.max_bytes, int)
        _require_positive('max_concurrent', self.max_concurrent, int)
        # Starts no thread until the first fetch; then at most max_concurrent.
        object.__setattr__(self, '_pool', ThreadPoolExecutor(self.max_concurrent, thread_name_prefix='fetch_images'))

    @classmethod
    def from_option(cls, option: dict | None) -> ImageFetching:
        """From the gateway's `fetch_images` option (None: fetch nothing)."""
        option = dict(option or {})
        unknown = set(option) - set(OPTIONS)
        if unknown:
            raise ConfigurationError(
                'fetch_images takes hosts, timeout_seconds and max_bytes (per fetch) and max_concurrent, '
                f'not {sorted(unknown)}'
            )
        hosts = option.pop('hosts', None) or ()
        if isinstance(hosts, str) or not all(isinstance(host, str) and host for host in hosts):
            raise ConfigurationError(f'fetch_images.hosts must be a list of host names, got {hosts!r}')
        return cls(tuple(host.lower() for host in hosts), **option)

    def fetch(self, url: str) -> bytes:
        """The bytes at `url`, or InvalidInputError saying why they are not fetched (in this thread)."""
        return self._fetch(self._allowed(url))

    async def fetch_async(self, url: str) -> bytes:
        """`fetch` on this fetcher's own pool: side by side with others up to `max_concurrent`, queued
        beyond it. A URL refused without asking the network is refused at once, not after the queue."""
        target = self._allowed(url)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._fetch, target)

    def _allowed(self, url: str) -> _Target:
        """Where to fetch `url` from, if its scheme, host and port are ones this server may fetch from."""
        if not self.hosts:
            raise InvalidInputError(
                'this server does not fetch image URLs: send the image itself as a data:image/...;base64 URI'
            )
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise InvalidInputError(f'{url} is not an http:// or https:// URL')
        host = parts.hostname or ''  # lower case
        if host not in self.hosts:
            raise InvalidInputError(f'host {host!r} is not one this server fetches images from (fetch_images.hosts)')
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:  # not a number, or out of range
            raise InvalidInputError(f'{url} has an invalid port') from exc
        path = (parts.path or '/') + (f'?{parts.query}' if parts.query else '')
        return _Target(url, parts.scheme == 'https', host, port, path)

    def _fetch(self, target: _Target) -> bytes:
        url = target.url
        deadline = time.monotonic() + self.timeout_seconds
        addresses = _public_addresses(target.host, target.port)
        connection_class = _PinnedHTTPSConnection if target.https else _PinnedHTTPConnection
        connection = connection_class(target.host, target.port, addresses, deadline)
        try:
            connection.connect()
            connection.sock.settimeout(_time_left(deadline))  # for sending the request
            connection.request('GET', target.path, headers=REQUEST_HEADERS)
            response = connection.getresponse()
            if response.status in REDIRECTS:
                location = response.getheader('Location', '')[:200]
                raise InvalidInputError(
                    f'could not fetch {url}: redirected to {location}, and redirects are not followed'
                )
            if not 200 <= response.status < 300:
                raise InvalidInputError(
                    f'could not fetch {url}: the server answered HTTP {response.status} {response.reason}'
                )
            if response.length is not None and response.length > self.max_bytes:
                raise InvalidInputError(f'{url} is over fetch_images.max_bytes ({self.max_bytes:,})')
            data = response.read(self.max_bytes + 1)
        except TimeoutError as exc:
            raise InvalidInputError(
                f'fetching {url} took longer than fetch_images.timeout_seconds ({self.timeout_seconds:g} s)'
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise InvalidInputError(f'could not fetch {url}: {_reason(exc)}') from exc
        finally:
            connection.close()
        if len(data) > self.max_bytes:
            raise InvalidInputError(f'{url} is over fetch_images.max_bytes ({self.max_bytes:,})')
        return data


class _Target(NamedTuple):
    """An allowed URL, split into what the connection needs."""

    url: str
    https: bool
    host: str
    port: int
    path: str  # with the query


def _require_positive(name: str, value: Any, kinds: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:  # type: ignore[operator]  # a number
        kind = 'a positive integer' if kinds is int else 'a positive number'
        raise ConfigurationError(f'fetch_images.{name} must be {kind}, got {value!r}')


def _public_addresses(host: str, port: int) -> list[tuple[int, tuple]]:
    """The host's addresses, resolved once for both the check and the connection: each must be
    public, and the fetch connects only to these (family, socket address) pairs."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidInputError(f'host {host!r} does not resolve') from exc
    if not all(is_public(str(info[4][0])) for info in infos):
        raise InvalidInputError(f'host {host!r} resolves to a private or local address: not fetched')
    return [(family, address) for family, _, _, _, address in infos]


def is_public(address: str) -> bool:
    """Whether a fetch may connect to `address` (tests replace it to allow a local server)."""
    return ipaddress.ip_address(address.split('%')[0]).is_global


def _reason(exc: Exception) -> str:
    """What went wrong, in words: no errno, no OpenSSL source location."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f'certificate verify failed: {exc.verify_message}'
    if isinstance(exc, ssl.SSLError):
        return f'TLS error ({exc.reason or type(exc).__name__})'
    return getattr(exc, 'strerror', None) or str(exc) or type(exc).__name__


def _time_left(deadline: float) -> float:
    """Seconds to the deadline, for the next socket operation; TimeoutError once it has passed (a
    timeout of 0 would make the socket non-blocking instead)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError('the fetch deadline passed')
    return left


def _connected(family: int, address: tuple, deadline: float) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(_time_left(deadline))
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


class _DeadlineReader(io.RawIOBase):
    """A socket file's reads, each waiting only for the time left before the deadline."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float):
        super().__init__()
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        self._sock.settimeout(_time_left(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()  # lets the socket close once the connection has let go of it too
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """A response whose status line, headers and body are all read within the fetch's deadline."""

    def __init__(self, sock: socket.socket, *args, deadline: float, **kwargs):
        super().__init__(sock, *args, **kwargs)
        # The socket file the base class made (nothing read from it yet), its reads now timed.
        self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to the addresses checked for the host name (never resolved again), with
    the host name in the Host header, and every step within the deadline."""

    def __init__(self, host: str, port: int, addresses: list[tuple[int, tuple]], deadline: float):
        super().__init__(host, port)
        self._addresses, self._deadline = addresses, deadline

    def connect(self) -> None:
        """The first checked address that accepts, as `socket.create_connection` tries each."""
        *others, last = self._addresses
        for family, address in others:
            try:
                self.sock = _connected(family, address, self._deadline)
                return
            except OSError:
                continue
        self.sock = _connected(*last, self._deadline)

    def response_class(self, sock: socket.socket, *args, **kwargs) -> _DeadlineResponse:  # type: ignore[override]
        return _DeadlineResponse(sock, *args, deadline=self._deadline, **kwargs)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """The same over TLS: SNI and the certificate check use the host name, not the address."""

    default_port = DEFAULT_PORTS['https']

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(_time_left(self._deadline))  # the handshake as a whole
        self.sock = _TLS_CONTEXT.wrap_socket(self.sock, server_hostname=self.host)
