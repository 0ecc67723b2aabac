"""`python -m clip_server` serving a (tiny) M-CLIP model on torch and ONNX; the real clip_client talks to it.

The checkpoint and its base config sit in a Hub cache layout under the server's cache root (no
network); `model_path` holds only the paired image tower's weights, as the tiny ViT has none
to fetch. Served embeddings must equal the in-process model's.
"""

import shutil

import numpy as np
import pytest
from clip_client import Client
from docarray import Document, DocumentArray

import tiny_hf
from clip_server.model.factory import preprocessor
from helpers import TESTS, Server, all_ready, encoded, flow_yaml, free_port, sample_image, torch_encoder

SPEC = tiny_hf.TINY_MCLIP['xlm-roberta']
TEXTS = ['a photo of a dog', 'ein Foto einer Katze auf der Wiese', 'word ' * 100]
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def published(tiny_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp('mclip-flow')
    tiny_hf.write_mclip_checkpoint('xlm-roberta', root / 'repo', 'tiny/xlm-roberta')
    tiny_hf.publish(root / 'cache', SPEC.name, root / 'repo', absent=('special_tokens_map.json',))
    tiny_hf.write_base_config('xlm-roberta', root / 'base')
    tiny_hf.publish(root / 'cache', 'tiny/xlm-roberta', root / 'base')
    (root / 'image').mkdir()
    shutil.copy(tiny_weights['tiny-vit'], root / 'image' / 'open_clip_pytorch_model.bin')
    return root


@pytest.fixture(scope='module')
def servers(published):
    """A torch and an ONNX server, started together so their start-ups overlap."""
    running = {}
    for runtime in ('torch', 'onnx'):
        port, folder = free_port(), published / runtime
        folder.mkdir()
        params = {'name': SPEC.name, 'model_path': str(published / 'image')}
        yaml = flow_yaml(port, module=f'clip_server.executors.clip_{runtime}', with_params=params)
        tiny_models = f'- {TESTS / "tiny_models.py"}'
        (folder / 'flow.yml').write_text(
            yaml.replace(tiny_models, f'{tiny_models}\n          - {TESTS / "tiny_hf.py"}')
        )
        env = {'CLIP_SERVER_CACHE': str(published / 'cache'), 'PYTHONPATH': str(TESTS)}
        running[runtime] = Server(folder / 'flow.yml', port, env=env)
    with all_ready(running):
        yield running


@pytest.fixture(scope='module')
def in_process(published):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('CLIP_SERVER_CACHE', str(published / 'cache'))
        return preprocessor(SPEC), torch_encoder(SPEC, published / 'image')


@pytest.mark.parametrize('runtime', ['torch', 'onnx'])
def test_served_embeddings_equal_the_in_process_model(runtime, servers, in_process):
    preprocessor, model = in_process
    client = Client(servers[runtime].address)
    # One text at a time in-process: each request minibatch is padded to its own longest text.
    expected = np.concatenate([model.encode_text(preprocessor.tokenize([text])) for text in TEXTS])
    np.testing.assert_allclose(client.encode(TEXTS), expected, atol=TOLERANCE)

    images = [sample_image(seed) for seed in range(2)]
    docs = DocumentArray([Document(id=f'image{i}', blob=encoded(image)) for i, image in enumerate(images)])
    result = client.encode(docs)
    assert [doc.id for doc in result] == ['image0', 'image1']
    pixels = np.stack([preprocessor.pixels(image) for image in images])
    np.testing.assert_allclose(np.stack(result.embeddings), model.encode_image(pixels), atol=TOLERANCE)
