"""Attribution metrics on hand-made maps, masks and a toy model whose answer is known."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from probe import metrics
from train.errors import FerlensError


class _BoxModel(nn.Module):
    """Class 1's logit is 8 × the mean of the top-left 4×4 box; class 0's logit is 0."""

    def forward(self, x):  # (B, 3, 16, 16) -> (B, 2)
        s = x[:, :, :4, :4].mean((1, 2, 3)) * 8.0
        return torch.stack([torch.zeros_like(s), s], -1)


def _box_mask(b: int = 2) -> torch.Tensor:
    m = torch.zeros(b, 16, 16, dtype=torch.bool)
    m[:, :4, :4] = True
    return m


def test_perfect_map_beats_random_map_on_deletion_and_insertion():
    model = _BoxModel()
    images = torch.ones(2, 3, 16, 16)
    targets = torch.ones(2, dtype=torch.long)
    perfect = _box_mask().float()
    random = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
    good = metrics.deletion_insertion(model, images, perfect, targets, steps=16, baseline="zero")
    bad = metrics.deletion_insertion(model, images, random, targets, steps=16, baseline="zero")
    assert (good.deletion_auc < bad.deletion_auc).all()
    assert (good.insertion_auc > bad.insertion_auc).all()
    # the curve starts at p(x) and ends at p(baseline) = 0.5 for deletion
    p_x = torch.softmax(model(images), -1)[:, 1]
    assert torch.allclose(good.deletion_curve[:, 0], p_x) and torch.allclose(good.deletion_curve[:, -1], torch.full((2,), 0.5))
    # after 1/16 of the pixels (exactly the box) the perfect map has removed all evidence
    assert torch.allclose(good.deletion_curve[:, 1], torch.full((2,), 0.5))
    blur = metrics.deletion_insertion(model, images, perfect, targets, steps=4, baseline="blur")
    assert blur.deletion_curve.shape == (2, 5)


def _reference_curves(model, images, maps, targets, steps, baseline):
    """Deletion and insertion curves forwarding every step of every image on its own (the plain definition)."""
    b, _, h, w = images.shape
    ranks = metrics.pixel_ranks(maps)
    base = metrics.baseline_images(images, baseline)
    dele, ins = torch.zeros(b, steps + 1), torch.zeros(b, steps + 1)
    with torch.no_grad():
        for i in range(b):
            for s in range(steps + 1):
                m = (ranks[i] < round(s * h * w / steps)).to(images.dtype)
                d = images[i] * (1 - m) + base[i] * m
                n = base[i] * (1 - m) + images[i] * m
                dele[i, s] = torch.softmax(model(d[None]), -1)[0, targets[i]]
                ins[i, s] = torch.softmax(model(n[None]), -1)[0, targets[i]]
    return dele, ins


@pytest.mark.parametrize("steps", [1, 2, 5, 16])
def test_batched_curves_with_shared_endpoints_equal_per_image_curves(steps):
    models = pytest.importorskip("train.models")
    torch.manual_seed(0)
    model = models.create_model("ferlens_tiny_vit_s3", num_classes=7, img_size=32, depth=2, embed_dim=32,
                                num_heads=2).eval()
    images = torch.randn(5, 3, 32, 32)
    maps = torch.rand(5, 32, 32)
    targets = torch.tensor([0, 3, 6, 1, 2])
    got = metrics.deletion_insertion(model, images, maps, targets, steps=steps, baseline="blur", batch_size=7)
    dele, ins = _reference_curves(model, images, maps, targets, steps, "blur")
    assert got.deletion_curve.shape == (5, steps + 1)
    # batched channels-last forwards vs one image at a time: the same probabilities up to float rounding
    assert torch.allclose(got.deletion_curve, dele, atol=1e-5) and torch.allclose(got.insertion_curve, ins, atol=1e-5)
    assert torch.allclose(got.deletion_auc, torch.trapezoid(dele, dx=1 / steps, dim=-1), atol=1e-5)
    assert torch.allclose(got.insertion_auc, torch.trapezoid(ins, dx=1 / steps, dim=-1), atol=1e-5)
    # endpoints computed once for several methods give the same curves
    ends = metrics.endpoint_probs(model, images, targets, "blur")
    shared = metrics.deletion_insertion(model, images, maps, targets, steps=steps, baseline="blur", endpoints=ends)
    assert torch.equal(shared.deletion_curve[:, [0, -1]], ends) and torch.equal(shared.insertion_curve[:, [-1, 0]], ends)
    assert torch.allclose(shared.deletion_curve, got.deletion_curve, atol=1e-6)
    assert torch.allclose(shared.insertion_auc, got.insertion_auc, atol=1e-6)
    with pytest.raises(FerlensError, match="endpoint_probs"):
        metrics.deletion_insertion(model, images, maps, targets, steps=steps, endpoints=ends[:3])


def test_pixel_ranks_order_by_decreasing_attribution():
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert metrics.pixel_ranks(maps).tolist() == [[[3, 0], [1, 2]]]


def test_localisation_perfect_and_wrong_maps():
    parts = torch.zeros(2, 16, 16, dtype=torch.long)
    parts[:, :4, :4] = 8                                    # "mouth"
    parts[:, 8:, :] = 1                                     # "face"
    perfect = (parts == 8).float()
    loc = metrics.localisation(perfect, parts, defining=[[8], [8]], nuisance=[0, 1])
    assert loc.part_mass.tolist() == [1.0, 1.0] and loc.pointing_game.tolist() == [1.0, 1.0]
    assert loc.nonpart_mass.tolist() == [0.0, 0.0]
    on_face = (parts == 1).float()
    loc = metrics.localisation(on_face, parts, defining=[[8], [8]], nuisance=[0, 1])
    assert loc.part_mass.tolist() == [0.0, 0.0] and loc.pointing_game.tolist() == [0.0, 0.0]
    assert loc.nonpart_mass.tolist() == [1.0, 1.0]
    half = perfect + on_face * (16 / 128)                    # equal mass on mouth and face
    assert metrics.localisation(half, parts, [[8], [8]], [0, 1]).part_mass[0] == pytest.approx(0.5)
    # part masks at another resolution are resized (nearest) to the maps
    small = parts[:, ::2, ::2]
    assert metrics.localisation(perfect, small, [[8], [8]], [0, 1]).part_mass.tolist() == [1.0, 1.0]


def test_synthfer_answer_key():
    synth = pytest.importorskip("train.data.synthfer")
    names = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]
    defining, nuisance = metrics.synthfer_part_ids(names, torch.tensor([1, 5]))
    idx = {p: i for i, p in enumerate(synth.PART_NAMES)}
    assert sorted(defining[0]) == sorted(idx[p] for p in ("eye_l", "eye_r", "mouth"))
    assert idx["nose"] in defining[1] and idx["nose"] not in defining[0]
    assert sorted(nuisance) == sorted(idx[p] for p in ("background", "face", "hair", "occluder"))
    with pytest.raises(FerlensError, match="no part answer key"):
        metrics.synthfer_part_ids(["cat", "dog"], torch.tensor([0]))


def test_agreement_spearman_and_topk_iou():
    a = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(metrics.spearman(a, a), torch.ones(3))
    assert torch.allclose(metrics.spearman(a, -a), -torch.ones(3))
    assert torch.allclose(metrics.spearman(a, 2 * a + 1), torch.ones(3))       # rank-based
    assert metrics.topk_iou(a, a, k=0.1).tolist() == [1.0, 1.0, 1.0]
    assert metrics.topk_iou(a, -a, k=0.1).tolist() == [0.0, 0.0, 0.0]
    rows = metrics.agreement_rows({"x": a, "y": a, "z": -a})
    assert [(r["method_a"], r["method_b"]) for r in rows] == [("x", "y"), ("x", "z"), ("y", "z")]
    assert rows[0]["spearman"] == pytest.approx(1.0) and rows[1]["spearman"] == pytest.approx(-1.0)


def test_road_prefers_the_perfect_map():
    model = _BoxModel()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 16, 16, generator=g) + 0.5
    targets = torch.ones(2, dtype=torch.long)
    good = metrics.road(model, images, _box_mask().float(), targets, percentiles=(50, 90))
    bad = metrics.road(model, images, 1 - _box_mask().float(), targets, percentiles=(50, 90))
    assert good.shape == (2,) and (good > bad).all()


def test_method_metrics_row_and_bad_inputs():
    model = _BoxModel()
    images = torch.ones(2, 3, 16, 16)
    row = metrics.method_metrics(model, images, _box_mask().float(), torch.ones(2, dtype=torch.long), steps=4,
                                 baseline="zero")
    assert set(row) == {"deletion_auc", "insertion_auc", "part_mass", "nonpart_mass", "pointing_game", "n"}
    assert row["n"] == 2 and row["deletion_auc"] < row["insertion_auc"]
    with pytest.raises(FerlensError, match="do not match images"):
        metrics.deletion_insertion(model, images, torch.rand(2, 8, 8), torch.ones(2, dtype=torch.long))
    with pytest.raises(FerlensError, match="baseline"):
        metrics.baseline_images(images, "noise")
    with pytest.raises(FerlensError, match="top-k"):
        metrics.topk_iou(images[:, 0], images[:, 0], k=0)


def test_pointing_game_breaks_ties_over_the_whole_peak():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:4, 2:4] = True                                 # a small part inside the peak cell
    cell = torch.zeros(1, 8, 8)
    cell[0, :4, :4] = 1.0                                    # a coarse map peaking on a 4x4 cell
    assert metrics.pointing_game(cell, mask).item() == 0.25  # 4 of the 16 tied peak pixels (first arg-max: 0)
    assert metrics.pointing_game(torch.ones(1, 8, 8), mask).item() == 4 / 64  # flat map: the mask's area share
    sharp = torch.zeros(1, 8, 8)
    sharp[0, 3, 3] = 1.0
    assert metrics.pointing_game(sharp, mask).item() == 1.0


def test_chance_part_mass_is_the_area_share_and_a_uniform_map_scores_it():
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[0, 4:10, 6:14] = 8                                  # 48 px mouth
    masks[1, 20:24, 0:32] = 3                                 # 128 px brow
    chance = metrics.chance_part_mass(masks, [[8], [3]])
    assert chance.tolist() == pytest.approx([48 / 1024, 128 / 1024])
    flat = torch.ones(2, 32, 32)
    assert metrics.localisation(flat, masks, [[8], [3]], [0]).part_mass.tolist() == pytest.approx(chance.tolist())


def test_grid_oracle_bounds_every_token_grid_map():
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 32, 32, dtype=torch.long)
    masks[0, 9:15, 9:13] = 8
    masks[1, 0:6, 26:32] = 8
    masks[2, 14:30, 2:30] = 8
    defining = [[8]] * 3
    oracle = metrics.grid_oracle(masks, defining, (4, 4))
    from probe.attribution import normalise_maps

    best_seen = torch.zeros(3)
    for _ in range(200):                                      # random non-negative 4x4 maps, upsampled like token maps
        grid = torch.rand(3, 4, 4, generator=g) ** 4
        maps = normalise_maps(grid, (32, 32))
        pm = metrics.localisation(maps, masks, defining, [0]).part_mass
        assert (pm <= oracle.part_mass + 1e-6).all()
        best_seen = torch.maximum(best_seen, pm)
    # the bound is reached by the one-hot map of the best cell
    cells = metrics.cell_maps((4, 4), (32, 32))
    for b in range(3):
        top = metrics.localisation(cells[oracle.cell[b]][None], masks[b:b + 1], defining[:1], [0])
        assert float(top.part_mass[0]) == pytest.approx(float(oracle.part_mass[b]), abs=1e-5)
        assert float(top.pointing_game[0]) <= float(oracle.pointing[b]) + 1e-6
    assert (oracle.part_mass > metrics.chance_part_mass(masks, defining)).all()
    assert (oracle.part_mass >= best_seen - 1e-6).all() and (oracle.pointing <= 1).all()


def test_peak_cells_and_peak_columns_in_method_metrics():
    maps = torch.zeros(3, 32, 32)
    maps[0, 12, 20] = 1.0                                     # row 12 → grid row 1, col 20 → grid col 2 (4x4)
    maps[1, 31, 0] = 1.0
    maps[2, 13, 21] = 1.0
    assert metrics.peak_cells(maps, (4, 4)).tolist() == [1 * 4 + 2, 3 * 4 + 0, 1 * 4 + 2]
