"""The CLIPEncoder's document semantics, called in-process (the served path is in tests/e2e)."""

import asyncio
import base64
import io
from contextlib import closing

import numpy as np
import pytest
import torch
from docarray import Document, DocumentArray
from PIL import Image

from clip_server.executors.clip_torch import CLIPEncoder
from clip_server.executors.input_errors import InputErrors
from clip_server.types import InvalidInputError, WeightsUnavailableError
from clip_server.wire import ERROR_TAG
from helpers import encoded, reference_image_embeddings, reference_text_embeddings, sample_image


@pytest.fixture(scope='module')
def encoder(tiny_weights):
    encoder = CLIPEncoder(name='tiny-vit', model_path=str(tiny_weights['tiny-vit']), minibatch_size=2, dtype='fp32')
    yield encoder
    encoder.close()


def mixed_docs():
    images = [sample_image(seed) for seed in range(4)]
    docs = DocumentArray(
        [
            Document(id='t0', text='a dog'),
            Document(id='png', blob=encoded(images[0], 'PNG'), mime_type='image/png'),
            Document(id='t1', text='a cat on a mat'),
            Document(id='jpg', blob=encoded(images[1], 'JPEG', quality=95)),
            Document(id='uri', uri='data:image/png;base64,' + base64.b64encode(encoded(images[2])).decode()),
            Document(id='tensor', tensor=np.asarray(images[3])),
            Document(id='t2', text='word ' * 300),
        ]
    )
    decoded_jpeg = Image.open(io.BytesIO(docs['jpg'].blob))
    return docs, [images[0], decoded_jpeg, images[2], images[3]]


def test_mixed_request_equals_open_clip_and_keeps_ids_and_order(encoder, reference):
    docs, images = mixed_docs()
    asyncio.run(encoder.encode(docs, {}))
    assert [d.id for d in docs] == ['t0', 'png', 't1', 'jpg', 'uri', 'tensor', 't2']
    texts = reference_text_embeddings(reference('tiny-vit'), ['a dog', 'a cat on a mat', 'word ' * 300])
    pictures = reference_image_embeddings(reference('tiny-vit'), images)
    served_texts = np.stack([docs[i].embedding for i in ('t0', 't1', 't2')])
    served_images = np.stack([docs[i].embedding for i in ('png', 'jpg', 'uri', 'tensor')])
    assert served_texts.dtype == np.float32
    np.testing.assert_allclose(served_texts, texts, atol=1e-5)
    np.testing.assert_allclose(served_images, pictures, atol=1e-5)
    assert docs['png'].blob and docs['tensor'].tensor is not None  # content comes back by default


def test_requests_in_flight_share_model_calls_and_fail_alone(tiny_weights, reference):
    """Without jina's batching the encoder batches itself: two requests sent together are encoded
    in one model call, each gets its own embeddings, and a bad document fails its request only."""
    with closing(
        CLIPEncoder(name='tiny-vit', model_path=str(tiny_weights['tiny-vit']), minibatch_size=8, dtype='fp32')
    ) as shared:
        calls = []
        encode_text = shared.model.encode_text
        shared.model.encode_text = lambda tokens: calls.append(len(tokens)) or encode_text(tokens)
        first = DocumentArray([Document(id='a', text='a dog'), Document(id='b', text='a cat')])
        second = DocumentArray([Document(id='c', text='a bird')])
        bad = DocumentArray([Document(id='d', text='a fish'), Document(id='corrupt', blob=b'junk')])

        async def together():
            return await asyncio.gather(
                shared.encode(first, {}), shared.encode(second, {}), shared.encode(bad, {}), return_exceptions=True
            )

        outcomes = asyncio.run(together())
    assert outcomes[0] is first and outcomes[1] is second
    assert isinstance(outcomes[2], InvalidInputError) and 'document corrupt: cannot decode image' in str(outcomes[2])
    assert calls == [4]  # one call for the texts of all three (the bad one's image is read after them)
    expected = reference_text_embeddings(reference('tiny-vit'), ['a dog', 'a cat', 'a bird'])
    served = np.stack([first['a'].embedding, first['b'].embedding, second['c'].embedding])
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_drop_image_content(encoder):
    docs, _ = mixed_docs()
    asyncio.run(encoder.encode(docs, {'drop_image_content': True}))
    assert docs['png'].blob == b'' and docs['tensor'].tensor is None and docs['uri'].uri == ''
    assert docs['t0'].text == 'a dog' and docs['png'].embedding is not None


def test_json_transported_tensor_is_accepted(encoder):
    pixels = np.asarray(sample_image(5))
    as_uint8, as_int64 = Document(tensor=pixels), Document(tensor=pixels.astype(np.int64))
    asyncio.run(encoder.encode(DocumentArray([as_uint8, as_int64]), {}))
    np.testing.assert_array_equal(as_uint8.embedding, as_int64.embedding)


