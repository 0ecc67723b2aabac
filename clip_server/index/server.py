"""The Flow as the indexing command uses it: `/sources`, `/index` and `/delete`, through jina's
client (gRPC or HTTP), the token sent as clip_client sends it. Each protocol fails in
its own way; here every failure becomes one of two: the request was refused (`Refused`: its
message names the document), or the server cannot be used at all (`Unusable`: stop)."""

from __future__ import annotations

from docarray import Document, DocumentArray
from jina import Client
from jina.clients.grpc import GRPCClient
from jina.excepts import BadServer

from clip_server.gateway.auth import REFUSAL
from clip_server.wire import CURSOR, DELETE, INDEX, LIMIT, NEXT_TAG, SHA256_TAG, SOURCE_TAG, SOURCES

PAGE = 1000  # ids per /sources and /delete request (max_search_limit and max_docs_per_request allow it)


class Refused(Exception):
    """The server refused one request, saying why (a document it cannot read, a limit)."""


class Unusable(Exception):
    """The server cannot be used: unreachable, not a search Flow, or the token refused."""


class Flow:
    """One search Flow at `url` (`grpc://host:port` or `http://host:port`; `grpcs://`, `https://`)."""

    def __init__(self, url: str, token: str | None):
        self.url = url
        self._client = Client(host=url)
        self._client.logger.logger.disabled = True  # it logs each failure whole; this command reports them
        if not token:
            self._credential: dict[str, object] = {}
        elif isinstance(self._client, GRPCClient):  # grpc://, grpcs:// or a bare host:port
            self._credential = {'metadata': (('authorization', token),)}
        else:
            self._credential = {'headers': {'Authorization': token}}

    def stored(self) -> dict[str, tuple[str, str]]:
        """Each document the index holds from a file: id -> (file, content hash)."""
        found: dict[str, tuple[str, str]] = {}
        cursor = ''
        while True:
            page = self._post(SOURCES, DocumentArray([Document()]), {CURSOR: cursor, LIMIT: PAGE})
            if not page or NEXT_TAG not in page[0].tags:
                raise Unusable(f'{self.url} has no search index: serve a Flow with CLIPIndexer (search-flow.yml)')
            found.update({entry.id: (entry.tags[SOURCE_TAG], entry.tags[SHA256_TAG]) for entry in page[0].matches})
            cursor = page[0].tags[NEXT_TAG]
            if not cursor:
                return found

    def index(self, docs: DocumentArray) -> None:
        """Send `docs` to `/index` in one request; `Refused` names what the server would not take."""
        self._post(INDEX, docs, {})

    def delete(self, ids: list[str]) -> None:
        """Remove these documents from the index, `PAGE` ids a request (the gateway's documents limit)."""
        for start in range(0, len(ids), PAGE):
            self._post(DELETE, DocumentArray(Document(id=doc_id) for doc_id in ids[start : start + PAGE]), {})

    def _post(self, endpoint: str, docs: DocumentArray, parameters: dict) -> DocumentArray:
        try:
            return self._client.post(endpoint, docs, request_size=len(docs), parameters=parameters, **self._credential)
        except Exception as error:  # each protocol raises its own kinds: sorted out by `_failure`
            raise _failure(error, self.url) from error


def _failure(error: Exception, url: str) -> Exception:
    """What a failed call means: a refusal of the request (a message from the Flow), the token
    refused, or no server to talk to."""
    message = _message(error)
    if REFUSAL in message or 'UNAUTHENTICATED' in message:
        return Unusable(f'{url} refused the token: pass the right one with --token (or CLIP_AUTH_TOKEN)')
    answered = isinstance(error, BadServer) or (isinstance(error, ValueError) and isinstance(error.args[0], dict))
    if answered or 'RESOURCE_EXHAUSTED' in message:  # gRPC's refusal of a request over max_request_bytes
        return Refused(message)
    return Unusable(f'cannot use {url}: {message}')


def _message(error: Exception) -> str:
    """The Flow's own words: an executor's error (gRPC's BadServer carries the response header,
    HTTP a ValueError with the response's JSON), a refusal's `detail`, else the error's first line."""
    answer = error.args[0] if error.args else None
    if isinstance(error, BadServer) and answer is not None and hasattr(answer, 'status'):
        return _first(list(answer.status.exception.args) or [answer.status.description])
    if isinstance(answer, dict):
        status = answer.get('header', {}).get('status', {})
        return _first(status.get('exception', {}).get('args') or [status.get('description') or answer.get('detail')])
    return _first([str(error)])


def _first(lines: list) -> str:
    text = str(lines[0] if lines else '') or 'no reason given'
    return next(iter(text.strip().splitlines()), text)
