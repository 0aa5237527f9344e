"""Causal interventions on the residual stream: what does the prediction use?

At each layer ``blocks.0`` … ``blocks.{L-1}`` (the residual stream that block i+1 reads; ``tokens`` too for
the modes where it is not trivially a no-op):

- ``mean``: the CLS token is replaced by its mean over the **train** split (never the evaluated images);
- ``shuffle``: by the CLS token of another evaluated image (a random derangement);
- ``zero``: by zeros;
- ``patch_parts``: the patch tokens in the grid cells covering the class-defining parts (the answer key)
  are replaced by their per-position train mean (mean ablation);
- ``top_attended_patch``: the one patch token the CLS reads most (CLS attention, mean over heads and
  blocks, per image) is replaced by its per-position train mean;
- ``random_patch``: the control for it — one uniformly drawn patch token per image, same replacement;

and at the input, ``counterfactual``: the same SynthFER face re-rendered with a neutral expression
(``counterfactual_<part>``: only that part's pixels swapped in from the neutral render).

Each row reports accuracy, its change against the clean run with a paired bootstrap 95% CI (the same
images before and after, resampled together), the mean change of the true-class logit (with its CI), and
the share of the most frequent predicted class after the intervention: when it reaches
``COLLAPSE_SHARE`` (and the clean predictions did not) the row is flagged ``collapsed`` — every prediction is one class (e.g. mean-CLS after the
last block of a CLS readout: the head sees one constant vector), so its accuracy drop is a tautology, not a
finding. ``mean`` and ``shuffle`` at ``tokens`` are left out: the CLS entering block 0 is the same learned
vector for every image, so both are no-ops.

Activation patching is a forward hook that returns a modified output; TransformerLens does this with
its hook points, which ferlens models do not carry, so the small ``patched`` context is written here.
Which module a layer name patches and where its CLS / patch tokens sit come from the model adapter
(``model_spec``): CLS modes run only at layers that hold a CLS token (CaiT: its class-attention blocks),
patch modes only at layers that hold patches, and every prefix token is left out of the patches.
The paired bootstrap is scipy's ``stats.bootstrap`` over per-image differences.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from train.errors import FerlensError, close_matches
from train.models.adapters import TokenLayout, model_spec, token_grid

CLS_MODES = ("mean", "shuffle", "zero")
PATCH_MODES = ("patch_parts", "top_attended_patch", "random_patch")
MODES = CLS_MODES + PATCH_MODES
# modes that are no-ops on the token embedding (the CLS there is one learned vector for every image)
TRIVIAL_AT_TOKENS = ("mean", "shuffle")
COLUMNS = ["layer", "mode", "accuracy", "delta_accuracy", "delta_lo", "delta_hi", "mean_logit_change",
           "logit_lo", "logit_hi", "majority_share", "collapsed", "means_from", "n"]
COLLAPSE_SHARE = 0.99  # share of one predicted class at which a row counts as "collapses to one class"
N_BOOT = 2000
# part groups swapped by the per-part counterfactuals
SWAP_PARTS = {"mouth": ("mouth",), "eyes": ("eye_l", "eye_r"), "brows": ("brow_l", "brow_r")}


class Layout(NamedTuple):
    """Where the tokens live in the residual stream (B, T, D)."""

    cls_index: int
    num_prefix: int
    grid: tuple[int, int]


def token_layout(model: nn.Module, images: Tensor | None = None) -> Layout:
    """The final sequence's token layout and the token grid of ``model`` (``model_spec``; the grid is counted
    from one forward of ``images`` for hook-map models); a model without a CLS token ends in one sentence."""
    spec = model_spec(model)
    if spec.cls_index is None:
        raise FerlensError(f"{type(model).__name__} has no CLS token, so there is no CLS to intervene on or to "
                           "read attention from; use a model with a CLS readout.")
    if spec.grid_size is not None:
        grid = tuple(int(g) for g in spec.grid_size)
    elif images is not None:
        grid = tuple(int(g) for g in token_grid(model, images))
    else:
        raise FerlensError(f"The token grid of {type(model).__name__} is unknown without a forward; pass images.")
    return Layout(int(spec.cls_index), int(spec.num_prefix_tokens), grid)


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


def attention_layers(model: nn.Module) -> list[str]:
    """The attention hook points ``blocks.{i}.attn`` of ``model``, in forward order (model spec)."""
    return list(model_spec(model).attention_layers)


@dataclass
class StreamStats:
    """Clean-run statistics the interventions draw from.

    Attributes:
        logits: (n, C) clean logits.
        cls: {layer: (n, D)} CLS token per image.
        patch_mean: {layer: (N, D)} mean patch token per grid position (absent where no patches remain).
        cls_read: (n, N) CLS attention on each patch (mean over heads and blocks), or None when not asked.
        n: number of images the statistics come from.
        stream: {layer: (n, T, D)} the clean residual stream itself, when asked (``keep_stream``).
    """

    logits: Tensor
    cls: dict[str, Tensor]
    patch_mean: dict[str, Tensor]
    cls_read: Tensor | None = None
    n: int = 0
    stream: dict[str, Tensor] | None = None

    def cls_mean(self, layer: str) -> Tensor:
        """(D,) mean CLS token at ``layer``."""
        return self.cls[layer].mean(0)


@torch.no_grad()
def stream_stats(model: nn.Module, images: Tensor, layers: Sequence[str], batch_size: int = 64,
                 with_attention: bool = False, keep_stream: bool = False) -> StreamStats:
    """One clean pass collecting logits, CLS tokens, mean patch tokens at ``layers`` (and CLS attention).

    Args:
        images: (n, 3, H, W).
        with_attention: also return ``cls_read`` (n, N), for ``top_attended_patch``; it comes from a second
            pass, so the clean logits keep timm's fused attention like the patched runs they are compared with.
        keep_stream: also return the clean stream at every layer (``stream``), which the patched runs resume from.
    """
    from .cache import hooked

    spec = model_spec(model)
    logits, cls = [], {n: [] for n in layers if spec.layout(n).cls_index is not None}
    patch_sum: dict[str, Tensor] = {}
    stream: dict[str, list[Tensor]] = {n: [] for n in layers}
    with hooked(model, list(layers)) as cache:
        for chunk in tqdm(images.split(batch_size), desc="clean pass", leave=False):
            logits.append(model(chunk))
            for n in layers:
                x = cache[n]                                              # (B, T, D)
                if keep_stream:
                    stream[n].append(x)
                if n in cls:
                    cls[n].append(spec.cls(x, n))                         # (B, D)
                if spec.layout(n).patches:
                    s = spec.patches(x, n).sum(0)                         # (N, D)
                    patch_sum[n] = patch_sum[n] + s if n in patch_sum else s
    n = int(images.shape[0])
    return StreamStats(torch.cat(logits), {k: torch.cat(v) for k, v in cls.items()},
                       {k: s / n for k, s in patch_sum.items()},
                       cls_read(model, images, batch_size) if with_attention else None, n,
                       {k: torch.cat(v) for k, v in stream.items()} if keep_stream else None)


def resume_from(model: nn.Module, layer: str) -> Callable[[Tensor], Tensor] | None:
    """The rest of the forward from the output of residual-stream hook ``layer`` to the logits, or None
    when the model's forward is not known to be one chain of those hooks.

    A patch at ``layer`` leaves everything before it as in the clean run, so the patched run starts from the
    clean stream there instead of from the pixels: with the CNN stem and the blocks up to ``layer`` skipped,
    the demo's interventions (5 layers x 5 modes) forward about a third of the model-work of full forwards.
    Written here for ferlens' ``HybridFER`` (``embed`` ending in the ``tokens`` hook, then ``blocks``, ``norm``,
    ``forward_head``), whose forward is that chain; any other model (or a subclass that changes the forward)
    gets None and the patched runs forward the whole model.
    """
    from train.models.hybrid import HybridFER

    cls = type(model)
    if not isinstance(model, HybridFER) or any(getattr(cls, f) is not getattr(HybridFER, f)
                                               for f in ("forward", "forward_features", "embed")):
        return None
    if layer == "tokens":
        start = 0
    elif layer.startswith("blocks.") and layer[7:].isdigit() and int(layer[7:]) < len(model.blocks):
        start = int(layer[7:]) + 1
    else:
        return None

    def rest(x: Tensor) -> Tensor:                                        # (B, T, D) -> (B, C)
        for blk in model.blocks[start:]:
            x = blk(x)
        return model.forward_head(model.norm(x))

    return rest


@torch.no_grad()
def cls_read(model: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor | None:
    """(n, N) CLS attention on each patch token, mean over heads and the blocks that see patches (None
    when the model exposes no attention)."""
    from .cache import hooked

    names = attention_layers(model)
    if not names:
        return None
    read = []
    with hooked(model, names) as cache:
        for chunk in images.split(batch_size):
            model(chunk)
            maps = [m for m in (cls_attention_on_patches(model, cache[a], a) for a in names) if m is not None]
            if not maps:
                return None
            read.append(torch.stack(maps).mean(0))
    return torch.cat(read)


def cls_attention_on_patches(model: nn.Module, attn: Tensor, name: str) -> Tensor | None:
    """(B, heads, Nq, K) attention of hook ``name`` → (B, N) the CLS query's weights on the patch keys, mean over
    heads; None when the queries hold no CLS (CaiT's patch blocks) or the keys hold no patches (clsonly)."""
    hook = model_spec(model).hook(name)
    keys, queries = hook.layout, hook.query_layout
    if keys is None or queries is None or queries.cls_index is None or not keys.patches:
        return None
    if attn.shape[-1] <= keys.num_prefix:
        return None
    return attn[:, :, queries.cls_index, keys.num_prefix:].mean(1)


def derangement(n: int, seed: int = 0) -> Tensor:
    """A random permutation without fixed points (n ≥ 2): image i receives image perm[i]'s token."""
    if n < 2:
        raise FerlensError("Shuffling the CLS token needs at least 2 images; raise --n.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(1)
    return perm


def part_cells(part_masks: Tensor, part_ids: Sequence[Sequence[int]], grid_size: Sequence[int],
               min_cover: float = 0.1) -> Tensor:
    """Grid cells covered by the given parts.

    Args:
        part_masks: (n, H, W) integer part masks.
        part_ids: per image, the parts to cover.
        grid_size: (h, w) token grid.
        min_cover: smallest share of a cell's pixels inside the parts for the cell to count.

    Returns:
        (n, h*w) bool.
    """
    from .metrics import part_masks_for

    inside = part_masks_for(part_masks, part_ids).float()[:, None]     # (n, 1, H, W)
    cover = F.adaptive_avg_pool2d(inside, tuple(int(g) for g in grid_size)).squeeze(1)  # (n, h, w)
    return (cover >= min_cover).flatten(1)


def one_cell(index: Tensor, n_cells: int) -> Tensor:
    """(n,) cell indices → (n, N) one-hot bool cell masks."""
    return F.one_hot(index.long(), n_cells).bool()


def paired_ci(after: np.ndarray, before: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap CI of mean(after − before) over images (scipy ``stats.bootstrap``).

    Args:
        after, before: (n,) per-image values on the same images.
    """
    from scipy.stats import bootstrap

    d = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if len(d) < 2 or np.ptp(d) == 0:                                     # degenerate: every image moved alike
        return float(d.mean()) if len(d) else float("nan"), float(d.mean()) if len(d) else float("nan")
    res = bootstrap((d,), np.mean, n_resamples=n_boot, confidence_level=0.95, method="percentile",
                    random_state=np.random.default_rng(seed), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def score_row(logits: Tensor, labels: Tensor, clean: Tensor, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Accuracy, paired-bootstrap CIs of its change and of the true-class logit change, collapse flag.

    Args:
        logits: (n, C) after the intervention; labels: (n,); clean: (n, C) clean logits of the same images.
    """
    pred, clean_pred = logits.argmax(-1), clean.argmax(-1)
    right = (pred == labels).double().numpy()
    clean_right = (clean_pred == labels).double().numpy()
    change = (logits - clean).gather(1, labels[:, None]).squeeze(1).double().numpy()
    d_lo, d_hi = paired_ci(right, clean_right, n_boot, seed)
    l_lo, l_hi = paired_ci(change, np.zeros_like(change), n_boot, seed)
    share = float(torch.bincount(pred).max()) / max(1, len(pred))
    clean_share = float(torch.bincount(clean_pred).max()) / max(1, len(clean_pred))
    # collapsed: the intervention (not the model already) makes every prediction one class
    collapsed = share >= COLLAPSE_SHARE and clean_share < COLLAPSE_SHARE
    return dict(accuracy=float(right.mean()), delta_accuracy=float(right.mean() - clean_right.mean()),
                delta_lo=d_lo, delta_hi=d_hi, mean_logit_change=float(change.mean()), logit_lo=l_lo,
                logit_hi=l_hi, majority_share=share, collapsed=bool(collapsed))


def _replacement(mode: str, layer: str, ref: StreamStats, own: StreamStats, idx: Tensor, perm: Tensor,
                 cells: Tensor | None, layout: TokenLayout) -> Callable[[Tensor], Tensor]:
    """The output edit of one mode for the images ``idx`` of a batch (``ref``: train statistics; ``layout``:
    where the layer's tokens sit)."""
    c, p = layout.cls_index, layout.num_prefix

    def edit(out: Tensor) -> Tensor:                                      # (B, T, D)
        out = out.clone()
        if mode == "mean":
            out[:, c] = ref.cls_mean(layer)
        elif mode == "shuffle":
            out[:, c] = own.cls[layer][perm[idx]]
        elif mode == "zero":
            out[:, c] = 0.0
        else:                                                             # patch modes: cells ← train mean
            sel = cells[idx]                                              # (B, N)
            patches = out[:, p:]
            out[:, p:] = torch.where(sel[..., None], ref.patch_mean[layer].expand_as(patches), patches)
        return out

    return edit


def _check(model: nn.Module, modes: Sequence[str], layers: Sequence[str] | None, cells: Tensor | None) -> list[str]:
    for m in modes:
        if m not in MODES:
            raise FerlensError(f"Unknown intervention '{m}'; use one of {', '.join(MODES)}." + close_matches(m, MODES))
    if "patch_parts" in modes and cells is None:
        raise FerlensError("patch_parts needs the part grid cells; run it on SynthFER or a dataset with "
                           "landmarks (its part masks are the answer key).")
    valid = stream_layers(model)
    layers = list(layers) if layers is not None else valid
    for layer in layers:
        if layer not in valid:
            raise FerlensError(f"Layer '{layer}' is not a residual-stream hook point; use one of {', '.join(valid)}."
                               + close_matches(layer, valid))
    return layers


@torch.no_grad()
def run_interventions(model: nn.Module, images: Tensor, labels: Tensor, modes: Sequence[str] = CLS_MODES,
                      layers: Sequence[str] | None = None, cells: Tensor | None = None,
                      batch_size: int = 64, seed: int = 0, reference: Tensor | StreamStats | None = None,
                      n_boot: int = N_BOOT, resume: bool = True,
                      clean_logits: list[Tensor] | None = None) -> list[dict]:
    """Accuracy and true-class logit change under each intervention at each layer, with paired CIs.

    Args:
        model: a ferlens hybrid in eval mode.
        images: (n, 3, H, W) preprocessed evaluation images.
        labels: (n,) true classes.
        modes: subset of ``MODES``.
        layers: residual-stream hook points (default all, ``stream_layers``).
        cells: (n, N) bool grid cells to mean-ablate for ``patch_parts`` (see ``part_cells``).
        batch_size: forward chunk size.
        seed: seed of the shuffle, the random patch and the bootstrap.
        reference: (m, 3, H, W) train-split images (or their ``stream_stats``) whose means replace the
            tokens; None falls back to the evaluated images themselves (``means_from = "self"``, only for
            tests — the CLI always passes the train split).
        n_boot: bootstrap resamples.
        resume: start each patched run from the clean stream at its layer (``resume_from``) where the model
            allows; False forwards every patched run from the pixels (the same logits, slower).
        clean_logits: when a list is given, the clean (n, C) logits are appended to it (callers reuse them).

    Returns:
        Rows with ``COLUMNS``; the first row is the clean run (``layer='none', mode='clean'``).
    """
    layers = _check(model, modes, layers, cells)
    model.eval()
    spec = model_spec(model)
    lay = token_layout(model, images)
    n = images.shape[0]
    resumes = {layer: resume_from(model, layer) if resume else None for layer in layers}
    own = stream_stats(model, images, layers, batch_size, with_attention="top_attended_patch" in modes,
                       keep_stream=any(r is not None for r in resumes.values()))
    if clean_logits is not None:
        clean_logits.append(own.logits)
    if reference is None:
        ref, source = own, "self"
    else:
        ref = reference if isinstance(reference, StreamStats) else stream_stats(model, reference, layers, batch_size)
        source = "train"
    clean_acc = float((own.logits.argmax(-1) == labels).float().mean())
    rows = [dict(layer="none", mode="clean", accuracy=clean_acc, delta_accuracy=0.0, delta_lo=0.0, delta_hi=0.0,
                 mean_logit_change=0.0, logit_lo=0.0, logit_hi=0.0,
                 majority_share=float(torch.bincount(own.logits.argmax(-1)).max()) / n,
                 collapsed=False, means_from=source, n=n)]
    perm = derangement(n, seed) if "shuffle" in modes else torch.arange(n)
    n_cells = lay.grid[0] * lay.grid[1]
    mode_cells = {"patch_parts": cells}
    if "top_attended_patch" in modes:
        if own.cls_read is None:
            raise FerlensError("top_attended_patch needs attention maps; the model exposes no blocks.{i}.attn hook.")
        mode_cells["top_attended_patch"] = one_cell(own.cls_read.argmax(-1), n_cells)
    if "random_patch" in modes:
        gen = torch.Generator().manual_seed(seed)
        mode_cells["random_patch"] = one_cell(torch.randint(0, n_cells, (n,), generator=gen), n_cells)
    jobs = [(layer, mode) for mode in modes for layer in layers
            if not (layer == "tokens" and mode in TRIVIAL_AT_TOKENS)
            and (layer in own.cls if mode in CLS_MODES else layer in ref.patch_mean)]
    for layer, mode in tqdm(jobs, desc="interventions", leave=False):
        out = []
        for idx in torch.arange(n).split(batch_size):
            edit = _replacement(mode, layer, ref, own, idx, perm, mode_cells.get(mode), spec.layout(layer))
            if resumes[layer] is not None:                                # same chunks as the clean pass
                out.append(resumes[layer](edit(own.stream[layer][idx])))
                continue
            with patched(model, layer, edit):
                out.append(model(images[idx]))
        row = dict(layer=layer, mode=mode, **score_row(torch.cat(out), labels, own.logits, n_boot, seed))
        rows.append(row | dict(means_from=source if mode != "zero" else "-", n=n))
    return rows


@torch.no_grad()
def counterfactual_rows(model: nn.Module, images: Tensor, cf_images: dict[str, Tensor], labels: Tensor,
                        batch_size: int = 64, clean: Tensor | None = None) -> list[dict]:
    """Rows for input-level counterfactuals.

    Args:
        images: (n, 3, H, W) originals; cf_images: {mode: (n, 3, H, W)} counterfactual renders;
        labels: (n,) true classes of the originals.
        clean: (n, C) logits of ``images`` when already known (the clean pass of ``run_interventions``).
    """
    model.eval()
    if clean is None:
        clean = torch.cat([model(x) for x in images.split(batch_size)])
    rows = []
    for mode, cf in cf_images.items():
        logits = torch.cat([model(x) for x in cf.split(batch_size)])
        rows.append(dict(layer="input", mode=mode, **score_row(logits, labels, clean), means_from="-",
                         n=int(images.shape[0])))
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
