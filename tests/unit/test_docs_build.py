"""The user guide in docs/ builds with Sphinx + MyST, warnings as errors."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / 'docs'


def test_sphinx_build_has_no_warnings(tmp_path):
    missing = [name for name in ('sphinx', 'myst_parser') if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f'{" and ".join(missing)} not installed (pip install sphinx myst-parser)')
    run = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b', 'html', str(DOCS), str(tmp_path / 'html')],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / 'html' / 'index.html').is_file()
    downloads = list((tmp_path / 'html' / '_downloads').glob('*/grafana-dashboard.json'))
    assert downloads, 'the Grafana dashboard is not published with the docs'
    shutil.rmtree(tmp_path / 'html')
