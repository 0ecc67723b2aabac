"""Texts/s and images/s of a running server, as clip_client sees them (network, gateway, executor).

python -m clip_server my.yml &
python benchmarks/server_throughput.py grpc://127.0.0.1:51000 --texts 512 --images 256 --batch-size 32
"""

import argparse
import io
import time

import numpy as np
from clip_client import Client
from docarray import Document, DocumentArray
from PIL import Image


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, 'JPEG', quality=90)
    return buffer.getvalue()


def rate(client: Client, docs: DocumentArray, batch_size: int) -> float:
    client.encode(docs[:batch_size], batch_size=batch_size, show_progress=False)  # warm-up
    started = time.perf_counter()
    client.encode(docs, batch_size=batch_size, show_progress=False)
    return len(docs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('server', help='e.g. grpc://127.0.0.1:51000')
    parser.add_argument('--texts', type=int, default=512)
    parser.add_argument('--images', type=int, default=256, help='640x480 JPEGs, decoded and resized by the server')
    parser.add_argument('--batch-size', type=int, default=32, help="clip_client's request size")
    args = parser.parse_args()

    client = Client(args.server)
    texts = DocumentArray(Document(text=f'a photo of thing number {i}, seen from afar') for i in range(args.texts))
    images = DocumentArray(Document(blob=jpeg(i), mime_type='image/jpeg') for i in range(args.images))
    print(f'{args.server}, requests of {args.batch_size}')
    print(f'texts/s  {rate(client, texts, args.batch_size):8.1f}')
    print(f'images/s {rate(client, images, args.batch_size):8.1f}')


if __name__ == '__main__':
    main()
