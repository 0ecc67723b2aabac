"""Modern open_clip families through real Flows on PyTorch and ONNX, with the real clip_client:
a SigLIP-style model (its own Hub tokenizer and sigmoid scoring), a MobileCLIP-style model (a timm
FastViT tower, folded for inference) and an `hf-hub:` name (config, weights and preprocessing from
the Hub cache). Each server's embeddings equal open_clip's in-process output for the same weights."""

import json

import numpy as np
import open_clip
import pytest
import torch
from clip_client import Client
from docarray import Document
from safetensors.torch import save_file

import tiny_hf
import tiny_models
from helpers import Server, all_ready, encoded, flow_yaml, free_port, sample_image

TEXTS = ['a photo of a cat', 'ein Hund auf der Wiese', 'word ' * 40]
RUNTIMES = {'torch': 'clip_server.executors.clip_torch', 'onnx': 'clip_server.executors.clip_onnx'}
HUB_REPO = 'tiny/hub-clip'
MODELS = ['tiny-siglip', 'tiny-mobileclip', f'hf-hub:{HUB_REPO}']


def publish_hub_repo(cache, tiny_weights) -> str:
    """tiny-vit as a Hub repo of open_clip's layout, with preprocessing of its own; its folder."""
    folder = cache.parent / 'hub-repo'
    folder.mkdir()
    preprocess = {'mean': [0.5] * 3, 'std': [0.5] * 3, 'resize_mode': 'squash'}
    (folder / 'open_clip_config.json').write_text(
        json.dumps({'model_cfg': tiny_models.CONFIGS['tiny-vit'], 'preprocess_cfg': preprocess})
    )
    save_file(torch.load(tiny_weights['tiny-vit']), str(folder / 'open_clip_model.safetensors'))
    tiny_hf.publish(cache, HUB_REPO, folder)
    return f'local-dir:{folder}'


@pytest.fixture(scope='module')
def flows(tiny_weights, tmp_path_factory):
    """One server per model and runtime, started together; and open_clip's own model for each."""
    root = tmp_path_factory.mktemp('families')
    cache = root / 'cache'
    tokenizer_folder = tiny_hf.publish_siglip_tokenizer(cache)
    references = {
        'tiny-siglip': ('tiny-siglip', str(tiny_weights['tiny-siglip'])),
        'tiny-mobileclip': ('tiny-mobileclip', str(tiny_weights['tiny-mobileclip'])),
        f'hf-hub:{HUB_REPO}': (publish_hub_repo(cache, tiny_weights), None),
    }
    servers = {}
    for name in MODELS:
        for runtime, module in RUNTIMES.items():
            port, folder = free_port(), root / f'{len(servers)}'
            folder.mkdir()
            params = {'name': name, **({'model_path': references[name][1]} if references[name][1] else {})}
            (folder / 'flow.yml').write_text(flow_yaml(port, module=module, with_params=params))
            servers[name, runtime] = Server(folder / 'flow.yml', port, env={'CLIP_SERVER_CACHE': str(cache)})
    models = {}
    for name, (arch, weights) in references.items():
        model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=weights)
        if name == 'tiny-siglip':
            tokenizer = open_clip.tokenizer.HFTokenizer(str(tokenizer_folder), context_length=16, clean='canonicalize')
        else:
            tokenizer = open_clip.get_tokenizer('tiny-mobileclip' if name == 'tiny-mobileclip' else 'tiny-vit')
        models[name] = (model.eval(), transform, tokenizer)
    with all_ready(servers):
        yield servers, models


@pytest.mark.parametrize('runtime', list(RUNTIMES))
@pytest.mark.parametrize('name', MODELS)
def test_embeddings_equal_open_clip(flows, name, runtime):
    servers, models = flows
    model, transform, tokenizer = models[name]
    images = [sample_image(seed, size=(120, 60)) for seed in range(2)]
    with torch.no_grad():
        texts = model.encode_text(tokenizer(TEXTS)).numpy()
        pixels = model.encode_image(torch.stack([transform(image) for image in images])).numpy()
    client = Client(servers[name, runtime].address)
    np.testing.assert_allclose(client.encode(TEXTS), texts, atol=1e-4)
    served = client.encode([Document(blob=encoded(image)) for image in images])
    np.testing.assert_allclose(np.stack(served.embeddings), pixels, atol=1e-4)


@pytest.mark.parametrize('runtime', list(RUNTIMES))
def test_siglip_rank_scores_follow_the_models_sigmoid(flows, runtime):
    servers, models = flows
    siglip = models['tiny-siglip'][0]
    scale, bias = float(siglip.logit_scale.detach().exp()), float(siglip.logit_bias.detach())
    query = Document(text='a photo of a cat', matches=[Document(text=text) for text in TEXTS[1:]])
    ranked = Client(servers['tiny-siglip', runtime].address).rank([query])[0].matches
    for match in ranked:
        cosine = match.scores['clip_score_cosine'].value
        assert match.scores['clip_score'].op_name == 'sigmoid'
        assert match.scores['clip_score'].value == pytest.approx(1 / (1 + np.exp(-(scale * cosine + bias))), rel=1e-4)
