"""2-D embeddings: shapes, determinism and score ranges."""
from __future__ import annotations

import numpy as np
import pytest

from probe.embed import embed, scores
from train.errors import FerlensError


def clusters(n=60):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    return rng.normal(size=(n, 10)) + 6 * np.eye(3, 10)[y], y


def test_pca_embedding_and_scores():
    X, y = clusters()
    Y = embed(X, method="pca")
    assert Y.shape == (60, 2) and Y.dtype == np.float32
    s = scores(X, Y, y)
    assert 0.8 <= s["trustworthiness"] <= 1.0
    assert 0.3 < s["silhouette"] <= 1.0
    assert scores(X, Y, np.zeros(60))["silhouette"] is None


def test_unknown_method():
    with pytest.raises(FerlensError, match="umap, pca"):
        embed(np.zeros((10, 3)), method="tsne")
