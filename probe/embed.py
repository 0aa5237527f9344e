"""2-D embeddings of token readouts (umap-learn / PCA) and how faithful and separated they are."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from train.errors import FerlensError, close_matches


def _umap(X: np.ndarray, seed: int, n_neighbors: int) -> np.ndarray:
    import umap

    k = max(2, min(n_neighbors, len(X) - 1))
    return umap.UMAP(n_components=2, n_neighbors=k, random_state=seed, n_jobs=1).fit_transform(X)


def _pca(X: np.ndarray, seed: int, n_neighbors: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(X)


# method name -> fn(X standardized (n, D), seed, n_neighbors) -> (n, 2)
METHODS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {"umap": _umap, "pca": _pca}


def embed(X: np.ndarray, method: str = "umap", seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """Embed features (n, D) in 2-D after z-scoring each column.

    Args:
        X: (n, D) features.
        method: ``umap`` (umap-learn) or ``pca`` (scikit-learn).
        seed: random state (UMAP is then deterministic, single-threaded).
        n_neighbors: UMAP neighbourhood size (capped at n - 1).

    Returns:
        (n, 2) float32 coordinates.
    """
    if method not in METHODS:
        raise FerlensError(f"Unknown embedding method '{method}'; use one of {', '.join(METHODS)}."
                           + close_matches(method, METHODS))
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) < 4:
        raise FerlensError(f"Embedding needs an (n, D) array with n >= 4; got shape {X.shape}.")
    std = X.std(0)
    std[std < 1e-12] = 1.0
    Z = (X - X.mean(0)) / std
    return np.asarray(METHODS[method](Z, seed, n_neighbors), dtype=np.float32)


def scores(X: np.ndarray, Y2d: np.ndarray, labels: Sequence[Any] | None = None, n_neighbors: int = 5) -> dict[str, float | None]:
    """How well a 2-D embedding keeps neighbourhoods and separates classes.

    Args:
        X: (n, D) original features.
        Y2d: (n, 2) embedding.
        labels: (n,) classes for the silhouette (None: no silhouette).
        n_neighbors: neighbourhood size of the trustworthiness score.

    Returns:
        ``trustworthiness`` in [0, 1] (sklearn.manifold.trustworthiness) and ``silhouette`` in [-1, 1]
        of ``labels`` in the 2-D embedding (None when fewer than 2 or more than n-1 classes).
    """
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import silhouette_score

    X = np.asarray(X, dtype=np.float32)
    k = max(1, min(n_neighbors, len(X) // 2 - 1))
    out: dict[str, float | None] = {"trustworthiness": float(trustworthiness(X, Y2d, n_neighbors=k)), "silhouette": None}
    if labels is not None:
        lab = np.asarray(labels).astype(str)
        if 2 <= len(np.unique(lab)) <= len(lab) - 1:
            out["silhouette"] = float(silhouette_score(Y2d, lab))
    return out
