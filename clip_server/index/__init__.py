"""`python -m clip_server.index PATH... --server URL`: index files and folders into a search Flow.

Images (by extension) and `.txt` files (one text per line) are sent to the Flow's `/index` in
batches. Each document carries its file (`tags['source']`) and the SHA-256 of its content
(`tags['sha256']`), which the index keeps: a rerun asks the index what it holds (`/sources`) and
sends only what is new or changed, so an interrupted run resumes where it stopped. A file that
cannot be read or that the server refuses is reported and skipped; the run goes on.
"""
