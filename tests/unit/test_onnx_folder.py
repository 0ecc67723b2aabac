"""The ONNX folder contract: the text graph's metadata reads back what was written."""

import pytest

from clip_server.model.runtimes.onnx_folder import TextGraphMetadata
from clip_server.types import CLIP_SCORING, Scoring


@pytest.mark.parametrize(
    'metadata',
    [
        TextGraphMetadata(),
        TextGraphMetadata(pad_token_id=1, context_length=512),
        TextGraphMetadata(cut_at_end_of_text=True, context_length=77),
        TextGraphMetadata(cut_at_end_of_text=True, context_length=64, scoring=Scoring(scale=117.3, bias=-12.9)),
    ],
)
def test_what_is_written_reads_back(metadata):
    assert TextGraphMetadata.parse(metadata.properties()) == metadata


def test_a_graph_made_elsewhere_gets_full_rows_and_clip_scoring():
    metadata = TextGraphMetadata.parse({'producer': 'someone else'})
    assert metadata.pad_token_id is None and not metadata.cut_at_end_of_text
    assert metadata.context_length is None and metadata.scoring == CLIP_SCORING


def test_the_keys_are_those_of_exports_already_in_caches():
    """Folders exported by earlier versions keep being read the same way."""
    written = TextGraphMetadata(pad_token_id=0, context_length=16, scoring=Scoring(scale=10.0, bias=-10.0))
    assert written.properties() == {
        'pad_token_id': '0',
        'context_length': '16',
        'logit_scale': '10.0',
        'logit_bias': '-10.0',
    }
    assert TextGraphMetadata(cut_at_end_of_text=True).properties() == {'cut_at_end_of_text': 'true'}
