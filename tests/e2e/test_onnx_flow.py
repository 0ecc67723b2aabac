"""`python -m clip_server` on the ONNX runtime; the real clip_client talks to it.

One server exports local PyTorch weights at start; another serves an exported folder
given as `model_path` and must leave the cache untouched. Both must give what open_clip
gives in-process for the same weights.
"""

import numpy as np
import pytest
from clip_client import Client
from docarray import Document, DocumentArray

from clip_server.model.factory import export_onnx
from clip_server.model.registry import lookup
from helpers import (
    Server,
    all_ready,
    check_rank,
    encoded,
    launch,
    reference_image_embeddings,
    reference_text_embeddings,
    sample_image,
)

MODULE = 'clip_server.executors.clip_onnx'
TEXTS = ['a photo of a dog', 'ein Foto einer Katze', 'word ' * 200]
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def servers(tiny_weights, tmp_path_factory):
    """Both servers, started together so their start-ups overlap."""
    root = tmp_path_factory.mktemp('onnx-flow')
    exported = export_onnx(lookup('tiny-rn'), tiny_weights['tiny-rn'], root / 'exported-rn')
    weights = {'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])}
    running = {
        'weights': launch(root / 'a', MODULE, weights, root / 'cache-a'),
        'folder': launch(root / 'b', MODULE, {'name': 'tiny-rn', 'model_path': str(exported)}, root / 'cache-b'),
    }
    with all_ready(running):
        yield running


def encode_and_compare(server: Server, model) -> None:
    images = [sample_image(seed) for seed in range(3)]
    docs = DocumentArray(
        [Document(id=f'image{i}', blob=encoded(image), mime_type='image/png') for i, image in enumerate(images)]
    )
    client = Client(server.address)
    np.testing.assert_allclose(client.encode(TEXTS), reference_text_embeddings(model, TEXTS), atol=TOLERANCE)
    result = client.encode(docs)
    assert [doc.id for doc in result] == ['image0', 'image1', 'image2']
    np.testing.assert_allclose(np.stack(result.embeddings), reference_image_embeddings(model, images), atol=TOLERANCE)


def test_weights_are_exported_at_start_and_served(servers, reference):
    encode_and_compare(servers['weights'], reference('tiny-vit'))
    exports = [path for path in (servers['weights'].cache / 'onnx' / 'tiny-vit').iterdir() if path.is_dir()]
    assert [sorted(p.name for p in folder.iterdir()) for folder in exports] == [['textual.onnx', 'visual.onnx']]


def test_rank(servers):
    check_rank(Client(servers['weights'].address))


def test_an_exported_folder_is_served_without_touching_the_cache(servers, reference):
    encode_and_compare(servers['folder'], reference('tiny-rn'))
    assert not servers['folder'].cache.exists()
