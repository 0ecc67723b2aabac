"""Fetch pretrained CLIP weight files into a local cache.

Weights come from their official source: the Hugging Face Hub (through huggingface_hub,
so its cache layout, locking and progress bars are reused) or, for URL sources, a
plain HTTP download. A cached file that passes its checksum is served without any
network access; a corrupt one is reported and fetched again. When nothing valid can be
had, `WeightsUnavailableError` says which file was missing and where the cache was looked
in; the executor adds how to serve a local copy instead.

Kept free of Jina and docarray so it can be used (and tested) on its own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import httpx2
import requests
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError
from tqdm.auto import tqdm

from clip_server.model import cache
from clip_server.model.registry import ModelSpec
from clip_server.types import ModelPathError, UnknownModelError, WeightsUnavailableError

logger = logging.getLogger(__name__)

_T = TypeVar('_T')

_BACKOFF_S = 0.5  # first wait between attempts; doubles on each retry
_HTTP_TIMEOUT_S = 30  # connect / between-bytes timeout of URL downloads
_CHUNK_BYTES = 1 << 20
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# OpenAI URLs carry the full sha256 as a path segment (.../models/<sha256>/RN50.pt);
# open_clip release files end in '-<sha256 prefix>.pt' (the torch.hub convention).
_SHA256_SEGMENT = re.compile(r'/([0-9a-f]{64})/')
_SHA256_PREFIX_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.[^./-]+$')
SHA256_NAME = re.compile(r'[0-9a-f]{64}')


def _unavailable(source: str, looked_in: Path, reason: str, tried: tuple = ()) -> WeightsUnavailableError:
    """One message for every source tried (`tried`: the (source, reason) pairs of earlier failures),
    saying where the cache was looked in and how to fill it (an executor adds how to serve a local copy)."""
    failures = [*tried, (source, reason)]
    reasons = {why for _, why in failures}
    if len(reasons) == 1:
        what = f'{" nor ".join(where for where, _ in failures)}: {reason}'
    else:
        what = ' nor '.join(f'{where} ({why})' for where, why in failures)
    error = WeightsUnavailableError(
        f'Cannot get {what}. '
        f'No valid copy was found in the cache at {looked_in}. '
        'Restore network access (and unset HF_HUB_OFFLINE) to download it, or copy a filled cache '
        'folder from another machine.'
    )
    error.failures = failures
    return error


def locate_weights(spec: ModelSpec, model_path: str | os.PathLike | None = None) -> Path:
    """The weights file to load: the operator's `model_path` as given, else the cached/downloaded one."""
    if model_path:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ModelPathError(f'model_path {str(model_path)!r} is not a file (resolved to {path.resolve()})')
        return path
    if spec.hub_repo:
        return fetch_hub_weights(spec.hub_repo)
    if spec.tag is None:
        raise WeightsUnavailableError(
            f'{spec.name!r} is an architecture without pretrained weights: it needs a weights file as `model_path`.'
        )
    return fetch_open_clip_weights(spec.arch, spec.tag)


def _root(cache_root: str | os.PathLike | None) -> Path:
    return Path(cache_root).expanduser() if cache_root is not None else cache.root()


def _sha256(path: str | os.PathLike) -> str:
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


def _retrying(action: Callable[[], _T], *, what: str, retries: int, transient: Callable[[Exception], bool]) -> _T:
    """Run `action`, retrying up to `retries` more times with a doubling backoff on transient errors."""
    attempt = 0
    while True:
        try:
            return action()
        except Exception as error:
            if attempt >= retries or not transient(error):
                raise
            delay = _BACKOFF_S * 2**attempt
            attempt += 1
            logger.warning('Fetching %s failed (%s); retry %d/%d in %.1fs', what, error, attempt, retries, delay)
            time.sleep(delay)


# ----------------------------------------------------------------------------- open_clip


