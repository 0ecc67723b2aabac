"""A search Flow over gRPC and HTTP for the indexing command's and the web page's tests, and the
files they index: pictures of coloured shapes, and captions in a .txt file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from helpers import flow_yaml, free_port, server_env, start_server

TOKEN = 'open-sesame'
SHAPES = {'red-circle': ('red', 'ellipse'), 'blue-square': ('blue', 'rectangle'), 'green-disc': ('green', 'ellipse')}
CAPTIONS = ['a red apple on a table', 'a blue car in the rain', 'a green field of grass']


def indexer_executor(index_path: Path) -> str:
    """A Flow YAML's executors entry for `CLIPIndexer` with its index in `index_path`."""
    return f"""  - name: index
    uses:
      jtype: CLIPIndexer
      with: {{index_path: {index_path}}}
      metas:
        py_modules:
          - clip_server.executors.indexer
"""


def serve(tiny_weights, folder: Path, index: bool = True, token: str | None = TOKEN, **gateway_options):
    """The tiny model's Flow on gRPC and HTTP (ports in `.grpc`, `.http`), with an index in
    `folder`/index when `index`, token auth when `token`, and the gateway's other options."""
    grpc, http = free_port(), free_port()
    yaml_text = flow_yaml(
        [grpc, http],
        protocol=['grpc', 'http'],
        with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])},
    )
    if index:
        yaml_text += indexer_executor(folder / 'index')
    if token:
        gateway_options['auth_tokens'] = [token]
    if gateway_options:
        yaml_text += 'gateway:\n  uses_with:\n' + ''.join(f'    {k}: {v}\n' for k, v in gateway_options.items())
    server = start_server(folder, yaml_text, grpc)
    server.grpc, server.http = grpc, http
    return server


def make_files(folder: Path) -> Path:
    """Three shape pictures (one in a subfolder) and a .txt file of captions, under `folder`/files."""
    files = folder / 'files'
    (files / 'more').mkdir(parents=True)
    for number, (name, (colour, shape)) in enumerate(SHAPES.items()):
        image = Image.new('RGB', (96, 72), 'white')
        getattr(ImageDraw.Draw(image), shape)((20, 10, 76, 62), fill=colour)
        image.save(files / ('more' if number == 2 else '') / f'{name}.png')
    (files / 'captions.txt').write_text('\n'.join(CAPTIONS) + '\n')
    return files


def index_command(*args: str, token: str | None = TOKEN, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m clip_server.index ARGS` as a user runs it from a script: output to pipes (no terminal)."""
    command = [sys.executable, '-m', 'clip_server.index', *args, *(['--token', token] if token else [])]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=server_env())
