"""InputErrors: fails each request whose documents the encoder could not read, naming them.

Only for Flows that put jina's own dynamic batching (`uses_dynamic_batching`) on the encoder, as
Flows written for earlier releases did. The encoder batches across requests by itself (the bundled
Flows have neither this executor nor jina's batching), and then a request with an unreadable
document fails alone, with no executor after it.

Under jina's batching, one call of the encoder holds documents of several requests, and jina fails
every one of them when the call raises. So the encoder then does not raise for a corrupt image: it
tags the document with the reason and serves the rest. This executor comes next in the Flow, is
called once per request, and turns the tags into that request's own error. Keep it after an
encoder with `uses_dynamic_batching`: `py_modules: [clip_server.executors.input_errors]`,
`jtype: InputErrors`.
"""

from collections import deque
from collections.abc import Iterator
from typing import Any

from docarray import Document, DocumentArray
from jina import Executor, requests

from clip_server.executors.documents import summary
from clip_server.types import InvalidInputError
from clip_server.wire import ERROR_TAG


class InputErrors(Executor):
    """Raises for a request with tagged documents; passes every other request on untouched."""

    @requests
    def check(self, docs: DocumentArray, **kwargs: Any):  # no return annotation: jina reads it as a schema

        messages = [doc.tags[ERROR_TAG] for doc in _every_document(docs) if ERROR_TAG in doc.tags]
        if messages:
            raise InvalidInputError(summary(messages))


def _every_document(docs: DocumentArray) -> Iterator[Document]:
    """Each document, then the chunks and matches of each, at any depth, in order (docarray's
    `flatten()` would skip documents whose id it has seen)."""
    queue = deque(docs)
    while queue:
        doc = queue.popleft()
        yield doc
        queue.extend([*doc.chunks, *doc.matches])
