"""Where this server keeps what it downloads and builds: the cache root and its subfolders.

One module names them, so the weights fetcher, the exporters, the tokenizers and the indexer
agree on the layout a Docker volume or a copied cache carries. Hub files sit at the root in
huggingface_hub's layout and URL downloads beside them (open_clip's); each other kind of file
has a subfolder of its own, named by one function here.
"""

from __future__ import annotations

import os
from pathlib import Path

ENVIRONMENT_VARIABLE = 'CLIP_SERVER_CACHE'
DEFAULT_ROOT = '~/.cache/clip'  # where open_clip keeps its URL downloads too


def root() -> Path:
    """The cache root: `$CLIP_SERVER_CACHE`, or ~/.cache/clip."""
    return Path(os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_ROOT).expanduser()


def open_clip_configs() -> Path:
    """The model configs of `hf-hub:` names, registered with open_clip from here."""
    return root() / 'open_clip_configs'


def onnx_exports() -> Path:
    """The ONNX exports a server made by itself, one folder per model, dtype and export key."""
    return root() / 'onnx'


def tensorrt_engines() -> Path:
    """The TensorRT engines compiled from those exports, one folder per model and engine key."""
    return root() / 'tensorrt'


def openvino_int8() -> Path:
    """OpenVINO's int8 quantizations of those exports (IR), one folder per model and graphs."""
    return root() / 'openvino'


def default_index() -> Path:
    """The embedded vector index of a `CLIPIndexer` given no `index_path`."""
    return root() / 'index' / 'default'
