"""Weight fetching against real local servers and real on-disk caches; nothing is mocked.

One small HTTP server on 127.0.0.1 plays both roles: a plain file host for `fetch_url`,
and, answering `/<repo>/resolve/<revision>/<file>` with the headers huggingface_hub
expects (X-Repo-Commit, ETag), a minimal Hub for `fetch_hf_file`.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import socket
import threading
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

from clip_server.model import cache, weights
from clip_server.model.weights import (
    fetch_hf_file,
    fetch_open_clip_weights,
    fetch_url,
)
from clip_server.types import WeightsUnavailableError

COMMIT = 'c0ffee' * 6 + 'c0ff'  # 40 hex digits, as a git commit
PAYLOAD = os.urandom(3000) + b'weights'
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_HEAD(self):
        self._answer(with_body=False)

    def do_GET(self):
        self._answer(with_body=True)

    def _answer(self, with_body: bool):
        server: FileServer = self.server.owner
        server.requests.append((self.command, self.path))
        body = server.files.get(self.path)
        if self.command == 'GET' and server.fail_gets > 0:
            server.fail_gets -= 1
            self.send_response(500)
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        if body is None:
            self.send_response(404)
            self.send_header('X-Error-Code', 'EntryNotFound')
            self.send_header('X-Repo-Commit', COMMIT)
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('ETag', f'"{server.etags.get(self.path) or hashlib.sha256(body).hexdigest()}"')
        self.send_header('X-Repo-Commit', COMMIT)
        self.end_headers()
        if with_body:
            if self.command == 'GET' and server.truncate_gets > 0:
                server.truncate_gets -= 1
                body = body[: len(body) // 2]
            self.wfile.write(body)


class FileServer:
    """Serves `files` (path -> bytes) with `etags`, records every request, can fail or cut short the next GETs."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}  # path -> ETag to announce instead of the body's sha256
        self.requests: list[tuple[str, str]] = []
        self.fail_gets = 0
        self.truncate_gets = 0
        self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
        self._httpd.owner = self
        self.base = f'http://127.0.0.1:{self._httpd.server_address[1]}'
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _online_and_direct(monkeypatch):
    """Start each test online, with localhost never sent through a proxy."""
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')


@pytest.fixture
def offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE at import; its constants module is what it consults later.
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)


@pytest.fixture
def hub(server, monkeypatch):
    """Point huggingface_hub at the local server (HF_ENDPOINT is likewise only read at import).

    Telemetry is off so its once-a-process side request (GET /api/agent-harnesses, to fill
    the user agent) does not show among the requests counted.
    """
    monkeypatch.setattr(hf_constants, 'HF_HUB_DISABLE_TELEMETRY', True)
    monkeypatch.setattr(hf_constants, 'ENDPOINT', server.base)
    template = server.base + '/{repo_id}/resolve/{revision}/{filename}'
    monkeypatch.setattr(hf_constants, 'HUGGINGFACE_CO_URL_TEMPLATE', template)
    return server


def closed_port_url(path: str) -> str:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}{path}'


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())


def make_hf_cache(root: Path, repo_id: str, filename: str, content: bytes, blob_name: str | None = None) -> Path:
    """Lay out one cached file exactly as huggingface_hub does: blob, snapshot symlink, ref."""
    repo = root / ('models--' + repo_id.replace('/', '--'))
    blob_name = blob_name or hashlib.sha256(content).hexdigest()
    (repo / 'blobs').mkdir(parents=True)
    (repo / 'blobs' / blob_name).write_bytes(content)
    (repo / 'snapshots' / COMMIT).mkdir(parents=True)
    link = repo / 'snapshots' / COMMIT / filename
    link.symlink_to(Path('..', '..', 'blobs', blob_name))
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(COMMIT)
    return link


# ----------------------------------------------------------------------------- the cache root


def test_cache_root_honours_clip_server_cache(monkeypatch, tmp_path):
    monkeypatch.delenv('CLIP_SERVER_CACHE', raising=False)
    assert cache.root() == Path.home() / '.cache' / 'clip'
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path / 'here'))
    assert cache.root() == tmp_path / 'here'
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setenv('CLIP_SERVER_CACHE', '~/elsewhere')
    assert cache.root() == tmp_path / 'elsewhere'


def test_default_cache_root_is_used_for_downloads(server, monkeypatch, tmp_path):
    server.files['/w.pt'] = PAYLOAD
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path / 'env-cache'))
    assert fetch_url(server.url('/w.pt')) == tmp_path / 'env-cache' / 'w.pt'


# ----------------------------------------------------------------------------- URL files


