"""CLS / patch interventions: properties that follow from each block type's wiring."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probe import intervene
from train.errors import FerlensError

models = pytest.importorskip("train.models")
pytest.importorskip("probe.cache")


def _tiny(block: str, depth: int = 2):
    return models.create_model(f"ferlens_tiny_{block}_s3", num_classes=7, img_size=32, depth=depth,
                               embed_dim=32, num_heads=2).eval()


def _rows(rows):
    return {(r["layer"], r["mode"]): r for r in rows}


def test_zeroing_cls_at_the_last_layer_changes_logits_and_mean_of_identical_images_does_not():
    model = _tiny("vit")
    x = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3])
    rows = _rows(intervene.run_interventions(model, x, labels, modes=("zero", "mean", "shuffle")))
    # the CLS token entering block 0 is the same learned vector for every image: mean and shuffle there
    # are no-ops, so those rows are not produced
    assert set(rows) == {("none", "clean"), ("tokens", "zero")} | {(l, m) for l in ("blocks.0", "blocks.1")
                                                                   for m in ("zero", "mean", "shuffle")}
    assert abs(rows[("blocks.1", "zero")]["mean_logit_change"]) > 1e-4
    for r in rows.values():
        assert r["n"] == 4 and r["delta_accuracy"] == pytest.approx(r["accuracy"] - rows[("none", "clean")]["accuracy"])
    same = x[:1].expand(3, -1, -1, -1)
    rows = _rows(intervene.run_interventions(model, same, labels[:3], modes=("mean",)))
    assert rows[("blocks.1", "mean")]["mean_logit_change"] == pytest.approx(0.0, abs=1e-5)


def test_patch_ablation_after_the_last_block_is_invisible_to_a_cls_readout():
    model = _tiny("cataftermlp")
    x = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([1, 2, 3])
    cells = torch.ones(3, model.grid_size[0] * model.grid_size[1], dtype=torch.bool)
    rows = _rows(intervene.run_interventions(model, x, labels, modes=("patch_parts",), cells=cells))
    assert rows[("blocks.1", "patch_parts")]["mean_logit_change"] == 0.0
    assert rows[("blocks.1", "patch_parts")]["delta_accuracy"] == 0.0
    # mean-ablating every patch before the class-attention blocks changes what CLS reads
    assert abs(rows[("tokens", "patch_parts")]["mean_logit_change"]) > 1e-5


def test_clsonly_patch_ablation_only_where_patches_exist():
    model = _tiny("clsonly")
    x = torch.randn(2, 3, 32, 32)
    cells = torch.zeros(2, model.grid_size[0] * model.grid_size[1], dtype=torch.bool)
    cells[:, 0] = True
    rows = intervene.run_interventions(model, x, torch.tensor([0, 1]), modes=("patch_parts", "zero"), cells=cells)
    assert [r["layer"] for r in rows if r["mode"] == "patch_parts"] == ["tokens"]
    assert len([r for r in rows if r["mode"] == "zero"]) == 3


def test_derangement_and_part_cells():
    perm = intervene.derangement(7, seed=3)
    assert sorted(perm.tolist()) == list(range(7)) and (perm != torch.arange(7)).all()
    masks = torch.zeros(1, 32, 32, dtype=torch.long)
    masks[0, :8, :8] = 8                                      # top-left quarter of a 4x4 grid
    cells = intervene.part_cells(masks, [[8]], (4, 4))
    assert cells.shape == (1, 16) and cells[0].nonzero().flatten().tolist() == [0]


def test_bad_inputs_are_one_sentence():
    model = _tiny("vit", depth=1)
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([0, 1])
    with pytest.raises(FerlensError, match="Unknown intervention 'zeros'.*zero"):
        intervene.run_interventions(model, x, y, modes=("zeros",))
    with pytest.raises(FerlensError, match="part grid cells"):
        intervene.run_interventions(model, x, y, modes=("patch_parts",))
    with pytest.raises(FerlensError, match="not a residual-stream hook point"):
        intervene.run_interventions(model, x, y, modes=("zero",), layers=["blocks.0.attn"])
    with pytest.raises(FerlensError, match="at least 2 images"):
        intervene.derangement(1)


def test_synthfer_counterfactual_swaps_only_the_part():
    synth = pytest.importorskip("train.data.synthfer")
    from train.data import load_dataset

    ds = load_dataset("synthfer:size=32,n=200,seed=0", split="test")
    idx = [i for i in range(len(ds)) if ds.factors(i)["expression"] != "neutral"][:2]
    import numpy as np

    def to_tensor(im):
        return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255

    kept, cf = intervene.synthfer_counterfactuals(ds, idx, to_tensor, parts=("mouth",))
    assert kept == idx and set(cf) == {"counterfactual", "counterfactual_mouth"}
    orig = torch.stack([to_tensor(ds.load_image(i)) for i in idx])
    mouth = torch.stack([torch.from_numpy(np.array(ds.part_mask(i)) == synth.PART_NAMES.index("mouth")) for i in idx])
    changed = (cf["counterfactual_mouth"] != orig).any(1)       # (n, H, W)
    far = ~torch.nn.functional.max_pool2d(mouth[:, None].float(), 9, 1, 4)[:, 0].bool()
    assert not (changed & far).any()                            # nothing changes away from the mouth
    assert not torch.equal(cf["counterfactual"], orig)


def _planted(depth: int = 2, n: int = 64, seed: int = 0):
    """A tiny model whose labels are its own clean predictions (the CLS readout carries the label)."""
    torch.manual_seed(seed)
    model = models.create_model("ferlens_tiny_vit_s3", num_classes=7, img_size=32, depth=depth,
                                embed_dim=32, num_heads=2).eval()
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():                                     # the head reads the CLS's main directions of variation
        f = model.forward_head(model.forward_features(x), pre_logits=True)   # (n, D)
        mu = f.mean(0)
        _, _, v = torch.linalg.svd(f - mu, full_matrices=False)
        head = model.get_classifier()
        head.weight.copy_(v[:7] * 100.0)
        head.bias.copy_(-(v[:7] * 100.0) @ mu)
        labels = model(x).argmax(-1)
    return model, x, labels


def test_planted_mean_cls_collapses_while_random_patch_costs_nothing():
    model, x, labels = _planted()
    assert labels.unique().numel() >= 2
    ref = torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(9))     # the "train split"
    rows = _rows(intervene.run_interventions(model, x, labels, modes=("mean", "random_patch", "top_attended_patch"),
                                             reference=ref, n_boot=500))
    clean = rows[("none", "clean")]
    assert clean["accuracy"] == 1.0 and clean["means_from"] == "train"
    last = rows[("blocks.1", "mean")]
    # the head sees one constant vector: every prediction is one class, flagged instead of read as a finding
    assert last["collapsed"] and last["majority_share"] == 1.0
    share = float((labels == labels.mode().values).float().mean())
    assert last["accuracy"] <= max(share, float(torch.bincount(labels, minlength=7).max()) / len(labels))
    assert last["delta_accuracy"] < -0.2
    # with the means of a different set, the replacement is that set's mean CLS: the predicted class is the
    # class the head gives that mean (checked independently through the head)
    stats = intervene.stream_stats(model, ref, ["blocks.1"])
    with torch.no_grad():
        const = model.forward_head(model.norm(stats.cls_mean("blocks.1")[None, None]))
    assert last["accuracy"] == pytest.approx(float((labels == const.argmax(-1)).float().mean()))
    # one random patch token after the last block is invisible to the CLS readout
    rnd = rows[("blocks.1", "random_patch")]
    assert rnd["delta_accuracy"] == 0.0 and not rnd["collapsed"]
    assert rnd["mean_logit_change"] == pytest.approx(0.0, abs=1e-4)          # logits are ~100 here
    # one token of 16 before the last block costs far less than the CLS (a 4x4 grid at 32 px)
    assert abs(rows[("blocks.0", "random_patch")]["delta_accuracy"]) < abs(last["delta_accuracy"]) / 3
    for r in rows.values():                                   # the paired CI covers the point estimate
        assert r["delta_lo"] - 1e-12 <= r["delta_accuracy"] <= r["delta_hi"] + 1e-12
        assert r["logit_lo"] - 1e-9 <= r["mean_logit_change"] <= r["logit_hi"] + 1e-9


def test_paired_bootstrap_ci_covers_and_shrinks():
    rng = np.random.default_rng(0)
    before = (rng.random(400) < 0.9).astype(float)
    after = before.copy()
    after[rng.permutation(400)[:60]] = 0.0                     # a real drop
    lo, hi = intervene.paired_ci(after, before, n_boot=1000)
    d = after.mean() - before.mean()
    assert lo <= d <= hi and hi < 0
    lo2, hi2 = intervene.paired_ci(after[:100], before[:100], n_boot=1000)
    assert (hi2 - lo2) > (hi - lo)                             # fewer images, wider interval
    assert intervene.paired_ci(before, before) == (0.0, 0.0)   # no image changed


def test_top_attended_patch_targets_the_most_read_cell():
    model, x, labels = _planted(n=16)
    stats = intervene.stream_stats(model, x, ["blocks.0"], with_attention=True)
    from probe.cache import run_with_cache

    cache = run_with_cache(model, x, names=["blocks.0.attn", "blocks.1.attn"])
    read = torch.stack([cache[f"blocks.{i}.attn"][:, :, 0, 1:].mean(1) for i in range(2)]).mean(0)
    assert torch.allclose(stats.cls_read, read, atol=1e-6)
    assert stats.cls_read.shape == (16, model.grid_size[0] * model.grid_size[1])


def test_a_model_that_already_predicts_one_class_is_not_flagged_as_collapsed():
    logits = torch.zeros(8, 7)
    logits[:, 2] = 1.0                                         # the clean model always says class 2
    row = intervene.score_row(logits.clone(), torch.arange(8) % 7, logits)
    assert row["majority_share"] == 1.0 and not row["collapsed"]
    varied = torch.eye(7)[torch.arange(8) % 7]
    assert intervene.score_row(logits, torch.arange(8) % 7, varied)["collapsed"]


@pytest.mark.parametrize("block", ["vit", "cataftermlp", "clsonly"])
def test_patched_runs_resumed_from_the_clean_stream_equal_full_forwards(block):
    torch.manual_seed(0)
    model = _tiny(block)
    x, ref = torch.randn(6, 3, 32, 32), torch.randn(5, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    n_cells = model.grid_size[0] * model.grid_size[1]
    cells = torch.rand(6, n_cells, generator=torch.Generator().manual_seed(1)) < 0.3
    layers = intervene.stream_layers(model)
    stats = intervene.stream_stats(model, x, layers, batch_size=4, keep_stream=True)
    for layer in layers:                                  # the rest of the forward from the clean stream
        rest = intervene.resume_from(model, layer)
        assert rest is not None
        assert torch.allclose(torch.cat([rest(s) for s in stats.stream[layer].split(4)]), stats.logits, atol=1e-6)
    kw = dict(modes=intervene.MODES, cells=cells, batch_size=4, reference=ref, n_boot=200)
    fast, slow = intervene.run_interventions(model, x, labels, **kw), \
        intervene.run_interventions(model, x, labels, resume=False, **kw)
    assert [(r["layer"], r["mode"]) for r in fast] == [(r["layer"], r["mode"]) for r in slow] and len(fast) > 10
    for a, b in zip(fast, slow):
        for k in ("accuracy", "mean_logit_change", "logit_lo", "logit_hi", "delta_lo", "delta_hi", "majority_share"):
            assert a[k] == pytest.approx(b[k], abs=1e-6), (a["layer"], a["mode"], k)


def test_models_with_another_forward_are_not_resumed():
    class Wrapped(type(_tiny("vit"))):
        def forward(self, x):
            return super().forward(x) * 2

    model = _tiny("vit")
    model.__class__ = Wrapped
    assert intervene.resume_from(model, "blocks.0") is None
    assert intervene.resume_from(_tiny("vit"), "blocks.9") is None
