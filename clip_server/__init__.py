"""clip_server: a CLIP embedding service on a Jina Flow."""

__version__ = '0.1.0'
