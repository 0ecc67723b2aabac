"""The web page at `GET /ui`: search the Flow's index, rank labels against an image, encode.

A person who has just started the server should see CLIP work without writing Python. The page
is three files in `assets/` (HTML, one script, one style sheet), served by the server itself:
nothing is fetched from elsewhere, so it works offline. The files hold no data and are served
before token auth (`UIPage`), since a browser's navigation cannot carry an `Authorization`
header. Everything the page shows comes from `/ui/api/*`, JSON routes behind the token like any
other data path, which send documents through the gateway's streamer as `/post` does: auth, the
limits, the overload bound, batching and replicas apply unchanged. Images travel as the bytes
the browser read (a `data:` URI), never as a path or URL for the server to open. Errors answer
`{"detail": message}` with the HTTP status that fits; the page shows the message.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from docarray import Document, DocumentArray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from clip_server.gateway.errors import ANSWERS, ErrorKind, error_body
from clip_server.gateway.flow_requests import FlowRequestError, send
from clip_server.gateway.openai_api import OpenAIError, json_object
from clip_server.wire import (
    COUNT,
    COUNT_TAG,
    DIM_TAG,
    DROP_IMAGE_CONTENT,
    ENCODE,
    LIMIT,
    MODEL_INFO,
    MODEL_TAG,
    PREVIEW_TAG,
    PREVIEWS,
    RANK,
    SEARCH,
    SOURCE_TAG,
)

ASSETS = Path(__file__).parent / 'assets'
PAGE_FILES = {'/ui': 'index.html', '/ui/': 'index.html', '/ui/app.js': 'app.js', '/ui/style.css': 'style.css'}
CONTENT_TYPES = {'.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css'}
# The page runs its own script and style only; previews and the chosen image are data:/blob: URIs.
PAGE_HEADERS = (
    (b'content-security-policy', b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'"),
    (b'x-content-type-options', b'nosniff'),
    (b'cache-control', b'no-cache'),
)
MAX_LABELS = 100  # labels ranked in one go: a zero-shot demo, not a bulk API (that is /rank itself)
MAX_RESULTS = 100  # search results on the page
HEAD = 8  # embedding values shown by encode
API_PATHS = '/ui/api/'  # the page's JSON routes, behind auth like every data path


class UIError(Exception):
    """A refusal answered as `{"detail": message}` with its kind's HTTP status."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind = kind

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(API_PATHS, self.kind, str(self)), ANSWERS[self.kind].http_status)


class UIPage:
    """ASGI middleware that serves the page's files (read once) and passes every other request on."""

    def __init__(self, app):
        self.app = app
        self._files = {path: (ASSETS / name).read_bytes() for path, name in PAGE_FILES.items()}

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http' or scope['method'] not in ('GET', 'HEAD') or scope['path'] not in PAGE_FILES:
            return await self.app(scope, receive, send)
        body = self._files[scope['path']]
        kind = CONTENT_TYPES[Path(PAGE_FILES[scope['path']]).suffix] + '; charset=utf-8'
        headers = [(b'content-type', kind.encode()), (b'content-length', str(len(body)).encode()), *PAGE_HEADERS]
        await send({'type': 'http.response.start', 'status': 200, 'headers': headers})
        await send({'type': 'http.response.body', 'body': body if scope['method'] == 'GET' else b''})


