"""`python -m clip_server.benchmark --save` as users run it, on a tiny model: it serves the Flow,
measures every row it was not told to skip, prints the report and saves it with the curve's plot."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from clip_server.benchmark import CURVE_IN_FLIGHT
from clip_server.benchmark.save import MARKDOWN, PLOT
from helpers import flow_yaml, free_port, server_env


def test_the_benchmark_saves_its_report_and_plot(tmp_path, tiny_weights):
    params = {'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit']), 'minibatch_size': 8}
    (tmp_path / 'flow.yml').write_text(flow_yaml(free_port(), with_params=params))
    command = [sys.executable, '-m', 'clip_server.benchmark', 'flow.yml', '--seconds', '0.3', '--save', 'out']
    command += ['--skip-ceiling', '--skip-yardstick']
    done = subprocess.run(command, cwd=tmp_path, env=server_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = done.stdout.strip()
    assert (tmp_path / 'out' / MARKDOWN).read_text(encoding='utf-8').strip() == report
    for row in (
        '| server, 1 client,',
        '| in-process: PyTorch fp32, batch 32,',
        '| model only: PyTorch fp32, batch 32,',
    ):
        assert row in report
    assert 'server / model-only, server, 1 client, requests of 32: texts ' in report
    for level in CURVE_IN_FLIGHT:
        assert f'\n| {level} | ' in report  # the curve table, under the ratios
    with Image.open(tmp_path / 'out' / PLOT) as plot:
        assert plot.format == 'PNG'
