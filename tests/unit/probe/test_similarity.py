"""CKA: identity, invariances, a direct formula, RBF and matrices."""
from __future__ import annotations

import numpy as np
import pytest

from probe.similarity import cka_matrix, linear_cka, rbf_cka
from train.errors import FerlensError


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 8))
    Y = X @ rng.normal(size=(8, 5)) + 0.5 * rng.normal(size=(50, 5))
    return X, Y


def direct_cka(X, Y):
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda a, b: np.trace(a @ H @ b @ H)  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def test_cka_with_itself_is_one(xy):
    X, _ = xy
    assert linear_cka(X, X) == pytest.approx(1.0)
    assert rbf_cka(X, X) == pytest.approx(1.0)
    assert linear_cka(X, X, unbiased=True) == pytest.approx(1.0)


def test_cka_invariances(xy):
    X, Y = xy
    Q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(8, 8)))
    base = linear_cka(X, Y)
    assert linear_cka(X @ Q, Y) == pytest.approx(base)
    assert linear_cka(3.7 * X, Y) == pytest.approx(base)
    assert rbf_cka(X @ Q, Y) == pytest.approx(rbf_cka(X, Y))
    assert rbf_cka(2.0 * X, Y) == pytest.approx(rbf_cka(X, Y))  # median bandwidth scales along


def test_cka_matches_direct_formula(xy):
    X, Y = xy
    assert linear_cka(X, Y) == pytest.approx(direct_cka(X, Y))
    Z = np.random.default_rng(2).normal(size=(50, 3))
    assert linear_cka(X, Z) == pytest.approx(direct_cka(X, Z))
    assert linear_cka(X, Z) < linear_cka(X, Y)


def test_cka_matrix(xy):
    X, Y = xy
    M = cka_matrix([X, Y])
    assert M.shape == (2, 2) and np.allclose(np.diag(M), 1) and M[0, 1] == pytest.approx(M[1, 0])
    assert M[0, 1] == pytest.approx(linear_cka(X, Y))
    R = cka_matrix([X], [X, Y], kernel="rbf")
    assert R.shape == (1, 2) and R[0, 0] == pytest.approx(1.0)
    with pytest.raises(FerlensError, match="kernel"):
        cka_matrix([X], kernel="cosine")
    with pytest.raises(FerlensError, match="same samples"):
        linear_cka(X, Y[:10])
