"""Probe engines: the batched torch engine vs scikit-learn on a layer × readout sweep.

Two comparisons on synthetic features shaped like a sweep (P feature matrices, K classes, signal
growing with depth), both single-threaded (see ``probe.linear._torch_threads``):

1. one fit per matrix at sklearn's default C=1: ``batched_logreg`` (all matrices at once) vs a loop of
   ``sklearn.linear_model.LogisticRegression()``; target ≥ 3× faster;
2. the full probe (outer CV, inner-CV choice of C, control task) with ``engine="torch"`` vs
   ``engine="sklearn"``.

3. the same full probe on **real features** — the demo's (``artifacts/runs/demo_cataftermlp``, else
   ``demo_vit``, when ``make demo`` has run) or, on a fresh clone, those of a tiny cataftermlp trained
   for one epoch on the demo's SynthFER set (about a minute) — swept as ``probe linear`` does over the
   CLS and patch readouts of every layer for expression, identity, yaw bin and background; target ≥ 3×.

Agreement: the largest test-accuracy difference over the matrices (must be ≤ 0.5 points).

    python -m bench.bench_probe_sweep
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REAL_TARGETS = ("expression", "identity", "yaw_bin", "background")
DEMO_RUNS = ("demo_cataftermlp", "demo_vit")


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


def _train_features(root: Path) -> Path:
    """A tiny cataftermlp trained one epoch on the demo's SynthFER set, its test features extracted."""
    env = dict(os.environ, FERLENS_ARTIFACTS=str(root), TQDM_DISABLE="1")
    data = "synthfer:size=64,n=8000"
    for argv in (["train", "fit", "-c", "demo", "--model", "ferlens_tiny_cataftermlp_s3", "--data", data,
                  "--epochs", "1", "--run_name", "bench_real", "--bootstrap", "0"],
                 ["probe", "extract", "--run", "bench_real", "--data", data, "--split", "test"]):
        subprocess.run([sys.executable, "-m", *argv], env=env, check=True, capture_output=True)
    return root / "runs" / "bench_real"


def real_features(targets=REAL_TARGETS) -> tuple[str, list[tuple[str, list, np.ndarray, np.ndarray | None]]]:
    """(source, [(target, feature matrices, encoded labels, groups)]) as ``probe linear`` would probe them."""
    from probe.features import load_features
    from probe.linear import encode_target, resolve_group
    from train.runs import artifacts_root

    run = next((artifacts_root() / "runs" / r for r in DEMO_RUNS
                if (artifacts_root() / "runs" / r / "features").is_dir()), None)
    tmp = None
    if run is None:
        tmp = tempfile.TemporaryDirectory(prefix="ferlens-bench-probe-")
        run = _train_features(Path(tmp.name))
    fs = load_features(run)
    group = resolve_group(fs, "auto")
    groups = None if group is None else encode_target(fs.target(group)[0], "categorical")
    pairs = fs.pairs(("cls", "patch"), "all")
    out = []
    for t in targets:
        values, kind = fs.target(t)
        out.append((t, [np.asarray(fs.readout(r, layer)) for r, layer, _ in pairs], encode_target(values, kind),
                    None if t == group else groups))
    source = run.name if tmp is None else "tiny cataftermlp, 1 epoch (no demo run found)"
    if tmp is not None:
        tmp.cleanup()
    return source, out


def real_probe(cv: int = 5) -> dict:
    """Both engines on the real features, per target; the speed-up is total sklearn / total torch CPU time
    (both run single-threaded, so CPU time is the work done and holds on a machine shared with other jobs;
    wall-clock seconds are recorded too)."""
    from probe.linear import evaluate_features

    source, problems = real_features()
    out: dict = {"real_source": source, "real_targets": {}}
    totals = {"sklearn": 0.0, "torch": 0.0}
    worst = 0.0
    for target, xs, y, groups in problems:
        res, secs, wall = {}, {}, {}
        for engine in ("sklearn", "torch"):
            t, w = time.process_time(), time.perf_counter()
            res[engine] = evaluate_features(xs, y, cv=cv, seeds=(0,), engine=engine, groups=groups, name=target)
            secs[engine], wall[engine] = time.process_time() - t, time.perf_counter() - w
            totals[engine] += secs[engine]
        diff = 100 * max(abs(a["metric"]["accuracy"] - b["metric"]["accuracy"])
                         for a, b in zip(res["torch"], res["sklearn"]))
        worst = max(worst, diff)
        out["real_targets"][target] = {"matrices": len(xs), "n": int(len(y)), "dim": int(xs[0].shape[1]),
                                       "sklearn_s": secs["sklearn"], "torch_s": secs["torch"],
                                       "sklearn_wall_s": wall["sklearn"], "torch_wall_s": wall["torch"],
                                       "speedup": secs["sklearn"] / secs["torch"], "max_acc_diff_points": diff}
    out.update(real_sklearn_s=totals["sklearn"], real_torch_s=totals["torch"],
               real_speedup=totals["sklearn"] / totals["torch"], real_max_acc_diff_points=worst)
    return out


def main(P: int = 20, n: int = 600, d: int = 64) -> dict:
    from train.demo import machine

    xs, y = sweep_like(P, n, d)
    fixed_c(xs[:2], y)  # warm-up imports
    m = machine()
    print(f"CPU: {m.get('cpu')} ({m.get('isa_label')}), {m.get('cores')} cores")
    result = {"P": P, "n": n, "d": d, "cpu": m.get("cpu"), "isa": m.get("isa_label"),
              **fixed_c(xs, y), **full_probe(xs, y), **real_probe()}
    print(f"probe sweep, {P} matrices of {n}×{d}, 7 classes (single-threaded):")
    print(f"  one fit at C=1:   sklearn loop {result['fixed_c_sklearn_s']:.2f}s, torch batched "
          f"{result['fixed_c_torch_s']:.2f}s → {result['fixed_c_speedup']:.2f}× (target ≥ 3×), "
          f"max |Δacc| {result['fixed_c_max_acc_diff_points']:.2f} points")
    print(f"  full probe (cv=3, inner CV over C, control): sklearn {result['full_sklearn_s']:.1f}s, torch "
          f"{result['full_torch_s']:.1f}s → {result['full_speedup']:.2f}×, max |Δacc| "
          f"{result['full_max_acc_diff_points']:.2f} points")
    print(f"  real features ({result['real_source']}; cls + patch at every layer, 5-fold CV, inner CV over C, "
          f"control): sklearn {result['real_sklearn_s']:.1f}s, torch {result['real_torch_s']:.1f}s CPU → "
          f"{result['real_speedup']:.2f}× (target ≥ 3×), max |Δacc| {result['real_max_acc_diff_points']:.2f} points")
    for target, r in result["real_targets"].items():
        print(f"    {target:<12} {r['matrices']:2d} matrices {r['n']}×{r['dim']}: {r['speedup']:.2f}×, "
              f"max |Δacc| {r['max_acc_diff_points']:.2f} points")
    return result


if __name__ == "__main__":
    main()
