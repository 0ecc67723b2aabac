"""The OpenAI API's request, response and error shapes, as the `openai` SDK declares them
(`types/embedding_create_params.py`, `create_embedding_response.py`), with this server's image items.

The routes in `openai_api.py` validate a request through `EmbeddingsRequest` and answer with these
models; what the models cannot know (the served model, the item limit) the routes check after them.
pydantic 1, as jina's HTTP gateway needs it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Extra, StrictInt, StrictStr, validator

# How an item of `input` may look; the refusal of any other names these.
ITEM_SHAPES = 'must be a string, {"text": "..."} or {"image": "<data URI or base64>"}'


class TextItem(BaseModel, extra=Extra.forbid):
    """`{"text": "..."}`: a text, even one that starts like a data URI."""

    text: StrictStr


class ImageItem(BaseModel, extra=Extra.forbid):
    """`{"image": "..."}`: a data URI, plain base64 of an image file, or an http(s) URL."""

    image: StrictStr


# OpenAI's pre-tokenized input: declared so that its refusal can say why (this server tokenizes itself).
TokenIds = list[StrictInt]
Item = StrictStr | TextItem | ImageItem | TokenIds


class EmbeddingsRequest(BaseModel):
    """The body of `POST /v1/embeddings`. Strict types: pydantic 1 would otherwise read `5` as the text '5'.
    Fields in the order a refusal reports them: the first field at fault is the one named."""

    model: StrictStr
    dimensions: StrictInt | None = None
    encoding_format: Literal['float', 'base64'] = 'float'
    input: StrictStr | list[Item]
    user: str | None = None  # accepted and ignored

    @validator('model')
    def _model_is_named(cls, model: str) -> str:
        if not model:
            raise ValueError('model is empty')
        return model

    @validator('encoding_format', pre=True)
    def _unset_encoding_is_float(cls, encoding: Any) -> Any:
        """`null` or `""` means the default, as clients that always send the field write it."""
        return encoding or 'float'

    @validator('input')
    def _input_is_not_empty(cls, items: str | list) -> str | list:
        if isinstance(items, list) and not items:
            raise ValueError('input is an empty list')
        return items

    def items(self) -> list[str | TextItem | ImageItem | list[int]]:
        """The input as a list: one string is one item."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Embedding(BaseModel):
    object: Literal['embedding'] = 'embedding'
    index: int
    embedding: list[float] | str  # str: base64 of the little-endian float32 vector


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal['list'] = 'list'
    data: list[Embedding]
    model: str
    usage: Usage

    def body(self) -> dict:
        """The response as JSON-ready data, built field by field: pydantic 1's `.dict()` visits each
        number of each vector (a quarter second for 1,000 vectors of 768)."""
        return {**dict(self), 'data': [dict(item) for item in self.data], 'usage': dict(self.usage)}


class ModelEntry(BaseModel):
    id: str
    object: Literal['model'] = 'model'
    created: int = 0
    owned_by: str = 'clip_server'


class ModelList(BaseModel):
    """The body of `GET /v1/models`: the one model this server serves."""

    object: Literal['list'] = 'list'
    data: list[ModelEntry]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error on the OpenAI paths, whether from a route or from the edge (auth, limits)."""

    error: ErrorDetail
