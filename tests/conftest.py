"""Shared fixtures: offline environment, tiny models with saved random weights, servers."""

import os

os.environ.setdefault('JINA_OPTOUT_TELEMETRY', '1')  # jina would post telemetry from a thread
os.environ.setdefault('NO_VERSION_CHECK', '1')  # clip_client would look its version up online
os.environ.setdefault('HF_HUB_OFFLINE', '1')

from pathlib import Path  # noqa: E402

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import tiny_models  # noqa: E402,F401  (registers the tiny architectures)


@pytest.fixture(scope='session')
def tiny_weights(tmp_path_factory) -> dict[str, Path]:
    """A random-init checkpoint per tiny architecture, saved as open_clip saves state dicts."""
    folder = tmp_path_factory.mktemp('weights')
    paths = {}
    for seed, arch in enumerate(tiny_models.CONFIGS):
        torch.manual_seed(seed)
        model = open_clip.create_model(arch)
        paths[arch] = folder / f'{arch}.pt'
        torch.save(model.state_dict(), paths[arch])
    return paths


@pytest.fixture(scope='session')
def reference(tiny_weights):
    """In-process open_clip model, transform and tokenizer: what served embeddings must equal."""
    cache = {}

    def load(arch: str):
        if arch not in cache:
            model, _, transform = open_clip.create_model_and_transforms(
                arch, pretrained=str(tiny_weights[arch]), force_quick_gelu=False
            )
            model.eval()
            cache[arch] = (model, transform, open_clip.get_tokenizer(arch))
        return cache[arch]

    return load