def test_url_download_lands_in_cache_with_progress_and_log(server, tmp_path, caplog, capsys):
    server.files['/dl/model.pt'] = PAYLOAD
    with caplog.at_level(logging.INFO, logger=weights.__name__):
        path = fetch_url(server.url('/dl/model.pt'), cache_root=tmp_path)
    assert path == tmp_path / 'model.pt'
    assert path.read_bytes() == PAYLOAD
    assert files_in(tmp_path) == ['model.pt']  # no temp file left behind
    assert any(server.url('/dl/model.pt') in r.message and str(path) in r.message for r in caplog.records)
    progress = capsys.readouterr().err
    assert 'model.pt' in progress and '100%' in progress


@pytest.mark.parametrize(
    'path',
    [f'/clip/models/{PAYLOAD_SHA}/RN50.pt', f'/releases/rn50-quickgelu-yfcc15m-{PAYLOAD_SHA[:8]}.pt'],
    ids=['openai-full-sha-segment', 'open_clip-sha-prefix-suffix'],
)
def test_checksum_embedded_in_url_accepts_the_right_file(server, tmp_path, path):
    server.files[path] = PAYLOAD
    assert fetch_url(server.url(path), cache_root=tmp_path).read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    'path, sha256',
    [(f'/clip/models/{"ab" * 32}/RN50.pt', None), ('/plain/RN50.pt', 'ab' * 32), ('/r/rn50-deadbeef.pt', None)],
    ids=['sha-in-url', 'sha-argument', 'sha-prefix-in-name'],
)
def test_checksum_mismatch_raises_and_leaves_no_file(server, tmp_path, path, sha256):
    server.files[path] = PAYLOAD
    with pytest.raises(WeightsUnavailableError, match='sha256') as info:
        fetch_url(server.url(path), sha256=sha256, cache_root=tmp_path, retries=2)
    assert server.url(path) in str(info.value)
    assert files_in(tmp_path) == []
    assert len(server.requests) == 1  # a wrong file is not fetched again


def test_cached_url_file_is_served_without_any_request(server, tmp_path):
    path = f'/clip/models/{PAYLOAD_SHA}/ViT-B-32.pt'
    server.files[path] = PAYLOAD
    first = fetch_url(server.url(path), cache_root=tmp_path)
    assert len(server.requests) == 1
    second = fetch_url(server.url(path), cache_root=tmp_path)
    assert second == first and second.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_corrupt_cached_url_file_is_detected_and_downloaded_again(server, tmp_path, caplog):
    path = f'/clip/models/{PAYLOAD_SHA}/ViT-B-32.pt'
    server.files[path] = PAYLOAD
    (tmp_path / 'ViT-B-32.pt').write_bytes(PAYLOAD[:-1] + b'X')
    with caplog.at_level(logging.WARNING, logger=weights.__name__):
        got = fetch_url(server.url(path), cache_root=tmp_path)
    assert got.read_bytes() == PAYLOAD
    assert server.requests == [('GET', path)]
    assert any('ViT-B-32.pt' in r.message and r.levelno == logging.WARNING for r in caplog.records)


def test_corrupt_cached_url_file_offline_is_reported(server, tmp_path, offline):
    path = f'/clip/models/{PAYLOAD_SHA}/ViT-B-32.pt'
    server.files[path] = PAYLOAD
    (tmp_path / 'ViT-B-32.pt').write_bytes(b'not the weights')
    with pytest.raises(WeightsUnavailableError, match='offline'):
        fetch_url(server.url(path), cache_root=tmp_path)
    assert server.requests == []


def test_transient_server_error_is_retried(server, tmp_path):
    server.files['/flaky.pt'] = PAYLOAD
    server.fail_gets = 1
    assert fetch_url(server.url('/flaky.pt'), cache_root=tmp_path, retries=2).read_bytes() == PAYLOAD
    assert server.requests == [('GET', '/flaky.pt')] * 2


def test_cut_off_transfer_is_retried(server, tmp_path):
    server.files['/cut.pt'] = PAYLOAD  # no checksum known: only the length can tell
    server.truncate_gets = 1
    assert fetch_url(server.url('/cut.pt'), cache_root=tmp_path, retries=1).read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert files_in(tmp_path) == ['cut.pt']


def test_retries_give_up_after_the_given_count(server, tmp_path):
    server.files['/down.pt'] = PAYLOAD
    server.fail_gets = 5
    with pytest.raises(WeightsUnavailableError, match='500'):
        fetch_url(server.url('/down.pt'), cache_root=tmp_path, retries=1)
    assert len(server.requests) == 2
    assert files_in(tmp_path) == []


def test_missing_url_file_is_not_retried(server, tmp_path):
    with pytest.raises(WeightsUnavailableError, match='404'):
        fetch_url(server.url('/nope.pt'), cache_root=tmp_path, retries=3)
    assert len(server.requests) == 1


