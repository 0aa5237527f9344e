"""CLS / patch interventions: properties that follow from each block type's wiring."""
from __future__ import annotations

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
    assert set(rows) == {("none", "clean")} | {(l, m) for l in ("tokens", "blocks.0", "blocks.1")
                                               for m in ("zero", "mean", "shuffle")}
    assert abs(rows[("blocks.1", "zero")]["mean_logit_change"]) > 1e-4
    for r in rows.values():
        assert r["n"] == 4 and r["delta_accuracy"] == pytest.approx(r["accuracy"] - rows[("none", "clean")]["accuracy"])
    # the CLS token entering block 0 is the same learned vector for every image: mean and shuffle are no-ops
    assert rows[("tokens", "mean")]["mean_logit_change"] == pytest.approx(0.0, abs=1e-5)
    assert rows[("tokens", "shuffle")]["mean_logit_change"] == pytest.approx(0.0, abs=1e-5)
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
