"""The measurements: items/s and latencies of a served Flow, the same model in-process (with and without
preparing its inputs), and open_clip."""

from __future__ import annotations

import asyncio
import io
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clip_server.benchmark import BATCH, IN_FLIGHT
from clip_server.benchmark.flows import use_local_ports
from clip_server.benchmark.inputs import batches, slices
from clip_server.benchmark.processes import ServerProcess, free_port
from clip_server.model import factory
from clip_server.model.factory import EncoderOptions
from clip_server.model.registry import ModelSpec
from clip_server.types import Runtime, require


@dataclass(frozen=True)
class Rate:
    """Items per second of one cell, and the latency of each call it made (a request or a batch)."""

    per_second: float
    latencies_ms: tuple[float, ...]

    def percentiles(self) -> tuple[float, float]:
        p50, p99 = np.percentile(self.latencies_ms, [50, 99])
        return float(p50), float(p99)


@dataclass(frozen=True)
class Row:
    what: str
    texts: Rate | None
    images: Rate | None


def timed(call: Callable[[], int], seconds: float) -> Rate:
    """Repeat `call` (which returns how many items it did) for `seconds`, after one untimed warm-up."""
    call()
    latencies, items = [], 0
    started = time.perf_counter()
    while (begun := time.perf_counter()) - started < seconds:
        items += call()
        latencies.append((time.perf_counter() - begun) * 1000)
    return Rate(items / (time.perf_counter() - started), tuple(latencies))


