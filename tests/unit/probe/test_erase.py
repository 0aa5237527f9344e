"""LEACE concept erasure: the concept probe falls to chance, the random-direction control does not, the
other target survives; the causal version runs through a tiny ferlens model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.erase import causal_erasure, erase_sweep, fit_leace, merge_erasure, random_eraser
from probe.features import FeatureSet, extract
from train.errors import FerlensError


def world(n, seed, d=24, n_ids=10):
    """Features: a 'bg' concept (4 classes, shared by both splits) in 3 directions, expression (3 classes)
    in 3 others, noise elsewhere; identity groups of n / n_ids images."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(99).normal(size=(d, d)))[0]
    bg = rng.integers(0, 4, n)
    expr = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d))
    X[:, :3] += 3 * np.random.default_rng(7).normal(size=(4, 3))[bg]
    X[:, 3:6] += 3 * np.random.default_rng(8).normal(size=(3, 3))[expr]
    X = (X @ basis.T).astype(np.float32)
    layers = ["tokens", "blocks.0"]
    cls = np.stack([rng.normal(size=(n, d)).astype(np.float32), X], 1)
    ids = np.repeat(np.arange(n_ids) + 100 * seed, n // n_ids)
    return FeatureSet(layers=layers, patch_layers=layers, arrays={"cls": cls}, labels=expr,
                      label_names=["a", "b", "c"], attrs={"bg": [int(b) for b in bg], "identity": [int(i) for i in ids]},
                      attr_kinds={"bg": "categorical", "identity": "categorical"},
                      sample_ids=[str(i) for i in range(n)])


def test_leace_drives_the_concept_to_chance_and_random_directions_do_not():
    rows, erasers = erase_sweep(fit_set=world(400, 0), eval_set=world(240, 1), concept="bg", readouts=("cls",),
                                layers="-1", cv=3, seeds=2, progress=False)
    by = {r["target"]: r for r in rows}
    bg, ex = by["bg"], by["expression"]
    assert bg["rank"] == 3 and bg["cv_groups"] == "identity" and bg["n_seeds"] == 2
    assert bg["before"] > 0.85
    assert bg["after"] < bg["chance"] + 0.1  # erased: no better than the majority class
    assert bg["random_control_after"] > 0.75  # three random directions of 24 leave it decodable
    assert ex["before"] > 0.9 and ex["after"] > 0.85  # expression lives elsewhere and survives
    lo, hi = bg["ci95"]["random_control_after"]
    assert lo <= bg["random_control_after"] <= hi
    assert set(bg) >= {"layer", "tokens", "concept", "target", "before", "after", "random_control_after", "ci95"}


def test_erasing_expression_removes_it():
    rows, _ = erase_sweep(fit_set=world(400, 0), eval_set=world(240, 1), concept="expression", readouts=("cls",),
                          layers="-1", cv=3, seeds=1, progress=False)
    ex = {r["target"]: r for r in rows}["expression"]
    assert ex["before"] > 0.9 and ex["after"] < ex["chance"] + 0.1 and ex["rank"] == 2


def test_eraser_algebra_and_errors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    z = (x[:, 0] > 0).astype(int)
    e = fit_leace(x, z)
    xe = e(x)
    assert e.rank == 1
    assert abs(np.corrcoef(xe[:, 0], z)[0, 1]) < 1e-3  # no linear correlation with the concept is left
    r = random_eraser(x, 3, seed=0)
    removed = x - r(x)
    assert np.linalg.matrix_rank(removed - removed.mean(0), tol=1e-6) == 3
    with pytest.raises(FerlensError, match="single class"):
        fit_leace(x, np.zeros(200, dtype=int))
    with pytest.raises(FerlensError, match="continuous"):
        fs = world(60, 0)
        fs.attrs["size"], fs.attr_kinds["size"] = list(rng.normal(size=60)), "continuous"
        erase_sweep(fit_set=fs, eval_set=fs, concept="size", progress=False)


def test_merge_keeps_other_concepts():
    old = {"rows": [{"concept": "identity", "v": 1}, {"concept": "expression", "v": 2}], "causal": [],
           "concepts": ["expression", "identity"]}
    new = {"concept": "expression", "rows": [{"concept": "expression", "v": 3}], "causal": [], "run": "r"}
    m = merge_erasure(old, new)
    assert [r["v"] for r in m["rows"]] == [1, 3] and m["concepts"] == ["expression", "identity"] and m["run"] == "r"


class _Images(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.label_names, self.attrs, self.attr_kinds = [str(i) for i in range(7)], [{} for _ in labels], {}
        self.sample_ids = [str(i) for i in range(len(labels))]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), {}, str(i)


def test_causal_erasure_runs_through_a_tiny_ferlens_model():
    from probe.cache import run_with_cache
    from train.models import create_model

    torch.manual_seed(0)
    model = create_model("ferlens_tiny_vit_s3", num_classes=7, img_size=32, depth=2, embed_dim=32, num_heads=2).eval()
    images = torch.randn(192, 3, 32, 32)
    with torch.no_grad():  # a head on the top principal directions of the pre-logits spreads the predictions
        c = run_with_cache(model, images, names=["pre_logits"])["pre_logits"]
        v = torch.linalg.svd(c - c.mean(0), full_matrices=False)[2][:7]
        model.head.weight.copy_(10 * v)
        model.head.bias.copy_(-10 * c.mean(0) @ v.T)
        labels = model(images).argmax(-1)  # the model's own predictions: clean accuracy 1
    assert len(labels.unique()) >= 2
    fs = extract(model, _Images(images[:128], labels[:128].numpy()), batch_size=64, progress=False)
    layer = "blocks.1"
    cls = np.asarray(fs.readout("cls", layer))
    eraser = fit_leace(cls, labels[:128].numpy())
    rows = causal_erasure(model, images[128:], labels[128:], {layer: eraser}, fit_cls={layer: cls}, seeds=3,
                          concept="expression")
    (row,) = rows
    assert row["baseline_accuracy"] == pytest.approx(1.0)
    assert row["rank"] == eraser.rank >= 1 and row["n"] == 64
    assert row["accuracy"] < row["random_control_accuracy"]  # the concept directions matter more than random ones
    lo, hi = row["ci95"]["accuracy"]
    assert lo <= row["accuracy"] <= hi
    with pytest.raises(FerlensError, match="holds no CLS|Unknown hook"):
        causal_erasure(model, images[:4], labels[:4], {"stem.stage3": eraser}, fit_cls={"stem.stage3": cls}, seeds=1)
