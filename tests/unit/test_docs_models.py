"""Every model name the user guide mentions is one the server resolves, with the documented sizes."""

import re
from pathlib import Path

import pytest

from clip_server.model.registry import ALIASES, MODELS, lookup

DOCS = Path(__file__).resolve().parents[2] / 'docs'
# a backticked `arch::tag` or `M-CLIP/...` name, or a backticked alias
NAME = re.compile(r'`([A-Za-z0-9][\w.-]*::[\w.-]+|M-CLIP/[\w.-]+|' + '|'.join(map(re.escape, ALIASES)) + r')`')
TABLE_ROW = re.compile(r'^\| `([^`]+)` \| (\d+) \| (\d+) \|', re.M)


def documented_names() -> list[tuple[str, str]]:
    return sorted({(page.name, name) for page in DOCS.glob('*.md') for name in NAME.findall(page.read_text())})


def test_docs_mention_model_names():
    pages = {page for page, _ in documented_names()}
    assert {'models.md', 'yaml.md'} <= pages


@pytest.mark.parametrize(('page', 'name'), documented_names())
def test_documented_name_resolves(page, name):
    lookup(name)  # raises UnknownModelError for a name the server would refuse


def test_models_table_matches_the_registry():
    rows = TABLE_ROW.findall((DOCS / 'models.md').read_text().split('## Other names')[0])
    documented = {name: (int(dim), int(size)) for name, dim, size in rows}
    assert list(documented) == [spec.name for spec in MODELS], 'the table should list the registry, in order'
    for name, sizes in documented.items():
        spec = lookup(name)
        assert (spec.dim, spec.image_size) == sizes, name


FAMILY_ROW = re.compile(r'^\| `([^`]+)` \| (\d+) \| (\d+) \| (\d+) \| (sigmoid|softmax) \|', re.M)


def test_the_families_table_matches_open_clips_configs():
    """Each documented family row: its dimension, image size, context length and /rank scoring."""
    import open_clip

    section = (DOCS / 'models.md').read_text().split('## Modern open_clip families')[1].split('\n## ')[0]
    rows = FAMILY_ROW.findall(section)
    assert len(rows) >= 10
    for name, dim, size, context, score in rows:
        spec = lookup(name)
        config = open_clip.get_model_config(spec.arch)
        assert (spec.dim, spec.image_size) == (int(dim), int(size)), name
        assert config['text_cfg'].get('context_length', 77) == int(context), name
        assert (config.get('init_logit_bias') is not None) == (score == 'sigmoid'), name
