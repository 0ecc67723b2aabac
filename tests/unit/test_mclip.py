"""Multilingual models: M-CLIP's text tower on torch, ONNX and OpenVINO, open_clip's HF-text-tower models.

Tiny random transformers and on-the-fly tokenizers stand in for the real checkpoints, published
into a Hub cache layout that `fetch_hf_file` reads offline (see tests/tiny_hf.py).
"""

import json
import shutil

import numpy as np
import onnx
import open_clip
import pytest
import torch

import tiny_hf
import tiny_models
from clip_server.model.factory import EncoderOptions, build_encoder, builder_for, export_onnx, onnx_model_dir
from clip_server.model.factory import preprocessor as factory_preprocessor
from clip_server.model.families.hf_tokenizer import TOKENIZER_EXTRAS
from clip_server.model.families.mclip import create_mclip_text_tower, locate_mclip
from clip_server.model.parity import compare
from clip_server.model.preprocess import Preprocessor
from clip_server.model.registry import MODELS, lookup
from clip_server.model.runtimes.onnx_runtime import ONNXEncoder
from clip_server.model.tokens import trim_padding
from clip_server.types import Family, Runtime, WeightsUnavailableError
from helpers import sample_image, torch_encoder

KINDS = list(tiny_hf.TINY_MCLIP)
TEXTS = ['a photo of a cat', 'ein Foto einer Katze auf der Wiese', '', 'word ' * 100]
TOLERANCE = 1e-4
# The base model each real M-CLIP checkpoint names (an assumption for LaBSE: see families/mclip.py).
REAL_BASES = {'M-CLIP/LABSE-Vit-L-14': ('bert', 'setu4993/LaBSE')}
HF_TEXT_ARCHS = {
    'roberta-ViT-B-32': 'roberta-base',
    'xlm-roberta-base-ViT-B-32': 'xlm-roberta-base',
    'xlm-roberta-large-ViT-H-14': 'xlm-roberta-large',
}


@pytest.fixture(scope='module')
def hub(tmp_path_factory, tiny_weights):
    """A cache root with both tiny M-CLIP repos and their base configs; and the reference modules."""
    root = tmp_path_factory.mktemp('hub')
    cache, refs = root / 'cache', {}
    for kind, spec in tiny_hf.TINY_MCLIP.items():
        refs[kind] = tiny_hf.write_mclip_checkpoint(kind, root / kind, f'tiny/{kind}')
        tiny_hf.publish(cache, spec.name, root / kind, absent=('special_tokens_map.json',))
        tiny_hf.write_base_config(kind, root / f'base-{kind}')
        tiny_hf.publish(cache, f'tiny/{kind}', root / f'base-{kind}')
    image = root / 'image'  # the tiny ViT's weights, as the image tower of both
    image.mkdir()
    shutil.copy(tiny_weights['tiny-vit'], image / 'open_clip_pytorch_model.bin')
    return {'cache': cache, 'root': root, 'image': image, 'refs': refs}


@pytest.fixture
def cache(hub, monkeypatch):
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(hub['cache']))
    return hub['cache']


@pytest.fixture(scope='module')
def models(hub):
    """The torch model of each tiny M-CLIP, with its preprocessor, loaded from the cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('CLIP_SERVER_CACHE', str(hub['cache']))
        return {
            kind: (factory_preprocessor(spec), torch_encoder(spec, hub['image']))
            for kind, spec in tiny_hf.TINY_MCLIP.items()
        }


def reference_text(ref: dict, model_input: Preprocessor, texts: list[str]) -> np.ndarray:
    """M-CLIP's own recipe on the modules the checkpoint was saved from: pad to the longest, mean, project."""
    tokenizer = model_input._tokenizer._tokenizer
    batch = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors='pt')
    with torch.no_grad():
        hidden = ref['transformer'](**batch).last_hidden_state
        mask = batch['attention_mask'].unsqueeze(2)
        return ref['projection']((hidden * mask).sum(1) / mask.sum(1)).numpy()