def fetch_open_clip_weights(
    arch: str, tag: str, *, cache_root: str | os.PathLike | None = None, retries: int = 3
) -> Path:
    """Fetch the weights of open_clip's pretrained (arch, tag), from where open_clip itself would.

    The hub entry of the pretrained config is preferred, with open_clip's choice of file
    (the safetensors variant first, then the pickle); the config's URL, when it has one,
    is the fallback if the hub copy cannot be had.
    """
    # Imported here: open_clip pulls in torch, which the plain fetchers below do not need.
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = ', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'
        raise UnknownModelError(
            f'open_clip has no pretrained weights {arch!r}/{tag!r}; tags known for {arch!r}: {known}'
        )
    url = cfg.get('url', '')
    if not cfg.get('hf_hub'):
        return fetch_url(url, cache_root=cache_root, retries=retries)

    # 'org/repo/' means the default file; 'org/repo/name.bin' names it.
    repo_id, filename = os.path.split(cfg['hf_hub'])
    try:
        return fetch_hub_weights(repo_id, filename or None, cache_root=cache_root, retries=retries)
    except WeightsUnavailableError as hub_error:
        if not url:
            raise
        logger.warning('The hub copy of %s/%s is unavailable; falling back to %s', arch, tag, url)
        try:
            return fetch_url(url, cache_root=cache_root, retries=retries)
        except WeightsUnavailableError as url_error:  # one message naming both sources, hub first
            (url_source, url_reason), looked_in = url_error.failures[-1], _root(cache_root)
            raise _unavailable(url_source, looked_in, url_reason, tried=tuple(hub_error.failures)) from url_error


