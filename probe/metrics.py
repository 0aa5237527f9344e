"""Attribution metrics, batched and aware of faces (Quantus-style, but for (B, H, W) map batches).

- Faithfulness: deletion and insertion AUC (Petsiuk et al. 2018, RISE) — written here because neither
  captum nor pytorch-grad-cam batches them over pixel ranks; ROAD (Rong et al. 2022) straight from
  ``pytorch_grad_cam.metrics.road``.
- Localisation against SynthFER's answer key: share of positive attribution mass inside the parts
  that define the class, the pointing game, and the mass on the non-expression regions
  (background, face skin, hair, occluder).
- Agreement between methods: Spearman rank correlation (scipy) and top-k IoU.
- Sanity check: cascading parameter randomisation (Adebayo et al. 2018) — re-initialise the model
  from the head downwards and measure how much the map still correlates with the original.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from train.errors import FerlensError

Baseline = Literal["blur", "zero"]

# SynthFER regions that carry no expression: mass there is attribution to identity / nuisance factors.
NUISANCE_PARTS = ("background", "face", "hair", "occluder")


# --------------------------------------------------------------------------------------------- utils
def _check_maps(maps: Tensor, images: Tensor | None = None) -> None:
    if maps.dim() != 3:
        raise FerlensError(f"Attribution maps must be (B, H, W), got shape {tuple(maps.shape)}.")
    if images is not None and (maps.shape[0] != images.shape[0] or maps.shape[1:] != images.shape[-2:]):
        raise FerlensError(f"Maps {tuple(maps.shape)} do not match images {tuple(images.shape)}; "
                           "upsample the maps to the image size (probe.explain does).")


def pixel_ranks(maps: Tensor) -> Tensor:
    """Rank of every pixel by decreasing attribution (0 = most relevant).

    Args:
        maps: (B, H, W).

    Returns:
        (B, H, W) int64 ranks.
    """
    flat = maps.flatten(1)                                               # (B, HW)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=maps.device).expand_as(order))
    return ranks.view_as(maps)


def baseline_images(images: Tensor, baseline: Baseline = "blur", sigma: float = 5.0) -> Tensor:
    """The canvas that deleted pixels turn into: a strong Gaussian blur or zeros (the dataset mean
    colour in normalised space).

    Args:
        images: (B, 3, H, W) normalised images.
    """
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "blur":
        from torchvision.transforms.functional import gaussian_blur

        k = int(2 * round(3 * sigma) + 1)
        k = min(k, 2 * (min(images.shape[-2:]) // 2) - 1)
        return gaussian_blur(images, kernel_size=[k, k], sigma=[sigma, sigma])
    raise FerlensError(f"Unknown baseline '{baseline}'; use 'blur' or 'zero'.")


# ------------------------------------------------------------------------------------- faithfulness
@dataclass
class DeletionInsertion:
    """Per-image AUCs and the curves behind them.

    Attributes:
        deletion_auc: (B,) area under p(target) while the most relevant pixels are removed (lower = better).
        insertion_auc: (B,) area while they are inserted into the baseline (higher = better).
        deletion_curve: (B, steps+1) probabilities.
        insertion_curve: (B, steps+1).
    """

    deletion_auc: Tensor
    insertion_auc: Tensor
    deletion_curve: Tensor
    insertion_curve: Tensor


def _probs(model: torch.nn.Module, frames: Tensor, targets: Tensor, batch_size: int) -> Tensor:
    """(N,) softmax probability of ``targets`` for (N, 3, H, W) frames, forwarded in chunks."""
    # channels-last chunks: the convolutions and pooling of CNN stems run 1.1-1.2x faster on CPU (demo_vit, one
    # AVX2 thread: 2.25-2.5 s vs 2.75 s per method on 32 images) and the probabilities move by < 3e-6
    with torch.no_grad():
        probs = torch.cat([F.softmax(model(x.contiguous(memory_format=torch.channels_last)), -1)
                           for x in frames.split(batch_size)])
    return probs.gather(1, targets[:, None]).squeeze(1)


def endpoint_probs(model: torch.nn.Module, images: Tensor, targets: Tensor, baseline: Baseline = "blur",
                   batch_size: int = 32) -> Tensor:
    """(B, 2) target probability of each image and of its canvas: where every deletion and insertion curve
    starts and ends whatever the map, so one batch of maps after another can share them (``deletion_insertion``)."""
    both = torch.stack([images, baseline_images(images, baseline)], 1).flatten(0, 1)   # (2B, 3, H, W)
    return _probs(model, both, targets.repeat_interleave(2), batch_size).view(-1, 2)


def deletion_insertion(model: torch.nn.Module, images: Tensor, maps: Tensor, targets: Tensor,
                       steps: int = 16, baseline: Baseline = "blur", batch_size: int = 32,
                       endpoints: Tensor | None = None) -> DeletionInsertion:
    """Deletion and insertion AUC (RISE) over pixel ranks, all images and steps batched.

    Both curves start or end at the same two images: the original (nothing deleted, everything inserted)
    and the canvas (everything deleted, nothing inserted), so each image forwards those two once and only
    the ``steps - 1`` inner steps per curve, 2 * steps forwards instead of 2 * (steps + 1) — or 2 * (steps - 1)
    when ``endpoints`` are passed in (the same for every method explaining the same images and targets).

    Args:
        model: classifier returning logits.
        images: (B, 3, H, W) normalised images.
        maps: (B, H, W) attributions at image resolution.
        targets: (B,) class whose softmax probability is tracked.
        steps: number of equal pixel-count steps from 0 to all pixels.
        baseline: ``blur`` or ``zero`` canvas.
        batch_size: forward chunk size. 32 because per-image forward cost grows with the chunk on CPU
            (ferlens_tiny_vit_s3, one AVX2 thread: 300 img/s at 16-32, 260 at 128, 210 at 256).
        endpoints: (B, 2) ``endpoint_probs`` of these images, targets and baseline, or None to compute them.
    """
    _check_maps(maps, images)
    if steps < 1:
        raise FerlensError(f"steps must be at least 1, got {steps}.")
    b, _, h, w = images.shape
    if endpoints is None:
        endpoints = endpoint_probs(model, images, targets, baseline, batch_size)
    if tuple(endpoints.shape) != (b, 2):
        raise FerlensError(f"endpoints must be ({b}, 2) probabilities from endpoint_probs, got {tuple(endpoints.shape)}.")
    p_img, p_bas = endpoints[:, :1], endpoints[:, 1:]
    if steps > 1:
        ranks = pixel_ranks(maps)[:, None]                               # (B, 1, H, W)
        img, bas = images[:, None], baseline_images(images, baseline)[:, None]
        counts = [round(s * h * w / steps) for s in range(1, steps)]      # inner steps only
        masks = torch.stack([(ranks < c).to(images.dtype) for c in counts], 1)  # (B, S-1, 1, H, W)
        deleted = img * (1 - masks) + bas * masks                         # (B, S-1, 3, H, W)
        inserted = bas * (1 - masks) + img * masks
        both = torch.cat([deleted, inserted], 1).flatten(0, 1)            # (B*2(S-1), 3, H, W)
        p = _probs(model, both, targets.repeat_interleave(2 * (steps - 1)), batch_size).view(b, 2 * (steps - 1))
        p_del, p_ins = p[:, :steps - 1], p[:, steps - 1:]
    else:
        p_del = p_ins = p_img[:, :0]
    deletion = torch.cat([p_img, p_del, p_bas], 1)                        # (B, S+1)
    insertion = torch.cat([p_bas, p_ins, p_img], 1)
    dx = 1.0 / steps
    return DeletionInsertion(
        deletion_auc=torch.trapezoid(deletion, dx=dx, dim=-1),
        insertion_auc=torch.trapezoid(insertion, dx=dx, dim=-1),
        deletion_curve=deletion, insertion_curve=insertion)


def road(model: torch.nn.Module, images: Tensor, maps: Tensor, targets: Tensor,
         percentiles: Sequence[int] = (20, 40, 60, 80)) -> Tensor:
    """ROAD combined score (pytorch-grad-cam's ``ROADCombined``): mean over percentiles of
    (drop when removing the least relevant − drop when removing the most relevant) / 2; higher = better.

    Args:
        images: (B, 3, H, W); maps: (B, H, W) in [0, 1]; targets: (B,).

    Returns:
        (B,) scores.
    """
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    _check_maps(maps, images)
    metric = ROADCombined(percentiles=list(percentiles))
    tgts = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    scores = metric(images, maps.detach().cpu().float().numpy(), tgts, model)
    return torch.as_tensor(np.asarray(scores), dtype=torch.float32)


# ------------------------------------------------------------------------------------- localisation
@dataclass
class Localisation:
    """Per-image localisation scores.

    Attributes:
        part_mass: (B,) share of positive attribution inside the class-defining parts.
        nonpart_mass: (B,) share on the nuisance regions (background, face, hair, occluder).
        pointing_game: (B,) 1.0 when the map's maximum falls inside the defining parts.
    """

    part_mass: Tensor
    nonpart_mass: Tensor
    pointing_game: Tensor


def mass_inside(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of positive attribution mass inside boolean masks.

    Args:
        maps: (B, H, W); masks: (B, H, W) bool.

    Returns:
        (B,) in [0, 1] (0 for an all-zero map).
    """
    pos = maps.clamp_min(0).double()
    total = pos.flatten(1).sum(1)
    inside = (pos * masks.double()).flatten(1).sum(1)
    return (inside / total.clamp_min(1e-12)).float()


def pointing_game(maps: Tensor, masks: Tensor, rtol: float = 1e-4) -> Tensor:
    """Whether the map's peak lies inside the mask, with ties broken at random (in expectation).

    The peak is every pixel within ``rtol`` of the maximum (relative to the map's range). A token-level
    map upsampled from an 8×8 grid peaks on a whole cell, so taking the *first* arg-max (the cell's
    top-left pixel) would miss small parts that the cell covers; instead each image scores the share of
    its peak pixels inside the mask — 1/0 for a single-pixel peak, the mask's area share for a flat map.

    Args:
        maps: (B, H, W); masks: (B, H, W) bool.

    Returns:
        (B,) in [0, 1].
    """
    flat = maps.flatten(1).float()
    hi, lo = flat.amax(1, keepdim=True), flat.amin(1, keepdim=True)
    peak = flat >= hi - rtol * (hi - lo)
    return (peak & masks.flatten(1)).sum(1).float() / peak.sum(1).float()


def resize_masks(part_masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of integer part masks (B, h, w) to (B, H, W)."""
    if tuple(part_masks.shape[-2:]) == tuple(size):
        return part_masks
    x = part_masks[:, None].float()
    return F.interpolate(x, size=size, mode="nearest").squeeze(1).to(part_masks.dtype)


def part_masks_for(part_masks: Tensor, part_ids: Sequence[Sequence[int]]) -> Tensor:
    """Boolean masks of the given part ids per image.

    Args:
        part_masks: (B, H, W) integer part index per pixel.
        part_ids: per image, the part indices to include.

    Returns:
        (B, H, W) bool.
    """
    out = torch.zeros(part_masks.shape, dtype=torch.bool, device=part_masks.device)
    for b, ids in enumerate(part_ids):
        if len(ids):
            out[b] = torch.isin(part_masks[b], torch.as_tensor(list(ids), device=part_masks.device))
    return out


def localisation(maps: Tensor, part_masks: Tensor, defining: Sequence[Sequence[int]],
                 nuisance: Sequence[int]) -> Localisation:
    """Localisation of attribution maps against part masks.

    Args:
        maps: (B, H, W) attributions.
        part_masks: (B, h, w) integer part masks (resized to the maps with nearest neighbour).
        defining: per image, the part indices that define its (predicted) class.
        nuisance: part indices of the non-expression regions.
    """
    _check_maps(maps)
    pm = resize_masks(part_masks.to(maps.device), tuple(maps.shape[-2:]))
    inside = part_masks_for(pm, defining)
    other = part_masks_for(pm, [list(nuisance)] * maps.shape[0])
    return Localisation(mass_inside(maps, inside), mass_inside(maps, other), pointing_game(maps, inside))


# classes without a SynthFER answer key: the FACS action units that define them (AU14, dimpler: mouth)
EXTRA_CLASS_PARTS = {"contempt": ["mouth"]}


def part_ids_for(label_names: Sequence[str], classes: Tensor) -> tuple[list[list[int]], list[int]]:
    """Part indices defining each class (SynthFER's ``CLASS_PARTS``, used for real faces too, whose part
    masks are drawn from landmarks with the same part names) and the nuisance part indices.

    Args:
        label_names: the run's class names.
        classes: (B,) class indices (predicted or true).

    Returns:
        (defining part ids per image, nuisance part ids).
    """
    from train.data.synthfer import CLASS_PARTS, PART_NAMES

    key = {**CLASS_PARTS, **EXTRA_CLASS_PARTS}
    index = {name: i for i, name in enumerate(PART_NAMES)}
    missing = [label_names[int(c)] for c in classes if label_names[int(c)] not in key]
    if missing:
        raise FerlensError(f"There is no part answer key for class '{missing[0]}'; localisation metrics need "
                           f"the canonical class names ({', '.join(key)}).")
    defining = [[index[p] for p in key[label_names[int(c)]] if p in index] for c in classes]
    nuisance = [index[p] for p in NUISANCE_PARTS if p in index]
    return defining, nuisance


synthfer_part_ids = part_ids_for  # the earlier name


# ------------------------------------------------------------------------- chance and grid oracle
def chance_part_mass(part_masks: Tensor, defining: Sequence[Sequence[int]]) -> Tensor:
    """Part mass of a uniform map: the defining parts' share of the image area.

    Args:
        part_masks: (B, H, W) integer part masks; defining: per image, the part ids.

    Returns:
        (B,) area shares.
    """
    return part_masks_for(part_masks, defining).flatten(1).double().mean(1).float()


def cell_maps(grid_size: Sequence[int], size: Sequence[int]) -> Tensor:
    """Every one-hot token-grid map, upsampled and normalised exactly like token-level maps
    (``probe.attribution.normalise_maps``).

    Returns:
        (N, H, W), N = h*w, one map per cell.
    """
    from .attribution import normalise_maps

    h, w = int(grid_size[0]), int(grid_size[1])
    eye = torch.eye(h * w).view(h * w, h, w)
    return normalise_maps(eye, tuple(size))


@dataclass
class GridOracle:
    """The best a token-grid map can do on each image.

    Attributes:
        part_mass: (B,) highest part mass of any single-cell map (any non-negative grid map scores at most this).
        pointing: (B,) highest pointing-game score of any single-cell map.
        cell: (B,) the cell index reaching ``part_mass``.
    """

    part_mass: Tensor
    pointing: Tensor
    cell: Tensor


def grid_oracle(part_masks: Tensor, defining: Sequence[Sequence[int]], grid_size: Sequence[int]) -> GridOracle:
    """Part mass and pointing game of the best single-cell map per image.

    A non-negative grid map upsampled linearly is a positive mix of the cell maps, and its part mass is a
    weighted mean of theirs, so no token-grid map beats the best cell.

    Args:
        part_masks: (B, H, W) integer part masks at map resolution; defining: per image, the part ids;
        grid_size: (h, w) token grid.
    """
    inside = part_masks_for(part_masks, defining)                           # (B, H, W)
    cells = cell_maps(grid_size, part_masks.shape[-2:]).to(inside.device)  # (N, H, W)
    pos = cells.double().flatten(1)                                         # (N, HW)
    mass = (inside.flatten(1).double() @ pos.T) / pos.sum(1).clamp_min(1e-12)  # (B, N)
    flat = pos
    peak = flat >= flat.amax(1, keepdim=True) * (1 - 1e-4)                  # (N, HW) peak pixels of each cell map
    point = (inside.flatten(1).double() @ peak.double().T) / peak.sum(1).double()  # (B, N)
    best = mass.argmax(1)
    return GridOracle(mass.amax(1).float(), point.amax(1).float(), best)


def peak_cells(maps: Tensor, grid_size: Sequence[int]) -> Tensor:
    """Token-grid cell holding each map's maximum (first arg-max pixel).

    Args:
        maps: (B, H, W); grid_size: (h, w).

    Returns:
        (B,) cell indices r * w + c.
    """
    b, hh, ww = maps.shape
    h, w = int(grid_size[0]), int(grid_size[1])
    flat = maps.flatten(1).argmax(1)
    r, c = flat // ww, flat % ww
    return (r * h // hh) * w + (c * w // ww)


# ---------------------------------------------------------------------------------------- agreement
def spearman(maps_a: Tensor, maps_b: Tensor) -> Tensor:
    """Per-image Spearman rank correlation between two map batches (scipy).

    Args:
        maps_a, maps_b: (B, H, W).

    Returns:
        (B,) correlations (0 where a map is constant).
    """
    from scipy.stats import spearmanr

    a = maps_a.detach().flatten(1).double().cpu().numpy()
    b = maps_b.detach().flatten(1).double().cpu().numpy()
    out = []
    for x, y in zip(a, b):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            out.append(0.0)
        else:
            out.append(float(spearmanr(x, y).statistic))
    return torch.tensor(out, dtype=torch.float32)


def topk_iou(maps_a: Tensor, maps_b: Tensor, k: float = 0.1) -> Tensor:
    """IoU of the top-``k`` share of pixels of two map batches.

    Args:
        maps_a, maps_b: (B, H, W); k: share of pixels in (0, 1].

    Returns:
        (B,) IoU in [0, 1].
    """
    if not 0.0 < k <= 1.0:
        raise FerlensError(f"top-k share must be in (0, 1], got {k}.")
    n = max(1, int(round(k * maps_a[0].numel())))
    ta = pixel_ranks(maps_a).flatten(1) < n
    tb = pixel_ranks(maps_b).flatten(1) < n
    return ((ta & tb).sum(1).float() / (ta | tb).sum(1).float())


# ------------------------------------------------------------------------------------------- sanity
def _reinit_(module: torch.nn.Module, seed: int) -> None:
    """Re-draw every parameter of ``module``: torch's own ``reset_parameters`` for the layers that
    define it (Linear, Conv, norms), N(0, 0.02) for parameters held directly by other modules
    (CLS token, position embedding, layer scale)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
                continue
            with torch.no_grad():
                for p in m.parameters(recurse=False):
                    p.normal_(0.0, 0.02)


def randomisation_cascade(model: torch.nn.Module) -> list[str]:
    """Module paths re-initialised by the cascade, top down: head, blocks L-1 .. 0, then the stem."""
    from train.models.adapters import model_spec

    return list(model_spec(model).cascade)


def cascading_randomisation(model: torch.nn.Module, images: Tensor,
                            explain_fn: Callable[[torch.nn.Module, Tensor, Tensor], Tensor],
                            targets: Tensor | None = None, seed: int = 0) -> list[dict]:
    """Adebayo et al. (2018) model-parameter randomisation test, cascading from the top.

    Args:
        model: the trained model (left untouched; a copy is randomised).
        images: (B, 3, H, W).
        explain_fn: ``(model, images, targets) -> (B, H, W)`` maps.
        targets: (B,) classes to explain (default: the original model's predictions, kept fixed).
        seed: seed of the re-initialisation.

    Returns:
        Rows ``{"randomised": module path, "depth": k, "spearman": mean, "spearman_std": std}``, k = number
        of modules re-initialised so far; a faithful method's correlation drops as k grows.
    """
    model = model.eval()
    if targets is None:
        with torch.no_grad():
            targets = model(images).argmax(-1)
    original = explain_fn(model, images, targets)
    rand = copy.deepcopy(model).eval()
    rows = []
    for k, name in enumerate(randomisation_cascade(rand), start=1):
        _reinit_(rand.get_submodule(name), seed + k)
        rho = spearman(original, explain_fn(rand, images, targets))
        rows.append({"randomised": name, "depth": k, "spearman": float(rho.mean()),
                     "spearman_std": float(rho.std(unbiased=False))})
    return rows


# ------------------------------------------------------------------------------------- one table row
def method_metrics(model: torch.nn.Module, images: Tensor, maps: Tensor, targets: Tensor,
                   part_masks: Tensor | None = None, label_names: Sequence[str] | None = None,
                   steps: int = 16, baseline: Baseline = "blur", with_road: bool = False,
                   grid_size: Sequence[int] | None = None, endpoints: Tensor | None = None) -> dict[str, float]:
    """The ``explain/attribution_metrics`` numbers of one method on one batch (means over images).

    Args:
        model: classifier.
        images: (B, 3, H, W); maps: (B, H, W) in [0, 1]; targets: (B,) explained classes.
        part_masks: (B, h, w) part masks, or None (localisation columns are then NaN).
        label_names: the run's class names (needed with ``part_masks``).
        steps, baseline: deletion/insertion settings.
        with_road: also compute pytorch-grad-cam's ROAD (slower: one sparse solve per image and percentile).
        grid_size: (h, w) token grid: adds the grid oracle (``best_cell_part_mass``, ``best_cell_pointing``)
            and where the maps peak (``peak_cell``: the most frequent peak cell as "r,c", ``peak_cell_count``:
            on how many images the map peaks there).
        endpoints: (B, 2) ``endpoint_probs`` shared by the methods explaining these images (None: computed here).

    Returns:
        ``{deletion_auc, insertion_auc, part_mass, nonpart_mass, pointing_game, chance_part_mass,
        part_mass_x_chance, n_localised, n[, best_cell_part_mass, best_cell_pointing, peak_cell,
        peak_cell_count][, road]}``. Localisation averages over the images whose defining parts are
        visible (``n_localised``); ``chance_part_mass`` is the part mass of a uniform map (the parts' area share).
    """
    di = deletion_insertion(model, images, maps, targets, steps=steps, baseline=baseline, endpoints=endpoints)
    row = {"deletion_auc": float(di.deletion_auc.mean()), "insertion_auc": float(di.insertion_auc.mean()),
           "part_mass": float("nan"), "nonpart_mass": float("nan"), "pointing_game": float("nan"),
           "n": int(images.shape[0])}
    if grid_size is not None:
        peaks = peak_cells(maps, grid_size)
        mode = int(torch.bincount(peaks).argmax())
        row.update(peak_cell=f"{mode // int(grid_size[1])},{mode % int(grid_size[1])}",
                   peak_cell_count=int((peaks == mode).sum()))
    if part_masks is not None:
        defining, nuisance = part_ids_for(list(label_names), targets)
        pm = resize_masks(part_masks.to(maps.device), tuple(maps.shape[-2:]))
        chance = chance_part_mass(pm, defining)
        seen = chance > 0                                                  # defining parts visible
        loc = localisation(maps[seen], pm[seen], [d for d, k in zip(defining, seen) if k], nuisance)
        ch = float(chance[seen].mean()) if seen.any() else float("nan")
        row.update(part_mass=float(loc.part_mass.mean()), nonpart_mass=float(loc.nonpart_mass.mean()),
                   pointing_game=float(loc.pointing_game.mean()), chance_part_mass=ch,
                   part_mass_x_chance=float(loc.part_mass.mean()) / ch if ch > 0 else float("nan"),
                   n_localised=int(seen.sum()))
        if grid_size is not None and seen.any():
            oracle = grid_oracle(pm[seen], [d for d, k in zip(defining, seen) if k], grid_size)
            row.update(best_cell_part_mass=float(oracle.part_mass.mean()),
                       best_cell_pointing=float(oracle.pointing.mean()))
    if with_road:
        row["road"] = float(road(model, images, maps, targets).mean())
    return row


def agreement_rows(maps: dict[str, Tensor], k: float = 0.1) -> list[dict[str, float | str]]:
    """Pairwise agreement of methods: mean Spearman correlation and top-k IoU over images.

    Args:
        maps: {method: (B, H, W)}.
    """
    names = list(maps)
    return [{"method_a": a, "method_b": b, "spearman": float(spearman(maps[a], maps[b]).mean()),
             "topk_iou": float(topk_iou(maps[a], maps[b], k).mean()), "k": k}
            for i, a in enumerate(names) for b in names[i + 1:]]
