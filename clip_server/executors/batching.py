"""Cross-request batching inside the encoder: the requests in flight share model calls.

A model call starts as soon as the model is free, with every item waiting for it (up to the
minibatch size): while one call runs, the items of requests arriving meanwhile gather for the
next. So a lone request never waits for company, and under load the batches fill by themselves.
A call takes the waiting requests' items in turn, one each, so that a search query arriving
behind a thousand-image indexing request rides in the next call, not after all of them.

Why not jina's own dynamic batching (`uses_dynamic_batching`): it waits up to its timeout for a
fuller batch (10 ms per call when requests are fewer than its batch size), it serves its batches
one after another with the requests of the next locked out meanwhile, and it fails every request of
a batch when one call raises, which took a second executor (`InputErrors`) and a network hop per
request to fail only the request that sent a bad document. Here each request's own coroutine reads
its documents and raises its own error; only a failure of the model call itself reaches every
request whose items were in it. docs/benchmark.md ("Where a request's time goes") has the figures.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

Item = TypeVar('Item')
Result = TypeVar('Result')


class ModelQueue(Generic[Item, Result]):
    """Items of any number of requests, computed `max_batch` at a time on the model's thread.

    `compute` takes a list of items and returns one result per item, in order. The thread is
    shared by every queue of one model (texts and images), so the model runs one call at a time
    and the event loop stays free to take requests and send answers while it does.
    """

    def __init__(
        self, compute: Callable[[list[Item]], Sequence[Result]], max_batch: int, model_thread: ThreadPoolExecutor
    ):
        self._compute = compute
        self._max_batch = max_batch
        self._model_thread = model_thread
        self._waiting: deque[deque[tuple[Item, asyncio.Future]]] = deque()  # a queue per request, in turn
        self._drainer: asyncio.Task | None = None  # held: the event loop keeps only weak references to tasks

    async def results(self, items: Sequence[Item]) -> list[Result]:
        """One result per item, once the calls holding them have run."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        if items:
            self._waiting.append(deque(zip(items, futures, strict=True)))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        """Run calls while items wait; the items of a request that left meanwhile are skipped."""
        loop = asyncio.get_running_loop()
        try:
            while batch := self._next_batch():
                try:
                    results = await loop.run_in_executor(self._model_thread, self._compute, [i for i, _ in batch])
                except Exception as exc:  # the model's own failure: every request in this call hears of it
                    _settle(batch, exc)
                else:
                    _settle(batch, results)
        finally:
            self._drainer = None

    def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        """Up to `max_batch` items, one from each waiting request in turn."""
        batch: list[tuple[Item, asyncio.Future]] = []
        while self._waiting and len(batch) < self._max_batch:
            request = self._waiting.popleft()
            item, future = request.popleft()
            if future.done():  # cancelled: its client is gone, and its other items with it
                continue
            batch.append((item, future))
            if request:
                self._waiting.append(request)
        return batch


def _settle(batch: Sequence[tuple[object, asyncio.Future]], outcome: Sequence | Exception) -> None:
    for index, (_, future) in enumerate(batch):
        if future.done():
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome[index])
