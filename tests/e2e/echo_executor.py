"""A tiny executor for CLI and gateway tests: starts in milliseconds, or slowly, or fails in
__init__; answers at once, or after the `delay` seconds a request asks for."""

import time

from jina import Executor, requests


class Echo(Executor):
    """Prefixes each Document's text with 'echo:'.

    `load_seconds` stands in for a slow model load; `fail` is raised as a ValueError at start-up;
    a request's `delay` parameter stands in for a long request.
    """

    def __init__(self, load_seconds: float = 0, fail: str = '', **kwargs):
        super().__init__(**kwargs)
        time.sleep(load_seconds)
        if fail:
            raise ValueError(fail)

    @requests
    def echo(self, docs, parameters, **kwargs):
        time.sleep(float(parameters.get('delay', 0)))
        for doc in docs:
            doc.text = f'echo:{doc.text}'
