"""`python -m clip_server.index PATH... --server URL [--token TOKEN] [--delete-missing]`.

Exit status: 0 when everything was indexed or already was, 1 when some files failed (each one
reported, the rest indexed), 2 when the server could not be used (unreachable, no index, token).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from docarray import Document, DocumentArray

from clip_server.index.files import Item, batches, find_files, items_of
from clip_server.index.progress import Progress
from clip_server.index.server import Flow, Refused, Unusable
from clip_server.wire import SHA256_TAG, SOURCE_TAG

MAX_BATCH_BYTES = 16 * 2**20  # well under the gateway's max_request_bytes (100 MiB by default)


@dataclass
class Tally:
    indexed: int = 0
    skipped: int = 0
    failed: int = 0
    deleted: int = 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flow = Flow(args.server, args.token or os.environ.get('CLIP_AUTH_TOKEN'))
    started = time.monotonic()
    try:
        tally = run(flow, args.paths, args.batch_size, args.delete_missing, sys.stderr)
    except (Unusable, Refused) as error:  # Refused: a listing or deletion the server would not take
        print(f'error: {error}', file=sys.stderr)
        return 2
    seconds = time.monotonic() - started
    print(
        f'indexed {tally.indexed}, skipped {tally.skipped} (already indexed), failed {tally.failed}, '
        f'deleted {tally.deleted}; {seconds:.1f} s, {tally.indexed / max(seconds, 1e-9):.1f} items/s'
    )
    return 1 if tally.failed else 0


def run(flow: Flow, paths: list[str], batch_size: int, delete_missing: bool, log: TextIO) -> Tally:
    """Index what `paths` hold and the index lacks (or holds with other content); report each
    failure on `log` and go on. `Unusable` when the server cannot be used."""
    tally = Tally()
    files, unreadable = find_files(paths)
    say = functools.partial(print, file=log, flush=True)  # until the progress line shows
    for problem in unreadable:
        _report(say, problem.path, problem.reason, tally)
    stored = flow.stored()
    items: list[Item] = []
    failed_files: set[str] = set()
    for file in files:
        try:
            items += items_of(file)
        except (OSError, UnicodeDecodeError) as error:
            _report(say, str(file), _reason(error), tally)
            failed_files.add(str(file))
    todo = [item for item in items if stored.get(item.id, ('', ''))[1] != item.sha256]
    tally.skipped = len(items) - len(todo)
    say(f'{len(files)} files, {len(items)} items: {len(todo)} to index, {tally.skipped} already indexed')
    progress = Progress(len(todo), log)
    for batch in batches(todo, batch_size, MAX_BATCH_BYTES):
        tally.indexed += _send(flow, batch, progress, tally)
        progress.advance(len(batch))
    progress.close()
    if delete_missing:
        gone = _gone(stored, {item.id for item in items}, failed_files, paths)
        flow.delete(gone)
        tally.deleted = len(gone)
    return tally


def _send(flow: Flow, batch: list[Item], progress: Progress, tally: Tally) -> int:
    """Index `batch`, reporting each file that cannot be read any more; returns how many were indexed."""
    readable = []
    for item in batch:
        try:
            readable.append((item, _document(item)))
        except OSError as error:  # gone or unreadable since it was hashed
            _report(progress.say, item.source, _reason(error), tally)
    return _index(flow, readable, progress, tally)


def _index(flow: Flow, pairs: list[tuple[Item, Document]], progress: Progress, tally: Tally) -> int:
    """Index the documents; when the server refuses the request, each one alone, to index all but
    the refused (each reported with the server's reason). Returns how many were indexed."""
    if not pairs:
        return 0
    try:
        flow.index(DocumentArray(doc for _, doc in pairs))
        return len(pairs)
    except Refused as error:
        if len(pairs) == 1:
            item = pairs[0][0]
            _report(progress.say, item.id, str(error).removeprefix(f'document {item.id}: '), tally)
            return 0
    return sum(_index(flow, [pair], progress, tally) for pair in pairs)


def _document(item: Item) -> Document:
    tags = {SOURCE_TAG: item.source, SHA256_TAG: item.sha256}
    if item.text is not None:
        return Document(id=item.id, text=item.text, tags=tags)
    return Document(id=item.id, blob=Path(item.source).read_bytes(), uri=item.source, tags=tags)


def _gone(stored: dict[str, tuple[str, str]], current: set[str], failed_files: set[str], paths: list[str]) -> list[str]:
    """The indexed documents from files under `paths` that are no longer there (files deleted, or
    lines gone from a text file); a file that failed to read this time is not counted as gone."""
    roots = [Path(path).expanduser().absolute() for path in paths]
    return [
        doc_id
        for doc_id, (source, _) in stored.items()
        if doc_id not in current
        and source not in failed_files
        and any(Path(source) == root or root in Path(source).parents for root in roots)
    ]


def _report(say: Callable[[str], None], what: str, reason: str, tally: Tally) -> None:
    tally.failed += 1
    say(f'failed: {what}: {reason}')


def _reason(error: OSError | UnicodeDecodeError) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f'not UTF-8 text ({error.reason} at byte {error.start})'
    return error.strerror or str(error)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m clip_server.index',
        description='Index images and .txt files (one text per line) into a search Flow; reruns send only '
        'what is new or changed.',
    )
    parser.add_argument('paths', nargs='+', metavar='PATH', help='files and folders (searched recursively)')
    parser.add_argument('--server', required=True, help='the Flow, e.g. grpc://127.0.0.1:51000 or http://...')
    parser.add_argument('--token', help='the authorization token (default: $CLIP_AUTH_TOKEN)')
    parser.add_argument('--batch-size', type=_positive, default=32, help='documents per request (default 32)')
    parser.add_argument(
        '--delete-missing', action='store_true', help='also remove from the index what is gone from these paths'
    )
    return parser


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {value}')
    return number


if __name__ == '__main__':
    sys.exit(main())
