"""Probe controls that can fail: grouped folds, the Hewitt & Liang type control, MLP probes and MDL."""
from __future__ import annotations

import numpy as np
import pytest

from probe.features import FeatureSet
from probe.linear import (_inner_splits, _outer_splits, control_labels, evaluate_features, fit_probe,
                          merge_rows, online_codelength, sweep)
from train.errors import FerlensError


def identity_world(n_ids=30, per_id=12, d=16, seed=0):
    """Features that encode identity only (one random centre per identity) and an attribute that is a
    random function of identity, plus an expression that varies within identity and is not encoded."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_ids), per_id)
    centres = rng.normal(size=(n_ids, d)) * 3.0
    X = centres[ids] + 0.3 * rng.normal(size=(len(ids), d))
    per_id_attr = rng.integers(0, 3, n_ids)[ids]  # e.g. skin tone: fixed per identity
    expression = np.arange(len(ids)) % 4
    return X, ids, per_id_attr, expression


def test_type_control_catches_a_feature_that_only_encodes_identity():
    X, ids, attr, _ = identity_world()
    perm = fit_probe(features=X, labels=attr, cv=4, seeds=2)  # stratified folds, permutation control
    typed = fit_probe(features=X, labels=attr, cv=4, seeds=2, types=ids)
    assert perm["metric"]["accuracy"] > 0.9  # the probe memorises identity -> attribute
    assert perm["selectivity"] > 0.5  # the old control calls that selective
    assert typed["control_accuracy"] > 0.85  # the type control is memorised just as well
    assert abs(typed["selectivity"]) < 0.1  # so selectivity is ~0


def test_control_labels_depend_on_the_type_only_and_keep_the_marginals():
    rng = np.random.default_rng(0)
    types = rng.integers(0, 200, 4000)
    y = rng.choice(3, size=4000, p=[0.6, 0.3, 0.1])
    c = control_labels(y, 0, types)
    for t in np.unique(types)[:20]:
        assert len(np.unique(c[types == t])) == 1
    assert np.bincount(c, minlength=3) / len(c) == pytest.approx([0.6, 0.3, 0.1], abs=0.08)
    assert not np.array_equal(control_labels(y, 1, types), c)


@pytest.mark.parametrize("kind", ["categorical", "continuous"])
def test_grouped_folds_never_share_a_group(kind):
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 25, 400)
    y = rng.integers(0, 3, 400) if kind == "categorical" else rng.normal(size=400)
    for seed in range(3):
        outer = _outer_splits(y, 5, seed, kind, groups)
        assert len(outer) == 5
        assert sorted(np.concatenate([te for _, te in outer])) == list(range(400))
        for tr, te in outer:
            assert not set(groups[tr]) & set(groups[te])
            for itr, iva in _inner_splits(y[tr], 3, seed, kind, groups[tr]):
                assert not set(groups[tr][itr]) & set(groups[tr][iva])


def test_grouped_folds_stop_identity_leakage():
    """An attribute fixed per identity is decodable with stratified folds (the probe has seen the
    identity) and falls to chance when no test identity is in training."""
    X, ids, attr, _ = identity_world()
    leaky = fit_probe(features=X, labels=attr, cv=4)
    grouped = fit_probe(features=X, labels=attr, cv=4, groups=ids)
    assert leaky["metric"]["accuracy"] > 0.9
    assert grouped["metric"]["accuracy"] < grouped["chance"] + 0.2


def test_too_few_groups_is_a_clear_error():
    X, ids, attr, _ = identity_world(n_ids=3)
    with pytest.raises(FerlensError, match="distinct"):
        fit_probe(features=X, labels=attr, cv=5, groups=ids)


def planted(n=400, d=10, k=4, strength=2.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return rng.normal(size=(n, d)) + strength * rng.normal(size=(k, d))[y], y


def test_mdl_compresses_a_planted_signal_and_not_noise():
    X, y = planted()
    bits, uniform = online_codelength(X, y, seed=0, C=0.01)
    assert uniform == pytest.approx(400 * 2.0)
    assert uniform / bits > 1.5
    assert uniform / online_codelength(X, y, seed=0, C=1.0)[0] > 5
    noise = np.random.default_rng(5).normal(size=X.shape)
    nbits, _ = online_codelength(noise, y, seed=0, C=0.01)  # a regularised probe (as the inner CV picks for noise)
    assert 0.9 < uniform / nbits < 1.05  # ≈ 1: learning the class marginals online costs a few per cent


def test_mlp_probe_and_mdl_rows():
    X, y = planted(n=240)
    res = evaluate_features([X, np.random.default_rng(3).normal(size=X.shape)], y, cv=3, probe="mlp", mdl=True,
                            types=np.arange(240) // 8)
    sig, noise = res
    assert sig["probe"] == "mlp" and sig["metric"]["accuracy"] > 0.9 and sig["compression"] > 2
    assert noise["metric"]["accuracy"] < 0.45 and noise["compression"] < 1.15
    with pytest.raises(FerlensError, match="probe family"):
        evaluate_features([X], y, cv=3, probe="forest")


def toy_identity_set(n_ids=12, per_id=10, d=8):
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(n_ids), per_id)
    n = len(ids)
    y = np.arange(n) % 3
    layers = ["tokens", "blocks.0"]
    cls = rng.normal(size=(n, 2, d)).astype(np.float32)
    cls[:, 1] += 4 * np.eye(3, d)[y]
    return FeatureSet(layers=layers, patch_layers=layers, arrays={"cls": cls}, labels=y, label_names=["a", "b", "c"],
                      attrs={"identity": [int(i) for i in ids], "bg": list(rng.integers(0, 2, n))},
                      attr_kinds={"identity": "categorical", "bg": "categorical"},
                      sample_ids=[str(i) for i in range(n)], stem=rng.normal(size=(n, 5)), stem_layer="stem.stage3")


def test_sweep_groups_by_identity_and_records_the_scheme():
    fs = toy_identity_set()
    rows = sweep(featureset=fs, targets="expression,identity", readouts="cls", layers="all", cv=3, seeds=1,
                 progress=False)
    by = {(r["target"], r["layer"]): r for r in rows}
    e = by[("expression", "blocks.0")]
    assert e["cv_groups"] == "identity" and e["cv_scheme"] == "grouped"
    assert e["control_kind"].startswith("type:kmeans")  # identities never recur across grouped folds
    assert e["metric"]["accuracy"] > 0.9 and e["probe"] == "linear" and e["n_seeds"] == 1
    i = by[("identity", "blocks.0")]
    assert i["cv_groups"] is None and i["cv_scheme"] == "within-group"
    none = sweep(featureset=fs, targets="expression", readouts="cls", layers="-1", cv=3, seeds=1, progress=False,
                 group="none")
    assert none[0]["cv_groups"] is None and none[0]["control_kind"] == "type:identity"
    perm = sweep(featureset=fs, targets="expression", readouts="cls", layers="-1", cv=3, seeds=1, progress=False,
                 control="permutation")
    assert perm[0]["control_kind"] == "permutation"
    with pytest.raises(FerlensError, match="Unknown --group"):
        sweep(featureset=fs, targets="expression", readouts="cls", cv=3, seeds=1, progress=False, group="subjekt")


def test_merge_rows_keeps_other_probe_families():
    old = [{"target": "e", "probe": "linear", "v": 1}, {"target": "e", "probe": "mlp", "v": 2}, {"target": "x", "v": 3}]
    new = [{"target": "e", "probe": "mlp", "v": 4}]
    merged = merge_rows(old, new)
    assert [r["v"] for r in merged] == [1, 3, 4]
