"""Scoring matches against their query the way CLIP's zero-shot classifier does."""

from __future__ import annotations

import numpy as np
from docarray import Document
from docarray.score import NamedScore

# CLIP's learned logit scale at the end of training: softmax(100 * cosine) over the candidates.
LOGIT_SCALE = 100.0


def cosine_similarity(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Cosine of one [D] vector with each row of [N, D]."""
    query = query / np.linalg.norm(query)
    candidates = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    return candidates @ query


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def rank_matches(query: Document) -> None:
    """Score the query's embedded matches, sort them best first and drop their embeddings."""
    matches = query.matches
    if not len(matches):
        return
    embeddings = np.stack([m.embedding for m in matches]).astype(np.float64)
    cosine = cosine_similarity(np.asarray(query.embedding, dtype=np.float64), embeddings)
    probability = softmax(LOGIT_SCALE * cosine)
    for match, prob, cos in zip(matches, probability, cosine, strict=True):
        match.scores['clip_score'] = NamedScore(value=float(prob), op_name='softmax', ref_id=query.id)
        match.scores['clip_score_cosine'] = NamedScore(value=float(cos), op_name='cosine', ref_id=query.id)
        match.embedding = None
    order = np.argsort(-cosine, kind='stable')  # the same order, even where probabilities underflow to 0
    query.matches = [matches[int(i)] for i in order]
