"""What `pip install .` (as the Dockerfiles run it) puts on a machine: the package, its bundled YAMLs
and the web page's files (served from the package: no CDN)."""

import os
import subprocess
import sys
import zipfile

from helpers import REPO

BUNDLED = ('torch-flow.yml', 'onnx-flow.yml', 'tensorrt-flow.yml', 'search-flow.yml')
PAGE = ('index.html', 'app.js', 'style.css')


def test_a_built_wheel_serves_its_bundled_flows_outside_the_checkout(tmp_path):
    subprocess.run(
        [
            sys.executable,
            '-m',
            'pip',
            'wheel',
            '--no-deps',
            '--no-build-isolation',
            '-q',
            '-w',
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob('clip_server-*.whl')
    packed = set(zipfile.ZipFile(wheel).namelist())
    assert {f'clip_server/resources/{name}' for name in BUNDLED} <= packed
    assert {f'clip_server/gateway/ui/assets/{name}' for name in PAGE} <= packed

    site = tmp_path / 'site'
    subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = (
        'import clip_server, clip_server.__main__ as cli; '
        'print(clip_server.__file__); print(cli.bundled_flow("onnx-flow.yml").read_text())'
    )
    env = {**os.environ, 'PYTHONPATH': str(site)}
    out = subprocess.run(
        [sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.startswith(str(site))
    assert 'clip_server.executors.clip_onnx' in out and 'port: 51000' in out