def test_access_paths_and_deprecated_traversal_paths(encoder):
    for parameters in ({'access_paths': '@c'}, {'traversal_paths': '@c'}):
        root = Document(chunks=[Document(text='inside')])
        asyncio.run(encoder.encode(DocumentArray([root]), parameters))
        assert root.embedding is None and root.chunks[0].embedding.shape == (32,)


def test_documents_without_content_are_skipped(encoder):
    docs = DocumentArray([Document(id='empty'), Document(id='text', text='hello')])
    asyncio.run(encoder.encode(docs, {}))
    assert docs['empty'].embedding is None and docs['text'].embedding is not None


@pytest.mark.parametrize(
    'bad, message',
    [
        (Document(id='bad', blob=b'\x89PNG broken'), 'document bad: cannot decode image'),
        (Document(id='bad', tensor=np.zeros((0, 0, 3), np.uint8)), 'document bad: image tensor is empty'),
        (Document(id='bad', uri='/etc/passwd'), 'does not read files or fetch URLs'),
        (Document(id='bad', uri='https://example.com/cat.jpg'), 'does not read files or fetch URLs'),
    ],
)
def test_bad_input_fails_the_request_clearly_then_next_is_served(encoder, bad, message):
    with pytest.raises(InvalidInputError, match=message):
        asyncio.run(encoder.encode(DocumentArray([Document(text='fine'), bad]), {}))
    follow_up = DocumentArray([Document(text='next request'), Document(blob=encoded(sample_image()))])
    asyncio.run(encoder.encode(follow_up, {}))
    assert all(doc.embedding is not None for doc in follow_up)


def test_rank_scores_matches_of_any_modality(encoder):
    image = sample_image(9)
    query = Document(id='q', blob=encoded(image))
    query.matches = [
        Document(id='same', tensor=np.asarray(image)),
        Document(id='text', text='something else'),
        Document(id='other', blob=encoded(sample_image(10))),
    ]
    docs = DocumentArray([query])
    asyncio.run(encoder.rank(docs, {'drop_image_content': True}))
    ranked = docs['q'].matches
    assert ranked[0].id == 'same'
    assert ranked[0].scores['clip_score_cosine'].value == pytest.approx(1.0, abs=1e-5)
    scores = [m.scores['clip_score'].value for m in ranked]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0)
    assert all(m.embedding is None for m in ranked)
    assert docs['q'].embedding is not None and not docs['q'].blob and ranked[0].tensor is None


def test_rank_refuses_documents_without_content(encoder):
    query = Document(text='query', matches=[Document(id='hollow')])
    with pytest.raises(InvalidInputError, match='document hollow has no text'):
        asyncio.run(encoder.rank(DocumentArray([query]), {}))


def test_bad_parameters_fail_at_start(tiny_weights):
    with pytest.raises(ValueError, match='minibatch_size'):
        CLIPEncoder(name='tiny-vit', model_path=str(tiny_weights['tiny-vit']), minibatch_size=0)
    with pytest.raises(ValueError, match="dtype 'fp64'"):
        CLIPEncoder(name='tiny-vit', model_path=str(tiny_weights['tiny-vit']), dtype='fp64')
    with pytest.raises(ValueError, match='Unknown model name'):
        CLIPEncoder(name='ViT-Z-99::nothing')


def test_the_model_layer_names_the_problem_and_the_executor_the_yaml_key():
    with pytest.raises(WeightsUnavailableError) as error:
        CLIPEncoder(name='tiny-vit')  # an architecture: no pretrained weights to fetch
    assert str(error.value) == (
        "'tiny-vit' is an architecture without pretrained weights: it needs a weights file as `model_path`. "
        "To serve a local file, set the executor's `model_path` (under `uses: with:` in the Flow YAML) to it."
    )


@pytest.fixture
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cpu_threads_are_split_between_replicas(tiny_weights, monkeypatch, keep_torch_threads):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr('os.cpu_count', lambda: 8)
    weights = str(tiny_weights['tiny-vit'])

    def threads(replicas: int) -> int:
        with closing(CLIPEncoder(name='tiny-vit', model_path=weights, runtime_args={'replicas': replicas})) as encoder:
            return encoder.cpu_threads()

    assert threads(2) == 4
    assert threads(16) == 1
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert threads(2) == 3


def test_misspelt_parameters_are_refused_with_the_right_names(tiny_weights):
    with pytest.raises(TypeError, match='unknown parameter.s. minibatch_sise for CLIPEncoder') as error:
        CLIPEncoder(name='tiny-vit', model_path=str(tiny_weights['tiny-vit']), minibatch_sise=8)
    assert 'minibatch_size' in str(error.value) and 'jit' in str(error.value)


@pytest.fixture(scope='module')
def batched_encoder(tiny_weights):
    """The encoder as jina builds it with `uses_dynamic_batching`: one call may hold several requests."""
    encoder = CLIPEncoder(
        name='tiny-vit',
        model_path=str(tiny_weights['tiny-vit']),
        dtype='fp32',
        dynamic_batching={'encode': {'preferred_batch_size': 8, 'timeout': 10}},
    )
    yield encoder
    encoder.close()


