"""`python -m clip_server.index` against a real search Flow with token auth: it indexes images and
text lines, reports unreadable files without stopping, logs progress as plain lines when its output
is not a terminal, resumes after being killed (the index keeps each document's content hash),
sends only what changed, removes what is gone with --delete-missing, and stops on a wrong token."""

import os
import signal
import subprocess
import sys
import time

import pytest
from docarray import Document, DocumentArray
from jina import Client
from search_servers import CAPTIONS, TOKEN, index_command, make_files, serve

from helpers import encoded, sample_image, server_env

AUTH = (('authorization', TOKEN),)
MAX_REQUEST_BYTES = 4 * 2**20


@pytest.fixture(scope='module')
def server(tiny_weights, tmp_path_factory):
    running = serve(tiny_weights, tmp_path_factory.mktemp('index-cli'), max_request_bytes=MAX_REQUEST_BYTES)
    yield running
    running.stop()


def count(server) -> int:
    return int(post(server, '/count', DocumentArray([Document()]))[0].tags['count'])


def post(server, endpoint: str, docs: DocumentArray, **parameters) -> DocumentArray:
    return Client(host=f'grpc://127.0.0.1:{server.grpc}').post(endpoint, docs, parameters=parameters, metadata=AUTH)


def clear(server) -> None:
    ids = [doc.id for doc in post(server, '/sources', DocumentArray([Document()]), limit=1000)[0].matches]
    post(server, '/delete', DocumentArray(Document(id=doc_id) for doc_id in ids))


def test_indexes_reports_failures_and_resumes_with_only_what_changed(server, tmp_path):
    clear(server)
    files = make_files(tmp_path)
    (files / 'broken.jpg').write_bytes(b'not a jpeg at all')
    (files / 'latin1.txt').write_bytes(b'caf\xe9 au lait\n')
    (files / 'huge.png').write_bytes(bytes(MAX_REQUEST_BYTES + 1))  # over the gateway's limit on its own
    address = f'grpc://127.0.0.1:{server.grpc}'

    first = index_command(str(files), str(tmp_path / 'missing'), '--server', address, '--batch-size', '2')
    assert first.returncode == 1, first.stderr  # some files failed, the rest were indexed
    assert f'failed: {files / "broken.jpg"}: cannot decode image' in first.stderr
    assert f'failed: {files / "latin1.txt"}: not UTF-8 text' in first.stderr
    assert f'failed: {tmp_path / "missing"}: no such file or folder' in first.stderr
    assert f'failed: {files / "huge.png"}: gRPC error: StatusCode.RESOURCE_EXHAUSTED' in first.stderr
    assert 'indexing: 8/8 (100%)' in first.stderr and 'items/s' in first.stderr
    assert '\r' not in first.stderr + first.stdout  # a log gets plain lines, not a redrawn bar
    assert first.stdout.startswith('indexed 6, skipped 0 (already indexed), failed 4, deleted 0;')
    assert count(server) == 6  # 3 pictures and 3 captions

    query = post(server, '/search', DocumentArray([Document(text=CAPTIONS[1])]), limit=1)[0]
    assert query.matches[0].id == f'{files / "captions.txt"}#2'
    assert query.matches[0].tags['source'] == str(files / 'captions.txt')

    again = index_command(str(files), '--server', address)
    assert again.stdout.startswith('indexed 0, skipped 6 (already indexed), failed 3,')

    (files / 'captions.txt').write_text(f'{CAPTIONS[0]}\na new second line\n{CAPTIONS[2]}\n')
    (files / 'more' / 'green-disc.png').unlink()
    changed = index_command(str(files), '--server', address, '--delete-missing')
    assert changed.stdout.startswith('indexed 1, skipped 4 (already indexed), failed 3, deleted 1;'), changed.stdout
    assert count(server) == 5


def test_an_interrupted_run_resumes_where_it_stopped(server, tmp_path):
    clear(server)
    folder = tmp_path / 'many'
    folder.mkdir()
    (folder / 'lines.txt').write_text(''.join(f'sentence number {i}\n' for i in range(3000)))
    command = [sys.executable, '-m', 'clip_server.index', str(folder), '--server', f'http://127.0.0.1:{server.http}']
    running = subprocess.Popen(
        [*command, '--token', TOKEN, '--batch-size', '5'], env=server_env(), stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while count(server) < 100 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(running.pid, signal.SIGKILL)  # no chance to finish its batch or say anything
    running.wait()
    stored = count(server)
    assert 100 <= stored < 3000

    resumed = index_command(str(folder), '--server', f'http://127.0.0.1:{server.http}', timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f'indexed {3000 - stored}, skipped {stored} (already indexed), failed 0,')
    assert count(server) == 3000


def test_an_indexed_image_keeps_a_small_preview(server, tmp_path):
    clear(server)
    big = tmp_path / 'big.jpg'
    big.write_bytes(encoded(sample_image(3, size=(1600, 900)), 'JPEG', quality=95))
    assert index_command(str(big), '--server', f'grpc://127.0.0.1:{server.grpc}').returncode == 0
    query = DocumentArray([Document(blob=big.read_bytes())])
    match = post(server, '/search', query, limit=1, previews=True)[0].matches[0]
    preview = match.tags['preview']
    assert match.id == str(big) and preview.startswith('data:image/jpeg;base64,')
    image = Document(uri=preview).load_uri_to_image_tensor().tensor
    assert image.shape == (72, 128, 3)  # the longer side at 128 pixels, the proportions kept
    assert len(preview) < 16_000 < big.stat().st_size
    assert 'preview' not in post(server, '/search', query, limit=1)[0].matches[0].tags  # only when asked


def test_a_wrong_token_or_no_server_stops_at_once(server, tmp_path):
    files = make_files(tmp_path)
    for protocol, port in (('grpc', server.grpc), ('http', server.http)):
        refused = index_command(str(files), '--server', f'{protocol}://127.0.0.1:{port}', token='wrong')
        assert refused.returncode == 2
        assert 'refused the token: pass the right one with --token' in refused.stderr
        assert 'Traceback' not in refused.stderr
    unreachable = index_command(str(files), '--server', 'grpc://127.0.0.1:9')
    assert unreachable.returncode == 2 and 'cannot use grpc://127.0.0.1:9' in unreachable.stderr


def test_a_flow_without_an_index_is_named(tiny_weights, tmp_path):
    plain = serve(tiny_weights, tmp_path, index=False, token=None)
    try:
        answer = index_command(str(make_files(tmp_path)), '--server', f'grpc://127.0.0.1:{plain.grpc}', token=None)
    finally:
        plain.stop()
    assert answer.returncode == 2 and 'has no search index' in answer.stderr, answer.stderr
