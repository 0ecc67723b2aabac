"""The ONNX folder contract: what a folder of CLIP graphs holds, for the writer and every reader.

A folder has `textual.onnx` and `visual.onnx` (the contract custom models made for the original
server follow): `visual.onnx` takes `pixel_values` float32 [N, 3, S, S]; `textual.onnx` takes
`input_ids` and `attention_mask` int32 [N, 77]; each has one output [N, D]; the batch axis is
dynamic. The text graph's metadata may say how it takes rows of other lengths and how the
model scores (`TextGraphMetadata`). `onnx_graphs` writes this contract, `onnx_runtime` serves
it, `tensorrt_runtime` compiles it and the factory finds it; each imports it from here.

Needs no optional package to import: `onnx` is imported only to read a graph file's metadata.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clip_server.types import CLIP_SCORING, Scoring, require

TEXT_FILE = 'textual.onnx'
IMAGE_FILE = 'visual.onnx'
GRAPH_FILES = (TEXT_FILE, IMAGE_FILE)
TEXT_INPUTS = ('input_ids', 'attention_mask')
IMAGE_INPUT = 'pixel_values'
OUTPUT = 'embeddings'

# The text graph's metadata keys.
PAD_TOKEN_ID = 'pad_token_id'  # takes right-padded rows of any length, masked by this id (M-CLIP)
CUT_AT_END_OF_TEXT = 'cut_at_end_of_text'  # takes rows cut after the batch's last end-of-text token
CONTEXT_LENGTH = 'context_length'  # the longest rows it takes
LOGIT_SCALE, LOGIT_BIAS = 'logit_scale', 'logit_bias'  # a sigmoid-trained model's scoring
TRUE = 'true'


@dataclass(frozen=True)
class TextGraphMetadata:
    """What a text graph's metadata says; a graph made elsewhere says nothing, and gets the defaults."""

    pad_token_id: int | None = None
    cut_at_end_of_text: bool = False
    context_length: int | None = None
    scoring: Scoring = CLIP_SCORING

    @classmethod
    def parse(cls, properties: Mapping[str, str]) -> TextGraphMetadata:
        """The one reading of the metadata keys, whether they come from a file or a loaded session."""
        pad, context = properties.get(PAD_TOKEN_ID), properties.get(CONTEXT_LENGTH)
        scoring = CLIP_SCORING
        if LOGIT_BIAS in properties:
            scoring = Scoring(scale=float(properties[LOGIT_SCALE]), bias=float(properties[LOGIT_BIAS]))
        return cls(
            pad_token_id=int(pad) if pad is not None else None,
            cut_at_end_of_text=properties.get(CUT_AT_END_OF_TEXT) == TRUE,
            context_length=int(context) if context is not None else None,
            scoring=scoring,
        )

    def properties(self) -> dict[str, str]:
        """The metadata that writes this back: `parse(m.properties()) == m`."""
        written = {}
        if self.pad_token_id is not None:
            written[PAD_TOKEN_ID] = str(self.pad_token_id)
        elif self.cut_at_end_of_text:
            written[CUT_AT_END_OF_TEXT] = TRUE
        if self.context_length is not None:
            written[CONTEXT_LENGTH] = str(self.context_length)
        if self.scoring.is_sigmoid:
            written.update({LOGIT_SCALE: repr(self.scoring.scale), LOGIT_BIAS: repr(self.scoring.bias)})
        return written


def read_graph_properties(path: str | os.PathLike) -> dict[str, str]:
    """One graph file's metadata as written, without loading its weights."""
    onnx = require('onnx', 'onnx')
    graph = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in graph.metadata_props}


def read_text_metadata(folder: str | os.PathLike) -> TextGraphMetadata:
    """What the folder's text graph says: its row rule, context and its model's scoring."""
    return TextGraphMetadata.parse(read_graph_properties(Path(folder) / TEXT_FILE))
