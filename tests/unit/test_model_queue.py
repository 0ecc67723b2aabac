"""ModelQueue: the requests in flight share model calls, each gets its own results, and a call
starts as soon as the model is free."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from clip_server.executors.batching import ModelQueue


class Recorder:
    """A model that doubles numbers and remembers each call's items; `gate` holds the first call."""

    def __init__(self):
        self.calls: list[list[int]] = []
        self.gate = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        if len(self.calls) == 1:
            self.gate.wait(5)
        if -1 in items:
            raise RuntimeError('the model broke')
        return [item * 2 for item in items]


@pytest.fixture
def thread():
    with ThreadPoolExecutor(1) as pool:
        yield pool


def test_a_lone_request_runs_at_once_and_gets_its_own_results(thread):
    model = Recorder()
    model.gate.set()
    queue = ModelQueue(model, 4, thread)
    assert asyncio.run(queue.results([1, 2, 3])) == [2, 4, 6]
    assert model.calls == [[1, 2, 3]]


def sent_during_a_held_call(model: Recorder, queue: ModelQueue, requests: list[list[int]]) -> list[list[int]]:
    """The results of `requests`, sent one after another while a first call ([0]) is held by the gate."""

    async def scenario():
        first = asyncio.ensure_future(queue.results([0]))
        await asyncio.sleep(0.05)  # the first call is running, held by the gate
        later = [asyncio.ensure_future(queue.results(items)) for items in requests]
        await asyncio.sleep(0.05)
        model.gate.set()
        assert await first == [0]
        return await asyncio.gather(*later)

    return asyncio.run(scenario())


def test_requests_arriving_during_a_call_share_the_next_one_up_to_the_batch_size(thread):
    model = Recorder()
    later = sent_during_a_held_call(model, ModelQueue(model, 4, thread), [[n, n + 1] for n in (10, 20, 30)])
    assert later == [[20, 22], [40, 42], [60, 62]]
    assert model.calls == [[0], [10, 20, 30, 11], [21, 31]]  # the requests' items in turn


def test_a_request_arriving_behind_a_large_one_rides_in_the_next_call(thread):
    model = Recorder()
    large, query = sent_during_a_held_call(model, ModelQueue(model, 4, thread), [list(range(100, 112)), [7]])
    assert query == [14] and large == [n * 2 for n in range(100, 112)]
    assert model.calls[1] == [100, 7, 101, 102]
    assert model.calls[2:] == [[103, 104, 105, 106], [107, 108, 109, 110], [111]]


def test_an_empty_request_gets_an_empty_answer(thread):
    model = Recorder()
    model.gate.set()
    assert asyncio.run(ModelQueue(model, 4, thread).results([])) == []
    assert model.calls == []


def test_a_failing_call_fails_the_requests_in_it_and_the_queue_goes_on(thread):
    model = Recorder()
    model.gate.set()
    queue = ModelQueue(model, 2, thread)

    async def scenario():
        return await asyncio.gather(queue.results([-1]), queue.results([5]), return_exceptions=True)

    broken, fine = asyncio.run(scenario())
    assert isinstance(broken, RuntimeError) and 'the model broke' in str(broken)
    assert fine == [10] or isinstance(fine, RuntimeError)  # it may have shared the broken call
    assert asyncio.run(queue.results([7])) == [14]


def test_the_items_of_a_cancelled_request_are_not_computed(thread):
    model = Recorder()
    queue = ModelQueue(model, 8, thread)

    async def scenario():
        first = asyncio.ensure_future(queue.results([1]))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(queue.results([100, 101]))
        kept = asyncio.ensure_future(queue.results([3]))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.gate.set()
        return await first, await kept

    assert asyncio.run(scenario()) == ([2], [6])
    assert model.calls == [[1], [3]]
