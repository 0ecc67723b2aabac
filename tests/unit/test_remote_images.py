"""Image URL fetching against real local HTTP servers: the address is resolved once and pinned, the
whole fetch has one deadline, fetches run side by side on their own bounded pool, and the refusals
(size, redirects, non-public hosts, options) hold.

Tests cannot reach a public host, so two seams make a local server count as one: `socket.getaddrinfo`
answers for `*.test` names as each test says, and `remote_images.is_public` accepts the addresses the
test allows.
"""

import asyncio
import concurrent.futures
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

from clip_server.gateway import remote_images
from clip_server.gateway.openai_api import OpenAIError, OpenAIRoutes
from clip_server.gateway.openai_models import ImageItem
from clip_server.gateway.remote_images import ImageFetching
from clip_server.types import ConfigurationError, InvalidInputError

SLOW_SECONDS = 0.5
DRIP_SECONDS = 0.3


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers by path; `self.server.body` is what /image sends (so that two servers can differ)."""

    def do_GET(self):
        self.server.hosts.append(self.headers['Host'])
        path = self.path
        if path == '/drip-headers':
            for byte in b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello':
                self.wfile.write(bytes([byte]))
                time.sleep(DRIP_SECONDS)
            return
        if path == '/moved':
            self.send_response(302)
            self.send_header('Location', '/image')
            self.end_headers()
            return
        if path == '/missing':
            self.send_error(404)
            return
        if path == '/slow':
            with self.server.lock:
                self.server.in_flight += 1
                self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
            time.sleep(SLOW_SECONDS)
            with self.server.lock:
                self.server.in_flight -= 1
        body = {'/large': b'x' * 5000, '/large-unsized': b'x' * 5000, '/drip-body': b'x' * 100}.get(
            path, self.server.body
        )
        self.send_response(200)
        if path != '/large-unsized':  # without a length, the body ends when the connection closes
            self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if path == '/drip-body':
            for byte in body:
                self.wfile.write(bytes([byte]))
                time.sleep(DRIP_SECONDS)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(address: str, port: int = 0, body: bytes = b'image', tls: ssl.SSLContext | None = None):
    server = http.server.ThreadingHTTPServer((address, port), Handler)
    server.body, server.hosts, server.lock, server.in_flight, server.most_in_flight = body, [], threading.Lock(), 0, 0
    if tls:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@pytest.fixture
def servers():
    started = []

    def start(*args, **kwargs):
        started.append(serve(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def names(monkeypatch):
    """`names.answers[host] = [[addresses], ...]`: each lookup of `host` takes the next answer (the last
    repeats), None: it does not resolve; `names.allowed`: the addresses that count as public;
    `names.lookups`: the lookups made."""
    real = socket.getaddrinfo
    names = SimpleNamespace(answers={}, allowed={'127.0.0.1'}, lookups=[])

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in names.answers:
            return real(host, port, *args, **kwargs)
        names.lookups.append(host)
        queue = names.answers[host]
        if queue is None:
            raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, '', (a, port)) for a in addresses]

    monkeypatch.setattr(socket, 'getaddrinfo', getaddrinfo)
    monkeypatch.setattr(remote_images, 'is_public', lambda address: address in names.allowed)
    names.answers['images.test'] = [['127.0.0.1']]
    return names


@pytest.fixture
def site(servers, names):
    """http://images.test:PORT, served on 127.0.0.1."""
    server = servers('127.0.0.1')
    return SimpleNamespace(url=f'http://images.test:{server.server_address[1]}', server=server)


def test_a_rebinding_resolver_cannot_move_the_fetch_to_loopback(servers, names):
    public = servers('127.0.0.1', body=b'public image')
    port = public.server_address[1]
    secret = servers('127.0.0.2', port, body=b'secret')  # what a second lookup would reach
    names.answers['images.test'] = [['127.0.0.1'], ['127.0.0.2']]
    fetching = ImageFetching(hosts=('images.test',))
    assert fetching.fetch(f'http://images.test:{port}/image') == b'public image'
    assert names.lookups == ['images.test']  # once: the address checked is the address dialled
    assert public.hosts == [f'images.test:{port}'] and secret.hosts == []


