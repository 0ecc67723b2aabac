"""ONNX runtime: exports equal the PyTorch runtime, follow the I/O contract, are made once, fail clearly."""

import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from clip_server.export.__main__ import main
from clip_server.model import factory
from clip_server.model.factory import cached_export, export_onnx, onnx_model_dir, preprocessor
from clip_server.model.registry import lookup
from clip_server.model.runtimes.onnx_runtime import ONNXEncoder
from clip_server.model.tokens import attention_mask
from clip_server.types import ModelFolderError, Runtime, parse_device, parse_dtype
from helpers import REPO, TESTS, sample_image, torch_encoder

ARCHS = ['tiny-vit', 'tiny-rn']
TEXTS = ['a photo of a cat', 'hello! world!', '', 'x ' * 200]
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def exported(tiny_weights, tmp_path_factory):
    """One fp32 export per tiny architecture, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp('onnx')
    return {arch: export_onnx(lookup(arch), tiny_weights[arch], folder / arch) for arch in ARCHS}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


def inputs(arch: str, batch: int) -> tuple[np.ndarray, np.ndarray]:
    model_input = preprocessor(lookup(arch))
    tokens = model_input.tokenize((TEXTS * batch)[:batch])
    pixels = np.stack([model_input.pixels(sample_image(seed)) for seed in range(batch)])
    return tokens, pixels


@pytest.mark.parametrize('arch', ARCHS)
def test_embeddings_equal_the_pytorch_runtime(arch, exported, tiny_weights):
    spec = lookup(arch)
    onnx_model = ONNXEncoder(exported[arch], threads=1, image_size=spec.image_size)
    torch_model = torch_encoder(spec, tiny_weights[arch])
    for batch in (1, 4):  # the batch axis is dynamic
        tokens, pixels = inputs(arch, batch)
        texts, images = onnx_model.encode_text(tokens), onnx_model.encode_image(pixels)
        assert texts.dtype == images.dtype == np.float32
        assert texts.shape == images.shape == (batch, spec.dim)
        np.testing.assert_allclose(texts, torch_model.encode_text(tokens), atol=TOLERANCE)
        np.testing.assert_allclose(images, torch_model.encode_image(pixels), atol=TOLERANCE)


def _signature(values) -> dict:
    """{name: (element type, [dims])}, a dynamic dim by its name."""
    return {
        value.name: (tensor.elem_type, [dim.dim_param or dim.dim_value for dim in tensor.shape.dim])
        for value in values
        for tensor in [value.type.tensor_type]
    }


def test_exports_follow_the_io_contract(exported):
    textual = onnx.load(str(exported['tiny-vit'] / 'textual.onnx'))
    visual = onnx.load(str(exported['tiny-rn'] / 'visual.onnx'))
    # CLIP's causal towers take rows cut after the batch's last end-of-text token: any length.
    assert _signature(textual.graph.input) == {
        'input_ids': (TensorProto.INT32, ['batch', 'sequence']),
        'attention_mask': (TensorProto.INT32, ['batch', 'sequence']),
    }
    assert list(_signature(textual.graph.output).values()) == [(TensorProto.FLOAT, ['batch', 32])]
    assert _signature(visual.graph.input) == {'pixel_values': (TensorProto.FLOAT, ['batch', 3, 64, 64])}
    assert list(_signature(visual.graph.output).values()) == [(TensorProto.FLOAT, ['batch', 48])]
    # The graph never reads the mask, yet onnxruntime keeps it declared and required.
    session = ort.InferenceSession(str(exported['tiny-vit'] / 'textual.onnx'), providers=['CPUExecutionProvider'])
    assert [arg.name for arg in session.get_inputs()] == ['input_ids', 'attention_mask']


def test_attention_mask_covers_the_text_up_to_its_end_token():
    tokens = np.zeros((2, 77), np.int64)
    tokens[0, :4] = [49406, 0, 320, 49407]  # id 0 ('!') inside a text is not padding
    tokens[1, :2] = [49406, 49407]
    mask = attention_mask(tokens)
    assert mask[0].tolist() == [True] * 4 + [False] * 73
    assert mask[1].tolist() == [True] * 2 + [False] * 75


def test_large_models_keep_their_weights_in_external_data(exported, tiny_weights, tmp_path):
    folder = export_onnx(lookup('tiny-vit'), tiny_weights['tiny-vit'], tmp_path, external_data=True)
    assert sorted(path.name for path in folder.iterdir()) == [
        'textual.onnx',
        'textual.onnx.data',
        'visual.onnx',
        'visual.onnx.data',
    ]
    assert (folder / 'visual.onnx').stat().st_size < 100_000
    tokens, pixels = inputs('tiny-vit', 2)
    external, inline = ONNXEncoder(folder, threads=1), ONNXEncoder(exported['tiny-vit'], threads=1)
    np.testing.assert_array_equal(external.encode_text(tokens), inline.encode_text(tokens))
    np.testing.assert_array_equal(external.encode_image(pixels), inline.encode_image(pixels))


def test_fp16_export_keeps_the_float32_contract(exported, tiny_weights, tmp_path):
    folder = export_onnx(lookup('tiny-rn'), tiny_weights['tiny-rn'], tmp_path, dtype='fp16')
    visual = onnx.load(str(folder / 'visual.onnx'))
    assert _signature(visual.graph.input)['pixel_values'][0] == TensorProto.FLOAT
    assert _signature(visual.graph.output)['embeddings'][0] == TensorProto.FLOAT
    assert any(init.data_type == TensorProto.FLOAT16 for init in visual.graph.initializer)
    # Served on CUDA only; onnxruntime's CPU provider runs it with basic optimisations, enough to check numbers.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(folder / 'visual.onnx'), options, providers=['CPUExecutionProvider'])
    _, pixels = inputs('tiny-rn', 2)
    half = session.run(None, {'pixel_values': pixels})[0]
    full = ONNXEncoder(exported['tiny-rn'], threads=1).encode_image(pixels)
    np.testing.assert_allclose(half, full, atol=0.02 * np.abs(full).max())


def test_fp16_is_refused_on_cpu():
    with pytest.raises(ValueError, match='fp16 needs device cuda'):
        parse_dtype('fp16', Runtime.ONNX, parse_device('cpu'))
    with pytest.raises(ValueError, match="dtype 'bf16'"):
        parse_dtype('bf16', Runtime.ONNX, parse_device('cuda'))
    assert parse_dtype('fp16', Runtime.ONNX, parse_device('cuda:1')) == 'fp16'


# ----------------------------------------------------------------------------- bad folders


def _visual_graph(path, input_name: str = 'pixel_values', batch='batch', size: int = 224) -> None:
    """A stand-in visual.onnx: flattens its input into one [N, 3*S*S] output."""
    pixels = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, size, size])
    output = helper.make_tensor_value_info('embeddings', TensorProto.FLOAT, [batch, 3 * size * size])
    graph = helper.make_graph([helper.make_node('Flatten', [input_name], ['embeddings'])], 'visual', [pixels], [output])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]), str(path))


@pytest.fixture
def folder(exported, tmp_path):
    """A copy of a good export, for a test to break."""
    return shutil.copytree(exported['tiny-vit'], tmp_path / 'model')


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelFolderError, match='does not exist or is not a folder'):
        ONNXEncoder(tmp_path / 'nowhere')


def test_a_missing_file_is_named(folder):
    (folder / 'visual.onnx').unlink()
    with pytest.raises(ModelFolderError, match='has no visual.onnx: .* needs both textual.onnx and visual.onnx'):
        ONNXEncoder(folder)


def test_a_file_that_is_not_onnx_is_named(folder):
    (folder / 'textual.onnx').write_bytes(b'<html>not found</html>')
    with pytest.raises(ModelFolderError, match='textual.onnx is not a loadable ONNX model'):
        ONNXEncoder(folder)


def test_other_inputs_are_named(folder):
    _visual_graph(folder / 'visual.onnx', input_name='image')
    with pytest.raises(ModelFolderError, match=r'visual.onnx must take pixel_values; it takes image \(tensor\(float\)'):
        ONNXEncoder(folder)
    shutil.copy(folder / 'textual.onnx', folder / 'visual.onnx')
    with pytest.raises(ModelFolderError, match='visual.onnx must take pixel_values; it takes input_ids'):
        ONNXEncoder(folder)


def test_a_fixed_batch_size_is_refused(folder):
    _visual_graph(folder / 'visual.onnx', batch=1)
    with pytest.raises(ModelFolderError, match='pixel_values has a fixed batch size of 1'):
        ONNXEncoder(folder)


def test_an_image_size_other_than_the_models_is_refused(folder):
    _visual_graph(folder / 'visual.onnx', size=336)
    assert ONNXEncoder(folder).encode_image(np.zeros((2, 3, 336, 336), np.float32)).shape == (2, 3 * 336 * 336)
    with pytest.raises(ModelFolderError, match='takes 336x336 images, but the model name gives 224x224'):
        ONNXEncoder(folder, image_size=224)


# ----------------------------------------------------------------------------- cache and CLI


def test_an_export_is_made_once_and_reused(tiny_weights, cache, tmp_path, monkeypatch):
    exports = []
    monkeypatch.setattr(factory, 'export_onnx', lambda *a, **k: exports.append(a) or export_onnx(*a, **k))
    spec = lookup('tiny-vit')
    first = onnx_model_dir(spec, tiny_weights['tiny-vit'])
    mtime = (first / 'visual.onnx').stat().st_mtime_ns
    assert onnx_model_dir(spec, tiny_weights['tiny-vit']) == first
    assert (first / 'visual.onnx').stat().st_mtime_ns == mtime and len(exports) == 1
    assert first.parent == cache / 'onnx' / 'tiny-vit' and not list(first.parent.glob('*.partial-*'))

    other = shutil.copy(tiny_weights['tiny-vit'], tmp_path / 'finetuned.pt')  # other weights: another export
    assert onnx_model_dir(spec, other) != first and len(exports) == 2


def test_a_folder_model_path_is_served_as_is(exported, cache, tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path))
    shutil.copytree(exported['tiny-vit'], tmp_path / 'custom')
    assert onnx_model_dir(lookup('tiny-vit'), '~/custom') == tmp_path / 'custom'
    with pytest.raises(FileNotFoundError, match="'~/typo' does not exist: it must be a folder with textual.onnx"):
        onnx_model_dir(lookup('tiny-vit'), '~/typo')
    assert not cache.exists()


def test_a_failed_export_leaves_no_partial_folder(cache, tmp_path):
    shutil.copy(REPO / 'setup.py', tmp_path / 'broken.pt')
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        cached_export(lookup('tiny-vit'), tmp_path / 'broken.pt')
    assert [path.suffix for path in (cache / 'onnx' / 'tiny-vit').iterdir()] == ['.lock']


def test_export_cli_writes_a_servable_folder(tiny_weights, tmp_path, capsys):
    assert main(['onnx', 'tiny-rn', str(tmp_path / 'out'), '--weights', str(tiny_weights['tiny-rn'])]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / 'out')
    tokens, pixels = inputs('tiny-rn', 2)
    model = ONNXEncoder(tmp_path / 'out', image_size=64)
    assert model.encode_text(tokens).shape == model.encode_image(pixels).shape == (2, 48)


CONCURRENT_START = """
import logging, sys, time
from pathlib import Path
import tiny_models
logging.basicConfig(level=logging.INFO)
from clip_server.model.factory import cached_export
from clip_server.model.registry import lookup
Path(sys.argv[3]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.01)
print(cached_export(lookup('tiny-rn'), sys.argv[1]))
"""


def test_replicas_starting_together_build_one_valid_export(tiny_weights, cache, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    go, readies = tmp_path / 'go', [tmp_path / 'ready0', tmp_path / 'ready1']
    processes = [
        subprocess.Popen(
            [sys.executable, '-c', CONCURRENT_START, str(tiny_weights['tiny-rn']), str(go), str(ready)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ready in readies
    ]
    deadline = time.monotonic() + 60
    while not all(ready.exists() for ready in readies) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both are past their imports: release them at once
    results = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], results
    folders = {out.strip() for out, _ in results}
    logs = ''.join(err for _, err in results)
    assert len(folders) == 1 and logs.count('Exporting visual.onnx') == 1, logs
    model = ONNXEncoder(folders.pop(), image_size=64)
    assert model.encode_image(inputs('tiny-rn', 1)[1]).shape == (1, 48)
    assert not list((cache / 'onnx' / 'tiny-rn').glob('*.partial-*'))


def test_unknown_device_is_refused():
    from clip_server.model.runtimes.onnx_runtime import serving_device

    with pytest.raises(ValueError, match="device 'gpu0'"):
        serving_device('gpu0')
    assert str(serving_device('cpu')) == 'cpu'


def test_export_key_of_a_hub_blob_survives_moving_the_cache(tmp_path):
    """The same weights in a cache mounted elsewhere (a Docker volume) reuse the export."""
    import hashlib

    from clip_server.model.runtimes.onnx_graphs import export_key

    content = b'weights'
    blob_name = hashlib.sha256(content).hexdigest()
    keys = set()
    for root in ('host', 'container'):
        blob = tmp_path / root / 'blobs' / blob_name
        blob.parent.mkdir(parents=True)
        blob.write_bytes(content)
        link = tmp_path / root / 'snapshots' / 'main' / 'open_clip_model.safetensors'
        link.parent.mkdir(parents=True)
        link.symlink_to(blob)
        keys.add(export_key([link], 'fp32'))
    assert len(keys) == 1
    plain = tmp_path / 'mine.pt'
    plain.write_bytes(content)
    assert export_key([plain], 'fp32') not in keys
