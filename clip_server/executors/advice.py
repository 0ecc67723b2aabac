"""What a Flow's operator can do about a model-layer error, added where the executor meets it.

The model layer is used without Jina too (tests, the benchmark, the export tool), so its errors
name only the problem; which YAML key or bundled Flow would help is this layer's to say.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from clip_server.types import ClipServerError

# For WeightsUnavailableError, where model files are fetched.
LOCAL_WEIGHTS = "To serve a local file, set the executor's `model_path` (under `uses: with:` in the Flow YAML) to it."
# For RuntimeUnavailableError, where the TensorRT executor starts.
OTHER_RUNTIMES = (
    'Serve with PyTorch (`python -m clip_server`) or ONNX Runtime (`python -m clip_server onnx-flow.yml`) instead.'
)


@contextmanager
def advising(error_type: type[ClipServerError], advice: str) -> Iterator[None]:
    """Append `advice` to the message of an `error_type` raised inside; the error stays the same
    object (its class, attributes and traceback), so callers and the CLI see it as before."""
    try:
        yield
    except error_type as error:
        error.args = (f'{error} {advice}', *error.args[1:])
        raise