def fetch_hub_weights(
    repo_id: str, filename: str | None = None, *, cache_root: str | os.PathLike | None = None, retries: int = 3
) -> Path:
    """An open_clip checkpoint in a Hub repo: `filename`, or open_clip's default file; its
    safetensors variant first where the safetensors package can load it."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    candidates = [filename]
    if importlib.util.find_spec('safetensors') is not None:  # open_clip can only load them with it
        if filename == HF_WEIGHTS_NAME:
            candidates.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith(('.bin', '.pth')):
            candidates.insert(0, filename[:-4] + '.safetensors')
    return _fetch_hub(repo_id, candidates, None, _root(cache_root), retries)


# ----------------------------------------------------------------------------- hub files


def fetch_hf_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_root: str | os.PathLike | None = None,
    retries: int = 3,
) -> Path:
    """Fetch one file of a Hub model repo into the hf cache layout under the cache root."""
    return _fetch_hub(repo_id, [filename], revision, _root(cache_root), retries)


def _hub_blob_is_valid(path: str) -> bool:
    """An LFS blob is named by its sha256, so it can be checked; other blobs cannot."""
    blob = os.path.realpath(path)
    name = os.path.basename(blob)
    return not SHA256_NAME.fullmatch(name) or _sha256(blob) == name


def _discard_hub_file(path: str) -> None:
    """Remove a cached hub file (its blob and snapshot link) so it gets downloaded afresh."""
    Path(os.path.realpath(path)).unlink(missing_ok=True)
    Path(path).unlink(missing_ok=True)


def _is_transient_hub_error(error: Exception) -> bool:
    # Metadata (HEAD) failures are already retried with backoff inside hf_hub_download;
    # this covers the transfer itself, which it gives up on for server errors.
    if isinstance(error, HfHubHTTPError):
        return error.response is not None and error.response.status_code in _RETRY_STATUS
    return isinstance(error, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError))


def _fetch_hub(repo_id: str, filenames: Sequence[str], revision: str | None, root: Path, retries: int) -> Path:
    """Return the first of `filenames` that is validly cached, else the first the hub has."""
    source = f'{repo_id}/{" or ".join(filenames)}' + (f'@{revision}' if revision else '')
    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=root, revision=revision)
        if not isinstance(cached, str):
            continue
        if _hub_blob_is_valid(cached):
            return Path(cached)
        logger.warning('Cached %s/%s at %s fails its sha256 check; discarding it', repo_id, filename, cached)
        _discard_hub_file(cached)

    if hf_constants.is_offline_mode():
        raise _unavailable(source, root, 'offline mode is on (HF_HUB_OFFLINE)')
    for filename in filenames:
        logger.info('Downloading %s from %s/%s into %s', filename, hf_constants.ENDPOINT, repo_id, root)
        try:
            path = _retrying(
                partial(hf_hub_download, repo_id, filename, revision=revision, cache_dir=root),
                what=f'{repo_id}/{filename}',
                retries=retries,
                transient=_is_transient_hub_error,
            )
        except RemoteEntryNotFoundError:
            logger.info('%s has no %s', repo_id, filename)
            continue
        except (OSError, httpx2.HTTPError) as error:  # hub errors are OSErrors; httpx2's are not
            raise _unavailable(source, root, str(error)) from error
        if _hub_blob_is_valid(path):
            return Path(path)
        _discard_hub_file(path)
        raise _unavailable(source, root, f'the downloaded {filename} failed its sha256 check')
    raise _unavailable(source, root, 'the repository has none of these files')


# ----------------------------------------------------------------------------- URL files


def _sha256_in_url(url: str) -> str | None:
    """The checksum (or checksum prefix) that official weight URLs embed, if any."""
    path = urlsplit(url).path
    found = _SHA256_SEGMENT.search(path) or _SHA256_PREFIX_IN_NAME.search(path)
    return found.group(1) if found else None


def fetch_url(
    url: str,
    *,
    sha256: str | None = None,
    cache_root: str | os.PathLike | None = None,
    retries: int = 3,
) -> Path:
    """Fetch a weights file by URL into `<cache root>/<file name>` (open_clip's own layout).

    `sha256` (a full hex digest or a prefix of one) defaults to the one embedded in the
    URL. HF_HUB_OFFLINE is honoured here as well, so one switch keeps the server off
    the network.
    """
    root = _root(cache_root)
    target = root / unquote(os.path.basename(urlsplit(url).path))
    expected = (sha256 or _sha256_in_url(url) or '').lower() or None

    if target.is_file():
        if expected is None or _sha256(target).startswith(expected):
            return target
        logger.warning('Cached %s does not match sha256 %s; discarding it', target, expected)
        target.unlink()
    if hf_constants.is_offline_mode():
        raise _unavailable(url, target, 'offline mode is on (HF_HUB_OFFLINE)')

    logger.info('Downloading %s to %s', url, target)
    root.mkdir(parents=True, exist_ok=True)
    try:
        _retrying(
            partial(_download, url, target, expected),
            what=url,
            retries=retries,
            transient=_is_transient_http_error,
        )
    except requests.RequestException as error:
        raise _unavailable(url, target, str(error)) from error
    return target


def _is_transient_http_error(error: Exception) -> bool:
    if isinstance(error, requests.HTTPError):
        return error.response is not None and error.response.status_code in _RETRY_STATUS
    return isinstance(error, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError))


def _download(url: str, target: Path, expected_sha256: str | None) -> None:
    """One download attempt, into a temp file beside `target` that replaces it only once complete and checked."""
    # Identity encoding, so Content-Length is the file size and a cut-off transfer shows.
    with requests.get(url, stream=True, timeout=_HTTP_TIMEOUT_S, headers={'Accept-Encoding': 'identity'}) as response:
        response.raise_for_status()
        total = int(response.headers.get('Content-Length', 0)) or None
        incomplete = target.with_name(f'{target.name}.{uuid.uuid4().hex[:8]}.incomplete')
        try:
            digest = hashlib.sha256()
            with (
                open(incomplete, 'xb') as out,
                tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=target.name) as progress,
            ):
                for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.update(len(chunk))
            size = incomplete.stat().st_size
            if total is not None and size != total:
                raise requests.ConnectionError(f'connection closed after {size} of {total} bytes of {url}')
            actual = digest.hexdigest()
            if expected_sha256 and not actual.startswith(expected_sha256):
                raise _unavailable(url, target, f'its sha256 is {actual}, expected {expected_sha256}')
            os.replace(incomplete, target)
        finally:
            incomplete.unlink(missing_ok=True)
