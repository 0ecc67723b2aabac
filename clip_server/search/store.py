"""What the indexer needs of an index (`Store`), and what every implementation shares.

The items stored and the hits found (`Item`, `Hit`, `Source`) and the checks each store makes of
the vectors it is given (finite, non-zero, one size); the embedded `VectorStore`
(`clip_server.search.vector_store`) and the `QdrantStore` (`clip_server.search.qdrant_store`)
implement it. No jina and no docarray here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from clip_server.types import InvalidInputError


@dataclass(frozen=True)
class Item:
    """One stored document: its id, its embedding and what comes back with it (text, uri, tags)."""

    id: str
    vector: np.ndarray
    payload: dict


@dataclass(frozen=True)
class Hit:
    id: str
    cosine: float
    payload: dict


@dataclass(frozen=True)
class Source:
    """A document indexed from a file (`python -m clip_server.index`): its id, the file, and the
    SHA-256 of the content it was made from (tags `source` and `sha256`)."""

    id: str
    source: str
    sha256: str


def vectors_of(items: list[Item]) -> np.ndarray:
    """The items' embeddings as float32 rows, each one a direction (`check_finite`)."""
    rows = [np.asarray(item.vector, dtype=np.float32).reshape(-1) for item in items]
    if len({row.size for row in rows}) > 1:
        raise InvalidInputError("the documents' embeddings differ in size: send one model's embeddings")
    vectors = np.stack(rows)
    check_finite(vectors, [f'document {item.id}' for item in items])
    return vectors


def query_rows(queries: np.ndarray) -> np.ndarray:
    """One query or several, as float32 rows, each one a direction (`check_finite`)."""
    rows = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    check_finite(rows, [f'query {i}' for i in range(len(rows))])
    return rows


def check_finite(rows: np.ndarray, names: list[str]) -> None:
    """Refuse a row with NaN or infinity, or of length 0: its cosine with anything is NaN, which
    would sort first or fail every later search, for good once stored."""
    usable = np.isfinite(rows).all(axis=1) & (np.abs(rows).sum(axis=1) > 0)
    if not usable.all():
        bad = int(np.flatnonzero(~usable)[0])
        raise InvalidInputError(f'{names[bad]} has an embedding with NaN, infinity or only zeros: not indexed')


def check_dimension(held: int, given: int, where: str, remedy: str) -> None:
    """Refuse embeddings of another size than those an index holds (another model made them)."""
    if given != held:
        raise InvalidInputError(
            f'{where} holds {held}-d embeddings, and these are {given}-d: the model changed; {remedy}'
        )


class Store(Protocol):
    """What the indexer needs of an index: the embedded `VectorStore`, or a `QdrantStore`."""

    @property
    def folder(self) -> str | Path | None: ...  # where it lives, for the start-up log

    def add(self, items: list[Item]) -> None: ...
    def remove(self, ids: Iterable[str]) -> int: ...
    def count(self) -> int: ...
    def search(self, queries: np.ndarray, limit: int) -> list[list[Hit]]: ...
    def sources(self, cursor: str, limit: int) -> tuple[list[Source], str]: ...
    def close(self) -> None: ...
