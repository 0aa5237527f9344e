"""UMAP and CKA cost vs sample count (1k, 4k, 16k samples, d = 192): how the probes' cost grows.

Yardstick: the same computation at the smallest N in the same process; each size reports its time as
a ratio to it, and the log-log slope between sizes estimates the empirical exponent (1 = linear).
UMAP is umap-learn (what ``probe umap`` uses); CKA is ``probe.similarity.linear_cka`` (and RBF CKA up to
4k samples, whose n × n Gram matrices grow quadratically in memory).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np

SIZES = (1000, 4000, 16000)
DIM = 192
RBF_MAX_N = 4000


def _features(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two related float32 feature sets (n, dim): 7 Gaussian clusters and a rotated noisy copy."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.25, (7, dim))  # overlapping clusters: one connected kNN graph
    X = (centers[rng.integers(0, 7, n)] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    Y = (X @ q + rng.normal(0, 0.5, (n, dim))).astype(np.float32)
    return X, Y


def _timed(fn: Callable[[], object], repeats: int = 1) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _slopes(sizes: Sequence[int], seconds: Sequence[float]) -> list[float]:
    """log(t2/t1) / log(n2/n1) between consecutive sizes (the empirical exponent)."""
    return [round(math.log(t2 / t1) / math.log(n2 / n1), 2)
            for (n1, t1), (n2, t2) in zip(zip(sizes, seconds), zip(sizes[1:], seconds[1:])) if t1 > 0 and t2 > 0]


def main(sizes: Sequence[int] = SIZES, dim: int = DIM, seed: int = 0) -> dict:
    """Time UMAP and linear/RBF CKA at each N; print a table; return the numbers."""
    import umap

    from probe.similarity import linear_cka, rbf_cka

    X, Y = _features(max(sizes), dim, seed)
    start = time.perf_counter()
    umap.UMAP(n_components=2, n_neighbors=15).fit_transform(X[:500])  # numba JIT warm-up, same code paths
    jit = time.perf_counter() - start
    rows = []
    for n in sizes:
        x, y = X[:n], Y[:n]
        row = {"n": n, "dim": dim,
               "umap_s": _timed(lambda: umap.UMAP(n_components=2, n_neighbors=15).fit_transform(x)),
               "linear_cka_s": _timed(lambda: linear_cka(x, y), repeats=3)}
        if n <= RBF_MAX_N:
            row["rbf_cka_s"] = _timed(lambda: rbf_cka(x, y))
        rows.append(row)
    base = rows[0]
    for row in rows:
        for key in ("umap_s", "linear_cka_s", "rbf_cka_s"):
            if key in row:
                row[key.replace("_s", "_ratio")] = round(row[key] / base[key], 2)
                row[key] = round(row[key], 4)
    ns = [r["n"] for r in rows]
    result = {"yardstick": f"the same computation at N={ns[0]}", "umap_jit_warmup_s": round(jit, 2), "rows": rows,
              "umap_exponent": _slopes(ns, [r["umap_s"] for r in rows]),
              "linear_cka_exponent": _slopes(ns, [r["linear_cka_s"] for r in rows]),
              "rbf_cka_exponent": _slopes([r["n"] for r in rows if "rbf_cka_s" in r],
                                          [r["rbf_cka_s"] for r in rows if "rbf_cka_s" in r])}
    print(f"{'N':>6} {'UMAP s':>8} {'×':>6} {'linCKA s':>9} {'×':>6} {'rbfCKA s':>9} {'×':>6}")
    for r in rows:
        print(f"{r['n']:>6} {r['umap_s']:>8.2f} {r['umap_ratio']:>6.2f} {r['linear_cka_s']:>9.4f} "
              f"{r['linear_cka_ratio']:>6.2f} {r.get('rbf_cka_s', float('nan')):>9.3f} {r.get('rbf_cka_ratio', float('nan')):>6.2f}")
    print(f"exponents (log-log slope): UMAP {result['umap_exponent']}, linear CKA {result['linear_cka_exponent']}, "
          f"RBF CKA {result['rbf_cka_exponent']}")
    return result


if __name__ == "__main__":
    main()
