"""Which models the server knows: a name -> what to build and what it outputs.

The table is data, kept apart from the code that builds models (as open_clip keeps
`pretrained.py` apart from `factory.py`): adding a model is adding a row.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from clip_server.types import Family, UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    """One servable model.

    `name` is canonical (the table's spelling, or open_clip's `arch::tag`), so caches keyed
    by it hold one copy whatever spelling a user chose. `arch`/`tag` name the open_clip
    architecture and pretrained tag; for M-CLIP they name the image tower the multilingual
    text tower was trained against.
    """

    name: str
    arch: str
    tag: str | None
    dim: int
    image_size: int
    family: Family = Family.OPEN_CLIP
    # The Hub repo an `hf-hub:org/repo` name loads its config, weights and preprocessing from.
    hub_repo: str | None = None


def _row(name: str, dim: int, image_size: int, family: Family = Family.OPEN_CLIP) -> ModelSpec:
    arch, tag = name.split('::')
    return ModelSpec(name, arch, tag.replace('-', '_'), dim, image_size, family)


def _mclip(name: str, arch: str, tag: str, dim: int, image_size: int) -> ModelSpec:
    return ModelSpec(name, arch, tag, dim, image_size, family=Family.MCLIP)


# The models of the documented table, with their output dimension and input image size.
MODELS: tuple[ModelSpec, ...] = (
    _row('RN50::openai', 1024, 224),
    _row('RN50::yfcc15m', 1024, 224),
    _row('RN50::cc12m', 1024, 224),
    _row('RN101::openai', 512, 224),
    _row('RN101::yfcc15m', 512, 224),
    _row('RN50x4::openai', 640, 288),
    _row('RN50x16::openai', 768, 384),
    _row('RN50x64::openai', 1024, 448),
    _row('ViT-B-32::openai', 512, 224),
    _row('ViT-B-32::laion2b_e16', 512, 224),
    _row('ViT-B-32::laion400m_e31', 512, 224),
    _row('ViT-B-32::laion400m_e32', 512, 224),
    _row('ViT-B-32::laion2b-s34b-b79k', 512, 224),
    _row('ViT-B-16::openai', 512, 224),
    _row('ViT-B-16::laion400m_e31', 512, 224),
    _row('ViT-B-16::laion400m_e32', 512, 224),
    _row('ViT-B-16-plus-240::laion400m_e31', 640, 240),
    _row('ViT-B-16-plus-240::laion400m_e32', 640, 240),
    _row('ViT-L-14::openai', 768, 224),
    _row('ViT-L-14::laion400m_e31', 768, 224),
    _row('ViT-L-14::laion400m_e32', 768, 224),
    _row('ViT-L-14::laion2b-s32b-b82k', 768, 224),
    _row('ViT-L-14-336::openai', 768, 336),
    _row('ViT-H-14::laion2b-s32b-b79k', 1024, 224),
    _row('ViT-g-14::laion2b-s12b-b42k', 1024, 224),
    _row('roberta-ViT-B-32::laion2b-s12b-b32k', 512, 224, Family.HF_TEXT),
    _row('xlm-roberta-base-ViT-B-32::laion5b-s13b-b90k', 512, 224, Family.HF_TEXT),
    _row('xlm-roberta-large-ViT-H-14::frozen_laion5b_s13b_b90k', 1024, 224, Family.HF_TEXT),
    _mclip('M-CLIP/XLM-Roberta-Large-Vit-B-32', 'ViT-B-32', 'openai', 512, 224),
    _mclip('M-CLIP/XLM-Roberta-Large-Vit-L-14', 'ViT-L-14', 'openai', 768, 224),
    _mclip('M-CLIP/XLM-Roberta-Large-Vit-B-16Plus', 'ViT-B-16-plus-240', 'laion400m_e31', 640, 240),
    _mclip('M-CLIP/LABSE-Vit-L-14', 'ViT-L-14', 'openai', 768, 224),
)

# Names the original server accepted before it adopted `arch::tag` (OpenAI's own spelling).
ALIASES: dict[str, str] = {
    'RN50': 'RN50::openai',
    'RN101': 'RN101::openai',
    'RN50x4': 'RN50x4::openai',
    'RN50x16': 'RN50x16::openai',
    'RN50x64': 'RN50x64::openai',
    'ViT-B/32': 'ViT-B-32::openai',
    'ViT-B/16': 'ViT-B-16::openai',
    'ViT-L/14': 'ViT-L-14::openai',
    'ViT-L/14@336px': 'ViT-L-14-336::openai',
}

DEFAULT_MODEL = 'ViT-B-32::openai'


def _key(name: str) -> str:
    """Spelling-insensitive key: case, and dashes vs underscores in the tag, do not matter."""
    arch, sep, tag = name.strip().partition('::')
    return f'{arch.lower()}{sep}{tag.lower().replace("-", "_")}'


_BY_KEY = {_key(spec.name): spec for spec in MODELS}
_TABLE_KEYS = frozenset(_BY_KEY)
_ALIAS_BY_KEY = {_key(alias): target for alias, target in ALIASES.items()}


def _open_clip_pairs() -> dict[str, tuple[str, str]]:
    import open_clip

    return {_key(f'{arch}::{tag}'): (arch, tag) for arch, tag in open_clip.list_pretrained()}


HUB_PREFIX = 'hf-hub:'  # open_clip's names for models published as Hub repos
HUB_CONFIG_FILE = 'open_clip_config.json'


def hub_spec(repo_id: str, model_cfg: dict) -> ModelSpec:
    """The spec of the `hf-hub:` model whose repo's open_clip config holds `model_cfg`; its
    architecture is that config, registered with open_clip as `hub_arch(repo_id)`."""
    image_size = model_cfg['vision_cfg']['image_size']
    if isinstance(image_size, (tuple, list)):
        image_size = image_size[0]
    family = Family.HF_TEXT if model_cfg['text_cfg'].get('hf_model_name') else Family.OPEN_CLIP
    return ModelSpec(
        f'{HUB_PREFIX}{repo_id}', hub_arch(repo_id), None, model_cfg['embed_dim'], image_size, family, repo_id
    )


def hub_arch(repo_id: str) -> str:
    return 'hf-hub--' + repo_id.replace('/', '--')


def same_model(requested: str, served: str) -> bool:
    """Whether `requested` names the model served as `served`: its own name in any spelling, or an
    alias of it (from the table alone: nothing is imported or downloaded)."""
    return _key(_ALIAS_BY_KEY.get(_key(requested), requested)) == _key(served)


def register(spec: ModelSpec) -> None:
    """Make another model name servable, e.g. from a module listed in the Flow's `py_modules`."""
    _BY_KEY[_key(spec.name)] = spec


