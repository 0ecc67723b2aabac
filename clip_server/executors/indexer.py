"""CLIPIndexer: stores what the encoder embedded and finds it again, after the encoder in a Flow.

`clip_client`'s `index()` and `search()` work against it as they are:
- `/index`: each document with an embedding is stored (id, embedding, text, uri, tags, mime type;
  image bytes only with `store_image_content`), replacing one stored under the same id;
- `/search`: each query gets its `limit` (default 10) best matches, best first, with the cosine
  in `scores['cosine']`; texts find images and images find texts, as they share one space;
- `/delete`: removes the documents with the ids sent (as documents, or `parameters={'ids': [...]}`);
- `/count`: answers one document whose `tags['count']` is the number stored;
- `/sources`: a page of the documents indexed from files (tags `source` and `sha256`, as
  `python -m clip_server.index` sends them), so that a rerun skips what is stored already.

Each indexed image also keeps a small JPEG preview (at most `preview_size` pixels a side), which
`/search` returns in a match's `tags['preview']` when asked (`previews: true`): the web page's
thumbnails (`clip_server.gateway.ui`), without the original's bytes or a path the server would have to read.

The store is embedded and persistent (`clip_server.search.vector_store`): a folder under the cache by
default, or `index_path`. One process writes it: keep this executor at one replica (the encoder
in front may have many). With `qdrant: {url: ..., collection: ...}` the index is a Qdrant
collection instead (`clip_server.search.qdrant_store`), which several replicas may share.
"""

import base64
import io
from typing import Any

import numpy as np
from docarray import Document, DocumentArray
from docarray.score import NamedScore
from jina import Executor, requests

from clip_server.executors.documents import Modality, image_of, modality
from clip_server.model import cache
from clip_server.search.store import Hit, Item, Store
from clip_server.search.vector_store import VectorStore
from clip_server.types import ConfigurationError, InvalidInputError
from clip_server.wire import (
    COUNT,
    COUNT_TAG,
    CURSOR,
    DELETE,
    IDS,
    INDEX,
    LIMIT,
    NEXT_TAG,
    PREVIEW_TAG,
    PREVIEWS,
    SEARCH,
    SHA256_TAG,
    SOURCE_TAG,
    SOURCES,
)

DEFAULT_LIMIT = 10
SOURCES_PAGE = 1000  # /sources entries per page (the gateway caps `limit` at max_search_limit)
PREVIEW_QUALITY = 70  # JPEG quality: a 128-pixel preview takes 2-8 KB


