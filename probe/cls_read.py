"""Where does the CLS token read? Mean CLS attention per token-grid cell and block, and the effective
receptive field (ERF) of the token it reads most.

- ``cls_read_grid``: per block that sees patch tokens, the CLS query's attention on every grid cell,
  averaged over heads and images (the remainder, ``1 − Σ cells``, goes to the prefix tokens).
- ``effective_receptive_field``: Luo et al. (2016): the gradient of one token of the stream entering
  block 0 (``tokens``, the CNN stem's view of that cell), every channel's output gradient set to 1, with
  respect to the input pixels; |∇| summed over colour channels and averaged over images → (H, W), mass 1.
- ``erf_extent``: the ERF summarised as a pixel extent — the rows and columns between the 2.5 % and
  97.5 % quantiles of its row and column marginals (the box holding ~95 % of the gradient mass per axis).

Neither captum nor pytorch-grad-cam computes a token's receptive field, so the gradient is taken here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .intervene import attention_layers, cls_attention_on_patches, token_layout


@dataclass
class ClsRead:
    """Mean CLS attention per grid cell.

    Attributes:
        blocks: indices (in forward order of the attention hooks) of the blocks whose attention sees patches.
        grid: (len(blocks), h, w) mean attention weight of the CLS query on each cell.
    """

    blocks: list[int]
    grid: Tensor

    def top_cell(self, k: int = 0) -> tuple[int, int]:
        """(row, col) of the most-read cell in the k-th listed block."""
        h, w = self.grid.shape[-2:]
        i = int(self.grid[k].flatten().argmax())
        return i // w, i % w


@torch.no_grad()
def cls_read_grid(model: nn.Module, images: Tensor, batch_size: int = 64) -> ClsRead:
    """Mean (over images and heads) CLS→cell attention for every block that sees patches.

    Args:
        images: (n, 3, H, W) preprocessed images.
    """
    from .cache import hooked

    lay = token_layout(model, images)
    names = attention_layers(model)
    sums: dict[int, Tensor] = {}
    with hooked(model, names) as cache:
        for chunk in images.split(batch_size):
            model(chunk)
            for k, name in enumerate(names):
                a = cls_attention_on_patches(model, cache[name], name)    # (B, N) or None
                if a is not None:
                    sums[k] = sums[k] + a.sum(0) if k in sums else a.sum(0)
    blocks = sorted(sums)
    if not blocks:
        return ClsRead([], torch.zeros(0, *lay.grid))
    grid = torch.stack([sums[i] / images.shape[0] for i in blocks]).view(len(blocks), *lay.grid)
    return ClsRead(blocks, grid)


def effective_receptive_field(model: nn.Module, images: Tensor, cell: tuple[int, int],
                              batch_size: int = 16) -> Tensor:
    """Mean |∂ token(cell) / ∂ input| of the token embedding at ``cell`` (Luo et al. 2016).

    Args:
        images: (n, 3, H, W); cell: (row, col) in the token grid.

    Returns:
        (H, W) non-negative map summing to 1.
    """
    from train.models.adapters import model_spec

    from .cache import hooked

    lay = token_layout(model, images)
    pos = model_spec(model).layout("tokens").num_prefix + cell[0] * lay.grid[1] + cell[1]
    model.eval()
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    for chunk in images.split(batch_size):
        x = chunk.clone().requires_grad_(True)
        with torch.enable_grad(), hooked(model, ["tokens"], requires_grad=True) as cache:
            model.forward_features(x) if hasattr(model, "forward_features") else model(x)
            (grad,) = torch.autograd.grad(cache["tokens"][:, pos].sum(), x)
        total += grad.abs().sum(1).sum(0).double()
    return (total / total.sum().clamp_min(1e-30)).float()


def _quantile_span(marginal: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    cum = np.cumsum(marginal) / max(marginal.sum(), 1e-30)
    return int(np.searchsorted(cum, lo)), int(np.searchsorted(cum, hi))


def erf_extent(erf: Tensor, mass: float = 0.95) -> dict[str, Any]:
    """Pixel extent of an ERF map: per axis, the span between the (1−mass)/2 and (1+mass)/2 quantiles.

    Args:
        erf: (H, W) non-negative map.

    Returns:
        ``{"rows": [top, bottom], "cols": [left, right], "height_px", "width_px", "mass"}`` (inclusive pixels).
    """
    e = erf.double().numpy()
    q = (1 - mass) / 2
    r0, r1 = _quantile_span(e.sum(1), q, 1 - q)
    c0, c1 = _quantile_span(e.sum(0), q, 1 - q)
    return {"rows": [r0, r1], "cols": [c0, c1], "height_px": r1 - r0 + 1, "width_px": c1 - c0 + 1, "mass": mass}


def cls_read_record(model: nn.Module, images: Tensor, batch_size: int = 16) -> dict[str, Any]:
    """The ``explain/cls_read.json`` payload: the CLS-read grid per block and the ERF of block 0's most-read
    token (cell, extent, the map rounded to 6 digits)."""
    read = cls_read_grid(model, images, batch_size)
    h, w = read.grid.shape[-2:]
    blocks = []
    for k, b in enumerate(read.blocks):
        r, c = read.top_cell(k)
        g = read.grid[k]
        blocks.append({"block": b, "grid": np.round(g.numpy(), 6).tolist(), "top_cell": f"{r},{c}",
                       "top_share": float(g[r, c]), "patch_share": float(g.sum())})
    out: dict[str, Any] = {"grid_size": [int(h), int(w)], "n": int(images.shape[0]), "blocks": blocks,
                           "image_size": [int(s) for s in images.shape[-2:]]}
    if blocks:
        cell = read.top_cell(0)
        erf = effective_receptive_field(model, images, cell, batch_size)
        out["erf"] = {"layer": "tokens", "cell": f"{cell[0]},{cell[1]}", "read_in_block": read.blocks[0],
                      **erf_extent(erf), "map": np.round(erf.numpy(), 6).tolist()}
    return out