def test_a_batched_call_tags_bad_documents_and_serves_the_others(batched_encoder, encoder):
    docs = DocumentArray(
        [
            Document(id='good-text', text='a dog'),
            Document(id='corrupt', blob=b'\xff\xd8 not a jpeg'),
            Document(id='good-image', blob=encoded(sample_image(3))),
            Document(id='url', uri='https://example.com/cat.jpg'),
        ]
    )
    assert asyncio.run(batched_encoder.encode(docs, {})) is docs  # no exception: other requests share this call
    expected = DocumentArray([Document(text='a dog'), Document(blob=encoded(sample_image(3)))])
    asyncio.run(encoder.encode(expected, {}))
    np.testing.assert_allclose(docs['good-text'].embedding, expected[0].embedding, atol=1e-6)
    np.testing.assert_allclose(docs['good-image'].embedding, expected[1].embedding, atol=1e-6)
    assert docs['corrupt'].embedding is None and docs['url'].embedding is None
    assert docs['corrupt'].tags[ERROR_TAG].startswith('document corrupt: cannot decode image')
    assert 'does not read files or fetch URLs' in docs['url'].tags[ERROR_TAG]
    assert ERROR_TAG not in docs['good-text'].tags and ERROR_TAG not in docs['good-image'].tags


def test_input_errors_finds_tags_at_any_depth_even_under_repeated_ids():
    twin = Document(id='x', chunks=[Document(id='c', tags={ERROR_TAG: 'document c: cannot decode image'})])
    with pytest.raises(InvalidInputError, match='^document c: cannot decode image$'):
        InputErrors().check(DocumentArray([Document(id='x'), twin]))


def test_a_tag_sent_by_the_client_is_not_taken_for_a_failure(batched_encoder):
    docs = DocumentArray([Document(text='fine', tags={ERROR_TAG: 'forged'})])
    asyncio.run(batched_encoder.encode(docs, {}))
    assert ERROR_TAG not in docs[0].tags and docs[0].embedding is not None


def test_input_errors_fails_only_requests_with_tagged_documents():
    checker = InputErrors()
    checker.check(DocumentArray([Document(text='fine', embedding=np.ones(2))]))
    bad = DocumentArray([Document(text='q', matches=[Document(tags={ERROR_TAG: 'document m: cannot decode image'})])])
    with pytest.raises(InvalidInputError, match='^document m: cannot decode image$'):
        checker.check(bad)
    two = DocumentArray([Document(tags={ERROR_TAG: f'document {i}: broken'}) for i in range(2)])
    with pytest.raises(InvalidInputError, match=r'document 0: broken \(and 1 more documents could not be read\)'):
        checker.check(two)


def test_unbatched_requests_name_the_first_bad_document_and_count_the_rest(encoder):
    docs = DocumentArray([Document(id=f'bad{i}', blob=b'junk') for i in range(3)] + [Document(text='fine')])
    with pytest.raises(InvalidInputError, match=r'document bad0: cannot decode .* \(and 2 more documents'):
        asyncio.run(encoder.encode(docs, {}))


def test_a_batched_rank_leaves_a_query_with_a_bad_match_unranked(batched_encoder):
    good = Document(id='q1', text='a cat', matches=[Document(text='cat'), Document(text='dog')])
    bad = Document(id='q2', text='a dog', matches=[Document(id='m-bad', blob=b'junk'), Document(text='dog')])
    docs = DocumentArray([good, bad])
    asyncio.run(batched_encoder.rank(docs, {}))
    assert all('clip_score' in m.scores for m in docs['q1'].matches)
    assert docs['q2'].matches['m-bad'].tags[ERROR_TAG].startswith('document m-bad: cannot decode image')
    assert not any('clip_score' in m.scores for m in docs['q2'].matches)


def test_content_limits_are_executor_parameters_and_fail_only_their_document(tiny_weights):
    with closing(
        CLIPEncoder(
            name='tiny-vit',
            model_path=str(tiny_weights['tiny-vit']),
            dtype='fp32',
            max_text_chars=10,
            max_image_pixels=50 * 50,
            dynamic_batching={'encode': {'preferred_batch_size': 8, 'timeout': 10}},
        )
    ) as limited:
        docs = DocumentArray(
            [
                Document(id='long', text='x' * 11),
                Document(id='short', text='x' * 10),
                Document(id='big', blob=encoded(sample_image(size=(60, 60)))),
                Document(id='small', tensor=np.asarray(sample_image(size=(50, 50)))),
            ]
        )
        asyncio.run(limited.encode(docs, {}))
    assert docs['long'].tags[ERROR_TAG] == 'document long: text has 11 characters, over max_text_chars (10)'
    assert 'document big: image is too large: 60x60 = 3,600 pixels' in docs['big'].tags[ERROR_TAG]
    assert docs['short'].embedding is not None and docs['small'].embedding is not None
    with pytest.raises(ValueError, match='max_image_bytes must be a positive integer'):
        CLIPEncoder(name='tiny-vit', model_path=str(tiny_weights['tiny-vit']), max_image_bytes=-1)
