import open_clip
import pytest

from clip_server.model.registry import ALIASES, MODELS, known_names, lookup
from clip_server.types import Family, UnknownModelError

# The documented table: every name users may write, with the dimension their vectors have.
SEED_TABLE = {
    'RN50::openai': 1024,
    'RN50::yfcc15m': 1024,
    'RN50::cc12m': 1024,
    'RN101::openai': 512,
    'RN101::yfcc15m': 512,
    'RN50x4::openai': 640,
    'RN50x16::openai': 768,
    'RN50x64::openai': 1024,
    'ViT-B-32::openai': 512,
    'ViT-B-32::laion2b_e16': 512,
    'ViT-B-32::laion400m_e31': 512,
    'ViT-B-32::laion400m_e32': 512,
    'ViT-B-32::laion2b-s34b-b79k': 512,
    'ViT-B-16::openai': 512,
    'ViT-B-16::laion400m_e31': 512,
    'ViT-B-16::laion400m_e32': 512,
    'ViT-B-16-plus-240::laion400m_e31': 640,
    'ViT-B-16-plus-240::laion400m_e32': 640,
    'ViT-L-14::openai': 768,
    'ViT-L-14::laion400m_e31': 768,
    'ViT-L-14::laion400m_e32': 768,
    'ViT-L-14::laion2b-s32b-b82k': 768,
    'ViT-L-14-336::openai': 768,
    'ViT-H-14::laion2b-s32b-b79k': 1024,
    'ViT-g-14::laion2b-s12b-b42k': 1024,
    'M-CLIP/LABSE-Vit-L-14': 768,
    'M-CLIP/XLM-Roberta-Large-Vit-B-32': 512,
    'M-CLIP/XLM-Roberta-Large-Vit-B-16Plus': 640,
    'M-CLIP/XLM-Roberta-Large-Vit-L-14': 768,
}


@pytest.mark.parametrize('name, dim', SEED_TABLE.items())
def test_every_documented_name_resolves_with_its_dimension(name, dim):
    assert lookup(name).dim == dim


@pytest.mark.parametrize('spec', [s for s in MODELS if s.family != Family.MCLIP], ids=lambda s: s.name)
def test_table_agrees_with_open_clip(spec):
    config = open_clip.get_model_config(spec.arch)
    assert config['embed_dim'] == spec.dim
    assert config['vision_cfg']['image_size'] == spec.image_size
    assert open_clip.get_pretrained_cfg(spec.arch, spec.tag), f'open_clip has no pretrained tag {spec.tag}'


@pytest.mark.parametrize('spec', [s for s in MODELS if s.family == Family.MCLIP], ids=lambda s: s.name)
def test_mclip_image_towers_exist_in_open_clip(spec):
    assert open_clip.get_model_config(spec.arch)['embed_dim'] == spec.dim
    assert open_clip.get_pretrained_cfg(spec.arch, spec.tag)


@pytest.mark.parametrize(
    'alias, target',
    [('ViT-B/32', 'ViT-B-32::openai'), ('RN50', 'RN50::openai'), ('ViT-L/14@336px', 'ViT-L-14-336::openai')],
)
def test_legacy_aliases(alias, target):
    assert ALIASES[alias] == target
    assert lookup(alias) == lookup(target) and lookup(alias).name == target


def test_tag_spelling_with_dashes_or_underscores():
    assert lookup('ViT-B-32::laion2b_s34b_b79k') == lookup('ViT-B-32::laion2b-s34b-b79k')
    assert lookup('ViT-B-32::laion2b-e16').tag == 'laion2b_e16'


def test_other_open_clip_pretrained_names_work():
    spec = lookup('ViT-B-16::datacomp-xl-s13b-b90k')
    assert (spec.arch, spec.tag, spec.dim, spec.image_size) == ('ViT-B-16', 'datacomp_xl_s13b_b90k', 512, 224)


def test_bare_architecture_resolves_without_tag():
    spec = lookup('tiny-vit')
    assert spec.tag is None and spec.dim == 32


def test_unknown_name_lists_closest_names():
    with pytest.raises(UnknownModelError) as error:
        lookup('ViT-B-32::opnai')
    assert "'ViT-B-32::opnai'" in str(error.value)
    assert 'ViT-B-32::openai' in str(error.value)


def test_known_names_lists_table_first_without_duplicates():
    names = known_names()
    assert names[0] == MODELS[0].name
    assert len(names) == len(set(names))


@pytest.fixture
def registered():
    """A name registered for one test, and forgotten after it."""
    from clip_server.model.registry import ModelSpec, register, unregister

    spec = ModelSpec('my-finetune::v1', 'tiny-vit', None, 32, 224)
    register(spec)
    yield spec
    unregister(spec.name)
    with pytest.raises(UnknownModelError):
        lookup(spec.name)


def test_register_makes_a_new_name_servable(registered):
    assert lookup('My-Finetune::V1') == registered
    assert registered.name in known_names()


def test_registered_names_are_suggested(registered):
    with pytest.raises(UnknownModelError, match='my-finetune::v1'):
        lookup('my-finetune::v2')


def test_names_are_canonical_whatever_the_spelling():
    """Caches are keyed by the name: `datacomp-xl` and `datacomp_xl` must be one model."""
    dashes, underscores = lookup('ViT-B-16::datacomp-xl-s13b-b90k'), lookup('vit-b-16::DATACOMP_XL_S13B_B90K')
    assert dashes == underscores and dashes.name == 'ViT-B-16::datacomp_xl_s13b_b90k'
    assert lookup('TINY-VIT').name == 'tiny-vit'


def test_families_follow_the_text_tower():
    assert lookup('xlm-roberta-base-ViT-B-32::laion5b-s13b-b90k').family is Family.HF_TEXT
    assert lookup('roberta-ViT-B-32::laion2b_s12b_b32k').family is Family.HF_TEXT
    assert lookup('ViT-B-32::openai').family is Family.OPEN_CLIP
    for spec in MODELS:
        if spec.family is not Family.MCLIP:
            has_hf_text = 'hf_model_name' in open_clip.get_model_config(spec.arch)['text_cfg']
            assert (spec.family is Family.HF_TEXT) == has_hf_text, spec.name
