"""Normalized Cut (Shi & Malik 2000): the bipartition TokenCut, MaskCut and the NCut variants share.

The relaxed problem `(D - W) y = lambda D y` is solved through the symmetric normalised affinity
`D^-1/2 W D^-1/2`, whose second-largest eigenvector `z` gives `y = D^-1/2 z` (the second-smallest generalized
eigenvector). Small graphs use a dense solver; large sparse ones `scipy.sparse.linalg.eigsh`.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import eigsh

from segxai.errors import SegxaiError

DENSE_LIMIT = 2000


def token_affinity(features: np.ndarray, tau: float = 0.2, eps: float = 1e-5) -> np.ndarray:
    """TokenCut's graph on `(N, D)` features: 1 where the cosine similarity exceeds `tau`, else `eps`.
    Zero feature vectors (MaskCut's removed patches) have similarity 0 with everything."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise SegxaiError(f"token features must be (N, D) with N >= 2, got {features.shape}")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.where(norms > 0, norms, 1.0)
    return np.where(unit @ unit.T > tau, 1.0, eps)


def second_eigenvector(weights: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """The second-smallest generalized eigenvector of `(D - W, D)` for a symmetric non-negative `W`."""
    n = weights.shape[0]
    if weights.ndim != 2 or weights.shape != (n, n) or n < 2:
        raise SegxaiError(f"the affinity must be a square matrix with at least 2 nodes, got {weights.shape}")
    degree = np.asarray(weights.sum(axis=1)).ravel()
    if not (degree > 0).all():
        raise SegxaiError("every node of the graph needs a positive degree (add a small epsilon affinity)")
    scale = 1.0 / np.sqrt(degree)
    if sparse.issparse(weights) and n > DENSE_LIMIT:
        normalised = sparse.diags(scale) @ weights @ sparse.diags(scale)
        _, vectors = eigsh(normalised, k=2, which="LA", v0=np.sqrt(degree))
        z = vectors[:, 0]  # eigsh returns ascending eigenvalues: [second largest, largest]
    else:
        dense = weights.toarray() if sparse.issparse(weights) else np.asarray(weights, dtype=np.float64)
        _, vectors = np.linalg.eigh(scale[:, None] * dense * scale[None, :])
        z = vectors[:, -2]
    y = scale * z
    return y if y[np.argmax(np.abs(y))] > 0 else -y


def bipartition(weights: np.ndarray | sparse.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Split the graph at the mean of the second eigenvector; returns (one side as a bool mask, eigenvector)."""
    y = second_eigenvector(weights)
    return y > y.mean(), y
