"""Centered kernel alignment (CKA) between representations (Kornblith et al., 2019).

Hand-written: neither scikit-learn, scipy nor timm ships CKA, and the formulas are a few lines.
``linear_cka`` uses the feature-space identity ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``
(cheap when D << n); ``unbiased=True`` switches to the unbiased HSIC estimator of Song et al. (2012),
computed on n × n Gram matrices, which removes the upward bias of CKA for small n / large D.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from train.errors import FerlensError

KERNELS = ("linear", "rbf")


def _as2d(X: np.ndarray, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise FerlensError(f"{name} must be a 2-D (n, d) array; got shape {X.shape}.")
    return X


def _check_pair(X: np.ndarray, Y: np.ndarray) -> None:
    if len(X) != len(Y):
        raise FerlensError(f"CKA needs the same samples in both representations; got {len(X)} and {len(Y)} rows.")
    if len(X) < 4:
        raise FerlensError(f"CKA needs at least 4 samples; got {len(X)}.")


def center_gram(K: np.ndarray) -> np.ndarray:
    """H K H with H = I - 11^T/n: (n, n) → (n, n)."""
    K = K - K.mean(0, keepdims=True)
    return K - K.mean(1, keepdims=True)


def hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC estimator (Song et al., 2012) of two (n, n) Gram matrices, n ≥ 4."""
    n = len(K)
    K = K.copy()
    L = L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    kl = K @ L.sum(1)
    value = (K * L).sum() + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2.0 * kl.sum() / (n - 2)
    return float(value / (n * (n - 3)))


def _gram_cka(K: np.ndarray, L: np.ndarray, unbiased: bool) -> float:
    if unbiased:
        kl, kk, ll = hsic_unbiased(K, L), hsic_unbiased(K, K), hsic_unbiased(L, L)
    else:
        Kc, Lc = center_gram(K), center_gram(L)
        kl, kk, ll = (Kc * Lc).sum(), (Kc * Kc).sum(), (Lc * Lc).sum()
    denom = np.sqrt(max(kk, 0.0) * max(ll, 0.0))
    return float(kl / denom) if denom > 0 else 0.0


def linear_cka(X: np.ndarray, Y: np.ndarray, unbiased: bool = False) -> float:
    """Linear CKA of two representations of the same n samples.

    Args:
        X: (n, d1) features.
        Y: (n, d2) features.
        unbiased: use the unbiased HSIC estimator (Gram-matrix path).

    Returns:
        CKA in [0, 1] (the unbiased estimate can dip slightly below 0); 0 when either representation
        is constant (e.g. the CLS token before block 0), where CKA is undefined.
    """
    X, Y = _as2d(X, "X"), _as2d(Y, "Y")
    _check_pair(X, Y)
    if unbiased:
        return _gram_cka(X @ X.T, Y @ Y.T, unbiased=True)
    Xc = X - X.mean(0)
    Yc = Y - Y.mean(0)
    num = np.linalg.norm(Yc.T @ Xc) ** 2
    denom = np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)
    return float(num / denom) if denom > 0 else 0.0


def rbf_gram(X: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """RBF Gram matrix exp(-||xi - xj||² / (2 σ²)); σ defaults to the median pairwise distance."""
    X = _as2d(X, "X")
    sq = (X * X).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * X @ X.T, 0.0)  # (n, n)
    if sigma is None:
        off = d2[~np.eye(len(X), dtype=bool)]
        sigma = float(np.sqrt(np.median(off))) if off.size and np.median(off) > 0 else 1.0
    return np.exp(-d2 / (2.0 * sigma ** 2))


def rbf_cka(X: np.ndarray, Y: np.ndarray, sigma: float | None = None, unbiased: bool = False) -> float:
    """RBF-kernel CKA; ``sigma=None`` uses the median-distance bandwidth for each representation."""
    X, Y = _as2d(X, "X"), _as2d(Y, "Y")
    _check_pair(X, Y)
    return _gram_cka(rbf_gram(X, sigma), rbf_gram(Y, sigma), unbiased)


def cka_matrix(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray] | None = None, kernel: str = "linear",
               unbiased: bool = False, sigma: float | None = None) -> np.ndarray:
    """CKA between every representation in ``xs`` and every one in ``ys`` (default: ``xs``).

    Args:
        xs: list of (n, d_i) arrays over the same n samples.
        ys: list of (n, d_j) arrays (None: ``xs``, a symmetric layer × layer matrix).
        kernel: ``linear`` or ``rbf``.

    Returns:
        (len(xs), len(ys)) float array.
    """
    if kernel not in KERNELS:
        raise FerlensError(f"Unknown CKA kernel '{kernel}'; use one of {', '.join(KERNELS)}.")
    ys = xs if ys is None else ys
    if kernel == "linear" and not unbiased:
        # feature-space path: normalized centered cross-covariances, no n × n matrices
        cx = [_as2d(x, "X") - np.asarray(x, dtype=np.float64).mean(0) for x in xs]
        cy = cx if ys is xs else [_as2d(y, "Y") - np.asarray(y, dtype=np.float64).mean(0) for y in ys]
        for a in cx:
            _check_pair(a, cy[0])
        nx = [np.linalg.norm(a.T @ a) for a in cx]
        ny = nx if ys is xs else [np.linalg.norm(b.T @ b) for b in cy]
        out = np.zeros((len(cx), len(cy)))
        for i, a in enumerate(cx):
            for j, b in enumerate(cy):
                den = nx[i] * ny[j]
                out[i, j] = np.linalg.norm(b.T @ a) ** 2 / den if den > 0 else 0.0
        return out
    gram = (lambda x: _as2d(x, "X") @ _as2d(x, "X").T) if kernel == "linear" else (lambda x: rbf_gram(x, sigma))
    gx = [gram(x) for x in xs]
    gy = gx if ys is xs else [gram(y) for y in ys]
    return np.array([[_gram_cka(a, b, unbiased) for b in gy] for a in gx])
