"""What the gateway, the executors and the tools say to each other inside a Flow: endpoint names,
request parameters and document tags. Both sides read them here, so neither spells the other's
words. Like `types.py`, this module imports nothing of the package.

Clients' own words (clip_client's endpoints, `limit`, `access_paths`) are listed too where the
server reads them, as they are part of the same contract.
"""

# --- endpoints ---
ENCODE = '/encode'
RANK = '/rank'
INDEX = '/index'
SEARCH = '/search'
DELETE = '/delete'
COUNT = '/count'
SOURCES = '/sources'  # the documents indexed from files, a page at a time (`python -m clip_server.index`)
MODEL_INFO = '/model_info'  # the served model's name and dimension, asked by the gateway (OpenAI API, web page)
# The index's bookkeeping endpoints: they carry ids, not content, so the encoder passes them on.
BOOKKEEPING = (DELETE, COUNT, SOURCES)

# --- parameters of a request ---
DROP_IMAGE_CONTENT = 'drop_image_content'  # answer without the image bytes the client has
COUNT_TOKENS = 'count_tokens'  # tag each text with its token count (`TOKENS_TAG`)
PREVIEWS = 'previews'  # `/search`: matches carry their image previews (`PREVIEW_TAG`)
LIMIT = 'limit'  # `/search`: matches per query; `/sources`: entries per page
CURSOR = 'cursor'  # `/sources`: where the next page starts

# --- document tags ---
ERROR_TAG = 'clip_server_error'  # a document's failure, for `InputErrors` under jina's dynamic batching
TOKENS_TAG = 'clip_server_tokens'  # how many tokens a text became (after cutting to the context)
PREVIEW_TAG = 'preview'  # a match's preview, as a data URI
SOURCE_TAG = 'source'  # the file a document was indexed from
SHA256_TAG = 'sha256'  # the SHA-256 of that file's content (lines: of the line)
COUNT_TAG = 'count'  # `/count`'s answer
NEXT_TAG = 'next'  # `/sources`: the next page's cursor (empty on the last page)
IDS = 'ids'  # `/delete`: ids to remove, besides the documents sent
MODEL_TAG, DIM_TAG = 'model', 'dim'  # `/model_info`'s answer
