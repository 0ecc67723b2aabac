"""An embedded, persistent vector store: SQLite holds the documents, usearch finds the nearest.

SQLite (in the standard library) is the source of truth: each write is one transaction in
write-ahead-log mode, so a process killed mid-write leaves the last committed state, never a
half-written one. The search structure lives in memory. A clean close saves it beside the
database, named by the database's write generation; an open loads that snapshot only if its
generation is the database's, and otherwise (after a crash) rebuilds it from the committed rows,
so it can never disagree with them. Below `exact_below` vectors, usearch searches exactly (brute
force in SIMD); from there on, it searches its HNSW graph.

No jina and no docarray here: ids, float vectors and JSON payloads in, ranked hits out.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
from usearch.index import Index

from clip_server.search.store import Hit, Item, Source, check_dimension, query_rows, vectors_of
from clip_server.types import ConfigurationError
from clip_server.wire import SHA256_TAG, SOURCE_TAG

DATABASE = 'index.sqlite3'
SNAPSHOT = 'vectors-{generation}.usearch'  # the search structure as of that write generation
LOAD_CHUNK = 10_000  # rows read at a time while rebuilding the search structure


class VectorStore:
    """Documents and their embeddings in `folder`, searchable by cosine similarity."""

    def __init__(self, folder: str | Path, *, exact_below: int = 20_000, connectivity: int = 16, expansion: int = 128):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.exact_below = exact_below
        self._db = sqlite3.connect(self.folder / DATABASE, check_same_thread=False, isolation_level=None)
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.execute('PRAGMA synchronous=FULL')  # committed means on disk, power loss included
        self._db.execute(
            'CREATE TABLE IF NOT EXISTS items (key INTEGER PRIMARY KEY AUTOINCREMENT, '
            'id TEXT UNIQUE NOT NULL, vector BLOB NOT NULL, payload TEXT NOT NULL)'
        )
        self._db.execute('CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)')
        self._graph = (connectivity, expansion)  # usearch's connectivity and its expansion on add and search
        self.dim: int | None = self._stored_dim()
        self._index: Index | None = self._opened() if self.dim else None

    # --- writes: one transaction each ---

    def add(self, items: list[Item]) -> None:
        """Store `items`, replacing any stored under the same ids."""
        if not items:
            return
        vectors = vectors_of(items)
        self._check_dim(vectors.shape[1])
        with self._transaction():
            self._next_generation()
            replaced = self._keys_of([item.id for item in items])
            self._db.executemany('DELETE FROM items WHERE id = ?', [(item.id,) for item in items])
            keys = [
                self._db.execute(
                    'INSERT INTO items (id, vector, payload) VALUES (?, ?, ?)',
                    (item.id, vector.tobytes(), json.dumps(item.payload)),
                ).lastrowid
                for item, vector in zip(items, vectors, strict=True)
            ]
        if self._index is None:
            self._index = self._new_index()
        if replaced:
            self._index.remove(np.asarray(replaced, dtype=np.uint64))
        self._index.add(np.asarray(keys, dtype=np.uint64), vectors)

    def remove(self, ids: Iterable[str]) -> int:
        """Delete the documents with these ids; returns how many were stored."""
        ids = list(ids)
        with self._transaction():
            self._next_generation()
            keys = self._keys_of(ids)
            self._db.executemany('DELETE FROM items WHERE id = ?', [(doc_id,) for doc_id in ids])
        if keys and self._index is not None:
            self._index.remove(np.asarray(keys, dtype=np.uint64))
        return len(keys)

    # --- reads ---

    def count(self) -> int:
        return self._db.execute('SELECT COUNT(*) FROM items').fetchone()[0]

    def search(self, queries: np.ndarray, limit: int) -> list[list[Hit]]:
        """The `limit` stored documents most similar to each query, best first."""
        queries = query_rows(queries)
        if self._index is None or len(self._index) == 0:
            return [[] for _ in queries]
        self._check_dim(queries.shape[1])
        exact = len(self._index) < self.exact_below
        found = self._index.search(queries, min(limit, len(self._index)), exact=exact)
        keys = np.atleast_2d(found.keys)
        distances = np.atleast_2d(found.distances)
        rows = self._rows(int(key) for key in np.unique(keys))
        return [_hits(ks, ds, rows) for ks, ds in zip(keys, distances, strict=True)]

    def sources(self, cursor: str, limit: int) -> tuple[list[Source], str]:
        """Up to `limit` documents with a content hash, by id after `cursor` (`''`: from the first),
        and the cursor of the next page (`''`: none). One pass over the ids, `limit` rows at a time."""
        rows = self._db.execute(
            f"SELECT id, json_extract(payload, '$.tags.{SOURCE_TAG}'), json_extract(payload, '$.tags.{SHA256_TAG}') "
            f"FROM items WHERE id > ? AND json_extract(payload, '$.tags.{SHA256_TAG}') IS NOT NULL ORDER BY id LIMIT ?",
            (cursor, limit),
        ).fetchall()
        page = [Source(doc_id, str(source or ''), str(sha256)) for doc_id, source, sha256 in rows]
        return page, page[-1].id if len(page) == limit else ''

    def close(self) -> None:
        """Save the search structure for a fast next open, then close the database."""
        if self._index is not None:
            target = self.folder / SNAPSHOT.format(generation=self._generation())
            if not target.exists():
                scratch = target.with_suffix('.partial')
                self._index.save(str(scratch))
                os.replace(scratch, target)  # whole or absent, never half-written
                for stale in self.folder.glob(SNAPSHOT.format(generation='*')):
                    if stale != target:
                        stale.unlink(missing_ok=True)
        self._db.close()

    # --- internals ---

    def _check_dim(self, dim: int) -> None:
        if self.dim is None:
            self.dim = dim
            with self._transaction():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('dim', ?)", (str(dim),))
        check_dimension(self.dim, dim, 'the index', 'give this model an index path of its own')  # no server paths

    def _stored_dim(self) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'dim'").fetchone()
        return int(row[0]) if row else None

    def _opened(self) -> Index:
        """The saved search structure when it matches the committed rows, else one rebuilt from them."""
        snapshot = self.folder / SNAPSHOT.format(generation=self._generation())
        if snapshot.exists():
            index = self._new_index()
            index.load(str(snapshot))
            if len(index) == self.count():
                return index
        return self._rebuilt()

    def _generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def _next_generation(self) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(self._generation() + 1),))

    def _new_index(self) -> Index:
        connectivity, expansion = self._graph
        return Index(
            ndim=self.dim or 0,  # set before any index is made: the first vectors give it
            metric='cos',
            dtype='f32',
            connectivity=connectivity,
            expansion_add=expansion,
            expansion_search=expansion,
        )

    def _rebuilt(self) -> Index:
        """The search structure, from every committed row."""
        index = self._new_index()
        for keys, vectors in self._chunks():
            index.add(keys, vectors)
        return index

    def _chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with closing(self._db.execute('SELECT key, vector FROM items ORDER BY key')) as cursor:
            while rows := cursor.fetchmany(LOAD_CHUNK):
                keys = np.asarray([key for key, _ in rows], dtype=np.uint64)
                vectors = np.frombuffer(b''.join(blob for _, blob in rows), dtype=np.float32).reshape(len(rows), -1)
                if vectors.shape[1] != self.dim:
                    raise ConfigurationError(
                        f'{self.folder / DATABASE} is damaged: a stored vector is not {self.dim}-d'
                    )
                yield keys, vectors

    def _keys_of(self, ids: list[str]) -> list[int]:
        return [key for (key,) in self._select_in('key', 'id', ids)]

    def _rows(self, keys: Iterable[int]) -> dict[int, tuple[str, dict]]:
        return {
            key: (doc_id, json.loads(payload))
            for key, doc_id, payload in self._select_in('key, id, payload', 'key', keys)
        }

    def _select_in(self, columns: str, column: str, values: Iterable) -> Iterator[tuple]:
        """`SELECT columns FROM items WHERE column IN values`, in chunks within SQLite's limit on
        bound parameters."""
        values = list(values)
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            marks = ','.join('?' * len(chunk))
            yield from self._db.execute(f'SELECT {columns} FROM items WHERE {column} IN ({marks})', chunk)

    def _transaction(self):
        return _Transaction(self._db)


def _hits(keys: np.ndarray, distances: np.ndarray, rows: dict[int, tuple[str, dict]]) -> list[Hit]:
    """One query's hits; usearch's cosine distance is 1 - cosine."""
    found = [(int(key), float(distance)) for key, distance in zip(keys, distances, strict=True)]
    return [Hit(rows[key][0], 1.0 - distance, rows[key][1]) for key, distance in found if key in rows]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception: all of a write or none of it."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute('BEGIN IMMEDIATE')

    def __exit__(self, kind, error, traceback) -> None:
        self._db.execute('ROLLBACK' if kind else 'COMMIT')
