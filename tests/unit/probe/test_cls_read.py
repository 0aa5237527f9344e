"""Where the CLS reads: the attention grid matches the raw attention, the ERF sits over its token's cell."""
from __future__ import annotations

import pytest
import torch

from probe import cls_read

models = pytest.importorskip("train.models")


def _tiny(block: str = "vit"):
    torch.manual_seed(0)
    return models.create_model(f"ferlens_tiny_{block}_s3", num_classes=7, img_size=32, depth=2,
                                embed_dim=32, num_heads=2).eval()


def test_cls_read_grid_is_the_mean_cls_attention_per_cell():
    from probe.cache import run_with_cache

    model = _tiny()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    read = cls_read.cls_read_grid(model, x, batch_size=4)
    cache = run_with_cache(model, x, names=["blocks.0.attn", "blocks.1.attn"])
    h, w = model.grid_size
    assert read.blocks == [0, 1] and read.grid.shape == (2, h, w)
    for k in range(2):
        want = cache[f"blocks.{k}.attn"][:, :, 0, 1:].mean((0, 1)).view(h, w)
        assert torch.allclose(read.grid[k], want, atol=1e-6)
    assert float(read.grid[0].sum()) <= 1.0 + 1e-6


def test_erf_covers_the_token_cell_and_extent_counts_pixels():
    model = _tiny("cataftermlp")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    h, w = model.grid_size
    cell = (h - 1, 0)                                          # bottom-left token
    erf = cls_read.effective_receptive_field(model, x, cell, batch_size=2)
    assert erf.shape == (32, 32) and float(erf.sum()) == pytest.approx(1.0, abs=1e-5) and (erf >= 0).all()
    rows, cols = torch.nonzero(erf > 0, as_tuple=True)
    cy, cx = float((erf.sum(1) * torch.arange(32)).sum()), float((erf.sum(0) * torch.arange(32)).sum())
    ph, pw = 32 // h, 32 // w
    # the gradient's centre of mass lies in the bottom-left quadrant, around the cell's pixels
    assert cy > 16 and cx < 16
    ext = cls_read.erf_extent(erf)
    assert 1 <= ext["height_px"] <= 32 and ext["rows"][1] >= (h - 1) * ph and ext["cols"][0] <= pw
    box = torch.zeros(32, 32)
    box[4:14, 8:20] = 1 / 120
    e = cls_read.erf_extent(box)
    assert (e["height_px"], e["width_px"], e["rows"], e["cols"]) == (10, 12, [4, 13], [8, 19])


def test_cls_read_record_names_the_most_read_cell():
    model = _tiny()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    rec = cls_read.cls_read_record(model, x, batch_size=4)
    g = torch.tensor(rec["blocks"][0]["grid"])
    r, c = divmod(int(g.flatten().argmax()), g.shape[1])
    assert rec["blocks"][0]["top_cell"] == f"{r},{c}" == rec["erf"]["cell"]
    assert rec["erf"]["read_in_block"] == 0 and len(rec["erf"]["map"]) == 32
