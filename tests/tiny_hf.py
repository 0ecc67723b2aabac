"""Tiny Hugging Face stand-ins: tokenizers trained on the fly, random transformers, M-CLIP checkpoints.

Nothing can be downloaded in tests, so the files a Hub repo would hold are made here and either
written into a folder or "published" into a Hub cache layout under the server's cache root,
where `fetch_hf_file` finds them offline. Imported by a Flow (listed in `py_modules`), it also
makes the tiny M-CLIP models resolvable by name in the executor process.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

import tiny_models  # noqa: F401  (the tiny image towers)
from clip_server.model import registry
from clip_server.model.registry import ModelSpec
from clip_server.types import Family

CORPUS = [
    'a photo of a cat',
    'a photo of a dog on the grass',
    'ein Foto einer Katze',
    'ein Hund auf der Wiese',
    'hello world',
    'das ist ein schönes Bild',
    "une photo d'un chat",
    'two people riding bikes',
]
WIDTH = 32  # the tiny transformers' hidden size
COMMIT = '0' * 40

# Tiny M-CLIP models paired with the tiny ViT (32-d): one per kind of base transformer.
TINY_MCLIP = {
    'xlm-roberta': ModelSpec('M-CLIP/Tiny-XLMR-tiny-vit', 'tiny-vit', None, 32, 224, family=Family.MCLIP),
    'bert': ModelSpec('M-CLIP/Tiny-LaBSE-tiny-vit', 'tiny-vit', None, 32, 224, family=Family.MCLIP),
}
for _spec in TINY_MCLIP.values():
    registry.register(_spec)


def _tokenizer(kind: str) -> Tokenizer:
    """XLM-R style (unigram, <s> </s>, pad id 1) or BERT style (word pieces, [CLS] [SEP], pad id 0)."""
    if kind == 'bert':
        specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
        tokenizer = Tokenizer(models.WordPiece(unk_token='[UNK]'))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials)
        start, end = '[CLS]', '[SEP]'
    else:
        specials = ['<s>', '<pad>', '</s>', '<unk>', '<mask>']
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token='<unk>')
        start, end = '<s>', '</s>'
    tokenizer.train_from_iterator(CORPUS, trainer)
    ids = {token: tokenizer.token_to_id(token) for token in (start, end)}
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f'{start} $A {end}', special_tokens=list(ids.items())
    )
    return tokenizer


def save_tokenizer(kind: str, folder: Path) -> int:
    """Write tokenizer.json + tokenizer_config.json as `save_pretrained` does; returns the pad id."""
    from transformers import PreTrainedTokenizerFast

    bert = kind == 'bert'
    names = ('[CLS]', '[SEP]', '[PAD]', '[UNK]', '[MASK]') if bert else ('<s>', '</s>', '<pad>', '<unk>', '<mask>')
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(kind),
        **dict(zip(('cls_token', 'sep_token', 'pad_token', 'unk_token', 'mask_token'), names, strict=True)),
    )
    tokenizer.save_pretrained(str(folder))
    return tokenizer.pad_token_id


def base_config(kind: str, vocab_size: int = 300) -> dict:
    """A tiny XLM-RoBERTa or BERT config.json, in the shape of the real base models'."""
    from transformers import BertConfig, XLMRobertaConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    if kind == 'bert':
        config = BertConfig(max_position_embeddings=80, pad_token_id=0, type_vocab_size=2, **common)
    else:  # RoBERTa positions start after the pad id: 77 tokens need 79 positions
        config = XLMRobertaConfig(
            max_position_embeddings=80, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, **common
        )
    return config.to_dict()


def write_mclip_checkpoint(kind: str, folder: Path, model_base: str, dim: int = 32, seed: int = 0) -> dict:
    """An M-CLIP repo's files (config.json, pytorch_model.bin, tokenizer) in `folder`, as the
    original code saved them: the transformer with its pooler and its position-ids buffer.

    Returns the modules and the base config, for reference computations."""
    from transformers import AutoConfig, AutoModel

    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(kind, folder)
    config = base_config(kind)
    torch.manual_seed(seed)
    transformer = AutoModel.from_config(AutoConfig.for_model(**config)).eval()
    projection = torch.nn.Linear(WIDTH, dim)
    state = {f'transformer.{key}': value for key, value in transformer.state_dict().items()}
    state['transformer.embeddings.position_ids'] = torch.arange(config['max_position_embeddings'])[None]
    state.update({f'LinearTransformation.{key}': value for key, value in projection.state_dict().items()})
    torch.save(state, folder / 'pytorch_model.bin')
    mclip = {
        'architectures': ['MultilingualCLIP'],
        'model_type': 'M-CLIP',
        'modelBase': model_base,
        'transformerDimensions': WIDTH,
        'numDims': dim,
    }
    (folder / 'config.json').write_text(json.dumps(mclip))
    return {'transformer': transformer, 'projection': projection, 'config': config}


def write_base_config(kind: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'config.json').write_text(json.dumps(base_config(kind)))


def publish(cache_root: Path, repo_id: str, folder: Path, absent: tuple[str, ...] = ()) -> None:
    """Lay `folder`'s files out as huggingface_hub caches a repo, with `absent` files marked as
    missing from the repo (as the hub cache records a 404)."""
    repo = cache_root / f'models--{repo_id.replace("/", "--")}'
    (repo / 'refs').mkdir(parents=True, exist_ok=True)
    (repo / 'refs' / 'main').write_text(COMMIT)
    snapshot = repo / 'snapshots' / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.is_file():
            (snapshot / path.name).write_bytes(path.read_bytes())
    for name in absent:
        marker = repo / '.no_exist' / COMMIT / name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


SIGLIP_TOKENIZER = 'tiny/siglip-tokenizer'  # what tiny_models' tiny-siglip config names


def publish_siglip_tokenizer(cache_root: Path) -> Path:
    """The tiny SigLIP's tokenizer, published into a Hub cache under `cache_root`; returns its folder."""
    from clip_server.model.families.hf_tokenizer import TOKENIZER_EXTRAS

    folder = cache_root.parent / 'siglip-tokenizer'
    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer('xlm-roberta', folder)  # unigram with <s> </s>, as sentencepiece tokenizers are
    absent = tuple(name for name in TOKENIZER_EXTRAS if not (folder / name).exists())
    publish(cache_root, SIGLIP_TOKENIZER, folder, absent=absent)
    return folder
