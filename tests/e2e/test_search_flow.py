"""Search out of the box: the encoder and the indexer in one Flow, driven by clip_client's index()
and search() over gRPC. 500 texts and images are indexed; each finds itself first, texts and
images alike; a restart keeps the index; a SIGKILLed indexer leaves an index that opens and
answers; deleting removes from the results."""

import os
import re
import signal
import threading
import time

import pytest
from clip_client import Client
from docarray import Document, DocumentArray
from jina import Client as JinaClient

from helpers import REPO, encoded, flow_yaml, free_port, sample_image, start_server

README = REPO / 'README.md'

PROBE = """import os
print(f"index-probe name={os.environ.get('JINA_DEPLOYMENT_NAME')} pid={os.getpid()}", flush=True)
"""


def search_flow(tiny_weights, folder, port: int, indexer_with: str | None = None) -> str:
    """The bundled search Flow's shape with the tiny model, its index in `folder`/index (or as
    `indexer_with` says)."""
    probe = folder / 'index_probe.py'
    probe.write_text(PROBE)
    yaml_text = flow_yaml(port, with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])})
    indexer_with = indexer_with or '{index_path: %s}' % (folder / 'index')
    return (
        yaml_text
        + f"""  - name: index
    uses:
      jtype: CLIPIndexer
      with: {indexer_with}
      metas:
        py_modules:
          - {probe}
          - clip_server.executors.indexer
"""
    )


def corpus() -> DocumentArray:
    texts = [Document(id=f'text{i}', text=f'caption number {i} about thing {i * 7 % 13}') for i in range(400)]
    images = [Document(id=f'image{i}', blob=encoded(sample_image(i, size=(40, 30)))) for i in range(100)]
    return DocumentArray(texts + images)


def count(port: int) -> int:
    return JinaClient(host='127.0.0.1', port=port).post('/count', DocumentArray([Document()]))[0].tags['count']


@pytest.fixture(scope='module')
def indexed(tiny_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp('search')
    port = free_port()
    (folder / 'flow.yml').write_text(search_flow(tiny_weights, folder, port))
    server = start_server(folder, search_flow(tiny_weights, folder, port), port)
    docs = corpus()
    returned = Client(f'grpc://127.0.0.1:{port}').index(docs, batch_size=50)
    assert len(returned) == 500 and all(doc.embedding is not None for doc in returned)
    yield server, folder, docs
    server.stop()


def best_matches(port: int, queries: list[Document], limit: int = 3) -> list[list[str]]:
    results = Client(f'grpc://127.0.0.1:{port}').search(queries, limit=limit)
    return [[match.id for match in query.matches] for query in results]


def test_each_document_finds_itself_first_texts_and_images(indexed):
    server, _, docs = indexed
    assert count(server.port) == 500
    queries = [Document(text=docs['text17'].text), Document(blob=docs['image42'].blob)]
    results = Client(f'grpc://127.0.0.1:{server.port}').search(queries, limit=5)
    assert [query.matches[0].id for query in results] == ['text17', 'image42']
    best = results[0].matches[0]
    assert best.text == docs['text17'].text and best.scores['cosine'].value == pytest.approx(1.0, abs=1e-4)
    assert len(results[1].matches) == 5 and not results[1].matches[0].blob  # image bytes are not stored
    cosines = [match.scores['cosine'].value for match in results[1].matches]
    assert cosines == sorted(cosines, reverse=True)
    text_to_images = best_matches(server.port, [Document(text='a picture')], limit=500)[0]
    assert any(doc_id.startswith('image') for doc_id in text_to_images)  # one space: texts find images


def test_the_readme_example_finds_what_it_indexed(indexed):
    """The README's search example, against this server (its port swapped in)."""
    server = indexed[0]
    example = README.read_text().split('<!-- search-example -->')[1].split('```python')[1].split('```')[0]
    namespace: dict = {'Client': Client}
    exec(compile(example.replace('0.0.0.0:51000', f'127.0.0.1:{server.port}'), 'README example', 'exec'), namespace)  # noqa: S102
    assert len(namespace['matches']) == 2
    assert count(server.port) == 503  # the example's three texts joined the index


def test_the_index_survives_a_restart_and_deleting_removes(indexed, tiny_weights):
    server, folder, docs = indexed
    queries = [Document(text=docs['text3'].text), Document(blob=docs['image7'].blob)]
    before, stored = best_matches(server.port, queries), count(server.port)
    server.stop()
    restarted = start_server(folder, (folder / 'flow.yml').read_text(), server.port)
    try:
        assert count(server.port) == stored and best_matches(server.port, queries) == before
        JinaClient(host='127.0.0.1', port=server.port).post('/delete', Document(id='text3'))
        assert count(server.port) == stored - 1
        assert 'text3' not in best_matches(server.port, queries[:1], limit=10)[0]
    finally:
        restarted.stop()


def test_a_killed_indexer_leaves_an_index_that_opens_and_answers(tiny_weights, tmp_path):
    port = free_port()
    server = start_server(tmp_path, search_flow(tiny_weights, tmp_path, port), port)
    try:
        indexer = int(re.search(r'index-probe name=\S+ pid=(\d+)', server.output()).group(1))  # its only importer
        more = DocumentArray(Document(id=f'many{i}', text=f'text {i}') for i in range(3000))
        writing = threading.Thread(
            target=lambda: Client(f'grpc://127.0.0.1:{port}').index(more, batch_size=20), daemon=True
        )
        writing.start()
        deadline = time.monotonic() + 60
        while (count_or_none(port) or 0) < 100 and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(indexer, signal.SIGKILL)  # in the middle of the stream of writes
    finally:
        server.stop(timeout=10)
    restarted = start_server(tmp_path, search_flow(tiny_weights, tmp_path, port), port)
    try:
        stored = count(port)
        assert 0 < stored <= 3000
        assert best_matches(port, [Document(text='text 1')], limit=1)[0]
    finally:
        restarted.stop()


def count_or_none(port: int) -> int | None:
    try:
        return count(port)
    except Exception:  # the Flow is busy or the indexer not reachable: not known yet
        return None


def test_the_indexer_on_qdrant(tiny_weights, tmp_path):
    """The same Flow with its index in Qdrant (qdrant-client's local mode: no server here)."""
    port = free_port()
    qdrant = f'{{qdrant: {{path: {tmp_path / "qdrant"}, collection: tiny}}}}'
    server = start_server(tmp_path, search_flow(tiny_weights, tmp_path, port, qdrant), port)
    try:
        docs = DocumentArray(Document(id=f'q{i}', text=f'sentence number {i}') for i in range(20))
        Client(f'grpc://127.0.0.1:{port}').index(docs)
        assert count(port) == 20
        assert best_matches(port, [Document(text='sentence number 7')], limit=1) == [['q7']]
    finally:
        server.stop()
