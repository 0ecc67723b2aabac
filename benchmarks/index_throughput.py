"""The search Flow's index alone (no model, no server): documents stored per second, search latency
p50/p99 for single queries, and the time to reopen, at each size asked for.

Random 512-d vectors (ViT-B-32's size) stand in for embeddings: the index's speed does not depend
on where they came from. Below `exact_below` the search is exact; the default 20,000 makes 10k exact
and 100k HNSW, as a server with default options would.

    python benchmarks/index_throughput.py --sizes 10000 100000
"""

import argparse
import tempfile
import time

import numpy as np

from clip_server.search.store import Item
from clip_server.search.vector_store import VectorStore

BATCH = 64  # documents per /index request, as clip_client sends them (its batch_size default is 8-64)


def measure(size: int, dim: int, queries: int, exact_below: int) -> str:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        store = VectorStore(folder, exact_below=exact_below)
        started = time.perf_counter()
        for start in range(0, size, BATCH):
            vectors = rng.standard_normal((min(BATCH, size - start), dim), dtype=np.float32)
            store.add([Item(f'doc{start + i}', v, {'text': f'text {start + i}'}) for i, v in enumerate(vectors)])
        stored_per_second = size / (time.perf_counter() - started)
        latencies = []
        for query in rng.standard_normal((queries, dim), dtype=np.float32):
            began = time.perf_counter()
            store.search(query, limit=10)
            latencies.append((time.perf_counter() - began) * 1000)
        store.close()
        began = time.perf_counter()
        reopened = VectorStore(folder, exact_below=exact_below)
        reopen_seconds = time.perf_counter() - began
        assert reopened.count() == size
        reopened.close()
    p50, p99 = np.percentile(latencies, [50, 99])
    mode = 'exact' if size < exact_below else 'HNSW'
    return (
        f'{size:>7,} x {dim}-d  {mode:<5}  stored {stored_per_second:8,.0f} docs/s  '
        f'search p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  reopen {reopen_seconds:5.1f} s'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[10_000, 100_000])
    parser.add_argument('--dim', type=int, default=512)
    parser.add_argument('--queries', type=int, default=500)
    parser.add_argument('--exact-below', type=int, default=20_000)
    args = parser.parse_args()
    for size in args.sizes:
        print(measure(size, args.dim, args.queries, args.exact_below), flush=True)


if __name__ == '__main__':
    main()
