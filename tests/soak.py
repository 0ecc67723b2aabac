"""Soak: concurrent clients over every protocol, mixed texts, images, /rank and bad input, for a while.

Every answer is checked; the only failures allowed are the deliberate bad requests, which must
fail with their reason while everyone else is served. The encoder's memory is sampled throughout,
and the run fails if it grew 10% or more from the first quarter to the last.

    python -m clip_server flow.yml &   # serving grpc, http and websocket
    python tests/soak.py grpc://127.0.0.1:51000 http://127.0.0.1:51001 websocket://127.0.0.1:51002 \\
        --server-pid $! --seconds 600 --clients 8

The test suite runs the same for a few seconds (tests/e2e/test_soak.py).
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helpers import encoded, sample_image

BAD_EVERY = 10  # one deliberate bad request in this many, from gRPC clients (whose errors carry the reason)
RSS_GROWTH_LIMIT = 0.10


def _picture(rng: random.Random) -> bytes:
    return encoded(sample_image(rng.randrange(1 << 30), size=(64, 48)))


def _texts(rng: random.Random, count: int) -> list[str]:
    words = ['a', 'photo', 'of', 'dog', 'cat', 'red', 'car', 'on', 'the', 'beach', 'at', 'night', 'Straße', '東京']
    return [' '.join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(count)]


@dataclass
class Tally:
    requests: int = 0
    refused_as_expected: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, error: str | None = None, expected: bool = False) -> None:
        with self.lock:
            self.requests += 1
            self.refused_as_expected += expected
            if error:
                self.errors.append(error)


def _one_request(client, rng: random.Random, bad_allowed: bool) -> bool:
    """Send one random request and check its answer; True if it was a deliberate bad one."""
    from docarray import Document, DocumentArray

    kind = rng.randrange(BAD_EVERY if bad_allowed else BAD_EVERY - 1)
    if kind == BAD_EVERY - 1:
        docs = DocumentArray([Document(text='fine'), Document(id='soak-corrupt', blob=b'\x89PNG\r\n\x1a\n broken')])
        try:
            client.encode(docs, show_progress=False)
        except Exception as exc:  # the refusal itself is what is checked here
            if 'document soak-corrupt: cannot decode image' not in str(exc):
                raise AssertionError(f'bad request refused without its reason: {str(exc)[:300]}') from exc
            return True
        raise AssertionError('a corrupt image was accepted')
    if kind < 4:
        texts = _texts(rng, rng.randint(1, 8))
        embeddings = client.encode(texts, show_progress=False)
        assert embeddings.shape[0] == len(texts) and np.isfinite(embeddings).all()
    elif kind < 7:
        docs = DocumentArray([Document(blob=_picture(rng)) for _ in range(rng.randint(1, 3))])
        result = client.encode(docs, show_progress=False)
        assert all(doc.embedding is not None and np.isfinite(doc.embedding).all() for doc in result)
    else:
        query = Document(text=_texts(rng, 1)[0], matches=[Document(blob=_picture(rng)) for _ in range(3)])
        ranked = client.rank([query], show_progress=False)[0].matches
        scores = [match.scores['clip_score'].value for match in ranked]
        assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4
    return False


def _client_loop(address: str, seed: int, deadline: float, tally: Tally) -> None:
    from clip_client import Client

    client, rng = Client(address), random.Random(seed)
    while time.monotonic() < deadline:
        try:
            expected = _one_request(client, rng, bad_allowed=address.startswith('grpc'))
            tally.add(expected=expected)
        except Exception as exc:  # every failure is recorded, with the client that saw it
            tally.add(error=f'{address}: {type(exc).__name__}: {str(exc)[:300]}')


def descendants(pid: int, proc: Path = Path('/proc')) -> list[int]:
    """The process's children, their children, and so on (Linux)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for children in (proc / str(parent) / 'task').glob('*/children'):
            try:
                kids = [int(child) for child in children.read_text().split()]
            except OSError:
                continue
            found += kids
            queue += kids
    return found


def resident_bytes(pid: int) -> int:
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def encoder_rss(server_pid: int) -> int:
    """Resident memory of the server's largest process: the encoder (it holds the model)."""
    return max((resident_bytes(pid) for pid in descendants(server_pid)), default=0)


@dataclass(frozen=True)
class SoakResult:
    requests: int
    refused_as_expected: int
    errors: list[str]
    rss_growth: float  # from the mean of the first quarter's samples to the last quarter's

    @property
    def passed(self) -> bool:
        return not self.errors and self.rss_growth < RSS_GROWTH_LIMIT

    def __str__(self) -> str:
        lines = [
            f'{self.requests} requests, {self.refused_as_expected} deliberate bad ones refused with their reason, '
            f'{len(self.errors)} errors; encoder RSS growth {self.rss_growth:+.1%} (limit {RSS_GROWTH_LIMIT:.0%})'
        ]
        return '\n'.join(lines + [f'  {error}' for error in self.errors[:20]])


def soak(addresses: list[str], seconds: float, clients: int, rss: Callable[[], int]) -> SoakResult:
    """`clients` threads spread over `addresses` for `seconds`; `rss()` is sampled twice a second."""
    tally, samples, deadline = Tally(), [], time.monotonic() + seconds
    threads = [
        threading.Thread(target=_client_loop, args=(addresses[i % len(addresses)], i, deadline, tally), daemon=True)
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    while time.monotonic() < deadline:
        samples.append(rss())
        time.sleep(0.5)
    for thread in threads:
        thread.join(timeout=120)
    quarter = max(1, len(samples) // 4)
    first, last = np.mean(samples[:quarter]), np.mean(samples[-quarter:])
    return SoakResult(
        tally.requests, tally.refused_as_expected, tally.errors, float(last / first - 1) if first else 0.0
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('addresses', nargs='+', help='e.g. grpc://127.0.0.1:51000 http://127.0.0.1:51001')
    parser.add_argument('--server-pid', type=int, required=True, help='the pid of `python -m clip_server`')
    parser.add_argument('--seconds', type=float, default=600)
    parser.add_argument('--clients', type=int, default=8)
    args = parser.parse_args()
    result = soak(args.addresses, args.seconds, args.clients, lambda: encoder_rss(args.server_pid))
    print(result)
    return 0 if result.passed else 1


if __name__ == '__main__':
    sys.exit(main())