@pytest.mark.parametrize('kind', KINDS)
def test_text_embeddings_follow_the_checkpoint(kind, models, hub):
    preprocessor, model = models[kind]
    tokens = preprocessor.tokenize(TEXTS)
    assert tokens.shape == (4, 77) and tokens.dtype == np.int64
    expected = reference_text(hub['refs'][kind], preprocessor, TEXTS)
    np.testing.assert_allclose(model.encode_text(tokens), expected, atol=1e-5)
    assert np.abs(expected[0] - expected[1]).max() > 1e-3  # English and German differ


@pytest.mark.parametrize('kind', KINDS)
def test_truncation_keeps_the_end_token_and_padding_is_ignored(kind, models):
    preprocessor, model = models[kind]
    tokens = preprocessor.tokenize(TEXTS)
    pad = preprocessor.pad_token_id
    assert tokens[3, -1] not in (pad, tokens[3, -2]) and (tokens[0] == pad).sum() > 60  # cut with </s>; padded
    ids, mask = trim_padding(tokens[:2], pad)
    assert ids.shape[1] == mask.sum(1).max() < 77
    alone = model.encode_text(tokens[:1])
    padded = model.encode_text(tokens[[0, 3]])[:1]  # beside a 77-token text
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_image_embeddings_come_from_the_paired_tower(models, reference, cache):
    _, model = models['xlm-roberta']
    preprocessor = factory_preprocessor(tiny_hf.TINY_MCLIP['xlm-roberta'])
    images = [sample_image(seed) for seed in range(2)]
    ref_model, transform, _ = reference('tiny-vit')
    with torch.no_grad():
        expected = ref_model.encode_image(torch.stack([transform(image) for image in images])).numpy()
    pixels = np.stack([preprocessor.pixels(image) for image in images])
    np.testing.assert_allclose(model.encode_image(pixels), expected, atol=1e-5)


@pytest.mark.parametrize('kind', KINDS)
def test_onnx_equals_torch_with_a_dynamic_sequence(kind, models, hub, tmp_path):
    preprocessor, model = models[kind]
    spec = tiny_hf.TINY_MCLIP[kind]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('CLIP_SERVER_CACHE', str(hub['cache']))
        folder = export_onnx(spec, locate_mclip(spec, hub['image']), tmp_path / 'onnx')
    inputs = onnx.load(str(folder / 'textual.onnx')).graph.input
    assert [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in inputs] == [
        ['batch', 'sequence'],
        ['batch', 'sequence'],
    ]
    onnx_model = ONNXEncoder(folder, threads=1, image_size=spec.image_size)
    for texts in (TEXTS[:1], TEXTS[:2], TEXTS):  # one length, padded, and 77 tokens
        tokens = preprocessor.tokenize(texts)
        np.testing.assert_allclose(onnx_model.encode_text(tokens), model.encode_text(tokens), atol=TOLERANCE)
    pixels = preprocessor.pixels(sample_image(1))[None]
    np.testing.assert_allclose(onnx_model.encode_image(pixels), model.encode_image(pixels), atol=TOLERANCE)


@pytest.mark.parametrize('kind', KINDS)
def test_openvino_equals_torch_with_a_dynamic_sequence(kind, models, hub):
    """OpenVINO compiles the same export, texts of any length included; bf16 keeps 0.999."""
    pytest.importorskip('openvino')
    preprocessor, model = models[kind]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('CLIP_SERVER_CACHE', str(hub['cache']))
        served = {
            dtype: build_encoder(
                tiny_hf.TINY_MCLIP[kind],
                Runtime.OPENVINO,
                EncoderOptions(model_path=hub['image'], dtype=dtype, threads=1),
                preprocessor,
            )
            for dtype in ('fp32', 'bf16')
        }
    for texts in (TEXTS[:1], TEXTS[:2], TEXTS):  # one length, padded, and 77 tokens
        tokens = preprocessor.tokenize(texts)
        np.testing.assert_allclose(served['fp32'].encode_text(tokens), model.encode_text(tokens), atol=TOLERANCE)
    pixels = preprocessor.pixels(sample_image(1))[None]
    np.testing.assert_allclose(served['fp32'].encode_image(pixels), model.encode_image(pixels), atol=TOLERANCE)
    parity = compare(model, served['bf16'], preprocessor)
    assert parity.text_min_cosine >= 0.999 and parity.image_min_cosine >= 0.999, parity


