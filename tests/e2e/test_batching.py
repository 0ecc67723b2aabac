"""Cross-request batching, served two ways: the encoder's own (the bundled Flows) and jina's
dynamic batching with `InputErrors` after it (Flows written for earlier releases). Either way,
requests sent together keep their own documents, and one client's corrupt image fails that
client's request alone."""

import asyncio

import numpy as np
import pytest
from clip_client import Client
from docarray import Document, DocumentArray

from helpers import (
    check_rank,
    encoded,
    flow_yaml,
    free_port,
    reference_image_embeddings,
    reference_text_embeddings,
    sample_image,
    start_server,
)

# jina's: a wide window, so that requests sent together surely land in one batch.
BATCH, WAIT_MS = 64, 1500
TOLERANCE = 1e-4


@pytest.fixture(scope='module', params=['own', 'jina'])
def server(request, tiny_weights, tmp_path_factory):
    port = free_port()
    yaml_text = flow_yaml(
        port,
        with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit']), 'minibatch_size': 4},
        jina_batching=(BATCH, WAIT_MS) if request.param == 'jina' else None,
    )
    running = start_server(tmp_path_factory.mktemp('batching'), yaml_text, port)
    yield running
    running.stop()


async def _send_together(client: Client, requests: dict[str, DocumentArray]) -> dict[str, object]:
    async def one(docs: DocumentArray):
        try:
            return await client.aencode(docs, batch_size=len(docs))
        except Exception as exc:  # the failure itself is what some requests are checked for
            return exc

    results = await asyncio.gather(*(one(docs) for docs in requests.values()))
    return dict(zip(requests, results, strict=True))


def test_a_corrupt_image_fails_its_own_request_only(server, reference):
    model = reference('tiny-vit')
    images = [sample_image(seed) for seed in range(3)]
    requests = {
        f'good{i}': DocumentArray(
            [Document(id=f'g{i}-text', text=f'text number {i}'), Document(id=f'g{i}-image', blob=encoded(images[i]))]
        )
        for i in range(3)
    }
    requests['bad'] = DocumentArray(
        [Document(id='fine-text', text='fine'), Document(id='corrupt-jpeg', blob=b'\xff\xd8\xff broken')]
    )
    results = asyncio.run(_send_together(Client(server.address), requests))

    assert 'document corrupt-jpeg: cannot decode image' in str(results.pop('bad'))
    for i, (name, docs) in enumerate(results.items()):
        assert not isinstance(docs, Exception), f'{name} failed: {docs}'
        assert [doc.id for doc in docs] == [f'g{i}-text', f'g{i}-image']  # ids and order kept
        np.testing.assert_allclose(
            docs[0].embedding, reference_text_embeddings(model, [f'text number {i}'])[0], atol=TOLERANCE
        )
        np.testing.assert_allclose(docs[1].embedding, reference_image_embeddings(model, [images[i]])[0], atol=TOLERANCE)


def test_a_request_larger_than_the_batch_is_served_whole(server, reference):
    texts = [f'caption {i}' for i in range(BATCH * 2 + 3)]
    embeddings = Client(server.address).encode(texts, batch_size=len(texts))
    np.testing.assert_allclose(embeddings, reference_text_embeddings(reference('tiny-vit'), texts), atol=TOLERANCE)


def test_rank_keeps_its_per_request_semantics(server):
    check_rank(Client(server.address))
