"""The indexing command's parts: which files and documents a folder gives, batches bounded in
count and bytes, the progress line on a terminal and in a log, and the index's listing of what it
holds from files (`sources`, in pages), in the embedded store and in Qdrant."""

import hashlib
import io

import numpy as np
import pytest

from clip_server.index.files import Item as FileItem
from clip_server.index.files import batches, find_files, items_of
from clip_server.index.progress import Progress, _duration
from clip_server.search.qdrant_store import QdrantStore
from clip_server.search.store import Item, Source
from clip_server.search.vector_store import VectorStore


def test_folders_give_their_images_and_texts_once_and_bad_paths_are_named(tmp_path):
    (tmp_path / 'deep' / 'er').mkdir(parents=True)
    for name in ('a.JPG', 'deep/b.png', 'deep/er/c.webp', 'notes.txt', 'readme.md', 'deep/data.bin'):
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / 'other.md').write_text('not indexable')
    files, problems = find_files([str(tmp_path), str(tmp_path / 'a.JPG'), str(tmp_path / 'other.md'), 'no/such'])
    assert [file.relative_to(tmp_path).as_posix() for file in files] == [
        'a.JPG',
        'deep/b.png',
        'deep/er/c.webp',
        'notes.txt',
    ]
    assert [problem.reason for problem in problems] == [
        'not an image (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp) or .txt file',
        'no such file or folder',
    ]
    assert problems[1].path.endswith('no/such')


def test_a_text_file_gives_one_document_per_line_and_an_image_one(tmp_path):
    notes = tmp_path / 'notes.txt'
    notes.write_text('first line\n\n   \nfourth line\n')
    first, fourth = items_of(notes)
    assert (first.id, first.text, first.source) == (f'{notes}#1', 'first line', str(notes))
    assert fourth.id == f'{notes}#4' and fourth.sha256 == hashlib.sha256(b'fourth line').hexdigest()
    picture = tmp_path / 'p.png'
    picture.write_bytes(b'\x89PNG bytes')
    (item,) = items_of(picture)
    assert (item.id, item.text, item.size) == (str(picture), None, 10)
    assert item.sha256 == hashlib.sha256(b'\x89PNG bytes').hexdigest()
    (tmp_path / 'latin1.txt').write_bytes(b'caf\xe9\n')
    with pytest.raises(UnicodeDecodeError, match='invalid continuation byte'):
        items_of(tmp_path / 'latin1.txt')


def test_batches_hold_a_few_documents_and_bytes_and_a_large_one_alone():
    items = [FileItem(str(i), f'f{i}', '', size=size) for i, size in enumerate([10, 10, 10, 10, 500, 10])]
    assert [[item.id for item in batch] for batch in batches(items, 3, 100)] == [
        ['0', '1', '2'],
        ['3'],
        ['4'],
        ['5'],
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_progress_is_plain_lines_and_on_a_terminal_one_redrawn_line():
    log = io.StringIO()
    progress = Progress(4, log, interval=0)
    progress.advance(1)
    progress.say('failed: x.png: cannot decode image')
    progress.advance(3)
    progress.close()
    lines = log.getvalue().splitlines()
    assert '\r' not in log.getvalue() and len(lines) == 3
    assert lines[0].startswith('indexing: 1/4 (25%), ') and lines[0].endswith(' left')
    assert lines[1] == 'failed: x.png: cannot decode image' and lines[2].startswith('indexing: 4/4 (100%)')

    terminal = Terminal()
    progress = Progress(4, terminal)
    progress.advance(4)
    progress.say('failed: y.png: gone')
    progress.close()
    shown = terminal.getvalue()
    assert shown.startswith('\r\033[K[########################] 4/4 (100%)')
    assert '\r\033[Kfailed: y.png: gone\n\r\033[K[####' in shown and shown.endswith('\n')


def test_durations_read_as_hours_minutes_seconds():
    assert (_duration(0), _duration(59.6), _duration(3725)) == ('0:00:00', '0:01:00', '1:02:05')


@pytest.mark.parametrize('kind', ['embedded', 'qdrant'])
def test_the_index_lists_what_it_holds_from_files_page_by_page(tmp_path, kind):
    store = VectorStore(tmp_path) if kind == 'embedded' else QdrantStore(collection='c', path=str(tmp_path))
    vectors = np.random.default_rng(0).standard_normal((25, 8)).astype(np.float32)
    hashed = {f'doc{i}': {'tags': {'source': f'/files/{i}.png', 'sha256': f'hash{i}'}} for i in range(0, 25, 2)}
    store.add([Item(f'doc{i}', vector, hashed.get(f'doc{i}', {'tags': {}})) for i, vector in enumerate(vectors)])
    listed, cursor, pages = [], '', 0
    while True:
        page, cursor = store.sources(cursor, 5)
        listed, pages = listed + page, pages + 1
        assert len(page) <= 5
        if not cursor:
            break
    assert pages >= 3 and sorted(listed, key=lambda source: source.id) == sorted(
        (Source(doc_id, tags['tags']['source'], tags['tags']['sha256']) for doc_id, tags in hashed.items()),
        key=lambda source: source.id,
    )
    store.close()
