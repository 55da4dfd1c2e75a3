"""Collaborative item vectors, to mix into the text vectors that semantic IDs are built from.

Text alone groups movies by title words and genre; a sequence model predicts what users watch
next, which follows taste more than text. So items can also be placed by how they co-occur in the
training histories: counts of item pairs within a few positions of each other, positive PMI, then
a truncated SVD (Levy & Goldberg: word2vec factorises the same matrix). Items with no training
interactions (and cold-start items added later) get theirs from a ridge map text -> collaborative
vector fitted on the items that have both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["CollaborativeConfig", "TextToCollaborative", "collaborative_vectors", "mix"]


@dataclass
class CollaborativeConfig:
    dim: int = 64          # SVD rank
    window: int = 5        # an item co-occurs with the next `window` items of the same history
    ridge: float = 1.0     # L2 penalty of the text -> collaborative map
    seed: int = 0


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, all-zero rows left at zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cooccurrence(sequences: list[np.ndarray], num_items: int, window: int) -> sp.csr_matrix:
    """Symmetric counts of item pairs at most `window` positions apart in one history."""
    rows, cols = [], []
    for seq in sequences:
        for offset in range(1, window + 1):
            if len(seq) > offset:
                rows.append(seq[:-offset])
                cols.append(seq[offset:])
    if not rows:
        return sp.csr_matrix((num_items, num_items), dtype=np.float64)
    r, c = np.concatenate(rows), np.concatenate(cols)
    counts = sp.coo_matrix((np.ones(len(r)), (r, c)), shape=(num_items, num_items)).tocsr()
    return (counts + counts.T).tocsr()


def ppmi(counts: sp.csr_matrix) -> sp.csr_matrix:
    """Positive pointwise mutual information of a co-occurrence matrix (zeros stay zeros)."""
    total = counts.sum()
    marginal = np.asarray(counts.sum(axis=1)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (marginal[coo.row] * marginal[coo.col]))
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)


def collaborative_vectors(sequences: list[np.ndarray], num_items: int,
                          config: CollaborativeConfig) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (num_items, dim) float32 with unit rows, seen (num_items,) bool); unseen rows are 0."""
    from sklearn.utils.extmath import randomized_svd

    matrix = ppmi(cooccurrence(sequences, num_items, config.window))
    seen = np.asarray(matrix.getnnz(axis=1) > 0)
    rank = max(1, min(config.dim, int(seen.sum()) - 1))
    u, s, _ = randomized_svd(matrix, n_components=rank, random_state=config.seed)
    vectors = np.zeros((num_items, config.dim), dtype=np.float32)
    vectors[:, :rank] = u * np.sqrt(s)
    return unit_rows(vectors), seen


class TextToCollaborative:
    """Ridge regression from text vectors to collaborative vectors (for items without history)."""

    def __init__(self, weights: np.ndarray):
        self.weights = weights  # (text_dim + 1, dim): last row is the bias

    @classmethod
    def fit(cls, text: np.ndarray, target: np.ndarray, ridge: float) -> "TextToCollaborative":
        x = np.hstack([text, np.ones((len(text), 1), dtype=text.dtype)]).astype(np.float64)
        gram = x.T @ x + ridge * np.eye(x.shape[1])
        return cls(np.linalg.solve(gram, x.T @ target.astype(np.float64)).astype(np.float32))

    def predict(self, text: np.ndarray) -> np.ndarray:
        with_bias = np.hstack([text, np.ones((len(text), 1), dtype=np.float32)])
        return unit_rows(with_bias @ self.weights).astype(np.float32)


def mix(text: np.ndarray, collaborative: np.ndarray, weight: float) -> np.ndarray:
    """[text, collaborative] with each part's squared norm scaled to 1 - weight and weight, so
    k-means distances are that blend of the two geometries."""
    return np.hstack([np.sqrt(1.0 - weight) * unit_rows(text), np.sqrt(weight) * collaborative]).astype(np.float32)