def test_a_folder_made_elsewhere_masks_by_the_serving_tokenizer(models, hub, tmp_path):
    """Without our pad-id metadata in the graph, the tokenizer's pad id still gives the right mask."""
    preprocessor, model = models['xlm-roberta']
    spec = tiny_hf.TINY_MCLIP['xlm-roberta']
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('CLIP_SERVER_CACHE', str(hub['cache']))
        folder = export_onnx(spec, locate_mclip(spec, hub['image']), tmp_path / 'onnx')
    graph = onnx.load(str(folder / 'textual.onnx'))
    del graph.metadata_props[:]
    onnx.save(graph, str(folder / 'textual.onnx'))
    tokens = preprocessor.tokenize(TEXTS[:2])  # padded: the mask matters
    served = ONNXEncoder(folder, threads=1, pad_token_id=preprocessor.pad_token_id).encode_text(tokens)
    np.testing.assert_allclose(served, model.encode_text(tokens), atol=TOLERANCE)
    unmasked = ONNXEncoder(folder, threads=1).encode_text(tokens)  # CLIP's rule: wrong here
    assert np.abs(unmasked - served).max() > 1e-3


def test_a_local_folder_serves_with_no_hub_at_all(hub, models, tmp_path, monkeypatch):
    """model_path: the checkpoint's files, the image weights and modelBase as a folder beside them."""
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path / 'empty-cache'))
    folder = shutil.copytree(hub['root'] / 'xlm-roberta', tmp_path / 'mclip')
    shutil.copy(hub['image'] / 'open_clip_pytorch_model.bin', folder)
    shutil.copytree(hub['root'] / 'base-xlm-roberta', folder / 'base')
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps({**config, 'modelBase': 'base'}))
    spec = tiny_hf.TINY_MCLIP['xlm-roberta']
    tokens = factory_preprocessor(spec, folder).tokenize(TEXTS)
    np.testing.assert_array_equal(tokens, models['xlm-roberta'][0].tokenize(TEXTS))
    local = torch_encoder(spec, folder)
    np.testing.assert_allclose(local.encode_text(tokens), models['xlm-roberta'][1].encode_text(tokens), atol=1e-6)
    assert onnx_model_dir(spec, folder).parent.parent.name == 'onnx'  # a checkpoint folder gets exported
    assert not (tmp_path / 'empty-cache' / 'models--M-CLIP--Tiny-XLMR-tiny-vit').exists()


def test_offline_without_the_files_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=r'M-CLIP/XLM-Roberta-Large-Vit-B-32/config\.json.*offline'):
        locate_mclip(lookup('M-CLIP/XLM-Roberta-Large-Vit-B-32'))
    with pytest.raises(WeightsUnavailableError, match=r'M-CLIP/LABSE-Vit-L-14/tokenizer\.json'):
        factory_preprocessor(lookup('M-CLIP/LABSE-Vit-L-14'))
    with pytest.raises(FileNotFoundError, match='is not a folder'):
        locate_mclip(lookup('M-CLIP/LABSE-Vit-L-14'), tmp_path / 'nothing')
    with pytest.raises(ValueError, match='jit is not supported'):
        torch_encoder(lookup('M-CLIP/LABSE-Vit-L-14'), None, jit=True)


@pytest.mark.parametrize('spec', [s for s in MODELS if s.family == Family.MCLIP], ids=lambda s: s.name)
def test_every_mclip_name_builds(spec, tmp_path, monkeypatch):
    """Tiny text towers under the real names (embedding into the real size); the image tower's
    architecture built without memory, on the meta device."""
    kind, base = REAL_BASES.get(spec.name, ('xlm-roberta', 'xlm-roberta-large'))
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path / 'cache'))
    tiny_hf.write_mclip_checkpoint(kind, tmp_path / 'repo', base, dim=spec.dim)
    tiny_hf.publish(tmp_path / 'cache', spec.name, tmp_path / 'repo', absent=('special_tokens_map.json',))
    tiny_hf.write_base_config(kind, tmp_path / 'base')
    tiny_hf.publish(tmp_path / 'cache', base, tmp_path / 'base')
    (tmp_path / 'image').mkdir()
    (tmp_path / 'image' / 'open_clip_pytorch_model.bin').touch()  # never loaded here
    tokens = factory_preprocessor(spec).tokenize(['Älgen är skogens konung!'])
    tower = create_mclip_text_tower(locate_mclip(spec, tmp_path / 'image'))
    with torch.no_grad():
        assert tower(torch.from_numpy(tokens[:, :12]), torch.ones(1, 12, dtype=torch.long)).shape == (1, spec.dim)
    with torch.device('meta'):
        visual = open_clip.create_model(spec.arch, device='meta').visual
    assert visual.output_dim == spec.dim


