"""Linear probes: planted signal, shuffled labels, engine agreement, ridge, errors and sweeps."""
from __future__ import annotations

import numpy as np
import pytest

from probe.features import FeatureSet
from probe.linear import add_baseline, evaluate_features, fit_probe, flatten_row, sweep, t_interval
from train.errors import FerlensError


def planted(n=150, d=12, k=3, strength=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    means = rng.normal(size=(k, d))
    return rng.normal(size=(n, d)) + strength * means[y], y


@pytest.mark.parametrize("engine", ["sklearn", "torch"])
def test_planted_signal_is_recovered(engine):
    X, y = planted()
    res = fit_probe(features=X, labels=y, cv=3, engine=engine)
    assert res["metric"]["accuracy"] >= 0.95
    lo, hi = res["ci95"]["accuracy"]
    assert lo <= res["metric"]["accuracy"] <= hi
    assert res["chance"] == pytest.approx(1 / 3, abs=0.01)
    assert res["selectivity"] > 0.5  # control labels (permuted) are not decodable
    assert res["dim"] == 12 and res["n_train"] + res["n_test"] == 150


def test_shuffled_labels_stay_at_chance():
    X, y = planted(n=180)
    y = np.random.default_rng(1).permutation(y)
    res = fit_probe(features=X, labels=y, cv=3, seeds=2)
    assert abs(res["metric"]["accuracy"] - res["chance"]) < 0.12
    assert abs(res["selectivity"]) < 0.12


def test_torch_engine_matches_sklearn():
    rng = np.random.default_rng(2)
    X, y = planted(n=160, d=10, strength=0.6, seed=3)
    xs = [X, X[:, :6] + 0.5 * rng.normal(size=(160, 6))]
    a = evaluate_features(xs, y, cv=3, engine="torch")
    b = evaluate_features(xs, y, cv=3, engine="sklearn")
    for ra, rb in zip(a, b):
        assert abs(ra["metric"]["accuracy"] - rb["metric"]["accuracy"]) <= 0.005
        assert ra["reg"] == pytest.approx(rb["reg"])


@pytest.mark.parametrize("engine", ["sklearn", "torch"])
def test_ridge_r2_for_continuous_targets(engine):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 8))
    t = X @ rng.normal(size=8) + 0.1 * rng.normal(size=120)
    res = fit_probe(features=X, labels=t, kind="continuous", cv=3, engine=engine)
    assert res["metric"]["r2"] > 0.95
    assert res["control_accuracy"] < 0.2 and res["selectivity"] > 0.75
    assert res["chance"] == 0.0


def test_t_interval_matches_formula():
    v = [0.8, 0.85, 0.9, 0.75]
    lo, hi = t_interval(v)
    half = 3.182446305284263 * np.std(v, ddof=1) / 2
    assert lo == pytest.approx(np.mean(v) - half) and hi == pytest.approx(np.mean(v) + half)


def test_bad_targets_give_clear_errors():
    X, _ = planted(n=30)
    with pytest.raises(FerlensError, match="single class"):
        fit_probe(features=X, labels=np.zeros(30), cv=3)
    y = np.array([0] * 28 + [1] * 2)
    with pytest.raises(FerlensError, match="only 2 samples"):
        fit_probe(features=X, labels=y, cv=3)
    with pytest.raises(FerlensError, match="engine"):
        fit_probe(features=X, labels=np.arange(30) % 2, engine="jax")


def toy_set(n=60, d=6, layers=3):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    L = ["tokens"] + [f"blocks.{i}" for i in range(layers - 1)]
    cls = rng.normal(size=(n, layers, d)).astype(np.float32)
    cls[:, -1] += 4 * np.eye(3, d)[y]  # expression decodable at the last layer only
    return FeatureSet(layers=L, patch_layers=L, arrays={"cls": cls, "patch": rng.normal(size=(n, layers, d))},
                      labels=y, label_names=["a", "b", "c"],
                      attrs={"one": ["x"] * n, "size": list(rng.normal(size=n))},
                      attr_kinds={"one": "categorical", "size": "continuous"}, sample_ids=[str(i) for i in range(n)],
                      stem=rng.normal(size=(n, 4)), stem_layer="stem.stage3")


def test_sweep_rows_follow_the_contract():
    notes = []
    rows = sweep(featureset=toy_set(), targets="all", readouts="cls,stem", layers="0,-1", cv=3, seeds=1,
                 run="toy", on_skip=notes.append, progress=False)
    assert any("one" in n for n in notes)  # single-class target skipped with a note when from "all"
    keys = {(r["target"], r["layer"], r["tokens"]) for r in rows}
    assert ("expression", "blocks.1", "cls") in keys and ("expression", "stem.stage3", "stem") in keys
    by = {(r["target"], r["layer"], r["tokens"]): r for r in rows}
    assert by[("expression", "blocks.1", "cls")]["metric"]["accuracy"] > 0.9
    assert by[("expression", "tokens", "cls")]["metric"]["accuracy"] < 0.6
    assert by[("size", "tokens", "cls")]["kind"] == "continuous"
    row = by[("expression", "blocks.1", "cls")]
    assert row["layer_index"] == 2 and by[("expression", "stem.stage3", "stem")]["layer_index"] == -1
    for k in ("run", "target", "layer", "layer_index", "tokens", "metric", "ci95", "control_accuracy",
              "selectivity", "chance", "random_init_accuracy", "n_train", "n_test", "dim", "kind"):
        assert k in row
    flat = flatten_row(row)
    assert flat["accuracy_lo"] <= flat["accuracy"] <= flat["accuracy_hi"]
    merged = add_baseline(rows, rows)
    assert merged[0]["random_init_accuracy"] is not None


@pytest.mark.parametrize("kwargs, match", [
    ({"readouts": "cls,patchy"}, "valid readouts are cls, patch"),
    ({"layers": "blocks.9"}, "valid layers are tokens, blocks.0"),
    ({"layers": "7"}, "out of range"),
    ({"targets": "identity"}, "valid targets are expression"),
    ({"targets": "one"}, "single class"),
])
def test_sweep_rejects_unknown_names(kwargs, match):
    opts = {"readouts": "cls", "layers": "all", "targets": "expression", **kwargs}
    with pytest.raises(FerlensError, match=match):
        sweep(featureset=toy_set(), cv=3, seeds=1, progress=False, **opts)


def test_standardize_zeroes_constant_columns_and_keeps_the_others():
    from probe.linear import _standardize

    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 3)).astype(np.float32)
    train[:, 1] = np.float32(0.7361)  # exactly constant: a CLS token before the first block
    train[:, 2] = np.float32(123.4) + rng.normal(size=50).astype(np.float32) * 1e-5  # float32 rounding-level
    test = rng.normal(size=(7, 3)).astype(np.float32)
    ztr, zte = _standardize(train, test)
    assert ztr.dtype == np.float32 and not ztr[:, 1:].any() and not zte[:, 1:].any()
    assert abs(float(ztr[:, 0].mean())) < 1e-6 and abs(float(ztr[:, 0].std()) - 1) < 1e-5
    np.testing.assert_allclose(zte[:, 0], (test[:, 0] - train[:, 0].mean()) / train[:, 0].std(), rtol=1e-5)
