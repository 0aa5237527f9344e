"""Causal interventions on the residual stream: what does the prediction use?

At each layer ``tokens``, ``blocks.0`` … ``blocks.{L-1}`` (the residual stream that block i+1 reads):

- ``mean``: the CLS token is replaced by its mean over the evaluated images;
- ``shuffle``: by the CLS token of another image (a random derangement);
- ``zero``: by zeros;
- ``patch_parts``: the patch tokens in the grid cells covering the class-defining parts (SynthFER's
  answer key) are replaced by their per-position mean (mean ablation);

and at the input, ``counterfactual``: the same SynthFER face re-rendered with a neutral expression
(``counterfactual_<part>``: only that part's pixels swapped in from the neutral render).
Each reports accuracy, its change against the clean run, and the mean change of the true-class logit.

Activation patching is a forward hook that returns a modified output; TransformerLens does this with
its hook points, which ferlens models do not carry, so the small ``patched`` context is written here.
Which module a layer name patches and where its CLS / patch tokens sit come from the model adapter
(``model_spec``): CLS modes run only at layers that hold a CLS token (CaiT: its class-attention blocks),
``patch_parts`` only at layers that hold patches, and every prefix token is left out of the patches.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from train.errors import FerlensError, close_matches
from train.models.adapters import TokenLayout, model_spec

CLS_MODES = ("mean", "shuffle", "zero")
MODES = CLS_MODES + ("patch_parts",)
COLUMNS = ["layer", "mode", "accuracy", "delta_accuracy", "mean_logit_change", "n"]
# part groups swapped by the per-part counterfactuals
SWAP_PARTS = {"mouth": ("mouth",), "eyes": ("eye_l", "eye_r"), "brows": ("brow_l", "brow_r")}


@contextlib.contextmanager
def patched(model: nn.Module, name: str, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """While open, the output of hook point ``name`` is replaced by ``fn(output)``.

    Args:
        model: any model ``model_spec`` understands.
        name: a residual-stream hook (``tokens``, ``blocks.{i}`` …).
        fn: (B, T, D) -> (B, T, D).
    """
    hook = model_spec(model).hook(name)
    handle = model.get_submodule(hook.module).register_forward_hook(lambda _m, _a, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


def stream_layers(model: nn.Module) -> list[str]:
    """Residual-stream hook points in forward order: ``tokens``, ``blocks.0`` … ``blocks.{L-1}`` (model spec)."""
    return list(model_spec(model).token_layers)


@dataclass
class StreamStats:
    """Clean-run statistics the interventions draw from.

    Attributes:
        logits: (n, C) clean logits.
        cls: {layer: (n, D)} CLS token per image.
        patch_mean: {layer: (N, D)} mean patch token per grid position (absent where no patches remain).
    """

    logits: Tensor
    cls: dict[str, Tensor]
    patch_mean: dict[str, Tensor]


@torch.no_grad()
def stream_stats(model: nn.Module, images: Tensor, layers: Sequence[str], batch_size: int = 64) -> StreamStats:
    """One clean pass collecting logits, CLS tokens and mean patch tokens at ``layers``."""
    from .cache import hooked

    spec = model_spec(model)
    logits, cls = [], {n: [] for n in layers if spec.layout(n).cls_index is not None}
    patch_sum: dict[str, Tensor] = {}
    with hooked(model, list(layers)) as cache:
        for chunk in images.split(batch_size):
            logits.append(model(chunk))
            for n in layers:
                x = cache[n]                                              # (B, T, D)
                if n in cls:
                    cls[n].append(spec.cls(x, n))                         # (B, D)
                if spec.layout(n).patches:
                    s = spec.patches(x, n).sum(0)                         # (N, D)
                    patch_sum[n] = patch_sum[n] + s if n in patch_sum else s
    return StreamStats(torch.cat(logits), {n: torch.cat(v) for n, v in cls.items()},
                       {n: s / images.shape[0] for n, s in patch_sum.items()})


def derangement(n: int, seed: int = 0) -> Tensor:
    """A random permutation without fixed points (n ≥ 2): image i receives image perm[i]'s token."""
    if n < 2:
        raise FerlensError("Shuffling the CLS token needs at least 2 images; raise --n.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(1)
    return perm


def part_cells(part_masks: Tensor, part_ids: Sequence[Sequence[int]], grid: Sequence[int],
               min_cover: float = 0.1) -> Tensor:
    """Grid cells covered by the given parts.

    Args:
        part_masks: (n, H, W) integer part masks.
        part_ids: per image, the parts to cover.
        grid: (h, w) token grid (``train.models.adapters.token_grid``).
        min_cover: smallest share of a cell's pixels inside the parts for the cell to count.

    Returns:
        (n, h*w) bool.
    """
    from .metrics import part_masks_for

    inside = part_masks_for(part_masks, part_ids).float()[:, None]     # (n, 1, H, W)
    cover = F.adaptive_avg_pool2d(inside, tuple(int(g) for g in grid)).squeeze(1)  # (n, h, w)
    return (cover >= min_cover).flatten(1)


def _score(logits: Tensor, labels: Tensor, clean: Tensor) -> tuple[float, float]:
    acc = float((logits.argmax(-1) == labels).float().mean())
    change = float((logits - clean).gather(1, labels[:, None]).mean())
    return acc, change


def _replacement(mode: str, layer: str, stats: StreamStats, idx: Tensor, perm: Tensor,
                 cells: Tensor | None, layout: TokenLayout) -> Callable[[Tensor], Tensor]:
    """The output edit of one mode for the images ``idx`` of a batch (``layout``: where the tokens sit)."""
    c, p = layout.cls_index, layout.num_prefix

    def edit(out: Tensor) -> Tensor:                                      # (B, T, D)
        out = out.clone()
        if mode == "mean":
            out[:, c] = stats.cls[layer].mean(0)
        elif mode == "shuffle":
            out[:, c] = stats.cls[layer][perm[idx]]
        elif mode == "zero":
            out[:, c] = 0.0
        else:                                                             # patch_parts
            sel = cells[idx]                                              # (B, N)
            patches = out[:, p:]
            out[:, p:] = torch.where(sel[..., None], stats.patch_mean[layer].expand_as(patches), patches)
        return out

    return edit


@torch.no_grad()
def run_interventions(model: nn.Module, images: Tensor, labels: Tensor, modes: Sequence[str] = CLS_MODES,
                      layers: Sequence[str] | None = None, cells: Tensor | None = None,
                      batch_size: int = 64, seed: int = 0) -> list[dict]:
    """Accuracy and true-class logit change under each intervention at each layer.

    Args:
        model: a ferlens hybrid in eval mode.
        images: (n, 3, H, W) preprocessed images.
        labels: (n,) true classes.
        modes: subset of ``MODES``.
        layers: residual-stream hook points (default all, ``stream_layers``).
        cells: (n, N) bool grid cells to mean-ablate for ``patch_parts`` (see ``part_cells``).
        batch_size: forward chunk size.
        seed: seed of the shuffle.

    Returns:
        Rows with ``COLUMNS``; the first row is the clean run (``layer='none', mode='clean'``).
    """
    for m in modes:
        if m not in MODES:
            raise FerlensError(f"Unknown intervention '{m}'; use one of {', '.join(MODES)}." + close_matches(m, MODES))
    if "patch_parts" in modes and cells is None:
        raise FerlensError("patch_parts needs the part grid cells; run it on SynthFER (its part masks are the answer key).")
    model.eval()
    layers = list(layers) if layers is not None else stream_layers(model)
    valid = stream_layers(model)
    for layer in layers:
        if layer not in valid:
            raise FerlensError(f"Layer '{layer}' is not a residual-stream hook point; use one of {', '.join(valid)}."
                               + close_matches(layer, valid))
    n = images.shape[0]
    spec = model_spec(model)
    stats = stream_stats(model, images, layers, batch_size)
    clean_acc, _ = _score(stats.logits, labels, stats.logits)
    rows = [dict(layer="none", mode="clean", accuracy=clean_acc, delta_accuracy=0.0, mean_logit_change=0.0, n=n)]
    perm = derangement(n, seed) if "shuffle" in modes else torch.arange(n)
    jobs = [(layer, mode) for mode in modes for layer in layers
            if (layer in stats.patch_mean if mode == "patch_parts" else layer in stats.cls)]
    for layer, mode in tqdm(jobs, desc="interventions", leave=False):
        out = []
        for idx in torch.arange(n).split(batch_size):
            with patched(model, layer, _replacement(mode, layer, stats, idx, perm, cells, spec.layout(layer))):
                out.append(model(images[idx]))
        acc, change = _score(torch.cat(out), labels, stats.logits)
        rows.append(dict(layer=layer, mode=mode, accuracy=acc, delta_accuracy=acc - clean_acc,
                         mean_logit_change=change, n=n))
    return rows


@torch.no_grad()
def counterfactual_rows(model: nn.Module, images: Tensor, cf_images: dict[str, Tensor], labels: Tensor,
                        batch_size: int = 64) -> list[dict]:
    """Rows for input-level counterfactuals.

    Args:
        images: (n, 3, H, W) originals; cf_images: {mode: (n, 3, H, W)} counterfactual renders;
        labels: (n,) true classes of the originals.
    """
    model.eval()
    clean = torch.cat([model(x) for x in images.split(batch_size)])
    clean_acc, _ = _score(clean, labels, clean)
    rows = []
    for mode, cf in cf_images.items():
        logits = torch.cat([model(x) for x in cf.split(batch_size)])
        acc, change = _score(logits, labels, clean)
        rows.append(dict(layer="input", mode=mode, accuracy=acc, delta_accuracy=acc - clean_acc,
                         mean_logit_change=change, n=int(images.shape[0])))
    return rows


def synthfer_counterfactuals(dataset, indices: Sequence[int], transform: Callable,
                             parts: Sequence[str] = ("mouth", "eyes", "brows")) -> tuple[list[int], dict[str, Tensor]]:
    """Neutral-expression counterfactuals of SynthFER samples via its renderer.

    ``counterfactual`` re-renders the whole face as neutral; ``counterfactual_<part>`` pastes only that
    part's pixels (its region in either render) of the neutral render into the original — a part swap.

    Args:
        dataset: a SynthFER split (``factors``, ``render_arrays``, ``counterfactual``).
        indices: candidate sample indices; neutral samples are skipped.
        transform: the run's eval transform (PIL → (3, H, W)).
        parts: part groups of ``SWAP_PARTS`` to swap.

    Returns:
        (kept indices, {mode: (n, 3, H, W)} preprocessed counterfactual images).
    """
    from PIL import Image

    from train.data.synthfer import PART_NAMES, render, with_changes

    pid = {p: i for i, p in enumerate(PART_NAMES)}
    kept, out = [], {"counterfactual": []} | {f"counterfactual_{p}": [] for p in parts}
    for i in tqdm(indices, desc="counterfactuals", leave=False):
        factors = dataset.factors(i)
        if factors["expression"] == "neutral":
            continue
        kept.append(int(i))
        img, mask = dataset.render_arrays(i)
        neutral, nmask = render(with_changes(factors, expression="neutral"))
        out["counterfactual"].append(transform(Image.fromarray(neutral, mode="RGB")))
        for p in parts:
            ids = [pid[x] for x in SWAP_PARTS[p]]
            region = np.isin(mask, ids) | np.isin(nmask, ids)            # (H, W)
            swapped = np.where(region[..., None], neutral, img)
            out[f"counterfactual_{p}"].append(transform(Image.fromarray(swapped.astype(np.uint8), mode="RGB")))
    if not kept:
        raise FerlensError("All selected samples are neutral, so there is no expression to swap; raise --n.")
    return kept, {k: torch.stack(v) for k, v in out.items()}
