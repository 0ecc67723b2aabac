"""What to index: the files under the paths given, and the documents each one makes.

An image file is one document, its id the file's absolute path; a `.txt` file is one document
per non-blank line, its id the path and the line number (`notes.txt#3`). Ids and hashes are all a
rerun needs to tell what the index holds already; image bytes are read again only to be sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# What the server decodes (clip_server.executors.content.IMAGE_FORMATS), by the usual extensions.
IMAGE_SUFFIXES = frozenset({'.jpg', '.jpeg', '.png', '.webp', '.gif', '.bmp', '.tif', '.tiff'})
TEXT_SUFFIX = '.txt'


@dataclass(frozen=True)
class Item:
    """One document to index: an image file (`text` None) or one line of a text file."""

    id: str
    source: str  # the file it comes from
    sha256: str  # of the image file's bytes, or of the line's text
    text: str | None = None
    size: int = 0  # bytes sent: the image file's size, or the text's length in UTF-8


@dataclass(frozen=True)
class Unreadable:
    """A path that gives no document, and why."""

    path: str
    reason: str


def indexable(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix == TEXT_SUFFIX


def find_files(paths: Iterable[str]) -> tuple[list[Path], list[Unreadable]]:
    """The indexable files named or under the folders named, each once, in a stable order. A
    missing path, or a file named that is neither an image nor `.txt`, is unreadable."""
    found: set[Path] = set()
    problems = []
    for name in paths:
        path = Path(name).expanduser().absolute()
        if path.is_dir():
            found.update(file for file in path.rglob('*') if file.is_file() and indexable(file))
        elif path.is_file() and indexable(path):
            found.add(path)
        elif path.exists():
            problems.append(Unreadable(str(path), f'not an image ({", ".join(sorted(IMAGE_SUFFIXES))}) or .txt file'))
        else:
            problems.append(Unreadable(str(path), 'no such file or folder'))
    return sorted(found), problems


def items_of(file: Path) -> list[Item]:
    """The documents one file makes; OSError or UnicodeDecodeError when it cannot be read."""
    if file.suffix.lower() != TEXT_SUFFIX:
        data = file.read_bytes()
        return [Item(str(file), str(file), _sha256(data), size=len(data))]
    lines = file.read_text(encoding='utf-8').splitlines()
    return [
        Item(f'{file}#{number}', str(file), _sha256(line.encode()), text=line, size=len(line.encode()))
        for number, line in enumerate(lines, 1)
        if line.strip()
    ]


def batches(items: Iterable[Item], size: int, max_bytes: int) -> Iterator[list[Item]]:
    """`items` in lists of at most `size` documents and about `max_bytes` (one larger item alone)."""
    batch: list[Item] = []
    held = 0
    for item in items:
        if batch and (len(batch) == size or held + item.size > max_bytes):
            yield batch
            batch, held = [], 0
        batch.append(item)
        held += item.size
    if batch:
        yield batch


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
