"""OpenAI's embeddings API on the HTTP gateway: `POST /v1/embeddings` and `GET /v1/models`.

Requests go through the same streamer as `/post`, so auth, limits, the overload bound, the
encoder's cross-request batches, replicas and metrics apply unchanged. An `input` item is a text,
an image as a `data:image/...;base64,` URI (told apart by that prefix, as NV-CLIP does), or an
object `{"text": ...}` / `{"image": <data URI, base64 or URL>}`; items may be mixed. Embeddings are
the model's own, as `clip_client` gets them (not normalised). Errors take OpenAI's shape, naming
the item (`input[3]`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from docarray import Document, DocumentArray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from clip_server.gateway.errors import ANSWERS, OPENAI_PATHS, ErrorKind, error_body
from clip_server.gateway.flow_requests import FlowRequestError, send
from clip_server.gateway.openai_models import (
    ITEM_SHAPES,
    Embedding,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorResponse,
    ImageItem,
    Item,
    ModelEntry,
    ModelList,
    TextItem,
    Usage,
)
from clip_server.gateway.remote_images import ImageFetching
from clip_server.model.registry import same_model
from clip_server.types import InvalidInputError
from clip_server.wire import COUNT_TOKENS, DIM_TAG, DROP_IMAGE_CONTENT, MODEL_INFO, MODEL_TAG, TOKENS_TAG

# What a batch of this route asks the encoder; the same for every call, so calls share batches.
ENCODE_PARAMETERS = {DROP_IMAGE_CONTENT: True, COUNT_TOKENS: True}
MODEL_NOT_FOUND = 'model_not_found'
# The routes in the app's OpenAPI schema: any error of the table may answer them, in OpenAI's shape.
OPENAPI: dict[str, Any] = {
    'tags': ['OpenAI'],
    'responses': {answer.http_status: {'model': ErrorResponse} for answer in ANSWERS.values()},
}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, kind: ErrorKind, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.kind, self.param, self.code = kind, param, code

    @property
    def status(self) -> int:
        return ANSWERS[self.kind].http_status

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(OPENAI_PATHS, self.kind, str(self), self.param, self.code), self.status)


@dataclass(frozen=True)
class ServedModel:
    name: str
    dim: int


class OpenAIRoutes:
    """The two routes, bound to the gateway's streamer."""

    def __init__(self, streamer, max_items: int, fetching: ImageFetching):
        self._streamer = streamer
        self._max_items = max_items
        self._fetching = fetching
        self._served: ServedModel | None = None

    def install(self, app: FastAPI) -> None:
        """The routes, their answers' shapes declared for the app's OpenAPI schema (`/docs`)."""
        app.add_api_route(
            '/v1/embeddings', self.embeddings, methods=['POST'], response_model=EmbeddingsResponse, **OPENAPI
        )
        app.add_api_route('/v1/models', self.models, methods=['GET'], response_model=ModelList, **OPENAPI)

    async def models(self) -> JSONResponse:
        try:
            served = await self._model()
        except OpenAIError as error:
            return error.response()
        return JSONResponse(ModelList(data=[ModelEntry(id=served.name)]).dict())

    async def embeddings(self, request: Request) -> JSONResponse:
        try:
            body = json_object(await request.body())
            served = await self._model()
            asked, docs = await asyncio.to_thread(self._read, body, served)
            await self._fetch_images(docs)
            encoded = await self._encode(docs)
        except OpenAIError as error:
            return error.response()
        return JSONResponse(_embeddings_response(encoded, served, asked.encoding_format).body())

    def _read(self, body: dict, served: ServedModel) -> tuple[EmbeddingsRequest, DocumentArray]:
        """The request and its documents, off the event loop: checking and decoding thousands of
        items takes a while."""
        asked = read_request(body, served, self._max_items)
        return asked, self._documents(asked.items())

    async def _model(self) -> ServedModel:
        """The model the encoder serves, asked once (only the executor knows it)."""
        if self._served is None:
            response = await self._send(DocumentArray([Document()]), MODEL_INFO, {})
            tags = response.docs[0].tags
            self._served = ServedModel(tags[MODEL_TAG], int(tags[DIM_TAG]))
        return self._served

    async def _encode(self, docs: DocumentArray) -> DocumentArray:
        return (await self._send(docs, '/', ENCODE_PARAMETERS)).docs

    async def _send(self, docs: DocumentArray, endpoint: str, parameters: dict):
        """One request through the gateway's streamer; an error response becomes an OpenAIError."""
        try:
            return await send(self._streamer, docs, endpoint, parameters, if_silent=ErrorKind.INTERNAL)
        except FlowRequestError as error:
            raise OpenAIError(error.kind, str(error), 'input') from None

    async def _fetch_images(self, docs: DocumentArray) -> None:
        """Each image URL's bytes into its document, the URLs fetched side by side (up to
        fetch_images.max_concurrent); a refusal names the item. A URL left unfetched would be refused
        by the encoder, which fetches nothing."""

        async def fetch_into(doc: Document) -> None:
            try:
                doc.blob = await self._fetching.fetch_async(doc.uri)
            except InvalidInputError as exc:
                raise OpenAIError(ErrorKind.INVALID, f'{doc.id}: {exc}', 'input') from exc
            doc.uri = ''

        await asyncio.gather(*(fetch_into(doc) for doc in docs if doc.uri.startswith(('http://', 'https://'))))

    def _documents(self, items: list[Item]) -> DocumentArray:
        """One document per item, id `input[i]` so that errors name the item."""
        docs = DocumentArray()
        for index, item in enumerate(items):
            doc_id = f'input[{index}]'
            try:
                docs.append(self._document(doc_id, item))
            except InvalidInputError as exc:
                raise OpenAIError(ErrorKind.INVALID, f'{doc_id}: {exc}', 'input') from exc
        return docs

    def _document(self, doc_id: str, item: Item) -> Document:
        if isinstance(item, str):
            is_image = item.startswith(('data:image/', 'http://', 'https://'))
            return self._image(doc_id, item) if is_image else _text(doc_id, item)
        if isinstance(item, TextItem):
            return _text(doc_id, item.text)
        if isinstance(item, ImageItem):
            return self._image(doc_id, item.image)
        raise InvalidInputError(
            'is a list of token ids; this server tokenizes for itself: send the text '
            "(LangChain's OpenAIEmbeddings: check_embedding_ctx_length=False)"
        )

    def _image(self, doc_id: str, image: str) -> Document:
        if image.startswith('data:image/'):
            return Document(id=doc_id, uri=image)
        if image.startswith('data:'):
            raise InvalidInputError(f'an image data URI must start with data:image/, not {image[:30]!r}')
        if image.startswith(('http://', 'https://')):
            return Document(id=doc_id, uri=image)  # fetched by _fetch_images, with the request's other URLs
        try:
            return Document(id=doc_id, blob=base64.b64decode(image, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise InvalidInputError('image is neither a data URI, a URL nor valid base64') from exc


def _text(doc_id: str, text: str) -> Document:
    if not text:
        raise InvalidInputError('is an empty string; send some text')
    return Document(id=doc_id, text=text)


def json_object(raw: bytes) -> dict:
    """A request body parsed as a JSON object, or the OpenAIError (invalid request) that says why not;
    the web page's routes read their bodies with it too."""
    try:
        body = json.loads(raw)
    except RecursionError as exc:  # Python's parser recurses per level: [[[[...]]]] runs out of stack
        raise OpenAIError(ErrorKind.INVALID, 'the request body is not valid JSON: nested too deeply') from exc
    except ValueError as exc:
        raise OpenAIError(ErrorKind.INVALID, f'the request body is not valid JSON: {exc}') from exc
    if not isinstance(body, dict):
        raise OpenAIError(ErrorKind.INVALID, 'the request body must be a JSON object')
    return body


def read_request(body: dict, served: ServedModel, max_items: int) -> EmbeddingsRequest:
    """The body as a request for the served model, within the item limit, or the OpenAIError that says why not."""
    _check_item_count(body.get('input'), max_items)  # first: pydantic would check every item of any list
    try:
        asked = EmbeddingsRequest.parse_obj(body)
    except ValidationError as error:
        raise _refusal(error, body, served) from None
    _check_model(asked, served)
    return asked


def _refusal(error: ValidationError, body: dict, served: ServedModel) -> OpenAIError:
    """The first field at fault (pydantic lists them in the model's order) said as this API says it:
    pydantic's own words name neither the served model nor what an item may be."""
    locations = [entry['loc'] for entry in error.errors()]
    field = str(locations[0][0])
    if field == 'model':
        return OpenAIError(ErrorKind.INVALID, f'model is required: this server serves {served.name}', 'model')
    if field == 'dimensions':
        return _wrong_dimensions(served)
    if field == 'encoding_format':
        wrong = body['encoding_format']
        return OpenAIError(ErrorKind.INVALID, f'encoding_format must be float or base64, got {wrong!r}', field)
    if field == 'input':
        # a list's item at fault is named; an input that is no list at all fails only as a whole
        item = next((loc[1] for loc in locations if loc[0] == 'input' and len(loc) > 1), None)
        message = 'input must be a string or a non-empty list' if item is None else f'input[{item}]: {ITEM_SHAPES}'
        return OpenAIError(ErrorKind.INVALID, message, 'input')
    return OpenAIError(ErrorKind.INVALID, f'{field}: {error.errors()[0]["msg"]}', field)


def _check_model(asked: EmbeddingsRequest, served: ServedModel) -> None:
    if not same_model(asked.model, served.name):
        raise OpenAIError(
            ErrorKind.NOT_FOUND,
            f'the model {asked.model!r} does not exist here: this server serves {served.name}',
            'model',
            MODEL_NOT_FOUND,
        )
    if asked.dimensions is not None and asked.dimensions != served.dim:
        raise _wrong_dimensions(served)


def _wrong_dimensions(served: ServedModel) -> OpenAIError:
    return OpenAIError(
        ErrorKind.INVALID,
        f'dimensions must be {served.dim} for {served.name}: CLIP embeddings cannot be shortened '
        '(the model was not trained for it); leave dimensions out',
        'dimensions',
    )


def _check_item_count(items: Any, max_items: int) -> None:
    if isinstance(items, list) and len(items) > max_items:
        raise OpenAIError(
            ErrorKind.TOO_LARGE,
            f'input has {len(items):,} items, over max_docs_per_request ({max_items:,})',
            'input',
            'too_many_items',
        )


def _embeddings_response(docs: DocumentArray, served: ServedModel, encoding: str) -> EmbeddingsResponse:
    """The answer, built unvalidated (`construct`): the values are the server's own, and checking
    each number of each vector would cost more than writing them."""
    data = [
        Embedding.construct(index=index, embedding=_encoded(doc.embedding, encoding)) for index, doc in enumerate(docs)
    ]
    tokens = sum(int(doc.tags.get(TOKENS_TAG, 0)) for doc in docs)  # images count no tokens
    usage = Usage.construct(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingsResponse.construct(data=data, model=served.name, usage=usage)


def _encoded(embedding, encoding: str) -> list[float] | str:
    vector = np.asarray(embedding, dtype='<f4')
    return base64.b64encode(vector.tobytes()).decode() if encoding == 'base64' else vector.tolist()
