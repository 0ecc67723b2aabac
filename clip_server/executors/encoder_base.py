"""Request handling shared by every runtime's CLIPEncoder.

A runtime's executor names its `runtime` and passes its own parameters to `build_model`;
everything else lives here: the model name and the factory calls, then what a request does:
split documents by modality, preprocess in a worker pool while the model runs, encode in
minibatches, rank, drop image content, and time each step for monitoring.
"""

import asyncio
import inspect
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from docarray import Document, DocumentArray
from jina import Executor, requests
from PIL import Image

from clip_server.executors.advice import LOCAL_WEIGHTS, advising
from clip_server.executors.batching import ModelQueue
from clip_server.executors.content import DEFAULT_LIMITS, ContentLimits, decodable_on_device
from clip_server.executors.documents import (
    Failure,
    Modality,
    drop_image_content,
    encoded_image_of,
    image_of,
    split_by_modality,
    summary,
    text_of,
)
from clip_server.executors.parameters import EncoderParameters
from clip_server.executors.ranking import rank_matches
from clip_server.model import factory
from clip_server.model.device_pixels import DevicePixels
from clip_server.model.encoder import Encoder
from clip_server.model.preprocess import Preprocessor
from clip_server.model.registry import DEFAULT_MODEL, ModelSpec
from clip_server.types import (
    AUTO,
    MINIBATCH_SIZE,
    ConfigurationError,
    InvalidInputError,
    Runtime,
    WeightsUnavailableError,
    auto_dtype,
)
from clip_server.wire import (
    BOOKKEEPING,
    COUNT_TOKENS,
    DIM_TAG,
    DROP_IMAGE_CONTENT,
    ERROR_TAG,
    MODEL_INFO,
    MODEL_TAG,
    RANK,
    TOKENS_TAG,
)

METRICS = {
    'preprocess_texts_seconds': 'Seconds spent tokenizing one minibatch of texts',
    'preprocess_images_seconds': 'Seconds spent decoding and transforming one image',
    'encode_texts_seconds': 'Seconds spent encoding one minibatch of texts',
    'encode_images_seconds': 'Seconds spent encoding one minibatch of images',
}


def minibatches(docs: list[Document], size: int) -> Iterator[list[Document]]:
    for start in range(0, len(docs), size):
        yield docs[start : start + size]


# What jina itself passes to an executor's constructor.
_JINA_PARAMETERS = set(inspect.signature(Executor.__init__).parameters) - {'self', 'kwargs'}


