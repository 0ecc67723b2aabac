"""InputErrors: fails each request whose documents the encoder could not read, naming them.

With cross-request batching (jina's `uses_dynamic_batching` on the encoder), one call of the
encoder holds documents of several requests, and jina fails every one of them when the call
raises. So a batched encoder does not raise for a corrupt image: it tags the document with
the reason and serves the rest. This executor comes next in the Flow, is called once per
request, and turns the tags into that request's own error. Add it after a batched encoder:
`py_modules: [clip_server.executors.input_errors]`, `jtype: InputErrors`.
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
