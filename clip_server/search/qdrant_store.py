"""The index in a Qdrant vector database, for when one machine is not enough.

The same interface (`clip_server.search.store.Store`) as the embedded `VectorStore`, on a Qdrant
collection: Qdrant's own server keeps the vectors, persists them, shards and replicates them, and
answers from its HNSW index; any number of indexer replicas may then share it. Point ids are
UUIDs derived from the document ids (Qdrant takes no other strings); the document id travels in
the payload. `qdrant-client`'s local mode (`path:` instead of `url:`) runs the same code in-process
without a server, which is how the tests run it.
"""

import os
import uuid

import numpy as np

from clip_server.search.store import Hit, Item, Source, check_dimension, query_rows, vectors_of
from clip_server.types import ConfigurationError, require
from clip_server.wire import SHA256_TAG, SOURCE_TAG

ID_FIELD = '_clip_server_id'
NAMESPACE = uuid.UUID('5c3b8f04-3a55-4b53-9e1b-0ad1b6d3a4c1')  # fixed: the same id, the same point


class QdrantStore:
    """Documents and their embeddings in one Qdrant collection, searched by cosine."""

    def __init__(self, collection: str = 'clip', url: str | None = None, path: str | None = None, **options):
        qdrant = require('qdrant_client', 'qdrant')
        if (url is None) == (path is None):
            raise ConfigurationError('qdrant: set either url (a Qdrant server) or path (local mode), not both')
        api_key_env = options.pop('api_key_env', None)
        api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not api_key:
            raise ConfigurationError(f'qdrant.api_key_env names {api_key_env}, which is not set')
        self._client = qdrant.QdrantClient(url=url, path=path, api_key=api_key, **options)
        self._models = qdrant.models
        self.collection = collection
        self.folder = url or path  # where it lives, for the start-up log
        self.dim: int | None = None
        if self._client.collection_exists(collection):
            vectors = self._client.get_collection(collection).config.params.vectors
            self.dim = vectors.size

    def add(self, items: list[Item]) -> None:
        if not items:
            return
        vectors = vectors_of(items)
        self._check_dim(vectors.shape[1])
        points = [
            self._models.PointStruct(id=_point_id(item.id), vector=vector.tolist(), payload=_payload(item))
            for item, vector in zip(items, vectors, strict=True)
        ]
        self._client.upsert(self.collection, points=points, wait=True)

    def remove(self, ids) -> int:
        ids = list(ids)
        if self.dim is None or not ids:
            return 0
        present = self._client.retrieve(self.collection, [_point_id(doc_id) for doc_id in ids], with_payload=False)
        self._client.delete(
            self.collection, self._models.PointIdsList(points=[point.id for point in present]), wait=True
        )
        return len(present)

    def count(self) -> int:
        return self._client.count(self.collection, exact=True).count if self.dim is not None else 0

    def search(self, queries: np.ndarray, limit: int) -> list[list[Hit]]:
        queries = query_rows(queries)
        if self.dim is None:
            return [[] for _ in queries]
        self._check_dim(queries.shape[1])
        requests = [
            self._models.QueryRequest(query=query.tolist(), limit=limit, with_payload=True) for query in queries
        ]
        answers = self._client.query_batch_points(self.collection, requests=requests)
        return [[_hit(point) for point in answer.points] for answer in answers]

    def sources(self, cursor: str, limit: int) -> tuple[list[Source], str]:
        """Up to `limit` points with a content hash, in Qdrant's point order from `cursor` (a point id;
        `''`: the first), and the next page's cursor (`''`: none)."""
        if self.dim is None:
            return [], ''
        models = self._models
        hashed = models.Filter(
            must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=f'tags.{SHA256_TAG}'))]
        )
        points, following = self._client.scroll(
            self.collection,
            scroll_filter=hashed,
            limit=limit,
            offset=cursor or None,
            with_payload=[ID_FIELD, 'tags'],  # not the previews
        )
        page = [_source(point.payload or {}) for point in points]
        return page, str(following or '')

    def close(self) -> None:
        self._client.close()

    def _check_dim(self, dim: int) -> None:
        if self.dim is None:
            vectors = self._models.VectorParams(size=dim, distance=self._models.Distance.COSINE)
            self._client.create_collection(self.collection, vectors_config=vectors)
            self.dim = dim
        check_dimension(
            self.dim, dim, f'the Qdrant collection {self.collection}', 'give this model a collection of its own'
        )


def _point_id(doc_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, doc_id))


def _payload(item: Item) -> dict:
    return {**item.payload, ID_FIELD: item.id}


def _source(payload: dict) -> Source:
    tags = payload.get('tags') or {}
    return Source(payload[ID_FIELD], str(tags.get(SOURCE_TAG) or ''), str(tags[SHA256_TAG]))


def _hit(point) -> Hit:
    payload = dict(point.payload or {})
    return Hit(payload.pop(ID_FIELD), float(point.score), payload)