@pytest.fixture
def hf_text_cache(tmp_path, monkeypatch):
    """Tokenizer and config files of the HF text towers' base repos, published as the Hub has them."""
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path / 'cache'))
    for name in set(HF_TEXT_ARCHS.values()) | {'tiny/xlm-roberta'}:
        folder = tmp_path / name
        tiny_hf.save_tokenizer('xlm-roberta', folder)
        (folder / 'tokenizer_config.json').unlink()  # like xlm-roberta-base: tokenizer.json and config.json only
        tiny_hf.write_base_config('xlm-roberta', folder)
        tiny_hf.publish(tmp_path / 'cache', name, folder, absent=TOKENIZER_EXTRAS[:2])
    return tmp_path / 'cache'


@pytest.mark.parametrize('arch', list(HF_TEXT_ARCHS))
def test_every_hf_text_name_builds_from_our_cache(arch, hf_text_cache):
    spec = next(s for s in MODELS if s.arch == arch)
    tokens = factory_preprocessor(spec).tokenize(['ein Foto einer Katze', 'a cat'])
    assert tokens.shape == (2, 77) and tokens[0, 0] == 0 and tokens[0, -1] == 1  # <s> ... <pad>
    with torch.device('meta'):
        model = builder_for(spec).create_model(spec, None, device='meta')
    assert model.text.config.hidden_size == tiny_hf.WIDTH and model.visual.output_dim == spec.dim


def test_an_hf_text_model_runs_on_torch_and_onnx(hf_text_cache, tmp_path):
    """A tiny open_clip HF-text-tower architecture, through open_clip's own tokenizer wrapper."""
    config = {
        **tiny_models.CONFIGS['tiny-vit'],
        'text_cfg': {
            'hf_model_name': 'tiny/xlm-roberta',
            'hf_tokenizer_name': 'tiny/xlm-roberta',
            'hf_pooler_type': 'mean_pooler',
        },
    }
    (tmp_path / 'configs').mkdir()
    (tmp_path / 'configs' / 'tiny-hf-text.json').write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / 'configs')
    spec = lookup('tiny-hf-text')
    torch.manual_seed(0)
    torch.save(builder_for(spec).create_model(spec, None).state_dict(), tmp_path / 'weights.pt')
    model = torch_encoder(spec, tmp_path / 'weights.pt')
    tokens = factory_preprocessor(spec).tokenize(TEXTS)
    onnx_model = ONNXEncoder(export_onnx(spec, tmp_path / 'weights.pt', tmp_path / 'onnx'), threads=1)
    np.testing.assert_allclose(onnx_model.encode_text(tokens), model.encode_text(tokens), atol=TOLERANCE)
    np.testing.assert_allclose(model.encode_text(tokens[:1]), model.encode_text(tokens)[:1], atol=1e-5)


@pytest.mark.parametrize('kind', KINDS)
def test_bf16_keeps_min_cosine_0999(kind, hub, models):
    """What `dtype: auto` picks on CPUs with native bf16 holds for M-CLIP's transformer too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('CLIP_SERVER_CACHE', str(hub['cache']))
        candidate = torch_encoder(tiny_hf.TINY_MCLIP[kind], hub['image'], dtype='bf16')
    preprocessor, reference = models[kind]
    parity = compare(reference, candidate, preprocessor)
    assert parity.text_min_cosine >= 0.999 and parity.image_min_cosine >= 0.999, parity
    assert parity.identity_top1 == 1.0, parity
