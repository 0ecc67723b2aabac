"""TLS written as CLIP-as-service documents it: `ssl_certfile`/`ssl_keyfile` under the Flow's `with:`.

jina alone would hand those keys to the executor too and every request would fail; the CLI moves
them to the gateway (clip_server/flow_config.py). Clients verify the self-signed certificate for
real: nothing here turns verification off.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import requests

from helpers import flow_yaml, free_port, reference_text_embeddings, server_env, start_server

pytestmark = pytest.mark.skipif(not shutil.which('openssl'), reason='needs the openssl command')

PASSWORD = 'blahblah'
TEXTS = ['a photo of a dog', 'served over TLS']
PROTOCOLS = ['grpc', 'http', 'websocket']
SECURE_SCHEME = {'grpc': 'grpcs', 'http': 'https', 'websocket': 'wss'}
TOLERANCE = 1e-4

# clip_client in a fresh process: gRPC reads its root certificates once per process, from
# GRPC_DEFAULT_SSL_ROOTS_FILE_PATH; HTTP and WebSocket (aiohttp) trust SSL_CERT_FILE.
CLIENT = """
import json, sys
from clip_client import Client
texts = json.loads(sys.argv[1])
result = {}
for address in sys.argv[2:]:
    try:
        result[address] = Client(address).encode(texts).tolist()
    except Exception as e:
        result[address] = f'{type(e).__name__}: {e}'
print(json.dumps(result))
"""


@pytest.fixture(scope='module')
def certs(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost, its key, and the key encrypted."""
    folder = tmp_path_factory.mktemp('certs')
    subprocess.run(
        [
            'openssl',
            'req',
            '-x509',
            '-newkey',
            'ec',
            '-pkeyopt',
            'ec_paramgen_curve:prime256v1',
            '-nodes',
            '-keyout',
            'key.pem',
            '-out',
            'cert.pem',
            '-days',
            '2',
            '-subj',
            '/CN=localhost',
            '-addext',
            'subjectAltName=IP:127.0.0.1,DNS:localhost',
        ],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=30,
    )
    subprocess.run(
        ['openssl', 'pkey', '-in', 'key.pem', '-aes256', '-passout', f'pass:{PASSWORD}', '-out', 'key-encrypted.pem'],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return folder


def tls_flow(ports, protocols, tiny_weights, tls_lines: str) -> str:
    """A tiny-model Flow YAML with `tls_lines` added to its top-level `with:`."""
    text = flow_yaml(
        ports,
        protocol=protocols,
        with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])},
    )
    return text.replace('  host: 127.0.0.1\n', '  host: 127.0.0.1\n' + tls_lines, 1)


def logged_ready(server) -> bool:
    # jina's own readiness client would have to trust the certificate; its log line does not.
    return 'Flow is ready to serve' in server.output()


def run_clients(cert, addresses: list[str]) -> dict:
    env = server_env({'SSL_CERT_FILE': str(cert), 'GRPC_DEFAULT_SSL_ROOTS_FILE_PATH': str(cert)})
    done = subprocess.run(
        [sys.executable, '-c', CLIENT, json.dumps(TEXTS), *addresses],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def plain_key_server(certs, tiny_weights, tmp_path_factory):
    """All three protocols over TLS with an unencrypted key, as relative paths as in the docs."""
    folder = tmp_path_factory.mktemp('tls')
    for name in ('cert.pem', 'key.pem'):
        shutil.copy(certs / name, folder / name)
    ports = [free_port() for _ in PROTOCOLS]
    yaml_text = tls_flow(ports, PROTOCOLS, tiny_weights, '  ssl_certfile: cert.pem\n  ssl_keyfile: key.pem\n')
    server = start_server(folder, yaml_text, ports[0], is_ready=logged_ready)
    server.ports = dict(zip(PROTOCOLS, ports, strict=True))
    yield server
    server.stop()


@pytest.fixture(scope='module')
def client_results(plain_key_server, certs):
    """One client process that calls the server over grpcs, https and wss."""
    addresses = {p: f'{SECURE_SCHEME[p]}://127.0.0.1:{plain_key_server.ports[p]}' for p in PROTOCOLS}
    results = run_clients(certs / 'cert.pem', list(addresses.values()))
    return {protocol: results[address] for protocol, address in addresses.items()}


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_clip_client_over_tls(client_results, reference, protocol):
    embeddings = client_results[protocol]
    assert not isinstance(embeddings, str), embeddings
    expected = reference_text_embeddings(reference('tiny-vit'), TEXTS)
    np.testing.assert_allclose(np.array(embeddings), expected, atol=TOLERANCE)


def test_curl_verifies_the_certificate(plain_key_server, certs):
    url = f'https://127.0.0.1:{plain_key_server.ports["http"]}/post'
    body = json.dumps({'execEndpoint': '/encode', 'data': [{'text': TEXTS[0]}]})
    done = subprocess.run(
        [
            'curl',
            '-sS',
            '--fail',
            '--max-time',
            '60',
            '--cacert',
            str(certs / 'cert.pem'),
            '-H',
            'Content-Type: application/json',
            '-d',
            body,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)['data'][0]['embedding']) == 32


def test_plaintext_is_refused(plain_key_server):
    with pytest.raises(requests.ConnectionError):
        requests.get(f'http://127.0.0.1:{plain_key_server.ports["http"]}/dry_run', timeout=10)


def test_the_executor_link_stays_plaintext(plain_key_server):
    # the pitfall this guards against shows as an SSL error between gateway and executor
    assert 'WRONG_VERSION_NUMBER' not in plain_key_server.output()


def test_documented_yaml_with_a_password_protected_key(certs, tiny_weights, tmp_path, reference):
    """The documentation's YAML to the letter: http, cors, uvicorn_kwargs with the key's password."""
    for name in ('cert.pem', 'key-encrypted.pem'):
        shutil.copy(certs / name, tmp_path / name)
    port = free_port()
    yaml_text = tls_flow(
        port,
        'http',
        tiny_weights,
        f'  cors: true\n  uvicorn_kwargs:\n    ssl_keyfile_password: {PASSWORD}\n'
        '  ssl_certfile: cert.pem\n  ssl_keyfile: key-encrypted.pem\n',
    )
    server = start_server(tmp_path, yaml_text, port, protocol='http', is_ready=logged_ready)
    try:
        response = requests.post(
            f'https://127.0.0.1:{port}/post',
            json={'execEndpoint': '/encode', 'data': [{'text': TEXTS[0]}]},
            verify=str(certs / 'cert.pem'),
            timeout=60,
        )
        assert response.status_code == 200
        expected = reference_text_embeddings(reference('tiny-vit'), TEXTS[:1])[0]
        np.testing.assert_allclose(response.json()['data'][0]['embedding'], expected, atol=TOLERANCE)
    finally:
        server.stop()


def test_grpc_with_a_password_protected_key_is_refused_clearly(certs, tiny_weights, tmp_path):
    """gRPC cannot unlock a key; jina would only say 'Failed to bind to address'."""
    yaml_text = tls_flow(
        free_port(),
        'grpc',
        tiny_weights,
        f'  uvicorn_kwargs:\n    ssl_keyfile_password: {PASSWORD}\n'
        f'  ssl_certfile: {certs / "cert.pem"}\n  ssl_keyfile: {certs / "key-encrypted.pem"}\n',
    )
    path = tmp_path / 'flow.yml'
    path.write_text(yaml_text)
    done = subprocess.run(
        [sys.executable, '-m', 'clip_server', str(path)], env=server_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert 'password-protected, which gRPC cannot use' in done.stderr.strip().splitlines()[-1]
