"""open_clip's `hf-hub:org/repo` names: the repo's config, weights and preprocessing come through
this server's cache (offline here: the repo is published into a Hub cache layout on the fly)."""

import json

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

import tiny_hf
import tiny_models
from clip_server.model.factory import preprocessor, resolve
from clip_server.types import WeightsUnavailableError
from helpers import sample_image, torch_encoder

REPO = 'tiny/hub-clip'
PREPROCESS = {'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5], 'interpolation': 'bilinear', 'resize_mode': 'squash'}


@pytest.fixture
def hub_repo(tiny_weights, tmp_path, monkeypatch):
    """A tiny open_clip model published as a Hub repo: open_clip_config.json and safetensors weights."""
    folder = tmp_path / 'repo'
    folder.mkdir()
    config = {'model_cfg': tiny_models.CONFIGS['tiny-vit'], 'preprocess_cfg': PREPROCESS}
    (folder / 'open_clip_config.json').write_text(json.dumps(config))
    save_file(torch.load(tiny_weights['tiny-vit']), str(folder / 'open_clip_model.safetensors'))
    tiny_hf.publish(tmp_path / 'cache', REPO, folder)
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path / 'cache'))
    return folder


def test_an_hf_hub_name_serves_the_repos_model_as_open_clip_loads_it(hub_repo):
    spec = resolve(f'hf-hub:{REPO}')
    assert (spec.name, spec.dim, spec.image_size, spec.hub_repo) == (f'hf-hub:{REPO}', 32, 224, REPO)
    model, _, transform = open_clip.create_model_and_transforms(f'local-dir:{hub_repo}')
    images = [sample_image(seed, size=(120, 60)) for seed in range(2)]  # squash, not crop, must show
    texts = ['a photo of a cat', 'a dog']
    with torch.no_grad():
        expected_images = model.eval().encode_image(torch.stack([transform(image) for image in images])).numpy()
        expected_texts = model.encode_text(open_clip.get_tokenizer('tiny-vit')(texts)).numpy()
    pre = preprocessor(spec)
    served = torch_encoder(spec, None)
    np.testing.assert_allclose(
        served.encode_image(np.stack([pre.pixels(i) for i in images])), expected_images, atol=1e-4
    )
    np.testing.assert_allclose(served.encode_text(pre.tokenize(texts)), expected_texts, atol=1e-4)


def test_an_uncached_hf_hub_name_offline_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path / 'empty'))
    with pytest.raises(WeightsUnavailableError, match='open_clip_config.json: offline mode is on'):
        resolve('hf-hub:someone/some-model')
