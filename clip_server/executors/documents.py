"""What a client's Document holds, seen as model input: a text, an image, or nothing."""

from __future__ import annotations

import enum

import numpy as np
from docarray import Document, DocumentArray
from PIL import Image

from clip_server.executors.content import (
    DEFAULT_LIMITS,
    ContentLimits,
    bytes_from_data_uri,
    image_from_array,
    image_from_bytes,
)
from clip_server.types import InvalidInputError


class Modality(enum.Enum):
    TEXT = 'text'
    IMAGE = 'image'
    EMPTY = 'empty'


def modality(doc: Document) -> Modality:
    """Text wins over image content; a plain URI is refused, the server fetches nothing itself."""
    if doc.text:
        return Modality.TEXT
    if doc.blob or doc.tensor is not None:
        return Modality.IMAGE
    if doc.uri:
        if doc.uri.startswith('data:text/'):
            return Modality.TEXT
        if doc.uri.startswith('data:'):
            return Modality.IMAGE
        raise InvalidInputError(
            f'document {doc.id} has only a URI ({doc.uri[:100]}): the server does not read files or fetch URLs '
            'for clients; send the content itself (clip_client loads local files and URLs before sending)'
        )
    return Modality.EMPTY


# A document the encoder could not read, with the reason (naming the document).
Failure = tuple[Document, str]


def split_by_modality(docs: DocumentArray) -> tuple[dict[Modality, list[Document]], list[Failure]]:
    """The documents grouped by what they hold, and those that hold something not accepted."""
    groups: dict[Modality, list[Document]] = {m: [] for m in Modality}
    failed: list[Failure] = []
    for doc in docs:
        try:
            groups[modality(doc)].append(doc)
        except InvalidInputError as exc:
            failed.append((doc, str(exc)))
    return groups, failed


def summary(messages: list[str]) -> str:
    """One error message for a request with failed documents: the first reason, and how many more."""
    more = f' (and {len(messages) - 1} more documents could not be read)' if len(messages) > 1 else ''
    return messages[0] + more


def text_of(doc: Document, limits: ContentLimits = DEFAULT_LIMITS) -> str:
    if doc.text:
        return limits.check_text(doc.text)
    return limits.check_text(bytes_from_data_uri(doc.uri).decode('utf-8', errors='replace'))


def image_of(doc: Document, min_side: int | None = None, limits: ContentLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode whichever image content the document carries (see `image_from_bytes` for `min_side`)."""
    if doc.blob:
        return image_from_bytes(doc.blob, min_side, limits)
    if doc.tensor is not None:
        return image_from_array(_as_uint8(np.asarray(doc.tensor)), limits)
    return image_from_bytes(bytes_from_data_uri(doc.uri), min_side, limits)


def encoded_image_of(doc: Document) -> bytes | None:
    """The image file a document carries (its blob or data URI), or None for pixel arrays."""
    if doc.blob:
        return doc.blob
    return None if doc.tensor is not None else bytes_from_data_uri(doc.uri)


def _as_uint8(array: np.ndarray) -> np.ndarray:
    """JSON transports turn uint8 pixels into int64: take integers that fit a byte back."""
    if array.dtype != np.uint8 and np.issubdtype(array.dtype, np.integer) and array.size:
        if array.min() >= 0 and array.max() <= 255:
            return array.astype(np.uint8)
    return array


def drop_image_content(docs: list[Document]) -> None:
    """Spare the response the image bytes, pixels and image data URIs the client already has."""
    for doc in docs:
        doc.blob = None
        doc.tensor = None
        if doc.uri.startswith('data:') and not doc.uri.startswith('data:text/'):
            doc.uri = ''
