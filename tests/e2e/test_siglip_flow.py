"""A SigLIP-style model through real Flows on PyTorch and ONNX, with the real clip_client: its own
tokenizer from the server's cache, embeddings equal to open_clip's in-process output, and /rank
scored with the model's sigmoid."""

import numpy as np
import open_clip
import pytest
import torch
from clip_client import Client
from docarray import Document

import tiny_hf
from helpers import Server, all_ready, encoded, flow_yaml, free_port, sample_image

TEXTS = ['a photo of a cat', 'ein Hund auf der Wiese', 'word ' * 40]
MODULES = {'torch': 'clip_server.executors.clip_torch', 'onnx': 'clip_server.executors.clip_onnx'}


@pytest.fixture(scope='module')
def servers(tiny_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp('siglip')
    cache = root / 'cache'
    tiny_hf.publish_siglip_tokenizer(cache)
    running = {}
    for runtime, module in MODULES.items():
        port = free_port()
        (root / runtime).mkdir()
        params = {'name': 'tiny-siglip', 'model_path': str(tiny_weights['tiny-siglip'])}
        (root / runtime / 'flow.yml').write_text(flow_yaml(port, module=module, with_params=params))
        running[runtime] = Server(root / runtime / 'flow.yml', port, env={'CLIP_SERVER_CACHE': str(cache)})
    with all_ready(running):
        yield running, cache


@pytest.fixture(scope='module')
def model(tiny_weights, servers):
    _, cache = servers
    siglip, _, transform = open_clip.create_model_and_transforms(
        'tiny-siglip', pretrained=str(tiny_weights['tiny-siglip'])
    )
    folder = cache.parent / 'siglip-tokenizer'
    tokenizer = open_clip.tokenizer.HFTokenizer(str(folder), context_length=16, clean='canonicalize')
    return siglip.eval(), transform, tokenizer


@pytest.mark.parametrize('runtime', list(MODULES))
def test_embeddings_equal_open_clip(servers, model, runtime):
    siglip, transform, tokenizer = model
    images = [sample_image(seed) for seed in range(2)]
    with torch.no_grad():
        texts = siglip.encode_text(tokenizer(TEXTS)).numpy()
        pixels = siglip.encode_image(torch.stack([transform(image) for image in images])).numpy()
    client = Client(servers[0][runtime].address)
    np.testing.assert_allclose(client.encode(TEXTS), texts, atol=1e-4)
    served = client.encode([Document(blob=encoded(image)) for image in images])
    np.testing.assert_allclose(np.stack(served.embeddings), pixels, atol=1e-4)


@pytest.mark.parametrize('runtime', list(MODULES))
def test_rank_scores_follow_the_models_sigmoid(servers, model, runtime):
    siglip = model[0]
    scale, bias = float(siglip.logit_scale.exp()), float(siglip.logit_bias)
    query = Document(text='a photo of a cat', matches=[Document(text=text) for text in TEXTS[1:]])
    ranked = Client(servers[0][runtime].address).rank([query])[0].matches
    for match in ranked:
        cosine = match.scores['clip_score_cosine'].value
        assert match.scores['clip_score'].op_name == 'sigmoid'
        assert match.scores['clip_score'].value == pytest.approx(1 / (1 + np.exp(-(scale * cosine + bias))), rel=1e-4)
