"""The index stores: the embedded one (exact and HNSW search, a kill in the middle of a write,
HNSW's recall against exact search, its saved search structure) and the Qdrant one (in
qdrant-client's local mode: no server here), each finding, replacing, deleting and reopening."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from clip_server.search.qdrant_store import QdrantStore
from clip_server.search.store import Item
from clip_server.search.vector_store import VectorStore
from clip_server.types import InvalidInputError

STORES = {
    'embedded': lambda folder: VectorStore(folder),
    'qdrant': lambda folder: QdrantStore(collection='clip', path=str(folder)),
}


def items(vectors: np.ndarray, prefix: str = 'doc') -> list[Item]:
    return [Item(f'{prefix}{i}', vector, {'text': f'text {i}'}) for i, vector in enumerate(vectors)]


def random_vectors(count: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)


@pytest.mark.parametrize('kind', STORES)
def test_a_stored_vector_finds_itself_first_with_its_payload(kind, tmp_path):
    store, vectors = STORES[kind](tmp_path), random_vectors(100)
    store.add(items(vectors))
    hits = store.search(vectors[[3, 42]], limit=5)
    assert [found[0].id for found in hits] == ['doc3', 'doc42']
    assert hits[0][0].cosine == pytest.approx(1.0, abs=1e-5) and hits[0][0].payload == {'text': 'text 3'}
    assert [hit.cosine for hit in hits[1]] == sorted((hit.cosine for hit in hits[1]), reverse=True)


@pytest.mark.parametrize('kind', STORES)
def test_replacing_deleting_counting_and_reopening(kind, tmp_path):
    store, vectors = STORES[kind](tmp_path), random_vectors(10)
    store.add(items(vectors))
    store.add([Item('doc0', vectors[9], {'text': 'moved'})])  # doc0 now stands where doc9 is
    assert store.count() == 10
    assert {hit.id for hit in store.search(vectors[9], limit=2)[0]} == {'doc0', 'doc9'}
    assert store.remove(['doc9', 'never-stored']) == 1
    assert store.count() == 9 and store.search(vectors[9], limit=1)[0][0].id == 'doc0'
    store.close()
    reopened = STORES[kind](tmp_path)
    assert reopened.count() == 9
    best = reopened.search(vectors[9], limit=1)[0][0]
    assert (best.id, best.payload) == ('doc0', {'text': 'moved'})
    assert reopened.search(vectors[0], limit=9)[0][-1].id != 'doc0'  # the old doc0 vector is gone


@pytest.mark.parametrize('kind', STORES)
def test_an_index_refuses_embeddings_of_another_size(kind, tmp_path):
    store = STORES[kind](tmp_path)
    store.add(items(random_vectors(3, dim=32)))
    with pytest.raises(InvalidInputError, match='holds 32-d embeddings, and these are 16-d'):
        store.add(items(random_vectors(1, dim=16), prefix='other'))


WRITER = """
import sys
import numpy as np
from clip_server.search.store import Item
from clip_server.search.vector_store import VectorStore
store = VectorStore(sys.argv[1])
rng = np.random.default_rng(1)
batch = 0
while True:
    store.add([Item(f'b{batch}-{i}', v, {'batch': batch}) for i, v in enumerate(rng.standard_normal((200, 32)))])
    batch += 1
    print(batch, flush=True)
"""


def test_a_kill_in_the_middle_of_writing_leaves_an_index_that_opens(tmp_path):
    writer = subprocess.Popen([sys.executable, '-c', WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(5):  # some batches committed, others on their way
            writer.stdout.readline()
        time.sleep(0.05)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    store = VectorStore(tmp_path)
    count = store.count()
    assert count >= 1000 and count % 200 == 0  # whole batches only: each write is all or nothing
    stored = {hit.payload['batch'] for hit in store.search(random_vectors(20), limit=50)[0]}
    assert stored and max(stored) < count // 200


def test_hnsw_recall_at_10_against_exact_search(tmp_path):
    """Above `exact_below` the HNSW graph answers; its top 10 must hold >= 95% of the exact top 10."""
    vectors, queries = random_vectors(5000, dim=64, seed=2), random_vectors(100, dim=64, seed=3)
    approximate = VectorStore(tmp_path / 'hnsw', exact_below=1000)
    exact = VectorStore(tmp_path / 'exact', exact_below=10**9)
    for store in (approximate, exact):
        store.add(items(vectors))
    found = approximate.search(queries, limit=10)
    truth = exact.search(queries, limit=10)
    recall = np.mean([len({h.id for h in a} & {h.id for h in t}) / 10 for a, t in zip(found, truth, strict=True)])
    print(f'recall@10 = {recall:.3f}')
    assert recall >= 0.95


def test_a_clean_close_saves_the_search_structure_and_a_crash_does_not_fool_the_next_open(tmp_path):
    vectors = random_vectors(50)
    store = VectorStore(tmp_path)
    store.add(items(vectors))
    store.close()
    assert [path.name for path in tmp_path.glob('vectors-*.usearch')] == ['vectors-1.usearch']
    unclean = VectorStore(tmp_path)  # loads the snapshot: it matches generation 1
    assert unclean.search(vectors[5], limit=1)[0][0].id == 'doc5'
    unclean.remove(['doc5'])  # generation 2 committed; the process then "dies" without close()
    after_crash = VectorStore(tmp_path)  # the snapshot is of generation 1: rebuilt from the rows instead
    assert after_crash.count() == 49 and after_crash.search(vectors[5], limit=1)[0][0].id != 'doc5'
