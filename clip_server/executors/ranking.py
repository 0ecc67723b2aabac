"""Scoring matches against their query the way the model was trained to compare texts and images.

CLIP-trained models: CLIP's zero-shot classifier, a softmax over the candidates of 100 x cosine.
Sigmoid-trained models (SigLIP, SigLIP2): each candidate's own probability, the sigmoid of the
model's learned scale x cosine + bias (`clip_server.types.Scoring`). Either way the cosine is kept
as `clip_score_cosine`, and matches are sorted by it.
"""

from __future__ import annotations

import numpy as np
from docarray import Document
from docarray.score import NamedScore

from clip_server.types import CLIP_SCORING, Scoring


def cosine_similarity(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Cosine of one [D] vector with each row of [N, D]."""
    query = query / np.linalg.norm(query)
    candidates = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    return candidates @ query


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def probabilities(cosine: np.ndarray, scoring: Scoring) -> np.ndarray:
    if scoring.is_sigmoid:
        return sigmoid(scoring.scale * cosine + (scoring.bias or 0.0))
    return softmax(scoring.scale * cosine)


def rank_matches(query: Document, scoring: Scoring = CLIP_SCORING) -> None:
    """Score the query's embedded matches, sort them best first and drop their embeddings."""
    matches = query.matches
    if not len(matches):
        return
    embeddings = np.stack([m.embedding for m in matches]).astype(np.float64)
    cosine = cosine_similarity(np.asarray(query.embedding, dtype=np.float64), embeddings)
    probability = probabilities(cosine, scoring)
    operation = 'sigmoid' if scoring.is_sigmoid else 'softmax'
    for match, prob, cos in zip(matches, probability, cosine, strict=True):
        match.scores['clip_score'] = NamedScore(value=float(prob), op_name=operation, ref_id=query.id)
        match.scores['clip_score_cosine'] = NamedScore(value=float(cos), op_name='cosine', ref_id=query.id)
        match.embedding = None
    order = np.argsort(-cosine, kind='stable')  # the same order, even where probabilities underflow to 0
    query.matches = [matches[int(i)] for i in order]