class CLIPEncoderBase(Executor):
    """Encodes on every endpoint but `/rank`, which scores matches against their query."""

    runtime: ClassVar[Runtime]
    model: Encoder
    device_pixels: DevicePixels | None = None  # JPEGs decoded on the model's device (`decode_on_device`)

    def __init__(
        self,
        name: str = DEFAULT_MODEL,
        num_worker_preprocess: int = 4,
        minibatch_size: int = MINIBATCH_SIZE,
        access_paths: str = '@r',
        traversal_paths: str | None = None,
        model_path: str | None = None,
        max_image_bytes: int = DEFAULT_LIMITS.max_image_bytes,
        max_image_pixels: int = DEFAULT_LIMITS.max_image_pixels,
        max_text_chars: int = DEFAULT_LIMITS.max_text_chars,
        max_image_aspect_ratio: int = DEFAULT_LIMITS.max_image_aspect_ratio,
        **kwargs: Any,
    ):
        self._refuse_unknown_parameters(kwargs)
        super().__init__(**kwargs)
        if minibatch_size < 1:
            raise ConfigurationError(f'minibatch_size must be at least 1, got {minibatch_size}')
        if num_worker_preprocess < 1:
            raise ConfigurationError(f'num_worker_preprocess must be at least 1, got {num_worker_preprocess}')
        self._limits = ContentLimits(max_image_bytes, max_image_pixels, max_text_chars, max_image_aspect_ratio)
        if traversal_paths is not None:
            self.logger.warning('`traversal_paths` is deprecated; use `access_paths` instead')
            access_paths = traversal_paths
        with advising(WeightsUnavailableError, LOCAL_WEIGHTS):
            self.spec: ModelSpec = factory.resolve(name)  # hf-hub names fetch their repo's config
            factory.check_supported(self.spec, self.runtime)  # before the tokenizer or weights are fetched
            # a model_path folder may also hold the tokenizer (M-CLIP, HF text towers)
            self.preprocessor: Preprocessor = factory.preprocessor(self.spec, model_path)
        self._model_path = model_path
        self._access_paths = access_paths
        self.minibatch_size = minibatch_size
        # jina's dynamic batching (`uses_dynamic_batching`) mixes documents of several requests in one call
        self._batched = bool(getattr(self, 'dynamic_batching', None))
        self._pool = ThreadPoolExecutor(num_worker_preprocess, thread_name_prefix='clip-preprocess')
        # one thread runs the model, fed by the requests in flight (`clip_server.executors.batching`)
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix='clip-model')
        self._texts = ModelQueue(self._text_rows, minibatch_size, self._model_thread)
        self._images = ModelQueue(self._image_rows, minibatch_size, self._model_thread)
        for metric, documentation in METRICS.items():  # create once here, not racing in worker threads
            self.monitor(metric, documentation)

    def _refuse_unknown_parameters(self, kwargs: dict) -> None:
        """jina would hand a misspelt `with:` key (`minibatch_sise`) to Executor, which ignores it."""
        unknown = sorted(set(kwargs) - _JINA_PARAMETERS)
        if unknown:
            known = sorted(
                {
                    name
                    for cls in type(self).__mro__
                    if cls is not Executor and '__init__' in vars(cls)
                    for name, parameter in inspect.signature(vars(cls)['__init__']).parameters.items()
                    if name != 'self' and parameter.kind == parameter.POSITIONAL_OR_KEYWORD
                }
            )
            raise TypeError(f'unknown parameter(s) {", ".join(unknown)} for CLIPEncoder; it takes {", ".join(known)}')

    def build_model(self, **runtime_parameters: Any) -> None:
        """Load the model on this executor's runtime: one factory call, with the options that its
        parameters ask for, read as `EncoderParameters` (as the benchmark reads a Flow's `with:`)."""
        shared = {'name': self.spec.name, 'model_path': self._model_path, 'minibatch_size': self.minibatch_size}
        parameters = EncoderParameters.from_params({**shared, **runtime_parameters})
        options = parameters.encoder_options(default_threads=self.cpu_threads())
        with advising(WeightsUnavailableError, LOCAL_WEIGHTS):
            self.model = factory.build_encoder(self.spec, self.runtime, options, self.preprocessor)
        # which GPU a replica got (jina sets CUDA_VISIBLE_DEVICES per replica for `RR`): one line tells
        gpus = os.environ.get('CUDA_VISIBLE_DEVICES')
        placed = f', CUDA_VISIBLE_DEVICES={gpus}' if gpus is not None and self.model.device.is_cuda else ''
        self.logger.info(
            f'{self.spec.name} ready on {self.runtime.label}, {self.model.description}, '
            f'{self.spec.dim}-d embeddings{placed}'
        )
        if parameters.dtype in (None, AUTO):
            why = auto_dtype(self.runtime, self.model.device)[1]
            self.logger.info(f'dtype auto chose {self.model.dtype}: {why}')
        self._warm_up()

    def _warm_up(self) -> None:
        """Encode one text and one image before this replica serves (jina serves it only once this
        returns): the first client does not wait for lazy initialisation, and the gateway's
        readiness probe means "warm", not merely "loaded"."""
        self.model.encode_text(self.preprocessor.tokenize(['warm-up']))
        blank = Image.new('RGB', (self.spec.image_size, self.spec.image_size))
        self.model.encode_image(self.preprocessor.pixels(blank)[None])

    def cpu_threads(self) -> int:
        """Threads for one replica's inference: OMP_NUM_THREADS, else the cores split between replicas."""
        if os.environ.get('OMP_NUM_THREADS'):
            return max(1, int(os.environ['OMP_NUM_THREADS']))
        replicas = getattr(self.runtime_args, 'replicas', 1) or 1
        return max(1, (os.cpu_count() or 1) // replicas)

    @requests(on=RANK)
    async def rank(self, docs: DocumentArray, parameters: dict, **kwargs: Any) -> DocumentArray:
        queries = self._selected(docs, parameters)
        everything = list(queries) + [match for query in queries for match in query.matches]
        failed = await self._embed(everything, skip_empty=False)
        unread = {id(doc) for doc, _ in failed}
        for query in queries:
            if id(query) not in unread and not any(id(match) in unread for match in query.matches):
                rank_matches(query, self.model.scoring)
        if parameters.get(DROP_IMAGE_CONTENT, False):
            drop_image_content(everything)
        self._report(failed)
        return docs

    @requests(on=list(BOOKKEEPING))
    def bookkeeping(self, **kwargs: Any) -> None:
        """The index's bookkeeping endpoints (`CLIPIndexer`) carry ids, not content: nothing to encode."""

    @requests(on=MODEL_INFO)
    def model_info(self, docs: DocumentArray, **kwargs: Any) -> DocumentArray:
        """The served model's name and embedding size, on each document (the gateway's OpenAI API
        asks, as only the executor knows which model it loaded)."""
        for doc in docs:
            doc.tags.update({MODEL_TAG: self.spec.name, DIM_TAG: self.spec.dim})
        return docs

    @requests
    async def encode(self, docs: DocumentArray, parameters: dict, **kwargs: Any) -> DocumentArray:
        """Async, so that jina runs the requests in flight together (it runs a plain method one
        request at a time): their documents share model calls (`clip_server.executors.batching`)."""
        targets = list(self._selected(docs, parameters))
        failed = await self._embed(targets, skip_empty=True, count_tokens=bool(parameters.get(COUNT_TOKENS)))
        if parameters.get(DROP_IMAGE_CONTENT, False):
            drop_image_content(targets)
        self._report(failed)
        return docs

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        super().close()

    def _selected(self, docs: DocumentArray, parameters: dict) -> DocumentArray:
        """The documents that the request's access paths (else this executor's) select."""
        paths = parameters.get('access_paths') or parameters.get('traversal_paths') or self._access_paths
        try:
            return docs[paths]
        except Exception as exc:  # docarray's own words for a malformed path vary by kind
            raise InvalidInputError(f'access_paths {paths!r:.64} is not a docarray path such as "@r,c"') from exc

    def _report(self, failed: list[Failure]) -> None:
        """Fail the request naming its unreadable documents, or, when jina's own dynamic batching
        (`uses_dynamic_batching`) puts documents of several requests in this call, tag them for
        `InputErrors` to fail just their requests (an exception here would fail them all)."""
        if not failed:
            return
        if not self._batched:
            raise InvalidInputError(summary([message for _, message in failed]))
        for doc, message in failed:
            doc.tags[ERROR_TAG] = message

    async def _embed(self, docs: list[Document], skip_empty: bool, count_tokens: bool = False) -> list[Failure]:
        """Embed every readable document; return the others with their reasons."""
        for doc in docs:
            doc.tags.pop(ERROR_TAG, None)  # only this server's verdict counts, not one a client sent
        groups, failed = split_by_modality(docs)
        empty = groups[Modality.EMPTY]
        if empty and not skip_empty:
            failed += [(doc, f'document {doc.id} has no text, blob, tensor or data URI to encode') for doc in empty]
        elif empty:
            self.logger.warning(f'{len(empty)} document(s) without content left without embedding, e.g. {empty[0].id}')
        await self._encode_texts(groups[Modality.TEXT], failed, count_tokens)
        await self._encode_images(groups[Modality.IMAGE], failed)
        return failed

    async def _encode_texts(self, docs: list[Document], failed: list[Failure], count_tokens: bool) -> None:
        """Read here; tokenized and encoded with the texts of other requests in the same model call.
        `count_tokens` tags each text with its token count, start and end tokens included (the
        OpenAI API's `usage`)."""
        readable = _readable(docs, [self._attempt(self._read_text, doc) for doc in docs], failed)
        if readable and self._worth_encoding(failed):
            rows = await self._texts.results([text for _, text in readable])
            for (doc, _), (embedding, tokens) in zip(readable, rows, strict=True):
                doc.embedding = embedding
                if count_tokens:
                    doc.tags[TOKENS_TAG] = tokens

    def _text_rows(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        """One model call's texts, tokenized in one call (2 ms for 32 captions): (embedding, tokens) each."""
        with self.monitor('preprocess_texts_seconds'):
            tokens = self.preprocessor.tokenize(texts)
        with self.monitor('encode_texts_seconds'):
            embeddings = self.model.encode_text(tokens)
        counts = (tokens != (self.preprocessor.pad_token_id or 0)).sum(axis=1).tolist()
        return list(zip(embeddings, counts, strict=True))

    async def _encode_images(self, docs: list[Document], failed: list[Failure]) -> None:
        """Decode and transform in the worker pool, one minibatch ahead of the model (with
        `decode_on_device`, the pool only checks JPEGs, decoded together on the device)."""
        loop = asyncio.get_running_loop()
        in_model: asyncio.Future | None = None
        for batch in minibatches(docs, self.minibatch_size):
            prepared = [loop.run_in_executor(self._pool, self._attempt, self._prepare_image, doc) for doc in batch]
            readable = _readable(batch, list(await asyncio.gather(*prepared)), failed)
            if in_model is not None:
                await in_model  # at most one minibatch's pixels wait for the model while the next decodes
                in_model = None
            if readable and self._worth_encoding(failed):
                in_model = asyncio.ensure_future(self._embed_images(readable, failed))
        if in_model is not None:
            await in_model

    async def _embed_images(self, readable: list[tuple[Document, Any]], failed: list[Failure]) -> None:
        for (doc, _), result in zip(readable, await self._images.results(readable), strict=True):
            if isinstance(result, _Unreadable):
                failed.append((doc, result.reason))
            else:
                doc.embedding = result

    def _image_rows(self, readable: list[tuple[Document, Any]]) -> list:
        """One model call's images: an embedding each, or why the device could not decode it."""
        lost: list[Failure] = []
        if self.device_pixels is None:
            kept, pixels = readable, np.stack([array for _, array in readable])
        else:
            kept, pixels = self._on_device(self.device_pixels, readable, lost)
        with self.monitor('encode_images_seconds'):
            embeddings: Any = self.model.encode_image(pixels) if kept else []
        rows: dict[int, Any] = {id(doc): _Unreadable(reason) for doc, reason in lost}
        rows.update((id(doc), embedding) for (doc, _), embedding in zip(kept, embeddings, strict=True))
        return [rows[id(doc)] for doc, _ in readable]

    def _on_device(
        self, device_pixels: DevicePixels, readable: list[tuple[Document, Any]], failed: list[Failure]
    ) -> tuple[list, Any]:
        """The minibatch on the model's device; a JPEG that nvJPEG cannot decode fails alone."""
        try:
            return readable, device_pixels.batch([item for _, item in readable])
        except RuntimeError:  # which file broke the batch is not said: try each
            pass
        kept = [(doc, item) for doc, item in readable if self._decodes_on(device_pixels, doc, item, failed)]
        return kept, device_pixels.batch([item for _, item in kept]) if kept else None

    def _decodes_on(self, device_pixels: DevicePixels, doc: Document, item: Any, failed: list[Failure]) -> bool:
        if not isinstance(item, bytes):
            return True
        try:
            device_pixels([item])
        except RuntimeError as exc:
            self.logger.warning(f'document {doc.id} could not be decoded on the device: {exc!r}')
            failed.append((doc, f'document {doc.id}: cannot decode image ({len(item)} bytes) as JPEG'))
            return False
        return True

    def _worth_encoding(self, failed: list[Failure]) -> bool:
        """A failed document fails its whole request: the model need not run for the rest (the
        documents are still read, so the error counts every unreadable one). Under jina's dynamic
        batching the call holds other requests' documents too, so it runs for them."""
        return self._batched or not failed

    def _read_text(self, doc: Document) -> str:
        return text_of(doc, self._limits)

    def _prepare_image(self, doc: Document) -> np.ndarray | bytes:
        """Pixels, or with `decode_on_device` a JPEG file checked for the device (see `_on_device`)."""
        with self.monitor('preprocess_images_seconds'):
            if self.device_pixels is not None:
                data = encoded_image_of(doc)
                if data is not None and decodable_on_device(data, self._limits):
                    return data
            # large JPEGs decode at a reduced scale that keeps 2x the model's input size
            return self.preprocessor.pixels(image_of(doc, min_side=2 * self.spec.image_size, limits=self._limits))

    def _attempt(self, prepare: Callable[[Document], Any], doc: Document) -> Any:
        """`prepare(doc)`, or why it failed: one bad document costs only itself."""
        try:
            return prepare(doc)
        except InvalidInputError as exc:
            return _Unreadable(f'document {doc.id}: {exc}')
        except Exception as exc:  # a decoder's or transform's own failure is still this document's
            self.logger.warning(f'document {doc.id} could not be preprocessed: {exc!r}')  # details stay here
            return _Unreadable(f'document {doc.id}: cannot be preprocessed')


@dataclass(frozen=True)
class _Unreadable:
    """Why a document has no model input (its reason names it)."""

    reason: str


def _readable(batch: list[Document], inputs: list, failed: list[Failure]) -> list[tuple[Document, Any]]:
    """The documents with their inputs; those without one go to `failed` with the reason."""
    failed += [(doc, item.reason) for doc, item in zip(batch, inputs, strict=True) if isinstance(item, _Unreadable)]
    return [(doc, item) for doc, item in zip(batch, inputs, strict=True) if not isinstance(item, _Unreadable)]
