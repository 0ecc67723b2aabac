"""Exact short-text batches: rows cut after the batch's last end-of-text token give the
embeddings of the full 77-token rows, on every runtime; towers where that is not exact keep 77."""

import numpy as np
import open_clip
import pytest
import torch

from clip_server.model.factory import export_onnx, preprocessor
from clip_server.model.families.openclip import OpenCLIPBuilder, causal_text_parts
from clip_server.model.registry import lookup
from clip_server.model.runtimes.onnx_folder import read_text_metadata
from clip_server.model.runtimes.onnx_runtime import ONNXEncoder
from clip_server.model.tokens import text_inputs
from helpers import reference_text_embeddings, torch_encoder

SHORT = ['a cat', 'a photo of a dog on a red sofa', '', 'Crème brûlée, 東京 & 🍣!']
MIXED = SHORT + ['very long text ' * 40]  # cut at 77 tokens by the tokenizer, end-of-text kept last
TOLERANCE = 1e-5


def test_short_batches_run_short_and_long_batches_full_length():
    tokens = preprocessor(lookup('tiny-vit')).tokenize(SHORT)
    ids, mask = text_inputs(tokens, None, cut_at_end_of_text=True)
    longest = int(tokens.argmax(axis=1).max()) + 1
    assert ids.shape == mask.shape == (len(SHORT), longest) and longest < 20
    np.testing.assert_array_equal(ids, tokens[:, :longest])
    full, _ = text_inputs(preprocessor(lookup('tiny-vit')).tokenize(MIXED), None, cut_at_end_of_text=True)
    assert full.shape[1] == 77


@pytest.mark.parametrize('arch', ['tiny-vit', 'tiny-rn'])
@pytest.mark.parametrize('jit', [False, True])
def test_torch_equals_full_length_rows(arch, jit, tiny_weights, reference):
    encoder = torch_encoder(lookup(arch), tiny_weights[arch], jit=jit)
    tokens = preprocessor(lookup(arch)).tokenize(SHORT)
    expected = reference_text_embeddings(reference(arch), SHORT)  # open_clip's own, on 77 tokens
    np.testing.assert_allclose(encoder.encode_text(tokens), expected, atol=TOLERANCE)
    for texts in (MIXED, SHORT[:1]):
        tokens = preprocessor(lookup(arch)).tokenize(texts)
        np.testing.assert_allclose(
            encoder.encode_text(tokens), reference_text_embeddings(reference(arch), texts), atol=TOLERANCE
        )


def test_onnx_export_takes_any_length_and_equals_full_length_rows(tiny_weights, reference, tmp_path):
    folder = export_onnx(lookup('tiny-vit'), tiny_weights['tiny-vit'], tmp_path)
    encoder = ONNXEncoder(folder, threads=1)
    for texts in (SHORT, MIXED, SHORT[:1], ['a ' * 30]):  # widths other than the traced one
        tokens = preprocessor(lookup('tiny-vit')).tokenize(texts)
        np.testing.assert_allclose(
            encoder.encode_text(tokens), reference_text_embeddings(reference('tiny-vit'), texts), atol=1e-4
        )


def test_bidirectional_towers_keep_full_length_rows(tiny_weights, reference):
    spec = lookup('tiny-bidirectional')
    assert causal_text_parts(open_clip.create_model('tiny-bidirectional')) is None
    towers = OpenCLIPBuilder().towers(spec, tiny_weights['tiny-bidirectional'])
    assert not towers.cut_at_end_of_text
    tokens = preprocessor(spec).tokenize(SHORT)
    served = torch_encoder(spec, tiny_weights['tiny-bidirectional']).encode_text(tokens)
    np.testing.assert_allclose(
        served, reference_text_embeddings(reference('tiny-bidirectional'), SHORT), atol=TOLERANCE
    )
    # cutting the rows would change this tower's output: why it keeps 77 tokens
    with torch.no_grad():
        cut = towers.text(*(torch.from_numpy(rows) for rows in text_inputs(tokens, None, True))).numpy()
    assert not np.allclose(cut, served, atol=1e-3)


def test_the_export_says_whether_its_rows_may_be_cut(tiny_weights, tmp_path):
    """TensorRT and ONNX Runtime cut rows only for graphs that say so; a bidirectional tower's do not."""
    causal = export_onnx(lookup('tiny-vit'), tiny_weights['tiny-vit'], tmp_path / 'causal')
    both_ways = export_onnx(lookup('tiny-bidirectional'), tiny_weights['tiny-bidirectional'], tmp_path / 'both')
    assert read_text_metadata(causal).cut_at_end_of_text and not read_text_metadata(both_ways).cut_at_end_of_text