def timed_in_flight(call: Callable[[], Awaitable[int]], seconds: float, in_flight: int = IN_FLIGHT) -> Rate:
    """`in_flight` tasks repeat `call` for `seconds`, so that many requests are always outstanding."""
    latencies: list[float] = []
    done = 0

    async def worker(deadline: float) -> None:
        nonlocal done
        while (begun := time.perf_counter()) < deadline:
            items = await call()  # not `done += await ...`, which reads `done` before awaiting
            done += items
            latencies.append((time.perf_counter() - begun) * 1000)

    async def run() -> float:
        await asyncio.gather(*(call() for _ in range(in_flight)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds) for _ in range(in_flight)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    return Rate(done / elapsed, tuple(latencies))


def _image_docs(jpegs: Sequence[bytes]) -> Any:
    """Fresh Documents per request: clip_client writes embeddings into those it sends."""
    from docarray import Document, DocumentArray

    return DocumentArray(Document(blob=jpeg, mime_type='image/jpeg') for jpeg in jpegs)


AsyncLoad = Callable[[], Awaitable[int]]


def _single_item_loads(client: Any, texts: Sequence[str], jpegs: Sequence[bytes]) -> tuple[AsyncLoad, AsyncLoad]:
    """`aencode` of one text, and of one image, per request, going round the inputs."""
    single_texts, single_jpegs = itertools.cycle(texts), itertools.cycle(jpegs)

    async def aencode(content: Any) -> int:
        return len(await client.aencode(content, show_progress=False))

    return lambda: aencode([next(single_texts)]), lambda: aencode(_image_docs([next(single_jpegs)]))


def client_rows(client: Any, label: str, texts: Sequence[str], jpegs: Sequence[bytes], seconds: float) -> list[Row]:
    """The two loads: one client sending requests of BATCH, and IN_FLIGHT single-item requests."""
    text_batches, jpeg_batches = batches(texts, BATCH), batches(jpegs, BATCH)
    single_text, single_image = _single_item_loads(client, texts, jpegs)

    def encode(content: Any) -> int:
        return len(client.encode(content, batch_size=BATCH, show_progress=False))

    return [
        Row(
            f'{label}, 1 client, requests of {BATCH}',
            timed(lambda: encode(next(text_batches)), seconds),
            timed(lambda: encode(_image_docs(next(jpeg_batches))), seconds),
        ),
        Row(
            f'{label}, {IN_FLIGHT} single-item requests in flight',
            timed_in_flight(single_text, seconds),
            timed_in_flight(single_image, seconds),
        ),
    ]


@dataclass(frozen=True)
class CurvePoint:
    """One point of the --save plot: single-item requests kept in flight, and the rates served."""

    in_flight: int
    texts: Rate
    images: Rate


def in_flight_curve(
    client: Any, texts: Sequence[str], jpegs: Sequence[bytes], seconds: float, levels: Sequence[int]
) -> list[CurvePoint]:
    """The single-item load at each number of requests in flight: where serving stops gaining."""
    single_text, single_image = _single_item_loads(client, texts, jpegs)
    return [
        CurvePoint(level, timed_in_flight(single_text, seconds, level), timed_in_flight(single_image, seconds, level))
        for level in levels
    ]


@dataclass(frozen=True)
class ServerResult:
    rows: list[Row]
    cold_start_s: float
    peak_rss: tuple[int, int] | None = None
    ready_line: str | None = None
    curve: tuple[CurvePoint, ...] = ()


def measure_server(
    flow: dict,
    folder: Path,
    name: str,
    texts: Sequence[str],
    jpegs: Sequence[bytes],
    seconds: float,
    curve_levels: Sequence[int] = (),
) -> ServerResult:
    """Start the Flow, wait for its first encode, run both loads (and the curve at `curve_levels`), and stop it."""
    client_module = require('clip_client', 'test')
    flow = {**flow, 'with': dict(flow.get('with') or {})}
    port = use_local_ports(flow, free_port)
    with ServerProcess(flow, port, folder, name) as server:
        client = client_module.Client(f'grpc://127.0.0.1:{port}')
        cold = server.cold_start(lambda: client.encode(texts[:1], show_progress=False))
        rows = client_rows(client, name, texts, jpegs, seconds)
        curve = tuple(in_flight_curve(client, texts, jpegs, seconds, curve_levels))
        return ServerResult(rows, cold, server.peak_rss(), server.ready_line(), curve)


def _in_minibatches(encode: Callable[[Any], object], size: int) -> Callable[[Any], int]:
    """`encode` on slices of `size` (the executor's minibatch_size) of a batch; returns the batch's length."""

    def call(batch: Any) -> int:
        for start in range(0, len(batch), size):
            encode(batch[start : start + size])
        return len(batch)

    return call


@dataclass(frozen=True)
class EncoderRows:
    """The Flow's model without a server: with its inputs prepared per batch, and fed prepared ones."""

    in_process: Row  # tokenizing, image decoding and preprocessing included: an executor's work without serving
    model_only: Row  # token rows and pixels made beforehand: the most this machine gets from the model
    description: str  # the runtime, device and dtype, as the executor logs them


def encoder_rows(
    spec: ModelSpec,
    runtime: Runtime,
    options: EncoderOptions,
    texts: Sequence[str],
    jpegs: Sequence[bytes],
    seconds: float,
) -> EncoderRows:
    """The Flow's model built once as its executor builds it, measured in batches of BATCH both ways.

    The model-only row feeds the token rows of the same texts (so the same token lengths) and the
    pixels of the same images, made before timing starts.
    """
    from clip_server.executors.content import image_from_bytes

    model_input = factory.preprocessor(spec, options.model_path)
    encoder = factory.build_encoder(spec, runtime, options, model_input)
    encode_texts = _in_minibatches(encoder.encode_text, options.max_batch)
    encode_images = _in_minibatches(encoder.encode_image, options.max_batch)

    def pixels(batch: list[bytes]) -> np.ndarray:
        return np.stack([model_input.pixels(image_from_bytes(jpeg, min_side=2 * spec.image_size)) for jpeg in batch])

    text_batches, jpeg_batches = batches(texts, BATCH), batches(jpegs, BATCH)
    token_rows = itertools.cycle([model_input.tokenize(batch) for batch in slices(texts, BATCH)])
    pixel_batches = itertools.cycle([pixels(batch) for batch in slices(jpegs, BATCH)])
    model = f'{runtime.label} {encoder.dtype}, batch {BATCH}'
    return EncoderRows(
        Row(
            f'in-process: {model}, tokenizing and image decoding included',
            timed(lambda: encode_texts(model_input.tokenize(next(text_batches))), seconds),
            timed(lambda: encode_images(pixels(next(jpeg_batches))), seconds),
        ),
        Row(
            f'model only: {model}, tokens and pixels prepared beforehand',
            timed(lambda: encode_texts(next(token_rows)), seconds),
            timed(lambda: encode_images(next(pixel_batches)), seconds),
        ),
        f'{runtime.label}, {encoder.description}',
    )


def yardstick_row(
    spec: ModelSpec, options: EncoderOptions, texts: Sequence[str], jpegs: Sequence[bytes], seconds: float
) -> Row:
    """open_clip as its README uses it, in fp32 with as many threads: the same weights file if any, else random ones."""
    import open_clip
    import torch

    model_path = options.model_path
    torch.set_num_threads(options.threads or torch.get_num_threads())
    weights = str(model_path) if model_path and Path(model_path).expanduser().is_file() else None
    model, _, transform = open_clip.create_model_and_transforms(spec.arch, pretrained=weights)
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.arch)  # pads every text to the 77-token context

    def encode_images(batch: list[bytes]) -> int:
        return len(model.encode_image(torch.stack([transform(Image.open(io.BytesIO(jpeg))) for jpeg in batch])))

    text_batches, jpeg_batches = batches(texts, BATCH), batches(jpegs, BATCH)
    with torch.inference_mode():
        return Row(
            f'yardstick: open_clip {spec.arch} fp32, batch {BATCH}',
            timed(lambda: len(model.encode_text(tokenizer(next(text_batches)))), seconds),
            timed(lambda: encode_images(next(jpeg_batches)), seconds),
        )