class UIRoutes:
    """The page's JSON routes, bound to the gateway's streamer."""

    def __init__(self, streamer, served_endpoints: Callable[[], Awaitable[list[str]]]):
        self._streamer = streamer
        self._served_endpoints = served_endpoints
        self._model: dict | None = None

    def install(self, app: FastAPI) -> None:
        """Add the routes to jina's HTTP app (left out of its OpenAPI schema: they are the page's own)."""
        app.add_api_route(f'{API_PATHS}info', self.info, methods=['GET'], include_in_schema=False)
        for name in ('search', 'rank', 'encode'):
            app.add_api_route(f'{API_PATHS}{name}', self._answering(name), methods=['POST'], include_in_schema=False)

    async def info(self) -> JSONResponse:
        """The model, its dimension, and whether the Flow has an index (then how many documents)."""
        try:
            model = await self._model_info()
            search = SEARCH in await self._served_endpoints()
            count = int((await self._send(Document(), COUNT, {}))[0].tags[COUNT_TAG]) if search else None
        except UIError as error:
            return error.response()
        return JSONResponse({**model, 'search': search, 'count': count})

    def _answering(self, name: str) -> Callable[[Request], Awaitable[JSONResponse]]:
        """The route of one tool: the body read as a JSON object, the tool's answer timed, errors as `detail`."""
        answer = getattr(self, f'_{name}')

        async def route(request: Request) -> JSONResponse:
            try:
                body = json_object(await request.body())
                started = time.perf_counter()
                result = await answer(body)
            except OpenAIError as error:  # the body is not a JSON object
                return UIError(error.kind, str(error)).response()
            except UIError as error:
                return error.response()
            return JSONResponse({**result, 'took_ms': round((time.perf_counter() - started) * 1000, 1)})

        return route

    async def _search(self, body: dict) -> dict:
        limit = _count(body.get('limit', 12), 'limit', MAX_RESULTS)
        query = (await self._send(_query(body), SEARCH, {LIMIT: limit, PREVIEWS: True}))[0]
        return {'matches': [_found(match) for match in query.matches]}

    async def _rank(self, body: dict) -> dict:
        labels = body.get('labels')
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise UIError(ErrorKind.INVALID, 'labels must be a list of texts, one label each')
        labels = [label.strip() for label in labels if label.strip()]
        if not labels:
            raise UIError(ErrorKind.INVALID, 'give at least one label to rank')
        if len(labels) > MAX_LABELS:
            raise UIError(ErrorKind.TOO_LARGE, f'{len(labels)} labels, over the {MAX_LABELS} this page ranks at once')
        query = _query(body)
        query.matches = DocumentArray(Document(id=f'label {i}', text=label) for i, label in enumerate(labels, 1))
        ranked = (await self._send(query, RANK, {DROP_IMAGE_CONTENT: True}))[0].matches
        return {'ranked': [_scored(match) for match in ranked]}

    async def _encode(self, body: dict) -> dict:
        model = await self._model_info()
        doc = (await self._send(_query(body), ENCODE, {DROP_IMAGE_CONTENT: True}))[0]
        vector = np.asarray(doc.embedding, dtype=np.float32)
        return {**model, 'norm': float(np.linalg.norm(vector)), 'head': [round(float(v), 4) for v in vector[:HEAD]]}

    async def _model_info(self) -> dict:
        """The served model's name and dimension, asked once (only the encoder knows them)."""
        if self._model is None:
            tags = (await self._send(Document(), MODEL_INFO, {}))[0].tags
            self._model = {'model': tags[MODEL_TAG], 'dim': int(tags[DIM_TAG])}
        return self._model

    async def _send(self, doc: Document, endpoint: str, parameters: dict) -> DocumentArray:
        """One document through the Flow; a failed request becomes a UIError with its message."""
        try:
            response = await send(self._streamer, DocumentArray([doc]), endpoint, parameters, ErrorKind.NO_RESPONSE)
        except FlowRequestError as error:
            raise UIError(error.kind, str(error)) from None
        return response.docs


def _query(body: dict) -> Document:
    """The query of a request body: `{"text": ...}` or `{"image": "data:image/...;base64,..."}`."""
    text, image = body.get('text'), body.get('image')
    if (text is None) == (image is None):
        raise UIError(ErrorKind.INVALID, 'send either text or image, not both or neither')
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise UIError(ErrorKind.INVALID, 'text must be a non-empty string')
        return Document(id='query', text=text)
    if not isinstance(image, str) or not image.startswith('data:image/'):
        raise UIError(
            ErrorKind.INVALID, 'image must be the picture itself as a data:image/... URI (the server opens no paths)'
        )
    return Document(id='query', uri=image)


def _count(value, name: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise UIError(ErrorKind.INVALID, f'{name} must be a whole number from 1 to {most}, got {value!r:.32}')
    return value


def _found(match: Document) -> dict:
    """A search result for the page: the score, what was stored with it, and its preview if any."""
    return {
        'id': match.id,
        'score': match.scores['cosine'].value,
        'text': match.text,
        'uri': match.uri,
        'source': str(match.tags.get(SOURCE_TAG) or ''),
        'preview': str(match.tags.get(PREVIEW_TAG) or ''),
    }


def _scored(match: Document) -> dict:
    return {
        'label': match.text,
        'score': match.scores['clip_score'].value,
        'cosine': match.scores['clip_score_cosine'].value,
    }
