"""Probe engines: the batched torch engine vs scikit-learn on a layer × readout sweep.

Two comparisons on synthetic features shaped like a sweep (P feature matrices, K classes, signal
growing with depth), both single-threaded (see ``probe.linear._torch_threads``):

1. one fit per matrix at sklearn's default C=1: ``batched_logreg`` (all matrices at once) vs a loop of
   ``sklearn.linear_model.LogisticRegression()``; target ≥ 3× faster;
2. the full probe (outer CV, inner-CV choice of C, control task) with ``engine="torch"`` vs
   ``engine="sklearn"``.

Agreement: the largest test-accuracy difference over the matrices (must be ≤ 0.5 points).

    python -m bench.bench_probe_sweep
"""
from __future__ import annotations

import time

import numpy as np


def sweep_like(P: int = 20, n: int = 600, d: int = 64, k: int = 7, seed: int = 0):
    """P matrices (n, d) whose class signal grows from 0 to strong, and labels (n,)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    xs = []
    for p in range(P):
        means = rng.normal(size=(k, d))
        xs.append((rng.normal(size=(n, d)) + 0.25 * p / P * means[y]).astype(np.float32))
    return xs, y


def fixed_c(xs, y, split: float = 0.8) -> dict:
    import torch
    from sklearn.linear_model import LogisticRegression

    from probe.linear import _logreg_predict, _stack, _standardize, _torch_threads, batched_logreg

    n_tr = int(len(y) * split)
    pairs = [_standardize(x[:n_tr], x[n_tr:]) for x in xs]
    ytr, yte = y[:n_tr], y[n_tr:]
    k = int(y.max()) + 1
    with _torch_threads(1):
        t = time.perf_counter()
        sk = [LogisticRegression().fit(a, ytr).predict(b) for a, b in pairs]
        t_sk = time.perf_counter() - t
        t = time.perf_counter()
        X = _stack([a for a, _ in pairs])
        W, b = batched_logreg(X, torch.from_numpy(ytr)[None], torch.ones(1, n_tr),
                              torch.full((len(xs), 1), 1.0 / n_tr), k)
        pred = _logreg_predict(_stack([b_ for _, b_ in pairs]), W, b)[..., 0].numpy()
        t_torch = time.perf_counter() - t
    acc_sk = np.array([(p == yte).mean() for p in sk])
    acc_t = (pred == yte[None]).mean(1)
    return {"fixed_c_sklearn_s": t_sk, "fixed_c_torch_s": t_torch, "fixed_c_speedup": t_sk / t_torch,
            "fixed_c_max_acc_diff_points": float(100 * np.abs(acc_sk - acc_t).max())}


def full_probe(xs, y, cv: int = 3) -> dict:
    from probe.linear import evaluate_features

    out = {}
    res = {}
    for engine in ("sklearn", "torch"):
        t = time.perf_counter()
        res[engine] = evaluate_features(xs, y, cv=cv, seeds=(0,), engine=engine)
        out[f"full_{engine}_s"] = time.perf_counter() - t
    diff = max(abs(a["metric"]["accuracy"] - b["metric"]["accuracy"]) for a, b in zip(res["torch"], res["sklearn"]))
    out["full_speedup"] = out["full_sklearn_s"] / out["full_torch_s"]
    out["full_max_acc_diff_points"] = float(100 * diff)
    return out


def main(P: int = 20, n: int = 600, d: int = 64) -> dict:
    xs, y = sweep_like(P, n, d)
    fixed_c(xs[:2], y)  # warm-up imports
    result = {"P": P, "n": n, "d": d, **fixed_c(xs, y), **full_probe(xs, y)}
    print(f"probe sweep, {P} matrices of {n}×{d}, 7 classes (single-threaded):")
    print(f"  one fit at C=1:   sklearn loop {result['fixed_c_sklearn_s']:.2f}s, torch batched "
          f"{result['fixed_c_torch_s']:.2f}s → {result['fixed_c_speedup']:.2f}× (target ≥ 3×), "
          f"max |Δacc| {result['fixed_c_max_acc_diff_points']:.2f} points")
    print(f"  full probe (cv=3, inner CV over C, control): sklearn {result['full_sklearn_s']:.1f}s, torch "
          f"{result['full_torch_s']:.1f}s → {result['full_speedup']:.2f}×, max |Δacc| "
          f"{result['full_max_acc_diff_points']:.2f} points")
    return result


if __name__ == "__main__":
    main()