def unregister(name: str) -> None:
    """Forget a name added with `register` (the table's own names stay)."""
    key = _key(name)
    if key not in _TABLE_KEYS:
        _BY_KEY.pop(key, None)


def known_names() -> list[str]:
    """Every name `lookup` finds: the table's, then registered ones, aliases, open_clip's."""
    table = [spec.name for spec in _BY_KEY.values()] + list(ALIASES)
    extra = sorted(f'{arch}::{tag}' for arch, tag in _open_clip_pairs().values())
    return table + [name for name in extra if _key(name) not in _BY_KEY]


def _open_clip_archs() -> dict[str, str]:
    import open_clip

    return {arch.lower(): arch for arch in open_clip.list_models()}


def _from_open_clip(arch: str, tag: str | None) -> ModelSpec:
    """A spec from open_clip's config, named as open_clip spells it."""
    import open_clip

    config = open_clip.get_model_config(arch)
    image_size = config['vision_cfg']['image_size']
    if isinstance(image_size, (tuple, list)):
        image_size = image_size[0]
    family = Family.HF_TEXT if config['text_cfg'].get('hf_model_name') else Family.OPEN_CLIP
    name = f'{arch}::{tag}' if tag else arch
    return ModelSpec(name, arch, tag, config['embed_dim'], image_size, family)


def lookup(name: str) -> ModelSpec:
    """Look a model name up in the table and open_clip's names; unknown names fail with the closest
    known names. (`hf-hub:` names need their repo's config, a download: `clip_server.model.factory.resolve`
    fetches it, and takes every other name here.)"""
    if name.startswith(HUB_PREFIX):
        raise UnknownModelError(f'{name}: an hf-hub name is resolved by clip_server.model.factory.resolve')
    key = _key(name)
    key = _key(_ALIAS_BY_KEY.get(key, name))
    if key in _BY_KEY:
        return _BY_KEY[key]
    pair = _open_clip_pairs().get(key)
    if pair:
        return _from_open_clip(*pair)
    arch = _open_clip_archs().get(key)
    if arch:  # an architecture without pretrained tag: serves the weights given as `model_path`
        return _from_open_clip(arch, None)
    candidates = known_names()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f' Closest names: {", ".join(close)}.' if close else ''
    raise UnknownModelError(f'Unknown model name {name!r}.{hint} docs/models.md lists every supported name.')
