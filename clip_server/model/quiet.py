"""Silencing one known, misleading log line of a library, and nothing else."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def without_log(prefix: str = '', logger: logging.Logger | None = None) -> Iterator[None]:
    """Drop the records of `logger` (default: the root logger) that start with `prefix` while the block runs."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    target = logger or logging.getLogger()
    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)
