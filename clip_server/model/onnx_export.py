"""Command line: export a model to a folder of ONNX graphs, to serve with `model_path: OUTDIR`.

    python -m clip_server.model.onnx_export NAME OUTDIR [--weights FILE|FOLDER] [--dtype fp32|fp16|int8]

For Docker builds and air-gapped hosts; a server exports (and caches) by itself otherwise.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from clip_server.model.factory import export_onnx, locate, resolve
from clip_server.types import RUNTIME_DTYPES, DType, Runtime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog='python -m clip_server.model.onnx_export',
        description='Export a CLIP model to textual.onnx + visual.onnx, to serve with `model_path: OUTDIR`.',
    )
    parser.add_argument('name', help='model name, e.g. ViT-B-32::openai')
    parser.add_argument('outdir', type=Path, help='folder to write textual.onnx and visual.onnx into')
    parser.add_argument(
        '--weights',
        help='PyTorch weights file, or for M-CLIP a folder with its checkpoint (default: the pretrained files, '
        'cached or downloaded)',
    )
    dtypes = [dtype.value for dtype in RUNTIME_DTYPES[Runtime.ONNX]]
    parser.add_argument(
        '--dtype', choices=dtypes, default=DType.FP32.value, help='fp16 is for serving on CUDA, int8 on CPU'
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    spec = resolve(args.name)
    folder = export_onnx(spec, locate(spec, args.weights), args.outdir, dtype=args.dtype)
    print(f'{spec.name} exported to {folder.resolve()}')


if __name__ == '__main__':
    main()
