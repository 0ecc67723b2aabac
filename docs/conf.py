"""Sphinx configuration of the clip_server user guide (Markdown pages, read by MyST).

Build: sphinx-build -W -b html docs docs/_build/html
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clip_server import __version__  # noqa: E402

project = 'clip_server'
author = 'clip_server authors'
copyright = 'clip_server authors'
version = release = __version__

extensions = ['myst_parser']
source_suffix = {'.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']
myst_heading_anchors = 3  # `page.md#a-heading` links work across pages
myst_enable_extensions = ['colon_fence']

html_theme = 'alabaster'
html_title = f'clip_server {release}'
html_theme_options = {'description': 'CLIP embeddings over gRPC, HTTP and WebSocket'}
