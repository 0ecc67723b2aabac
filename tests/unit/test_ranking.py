import numpy as np
import pytest
from docarray import Document

from clip_server.executors.ranking import cosine_similarity, rank_matches, sigmoid, softmax
from clip_server.types import Scoring


def test_cosine_and_softmax():
    query = np.array([1.0, 0.0])
    candidates = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_similarity(query, candidates), [1, 0, -1, np.sqrt(0.5)])
    probabilities = softmax(np.array([1000.0, 1000.0, 0.0]))  # large logits must not overflow
    np.testing.assert_allclose(probabilities, [0.5, 0.5, 0.0], atol=1e-12)


def test_rank_matches_scores_sorts_and_drops_embeddings():
    query = Document(id='q', embedding=np.array([1.0, 0.0], dtype=np.float32))
    query.matches = [
        Document(id='far', embedding=np.array([0.0, 1.0], dtype=np.float32)),
        Document(id='near', embedding=np.array([1.0, 0.1], dtype=np.float32)),
        Document(id='mid', embedding=np.array([1.0, 1.0], dtype=np.float32)),
    ]
    rank_matches(query)
    assert [m.id for m in query.matches] == ['near', 'mid', 'far']
    sorted_embeddings = np.array([[1.0, 0.1], [1.0, 1.0], [0.0, 1.0]])
    cosines = sorted_embeddings[:, 0] / np.linalg.norm(sorted_embeddings, axis=1)
    expected = np.exp(100 * cosines) / np.exp(100 * cosines).sum()
    for match, prob, cos in zip(query.matches, expected, cosines, strict=True):
        assert match.scores['clip_score'].value == pytest.approx(prob, rel=1e-5)
        assert match.scores['clip_score'].op_name == 'softmax'
        assert match.scores['clip_score_cosine'].value == pytest.approx(cos, rel=1e-5)
        assert match.scores['clip_score_cosine'].op_name == 'cosine'
        assert match.scores['clip_score'].ref_id == 'q'
        assert match.embedding is None
    assert sum(m.scores['clip_score'].value for m in query.matches) == pytest.approx(1.0)
    assert query.embedding is not None


def test_query_without_matches_is_left_alone():
    query = Document(embedding=np.ones(3))
    rank_matches(query)
    assert len(query.matches) == 0


def test_order_follows_cosine_even_where_probabilities_underflow():
    query = Document(embedding=np.array([1.0, 0.0], dtype=np.float32))
    angles = {'best': 0.0, 'second': 1.0, 'far': 2.5, 'farthest': 3.0}  # cosines 1, 0.54, -0.80, -0.99
    query.matches = [
        Document(id=name, embedding=np.array([np.cos(a), np.sin(a)], dtype=np.float32))
        for name, a in [('farthest', 3.0), ('best', 0.0), ('far', 2.5), ('second', 1.0)]
    ]
    rank_matches(query)
    assert [m.id for m in query.matches] == sorted(angles, key=angles.get)


def test_a_sigmoid_trained_model_scores_each_match_on_its_own():
    """SigLIP's scoring: sigmoid(scale x cosine + bias) per match, not a softmax over the matches."""
    rng = np.random.default_rng(3)
    query = Document(embedding=rng.standard_normal(8))
    query.matches = [Document(id=str(i), embedding=rng.standard_normal(8)) for i in range(3)]
    cosine = {m.id: float(cosine_similarity(query.embedding, m.embedding[None])[0]) for m in query.matches}
    scoring = Scoring(scale=10.0, bias=-2.0)
    rank_matches(query, scoring)
    for match in query.matches:
        assert match.scores['clip_score'].op_name == 'sigmoid'
        assert match.scores['clip_score'].value == pytest.approx(float(sigmoid(10.0 * cosine[match.id] - 2.0)))
    assert sum(m.scores['clip_score'].value for m in query.matches) != pytest.approx(1.0)  # not a softmax
    assert [m.id for m in query.matches] == sorted(cosine, key=cosine.get, reverse=True)
