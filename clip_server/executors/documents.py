"""What a client's Document holds, seen as model input: a text, an image, or nothing."""

from __future__ import annotations

import enum

import numpy as np
from docarray import Document, DocumentArray
from PIL import Image

from clip_server.executors.content import bytes_from_data_uri, image_from_array, image_from_bytes
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


def split_by_modality(docs: DocumentArray) -> dict[Modality, list[Document]]:
    groups: dict[Modality, list[Document]] = {m: [] for m in Modality}
    for doc in docs:
        groups[modality(doc)].append(doc)
    return groups


def text_of(doc: Document) -> str:
    if doc.text:
        return doc.text
    return bytes_from_data_uri(doc.uri).decode('utf-8', errors='replace')


def image_of(doc: Document) -> Image.Image:
    """Decode whichever image content the document carries; errors name the document."""
    try:
        if doc.blob:
            return image_from_bytes(doc.blob)
        if doc.tensor is not None:
            return image_from_array(_as_uint8(np.asarray(doc.tensor)))
        return image_from_bytes(bytes_from_data_uri(doc.uri))
    except InvalidInputError as exc:
        raise InvalidInputError(f'document {doc.id}: {exc}') from exc


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
