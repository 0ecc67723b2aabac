"""Tiny open_clip architectures for fast tests, registered with open_clip on import.

A Flow YAML lists this file first in `py_modules`, so the executor process knows the
architectures before the CLIPEncoder resolves its model name.
"""

import json
import tempfile
from pathlib import Path

import open_clip

_TEXT = {'context_length': 77, 'vocab_size': 49408, 'width': 64, 'heads': 2, 'layers': 2}

CONFIGS = {
    'tiny-vit': {
        'embed_dim': 32,
        'vision_cfg': {'image_size': 224, 'layers': 2, 'width': 64, 'head_width': 32, 'patch_size': 32},
        'text_cfg': _TEXT,
    },
    'tiny-rn': {
        'embed_dim': 48,
        'quick_gelu': True,
        'vision_cfg': {'image_size': 64, 'layers': [1, 1, 1, 1], 'width': 16},
        'text_cfg': _TEXT,
    },
    # SigLIP's text tower: bidirectional, pooled at the last position (rows cannot be cut)
    'tiny-bidirectional': {
        'embed_dim': 32,
        'custom_text': True,
        'vision_cfg': {'image_size': 224, 'layers': 1, 'width': 64, 'head_width': 32, 'patch_size': 32},
        'text_cfg': {**_TEXT, 'no_causal_mask': True, 'pool_type': 'last'},
    },
    # MobileCLIP's shape: a timm FastViT image tower (re-parameterisable MobileOne blocks) and a
    # bidirectional text tower
    'tiny-mobileclip': {
        'embed_dim': 32,
        'vision_cfg': {
            'timm_model_name': 'fastvit_t8',
            'timm_model_pretrained': False,
            'timm_pool': 'avg',
            'timm_proj': 'linear',
            'image_size': 64,
        },
        'text_cfg': {**_TEXT, 'no_causal_mask': True},
    },
    # CoCa's shape: attentional pooling and a CLS token on the text side, beside a captioning decoder
    'tiny-coca': {
        'embed_dim': 32,
        'custom_text': True,
        'vision_cfg': {
            'image_size': 224,
            'layers': 1,
            'width': 64,
            'head_width': 32,
            'patch_size': 32,
            'attentional_pool': True,
            'attn_pooler_heads': 2,
            'output_tokens': True,
        },
        'text_cfg': {**_TEXT, 'context_length': 76, 'layers': 1, 'embed_cls': True, 'output_tokens': True},
        'multimodal_cfg': {**_TEXT, 'context_length': 76, 'layers': 1, 'attn_pooler_heads': 2},
    },
    # SigLIP's shape: a Hub tokenizer (trained on the fly, tests/tiny_hf.py) at a context of its own,
    # the bidirectional tower pooled last, and a sigmoid loss's logit bias
    'tiny-siglip': {
        'embed_dim': 32,
        'init_logit_bias': -10,
        'custom_text': True,
        'vision_cfg': {'image_size': 224, 'layers': 1, 'width': 64, 'head_width': 32, 'patch_size': 32},
        'text_cfg': {
            **_TEXT,
            'context_length': 16,
            'vocab_size': 300,
            'hf_tokenizer_name': 'tiny/siglip-tokenizer',
            'tokenizer_kwargs': {'clean': 'canonicalize'},
            'no_causal_mask': True,
            'pool_type': 'last',
            'proj_bias': True,
        },
    },
}


def register() -> None:
    folder = Path(tempfile.mkdtemp(prefix='clip-tiny-configs-'))
    for name, config in CONFIGS.items():
        (folder / f'{name}.json').write_text(json.dumps(config))
    open_clip.add_model_config(folder)


if 'tiny-vit' not in open_clip.list_models():
    register()
