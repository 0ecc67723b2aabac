"""No traceback reaches a client: for a corpus of bad inputs, on gRPC, HTTP and WebSocket, the
response carries the error's message and request id, the server log the traceback; and after each,
the next good request is served."""

import base64
import json
import re
import struct
import zlib

import numpy as np
import pytest
import requests
from clip_client import Client
from docarray import Document, DocumentArray

from helpers import encoded, flow_yaml, free_port, sample_image, start_server

PROTOCOLS = ['grpc', 'http', 'websocket']
LEAKS = re.compile(r'Traceback|File "|site-packages|\.py", line')


@pytest.fixture(scope='module')
def server(tiny_weights, tmp_path_factory):
    ports = [free_port() for _ in PROTOCOLS]
    yaml_text = flow_yaml(
        ports, protocol=PROTOCOLS, with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])}
    )
    running = start_server(tmp_path_factory.mktemp('errors'), yaml_text, ports[0])
    running.ports = dict(zip(PROTOCOLS, ports, strict=True))
    yield running
    running.stop()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims huge dimensions: a decompression bomb's first bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (
        b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b'')
    )


BAD_DOCS = {
    'corrupt-jpeg': ({'blob': _b64(b'\xff\xd8\xff\xe0 truncated')}, 'cannot decode image'),
    'empty-image': ({'uri': 'data:image/png;base64,'}, 'image content is empty'),
    'bad-base64': ({'uri': 'data:image/png;base64,%%%notbase64'}, 'data URI has invalid base64'),
    'file-path': ({'uri': '/etc/passwd'}, 'does not read files or fetch URLs'),
    'truncated-png': ({'blob': _b64(encoded(sample_image())[:80])}, 'cannot decode'),
    'wrong-mime': ({'uri': 'data:image/png;base64,' + _b64(b'plain text, not a picture')}, 'cannot decode image'),
    'huge-dimensions': ({'blob': _b64(_png_claiming(10_000, 10_000))}, 'over max_image_pixels'),
    'megabyte-text': ({'text': 'word ' * 210_000}, 'over max_text_chars'),
}


@pytest.mark.parametrize('case', sorted(BAD_DOCS))
def test_http_errors_name_the_document_without_a_traceback(server, case):
    doc, reason = BAD_DOCS[case]
    payload = {'execEndpoint': '/', 'data': [{'id': case, **doc}]}
    response = requests.post(f'http://127.0.0.1:{server.ports["http"]}/post', json=payload, timeout=60)
    assert response.status_code == 400
    status = response.json()['header']['status']
    assert f'document {case}' in status['description'] and reason in status['description']
    assert not LEAKS.search(response.text), response.text[:2000]
    assert response.json()['header']['requestId']
    request_id = response.json()['header']['requestId']
    log = server.output()
    assert request_id in log and 'Traceback' in log  # the traceback is in the server's log instead
    assert Client(f'grpc://127.0.0.1:{server.ports["grpc"]}').encode(['still serving']).shape == (1, 32)


@pytest.mark.parametrize(
    'bad',
    [
        Document(id='float-tensor', tensor=np.zeros((8, 8, 3), np.float32)),
        Document(id='five-d', tensor=np.zeros((1, 2, 3, 4, 5), np.uint8)),
        Document(id='corrupt', blob=b'\x89PNG\r\n\x1a\n broken'),
    ],
)
def test_grpc_errors_carry_the_reason_without_a_traceback(server, bad):
    from jina import Client as JinaClient

    responses = JinaClient(host='127.0.0.1', port=server.ports['grpc']).post(
        '/', DocumentArray([bad]), return_responses=True, continue_on_error=True
    )
    message = json.dumps(responses[0].to_dict())  # the whole response as the client receives it, routes included
    assert f'document {bad.id}' in message
    assert not LEAKS.search(message), message[:2000]


def test_websocket_errors_do_not_carry_a_traceback(server):
    from jina import Client as JinaClient

    responses = JinaClient(host='127.0.0.1', port=server.ports['websocket'], protocol='websocket').post(
        '/', DocumentArray([Document(id='corrupt', blob=b'junk')]), return_responses=True, continue_on_error=True
    )
    message = json.dumps(responses[0].to_dict())
    assert 'document corrupt' in message and not LEAKS.search(message), message[:2000]


@pytest.mark.parametrize(
    ('method', 'path', 'body', 'expected'),
    [
        ('post', '/post', b'{"data": [{"text": "unclosed', 422),
        ('post', '/post', b'[1, 2, 3]', 422),
        ('get', '/no-such-route', None, 404),
        ('post', '/post', json.dumps({'data': [{'id': 'empty', 'text': ''}]}).encode(), 200),
    ],
    ids=['malformed-json', 'json-not-a-request', 'unknown-route', 'empty-text'],
)
def test_malformed_http_requests_get_a_status_and_no_traceback(server, method, path, body, expected):
    response = requests.request(
        method,
        f'http://127.0.0.1:{server.ports["http"]}{path}',
        data=body,
        timeout=60,
        headers={'content-type': 'application/json'},
    )
    assert response.status_code == expected
    assert not LEAKS.search(response.text), response.text[:2000]
    assert Client(f'http://127.0.0.1:{server.ports["http"]}').encode(['still serving']).shape == (1, 32)
