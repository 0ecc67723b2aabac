"""`python -m clip_server.export onnx NAME OUTDIR`: a model as a folder of ONNX graphs, to serve
with `model_path: OUTDIR`.

For Docker builds and air-gapped hosts; a server exports (and caches) by itself otherwise. The
model layer does the work (`factory.export_onnx`); this is its command line, imported only
when asked for, as it needs torch and the model's weights.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from clip_server.types import RUNTIME_DTYPES, DType, Runtime


def add_parser(targets: argparse._SubParsersAction) -> None:
    """The `onnx` subcommand and its arguments."""
    parser = targets.add_parser(
        'onnx', help='a model as textual.onnx + visual.onnx, to serve with `model_path: OUTPUT_DIR`'
    )
    parser.add_argument('name', metavar='NAME', help='model name, e.g. ViT-B-32::openai')
    parser.add_argument('outdir', metavar='OUTPUT_DIR', type=Path, help='folder to write the graphs into')
    parser.add_argument(
        '--weights',
        help='PyTorch weights file, or for M-CLIP a folder with its checkpoint (default: the pretrained files, '
        'cached or downloaded)',
    )
    dtypes = [dtype.value for dtype in RUNTIME_DTYPES[Runtime.ONNX]]
    parser.add_argument(
        '--dtype', choices=dtypes, default=DType.FP32.value, help='fp16 is for serving on CUDA, int8 on CPU'
    )


def export(args: argparse.Namespace) -> Path:
    """Write the graphs the arguments ask for; the folder written (for the command to print)."""
    from clip_server.model.factory import export_onnx, locate, resolve

    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    spec = resolve(args.name)
    return export_onnx(spec, locate(spec, args.weights), args.outdir, dtype=args.dtype)