def test_every_address_must_be_public_and_only_checked_ones_are_dialled(site, names):
    fetching = ImageFetching(hosts=('images.test',))
    names.answers['images.test'] = [['127.0.0.1', '10.0.0.1']]
    with pytest.raises(InvalidInputError, match="host 'images.test' resolves to a private or local address"):
        fetching.fetch(f'{site.url}/image')
    names.answers['images.test'] = [['127.0.0.3', '127.0.0.1']]  # nothing listens on the first
    names.allowed.add('127.0.0.3')
    assert fetching.fetch(f'{site.url}/image') == b'image'
    names.answers['images.test'] = [['127.0.0.3']]
    with pytest.raises(InvalidInputError, match=r'could not fetch http://images.test:\d+/image: Connection refused$'):
        fetching.fetch(f'{site.url}/image')


def test_an_unresolvable_host_is_refused(names):
    names.answers['images.test'] = None
    with pytest.raises(InvalidInputError, match="host 'images.test' does not resolve"):
        ImageFetching(hosts=('images.test',)).fetch('http://images.test/cat.png')


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for images.test (the openssl command line makes it)."""
    if not shutil.which('openssl'):
        pytest.skip('needs the openssl command to make a certificate')
    cert, key = tmp_path / 'cert.pem', tmp_path / 'key.pem'
    subprocess.run(
        ['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
        + ['-keyout', str(key), '-out', str(cert), '-days', '1', '-subj', '/CN=images.test']
        + ['-addext', 'subjectAltName=DNS:images.test'],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_checks_the_host_name_while_connecting_to_the_pinned_address(servers, names, certificate, monkeypatch):
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    sni = []
    server_tls.sni_callback = lambda sock, name, context: sni.append(name)
    server = servers('127.0.0.1', body=b'tls image', tls=server_tls)
    port = server.server_address[1]
    monkeypatch.setattr(remote_images, '_TLS_CONTEXT', ssl.create_default_context(cafile=str(cert)))
    names.answers['other.test'] = [['127.0.0.1']]
    fetching = ImageFetching(hosts=('images.test', 'other.test'))
    assert fetching.fetch(f'https://images.test:{port}/image') == b'tls image'
    assert sni == ['images.test'] and server.hosts == [f'images.test:{port}']
    with pytest.raises(InvalidInputError, match="certificate verify failed: Hostname mismatch.*'other.test'"):
        fetching.fetch(f'https://other.test:{port}/image')


@pytest.mark.parametrize('path', ['/drip-body', '/drip-headers'])
def test_a_dripping_server_is_cut_at_the_whole_fetchs_deadline(site, path):
    fetching = ImageFetching(hosts=('images.test',), timeout_seconds=1)
    start = time.monotonic()
    with pytest.raises(InvalidInputError, match=r'took longer than fetch_images.timeout_seconds \(1 s\)'):
        fetching.fetch(f'{site.url}{path}')
    assert 1 <= time.monotonic() - start < 1 + 2 * DRIP_SECONDS


def test_a_tls_handshake_that_never_finishes_is_cut_at_the_deadline(names):
    with socket.create_server(('127.0.0.1', 0)) as silent:  # accepts (the backlog) and never answers
        fetching = ImageFetching(hosts=('images.test',), timeout_seconds=0.5)
        start = time.monotonic()
        with pytest.raises(InvalidInputError, match=r'took longer than fetch_images.timeout_seconds \(0.5 s\)'):
            fetching.fetch(f'https://images.test:{silent.getsockname()[1]}/image')
        assert time.monotonic() - start < 0.9


class NoDefaultExecutor(concurrent.futures.ThreadPoolExecutor):
    def submit(self, *args, **kwargs):
        raise AssertionError("a fetch ran on the event loop's default executor")


def run_without_default_executor(coroutine):
    async def guarded():
        asyncio.get_running_loop().set_default_executor(NoDefaultExecutor())
        return await coroutine

    return asyncio.run(guarded())


def test_fetches_run_side_by_side_up_to_max_concurrent_and_queue_beyond(site):
    fetching = ImageFetching(hosts=('images.test',), max_concurrent=3)

    async def fetch_all(count: int) -> tuple[list[bytes], float]:
        start = time.monotonic()
        images = await asyncio.gather(*(fetching.fetch_async(f'{site.url}/slow') for _ in range(count)))
        return images, time.monotonic() - start

    images, elapsed = run_without_default_executor(fetch_all(3))
    assert images == [b'image'] * 3 and elapsed < 1.8 * SLOW_SECONDS
    images, elapsed = run_without_default_executor(fetch_all(6))
    assert images == [b'image'] * 6 and 2 * SLOW_SECONDS <= elapsed < 2.8 * SLOW_SECONDS
    assert site.server.most_in_flight == 3


def test_a_refusal_needing_no_network_does_not_wait_behind_queued_fetches(site):
    fetching = ImageFetching(hosts=('images.test',), max_concurrent=1)

    async def refused_while_busy() -> float:
        busy = asyncio.ensure_future(fetching.fetch_async(f'{site.url}/slow'))
        await asyncio.sleep(0.05)
        start = time.monotonic()
        with pytest.raises(InvalidInputError, match="host 'other.test' is not one"):
            await fetching.fetch_async('http://other.test/cat.png')
        elapsed = time.monotonic() - start
        assert await busy == b'image'
        return elapsed

    assert run_without_default_executor(refused_while_busy()) < 0.1


@pytest.mark.parametrize(
    'path, refusal',
    [
        ('/large', r'/large is over fetch_images.max_bytes \(1,000\)'),
        ('/large-unsized', r'/large-unsized is over fetch_images.max_bytes \(1,000\)'),
        ('/moved', r'/moved: redirected to /image, and redirects are not followed'),
        ('/missing', r'/missing: the server answered HTTP 404 Not Found'),
    ],
)
def test_large_redirected_and_failed_answers_are_refused(site, path, refusal):
    fetching = ImageFetching(hosts=('images.test',), max_bytes=1000)
    assert fetching.fetch(f'{site.url}/image') == b'image'
    with pytest.raises(InvalidInputError, match=refusal):
        fetching.fetch(f'{site.url}{path}')


@pytest.mark.parametrize(
    'url, refusal',
    [
        ('ftp://images.test/cat.png', 'ftp://images.test/cat.png is not an http:// or https:// URL'),
        ('http://images.test:99999/cat.png', 'http://images.test:99999/cat.png has an invalid port'),
        ('http://images.test:cat/cat.png', 'http://images.test:cat/cat.png has an invalid port'),
    ],
)
def test_only_http_urls_with_a_valid_port_are_fetched(names, url, refusal):
    with pytest.raises(InvalidInputError, match=refusal):
        ImageFetching(hosts=('images.test',)).fetch(url)
    assert names.lookups == []


def test_fetch_options_are_checked():
    option = {'hosts': ['Images.Example'], 'timeout_seconds': 2, 'max_bytes': 5, 'max_concurrent': 2}
    assert ImageFetching.from_option(option) == ImageFetching(('images.example',), 2, 5, 2)
    assert ImageFetching.from_option(None).max_concurrent == 8


@pytest.mark.parametrize(
    'option, refusal',
    [
        ({'max_concurrency': 2}, r"max_concurrent, not \['max_concurrency'\]"),
        ({'hosts': 'images.example'}, "fetch_images.hosts must be a list of host names, got 'images.example'"),
        ({'hosts': ['']}, 'fetch_images.hosts must be a list of host names'),
        ({'timeout_seconds': 0}, 'fetch_images.timeout_seconds must be a positive number, got 0'),
        ({'timeout_seconds': '5'}, "fetch_images.timeout_seconds must be a positive number, got '5'"),
        ({'max_bytes': 1.5}, 'fetch_images.max_bytes must be a positive integer, got 1.5'),
        ({'max_concurrent': 0}, 'fetch_images.max_concurrent must be a positive integer, got 0'),
        ({'max_concurrent': True}, 'fetch_images.max_concurrent must be a positive integer, got True'),
    ],
)
def test_bad_fetch_options_are_refused(option, refusal):
    with pytest.raises(ConfigurationError, match=refusal):
        ImageFetching.from_option(option)


def test_the_embeddings_route_fetches_a_requests_urls_side_by_side_and_names_a_refused_item(site):
    routes = OpenAIRoutes(streamer=None, max_items=8, fetching=ImageFetching(hosts=('images.test',)))
    docs = routes._documents(['a cat', f'{site.url}/slow', ImageItem(image=f'{site.url}/slow')])
    start = time.monotonic()
    run_without_default_executor(routes._fetch_images(docs))
    assert time.monotonic() - start < 1.8 * SLOW_SECONDS
    assert [(doc.blob, doc.uri) for doc in docs[1:]] == [(b'image', '')] * 2 and docs[0].text == 'a cat'
    docs = routes._documents([f'{site.url}/image', f'{site.url}/missing'])
    with pytest.raises(OpenAIError, match=r'input\[1\]: could not fetch .*/missing: the server answered HTTP 404'):
        run_without_default_executor(routes._fetch_images(docs))
