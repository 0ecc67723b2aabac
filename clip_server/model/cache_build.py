"""Build a cached artefact folder once, however many processes start at the same time.

Replicas of one Flow start together: one of them builds (an ONNX export, a TensorRT
engine) under a file lock into a temporary folder that is renamed into place only when
complete; the others wait on the lock and then use the finished folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)


def digest(identity: dict) -> str:
    """A short, stable name for everything a cached artefact depends on (a JSON-able dict)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def folder_name(model_name: str) -> str:
    """A model name as one safe path component (`M-CLIP/...` has a slash, `arch::tag` colons)."""
    return re.sub(r'[^A-Za-z0-9._-]+', '_', model_name)


def build_once(folder: Path, build: Callable[[Path], object], what: str) -> Path:
    """Return `folder`, first calling `build(temporary_folder)` if no process has made it yet."""
    if folder.is_dir():  # renamed into place only when complete
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.parent / f'{folder.name}.lock'))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info('Another process is building %s in %s; waiting for it', what, folder)
        lock.acquire()
    try:
        if folder.is_dir():
            logger.info('Using %s that another process built in %s', what, folder)
            return folder
        for leftover in folder.parent.glob(f'{folder.name}.partial-*'):  # from a process killed mid-build
            shutil.rmtree(leftover, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(prefix=f'{folder.name}.partial-', dir=folder.parent))
        try:
            build(partial)
            partial.rename(folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        logger.info('%s cached in %s', what, folder)
        return folder
    finally:
        lock.release()