def test_unreachable_source_with_empty_cache_names_the_file(tmp_path):
    url = closed_port_url('/clip/models/RN50.pt')
    with pytest.raises(WeightsUnavailableError) as info:
        fetch_url(url, cache_root=tmp_path, retries=1)
    message = str(info.value)
    assert url in message and str(tmp_path / 'RN50.pt') in message and 'copy a filled cache folder' in message
    assert 'uses: with:' not in message  # the executor adds the Flow YAML's remedy


def test_offline_url_uses_cache_and_never_the_network(server, tmp_path, offline):
    server.files['/off.pt'] = PAYLOAD
    with pytest.raises(WeightsUnavailableError, match='offline') as info:
        fetch_url(server.url('/off.pt'), cache_root=tmp_path)
    assert server.url('/off.pt') in str(info.value)
    (tmp_path / 'off.pt').write_bytes(PAYLOAD)
    assert fetch_url(server.url('/off.pt'), cache_root=tmp_path).read_bytes() == PAYLOAD
    assert server.requests == []


# ----------------------------------------------------------------------------- Hub files


def test_hub_cache_hit_makes_no_request(hub, tmp_path):
    link = make_hf_cache(tmp_path, 'org/repo', 'open_clip_model.safetensors', PAYLOAD)
    got = fetch_hf_file('org/repo', 'open_clip_model.safetensors', cache_root=tmp_path)
    assert got == link and got.read_bytes() == PAYLOAD
    assert hub.requests == []


def test_hub_cache_hit_works_offline(tmp_path, offline):
    make_hf_cache(tmp_path, 'org/repo', 'weights.bin', PAYLOAD)
    assert fetch_hf_file('org/repo', 'weights.bin', cache_root=tmp_path).read_bytes() == PAYLOAD