class CLIPIndexer(Executor):
    """A persistent vector index behind the CLIP encoder."""

    def __init__(
        self,
        index_path: str | None = None,
        exact_below: int = 20_000,
        store_image_content: bool = False,
        qdrant: dict | None = None,
        preview_size: int = 128,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(preview_size, bool) or not isinstance(preview_size, int) or not 0 <= preview_size <= 512:
            raise ConfigurationError(f'preview_size must be 0 (no previews) to 512 pixels, got {preview_size!r}')
        self._store = self._open(index_path, exact_below, qdrant)
        self._store_image_content = store_image_content
        self._preview_size = preview_size
        self.logger.info(f'index at {self._store.folder}: {self._store.count()} documents')

    @requests(on=INDEX)
    def index(self, docs: DocumentArray, **kwargs: Any) -> DocumentArray:
        unembedded = [doc.id for doc in docs if doc.embedding is None]
        if unembedded:
            raise InvalidInputError(f'document {unembedded[0]} has no embedding to index: send it some content')
        self._store.add([Item(doc.id, doc.embedding, self._payload(doc)) for doc in docs])
        return docs

    @requests(on=SEARCH)
    def search(self, docs: DocumentArray, parameters: dict, **kwargs: Any) -> DocumentArray:
        limit = _positive_int(parameters.get(LIMIT, DEFAULT_LIMIT), LIMIT)
        queries = [doc for doc in docs if doc.embedding is not None]
        if not queries:
            return docs
        found = self._store.search(np.stack([query.embedding for query in queries]), limit)
        previews = parameters.get(PREVIEWS) is True
        for query, hits in zip(queries, found, strict=True):
            query.matches = DocumentArray([_match(hit, query.id, previews) for hit in hits])
        return docs

    @requests(on=DELETE)
    def delete(self, docs: DocumentArray, parameters: dict, **kwargs: Any) -> DocumentArray:
        ids = [doc.id for doc in docs] + _ids(parameters.get(IDS, []))
        removed = self._store.remove(ids)
        self.logger.info(f'deleted {removed} of {len(ids)} documents asked for')
        return docs

    @requests(on=COUNT)
    def count(self, **kwargs: Any) -> DocumentArray:
        return DocumentArray([Document(tags={COUNT_TAG: self._store.count()})])

    @requests(on=SOURCES)
    def sources(self, parameters: dict, **kwargs: Any) -> DocumentArray:
        """One document: the page's entries as its matches (id, `tags` source and sha256), and the
        next page's cursor in `tags['next']` (empty on the last page); `parameters.cursor` asks for it."""
        limit = _positive_int(parameters.get(LIMIT, SOURCES_PAGE), LIMIT)
        cursor = parameters.get(CURSOR) or ''
        if not isinstance(cursor, str):
            raise InvalidInputError(f'parameter cursor must be the tags.next of the page before, got {cursor!r:.64}')
        page, following = self._store.sources(cursor, limit)
        entries = DocumentArray(
            Document(id=entry.id, tags={SOURCE_TAG: entry.source, SHA256_TAG: entry.sha256}) for entry in page
        )
        return DocumentArray([Document(tags={NEXT_TAG: following}, matches=entries)])

    def close(self) -> None:
        self._store.close()
        super().close()

    def _open(self, index_path: str | None, exact_below: int, qdrant: dict | None) -> Store:
        """A Qdrant collection when `qdrant` says where, else the embedded index (one replica only)."""
        if qdrant is not None:
            from clip_server.search.qdrant_store import QdrantStore

            return QdrantStore(**qdrant)
        if (getattr(self.runtime_args, 'replicas', 1) or 1) > 1:
            raise ConfigurationError(
                'the embedded index has one writer: give CLIPIndexer `replicas: 1`, or a Qdrant server (`qdrant:`)'
            )
        return VectorStore(index_path or cache.default_index(), exact_below=exact_below)

    def _payload(self, doc: Document) -> dict:
        payload = {'text': doc.text, 'uri': doc.uri, 'tags': dict(doc.tags), 'mime_type': doc.mime_type}
        if not self._store_image_content and doc.uri.startswith('data:'):
            payload['uri'] = ''  # a data URI is image content
        if self._store_image_content and doc.blob:
            payload['blob'] = doc.blob.hex()
        if self._preview_size and _is_image(doc):
            payload[PREVIEW_TAG] = self._preview(doc)
        return payload

    def _preview(self, doc: Document) -> str:
        """The image at most `preview_size` pixels a side, as base64 JPEG; '' when it cannot be read
        (the encoder read it with its own limits, which may be wider than the defaults here)."""
        try:
            image = image_of(doc, min_side=self._preview_size)
        except InvalidInputError as error:
            self.logger.warning(f'document {doc.id}: no preview: {error}')
            return ''
        image.thumbnail((self._preview_size, self._preview_size))
        buffer = io.BytesIO()
        image.convert('RGB').save(buffer, format='JPEG', quality=PREVIEW_QUALITY)
        return base64.b64encode(buffer.getvalue()).decode()


def _is_image(doc: Document) -> bool:
    try:
        return modality(doc) is Modality.IMAGE
    except InvalidInputError:
        return False


def _match(hit: Hit, query_id: str, previews: bool = False) -> Document:
    payload = hit.payload
    match = Document(id=hit.id, tags=payload.get('tags') or {}, mime_type=payload.get('mime_type') or '')
    if payload.get('text'):
        match.text = payload['text']
    if payload.get('uri'):
        match.uri = payload['uri']
    if payload.get('blob'):
        match.blob = bytes.fromhex(payload['blob'])
    if previews and payload.get(PREVIEW_TAG):
        match.tags[PREVIEW_TAG] = f'data:image/jpeg;base64,{payload[PREVIEW_TAG]}'
    match.scores['cosine'] = NamedScore(value=hit.cosine, op_name='cosine', ref_id=query_id)
    return match


def _ids(value: Any) -> list[str]:
    """`parameters.ids` of `/delete`: a list of ids (strings, or numbers taken as their text)."""
    if not isinstance(value, list) or not all(
        isinstance(i, str | int | float) and not isinstance(i, bool) for i in value
    ):
        raise InvalidInputError(f'parameter ids must be a list of document ids, got {value!r:.64}')
    return [str(int(i)) if isinstance(i, float) and i.is_integer() else str(i) for i in value]


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise InvalidInputError(f'{name} must be a positive integer, got {value!r}')
    return number