def test_corrupt_hub_blob_offline_is_detected_and_reported(tmp_path, offline, caplog):
    link = make_hf_cache(tmp_path, 'org/repo', 'weights.bin', b'garbage', blob_name=PAYLOAD_SHA)
    with caplog.at_level(logging.WARNING, logger=weights.__name__):
        with pytest.raises(WeightsUnavailableError) as info:
            fetch_hf_file('org/repo', 'weights.bin', cache_root=tmp_path)
    assert 'org/repo/weights.bin' in str(info.value)
    assert any('sha256' in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert not link.exists() and not (link.parent.parent.parent / 'blobs' / PAYLOAD_SHA).exists()


def test_corrupt_hub_blob_is_downloaded_again(hub, tmp_path):
    hub.files['/org/repo/resolve/main/weights.bin'] = PAYLOAD
    make_hf_cache(tmp_path, 'org/repo', 'weights.bin', b'garbage', blob_name=PAYLOAD_SHA)
    got = fetch_hf_file('org/repo', 'weights.bin', cache_root=tmp_path)
    assert got.read_bytes() == PAYLOAD
    assert os.path.basename(os.path.realpath(got)) == PAYLOAD_SHA
    assert [method for method, _ in hub.requests] == ['HEAD', 'GET']


def test_hub_download_from_local_fake_hub(hub, tmp_path, caplog):
    hub.files['/org/repo/resolve/main/weights.bin'] = PAYLOAD
    with caplog.at_level(logging.INFO, logger=weights.__name__):
        got = fetch_hf_file('org/repo', 'weights.bin', cache_root=tmp_path)
    assert got == tmp_path / 'models--org--repo' / 'snapshots' / COMMIT / 'weights.bin'
    assert got.read_bytes() == PAYLOAD
    assert any('weights.bin' in r.message and hub.base in r.message for r in caplog.records)
    requests_after_download = len(hub.requests)
    assert fetch_hf_file('org/repo', 'weights.bin', cache_root=tmp_path) == got
    assert len(hub.requests) == requests_after_download


def test_hub_file_not_matching_its_sha256_is_rejected(hub, tmp_path):
    hub.files['/org/repo/resolve/main/weights.bin'] = PAYLOAD
    hub.etags['/org/repo/resolve/main/weights.bin'] = 'ab' * 32  # an LFS etag is the file's sha256
    with pytest.raises(WeightsUnavailableError, match='sha256'):
        fetch_hf_file('org/repo', 'weights.bin', cache_root=tmp_path)
    assert not [f for f in files_in(tmp_path) if f.startswith('models--org--repo/blobs/')]
    assert not (tmp_path / 'models--org--repo' / 'snapshots' / COMMIT / 'weights.bin').exists()


def test_hub_transfer_server_error_is_retried(hub, tmp_path):
    hub.files['/org/repo/resolve/main/weights.bin'] = PAYLOAD
    hub.fail_gets = 1
    assert fetch_hf_file('org/repo', 'weights.bin', cache_root=tmp_path, retries=1).read_bytes() == PAYLOAD
    assert [method for method, _ in hub.requests].count('GET') == 2


def test_hub_missing_file_is_reported(hub, tmp_path):
    with pytest.raises(WeightsUnavailableError, match='org/repo/absent.bin'):
        fetch_hf_file('org/repo', 'absent.bin', cache_root=tmp_path)


def test_hub_offline_with_empty_cache_names_the_file(tmp_path, offline):
    with pytest.raises(WeightsUnavailableError) as info:
        fetch_hf_file('org/repo', 'weights.bin', cache_root=tmp_path)
    message = str(info.value)
    assert 'org/repo/weights.bin' in message and str(tmp_path) in message and 'copy a filled cache folder' in message


# ----------------------------------------------------------------------------- open_clip


B32 = ('ViT-B-32', 'laion2b_s34b_b79k')
B32_REPO = '/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/'


def test_open_clip_weights_prefer_safetensors_then_bin(hub, tmp_path):
    hub.files[B32_REPO + 'open_clip_pytorch_model.bin'] = PAYLOAD
    got = fetch_open_clip_weights(*B32, cache_root=tmp_path / 'a')
    assert got.name == 'open_clip_pytorch_model.bin' and got.read_bytes() == PAYLOAD
    assert hub.requests[0] == ('HEAD', B32_REPO + 'open_clip_model.safetensors')

    hub.files[B32_REPO + 'open_clip_model.safetensors'] = b'safe' + PAYLOAD
    got = fetch_open_clip_weights(*B32, cache_root=tmp_path / 'b')
    assert got.name == 'open_clip_model.safetensors' and got.read_bytes() == b'safe' + PAYLOAD


def test_open_clip_weights_cached_bin_is_used_offline(tmp_path, offline):
    make_hf_cache(tmp_path, 'laion/CLIP-ViT-B-32-laion2B-s34B-b79K', 'open_clip_pytorch_model.bin', PAYLOAD)
    assert fetch_open_clip_weights(*B32, cache_root=tmp_path).read_bytes() == PAYLOAD


def test_open_clip_weights_offline_names_every_candidate(tmp_path, offline):
    with pytest.raises(WeightsUnavailableError) as info:
        fetch_open_clip_weights(*B32, cache_root=tmp_path)
    message = str(info.value)
    assert 'laion/CLIP-ViT-B-32-laion2B-s34B-b79K/open_clip_model.safetensors' in message
    assert 'open_clip_pytorch_model.bin' in message and 'copy a filled cache folder' in message


def test_open_clip_weights_fall_back_to_the_url(hub, tmp_path, monkeypatch):
    import open_clip

    url = hub.url(f'/releases/rn50-{PAYLOAD_SHA[:8]}.pt')
    hub.files[url[len(hub.base) :]] = PAYLOAD
    # A config whose hub copy is missing: the URL is the documented fallback.
    monkeypatch.setattr(open_clip, 'get_pretrained_cfg', lambda arch, tag: {'hf_hub': 'org/gone/', 'url': url})
    assert fetch_open_clip_weights('RN50', 'x', cache_root=tmp_path) == tmp_path / f'rn50-{PAYLOAD_SHA[:8]}.pt'


def test_when_hub_and_url_both_fail_the_error_names_both(tmp_path, offline):
    with pytest.raises(WeightsUnavailableError) as info:
        fetch_open_clip_weights('ViT-B-32', 'openai', cache_root=tmp_path)
    message = str(info.value)
    assert 'timm/vit_base_patch32_clip_224.openai/open_clip_model.safetensors' in message
    assert ' nor https://' in message and 'ViT-B-32.pt' in message
    assert message.count('offline mode is on') == 1 and message.count('Restore network access') == 1


def test_unknown_open_clip_tag_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match='laion2b_s34b_b79k'):
        fetch_open_clip_weights('ViT-B-32', 'no_such_tag', cache_root=tmp_path)


def test_locate_weights_prefers_the_operators_file(tmp_path):
    from clip_server.model.registry import lookup
    from clip_server.model.weights import locate_weights

    weights = tmp_path / 'mine.pt'
    weights.write_bytes(b'weights')
    assert locate_weights(lookup('ViT-B-32::openai'), str(weights)) == weights
    with pytest.raises(FileNotFoundError, match="model_path '.*missing.pt' is not a file"):
        locate_weights(lookup('ViT-B-32::openai'), tmp_path / 'missing.pt')
    with pytest.raises(WeightsUnavailableError, match='needs a weights file as `model_path`'):
        locate_weights(lookup('tiny-vit'))
