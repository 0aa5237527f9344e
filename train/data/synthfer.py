"""SynthFER: procedurally rendered face expressions with a ground-truth answer key.

Spec: ``synthfer[:size=64,n=12000,seed=0]``. The whole set is a pure function of (size, n, seed):
all factors (expression, intensity, jitter, identity, pose, scale, translation, lighting, background,
occluder, noise) are drawn up front with one seeded generator, without rendering; images are drawn
lazily in ``load_image`` from each sample's factors (``render``) and kept in a small LRU cache.
Splits are identity-disjoint (80/10/10 of the identities).

Public API: ``load``, ``render``, ``PART_NAMES``, ``CLASS_PARTS``, ``SynthFER`` (``factors(i)``,
``part_mask(i)``, ``counterfactual(i, **changes)``), ``export``, ``contact_sheet``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import FerlensError, close_matches
from ..labels import canonical
from ._synth_render import (BACKGROUNDS, CLASS_PARTS, EXPRESSIONS, ILLUMINATIONS, OCCLUDERS, PARAM_NAMES,
                            PART_INDEX, PART_NAMES, identity_traits, render, render_batch)
from .base import SPLITS, FERDataset

SIZE_RANGE = (32, 224)
N_RANGE = (70, 1_000_000)
OPTIONS = ("size", "n", "seed")
DEFAULTS = {"size": 64, "n": 12000, "seed": 0}
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
SAMPLES_PER_IDENTITY = 40
MAX_IDENTITIES = 300
OCCLUDER_P = (0.4, 0.2, 0.2, 0.2)  # none, glasses, hand, patch
CACHE_BYTES = 256 * 2**20  # ~16,000 faces at 64 px: a whole demo training split stays rendered across epochs
RENDER_BLOCK = 32  # faces per render_batch call: a miss draws the uncached rest of its block of 32 indices

ATTR_KINDS = {"identity": "categorical", "background": "categorical", "occluder": "categorical",
              "illumination": "categorical", "yaw_bin": "categorical", "roll_bin": "categorical",
              "yaw": "continuous", "roll": "continuous", "scale": "continuous", "intensity": "continuous"}


# ----------------------------------------------------------------------------- options
def _int_option(name: str, value: Any, lo: int, hi: int) -> int:
    """Parse one integer option given as str/int and check its range."""
    try:
        out = int(str(value).strip())
    except ValueError:
        raise FerlensError(f"SynthFER option {name}='{value}' is not an integer; pass e.g. {name}={DEFAULTS[name]}.") from None
    if not lo <= out <= hi:
        raise FerlensError(f"SynthFER option {name}={out} is out of range; use {lo} <= {name} <= {hi}.")
    return out


def parse_options(size: Any = 64, n: Any = 12000, seed: Any = 0, **unknown: Any) -> tuple[int, int, int]:
    """Validate SynthFER options (strings from a spec or ints) → (size, n, seed)."""
    if unknown:
        bad = next(iter(unknown))
        raise FerlensError(f"Unknown SynthFER option '{bad}'; valid options are {', '.join(OPTIONS)}."
                           + close_matches(bad, OPTIONS))
    return (_int_option("size", size, *SIZE_RANGE), _int_option("n", n, *N_RANGE),
            _int_option("seed", seed, 0, 2**31 - 1))


def num_identities(n: int) -> int:
    """Identities in a set of n samples: about 40 samples each, 10..300."""
    return int(min(MAX_IDENTITIES, max(10, n // SAMPLES_PER_IDENTITY)))


# ----------------------------------------------------------------------------- factors
def _colours(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """n random hues (n, 3) with their brightest channel in [lo, hi]."""
    rgb = rng.uniform(0.1, 1.0, (n, 3))
    return rgb / rgb.max(axis=1, keepdims=True) * rng.uniform(lo, hi, (n, 1))


def sample_factors(n: int, seed: int) -> dict[str, np.ndarray]:
    """Draw the factors of all n samples (vectorised, no rendering).

    Returns:
        column dict, each value an array with first dimension n (``jitter`` is (n, P)).
    """
    rng = np.random.default_rng([int(seed), 0xFE5])
    n_ids = num_identities(n)
    cols: dict[str, np.ndarray] = {
        "expression": rng.integers(0, len(EXPRESSIONS), n),
        "intensity": rng.uniform(0.7, 1.0, n),
        "jitter": rng.standard_normal((n, len(PARAM_NAMES))).clip(-2.5, 2.5),
        "identity": rng.integers(0, n_ids, n),
        "yaw": rng.uniform(-30, 30, n),
        "roll": rng.uniform(-18, 18, n),
        "scale": rng.uniform(0.62, 0.78, n),
        "tx": rng.uniform(-0.12, 0.12, n),
        "ty": rng.uniform(-0.10, 0.10, n),
        "illumination": rng.integers(0, len(ILLUMINATIONS), n),
        "illum_strength": rng.uniform(0.2, 0.7, n),
        "brightness": rng.uniform(0.78, 1.1, n),
        "background": rng.integers(0, len(BACKGROUNDS), n),
        "bg_c1": _colours(rng, n, 0.65, 1.0),  # light colour
        "bg_c2": _colours(rng, n, 0.08, 0.35),  # dark colour
        "bg_angle": rng.uniform(-0.25, 0.25, n),  # small tilt of the background's pattern
        "bg_freq": rng.uniform(8.5, 10.5, n),
        "occluder": rng.choice(len(OCCLUDERS), n, p=OCCLUDER_P),
        "occ_anchor": rng.integers(0, 6, n),
        "occ_size": rng.uniform(0.2, 0.3, n),
        "occ_angle": rng.uniform(-0.6, 0.6, n),
        "occ_colour": _colours(rng, n, 0.7, 1.0),
        "noise": rng.uniform(0.0, 0.05, n),
        "noise_seed": rng.integers(0, 2**31 - 1, n),
    }
    # the illumination "front" has no directional gradient
    cols["illum_strength"][cols["illumination"] == 0] = 0.0
    return cols


def split_indices(identity: np.ndarray, n_ids: int, seed: int) -> dict[str, np.ndarray]:
    """Identity-disjoint split: identities are shuffled and cut 80/10/10; returns sample indices per split."""
    perm = np.random.default_rng([int(seed), 0x5B1]).permutation(n_ids)
    n_val = max(1, round(SPLIT_FRACTIONS["val"] * n_ids))
    n_test = max(1, round(SPLIT_FRACTIONS["test"] * n_ids))
    groups = {"train": perm[: n_ids - n_val - n_test], "val": perm[n_ids - n_val - n_test: n_ids - n_test],
              "test": perm[n_ids - n_test:]}
    return {name: np.flatnonzero(np.isin(identity, ids)) for name, ids in groups.items()}


def _bin(value: float, edge: float, names: tuple[str, str, str]) -> str:
    return names[0] if value < -edge else names[2] if value > edge else names[1]


# ----------------------------------------------------------------------------- dataset
class SynthFER(FERDataset):
    """One split of SynthFER; images are rendered on demand from per-sample factors.

    Args:
        split: ``train``, ``val`` or ``test``.
        size: image side in pixels (32..224).
        n: samples in the whole set (all splits).
        seed: generator seed; (size, n, seed) fixes every pixel.
    """

    def __init__(self, split: str = "train", size: int = 64, n: int = 12000, seed: int = 0):
        if split not in SPLITS:
            raise FerlensError(f"Unknown split '{split}'; use one of {', '.join(SPLITS)}.")
        self.size, self.n_total, self.seed = int(size), int(n), int(seed)
        self.split = split
        self.spec = f"synthfer:size={self.size},n={self.n_total},seed={self.seed}"
        cols = sample_factors(self.n_total, self.seed)
        self.n_identities = num_identities(self.n_total)
        self.indices = split_indices(cols["identity"], self.n_identities, self.seed)[split]  # global ids
        self._cols = {k: v[self.indices] for k, v in cols.items()}
        self.label_names = canonical(7)
        # EXPRESSIONS and the canonical order are the same tuple; labels index both
        self.labels = self._cols["expression"].astype(np.int64)
        self.attrs = [self._attrs(i) for i in range(len(self.indices))]
        self.attr_kinds = dict(ATTR_KINDS)
        self.sample_ids = [f"synthfer-s{self.seed}-{g:06d}" for g in self.indices]
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_max = max(16, CACHE_BYTES // (self.size * self.size * 4))

    def _attrs(self, i: int) -> dict[str, Any]:
        c = self._cols
        expr = int(c["expression"][i])
        yaw, roll = float(c["yaw"][i]), float(c["roll"][i])
        return {
            "identity": int(c["identity"][i]),
            "background": BACKGROUNDS[int(c["background"][i])],
            "occluder": OCCLUDERS[int(c["occluder"][i])],
            "illumination": ILLUMINATIONS[int(c["illumination"][i])],
            "yaw_bin": _bin(yaw, 10.0, ("left", "frontal", "right")),
            "roll_bin": _bin(roll, 6.0, ("ccw", "upright", "cw")),
            "yaw": round(yaw, 4), "roll": round(roll, 4), "scale": round(float(c["scale"][i]), 5),
            "intensity": 0.0 if expr == 0 else round(float(c["intensity"][i]), 4),
        }

    def factors(self, index: int) -> dict[str, Any]:
        """All generative factors of sample ``index`` (JSON-able; ``render(factors)`` redraws it)."""
        c = self._cols
        i = int(index)
        return {
            "size": self.size, "world_seed": self.seed,
            "expression": EXPRESSIONS[int(c["expression"][i])],
            "intensity": float(c["intensity"][i]),
            "jitter": [float(x) for x in c["jitter"][i]],
            "identity": int(c["identity"][i]),
            "yaw": float(c["yaw"][i]), "roll": float(c["roll"][i]), "scale": float(c["scale"][i]),
            "tx": float(c["tx"][i]), "ty": float(c["ty"][i]),
            "illumination": ILLUMINATIONS[int(c["illumination"][i])],
            "illum_strength": float(c["illum_strength"][i]), "brightness": float(c["brightness"][i]),
            "background": BACKGROUNDS[int(c["background"][i])],
            "bg_c1": [float(x) for x in c["bg_c1"][i]], "bg_c2": [float(x) for x in c["bg_c2"][i]],
            "bg_angle": float(c["bg_angle"][i]), "bg_freq": float(c["bg_freq"][i]),
            "occluder": OCCLUDERS[int(c["occluder"][i])], "occ_anchor": int(c["occ_anchor"][i]),
            "occ_size": float(c["occ_size"][i]), "occ_angle": float(c["occ_angle"][i]),
            "occ_colour": [float(x) for x in c["occ_colour"][i]],
            "noise": float(c["noise"][i]), "noise_seed": int(c["noise_seed"][i]),
        }

    def render_arrays(self, index: int, with_mask: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Image (H, W, 3) uint8 and part mask (H, W) uint8 (None without ``with_mask``), LRU-cached.

        A miss draws the sample together with the uncached rest of its block of ``RENDER_BLOCK``
        indices (``render_batch`` draws each face exactly as ``render`` does, ~1.5x cheaper per face),
        so a pass over the split in any order draws every face once, in blocks.
        """
        index = int(index)
        if not 0 <= index < len(self):
            raise FerlensError(f"Sample index {index} is out of range for a split of {len(self)} samples.")
        hit = self._cache.get(index)
        if hit is not None and (hit[1] is not None or not with_mask):
            self._cache.move_to_end(index)
            return hit
        start = index - index % RENDER_BLOCK
        block = [i for i in range(start, min(start + RENDER_BLOCK, len(self))) if i != index]
        self._draw(self._missing(block, with_mask)[: max(0, self._cache_max - 1)] + [index], with_mask)
        return self._cache[index]

    def __getitems__(self, indices: Sequence[int]) -> list:
        """A data loader's batch (torch calls this when defined): its uncached faces are drawn together.

        Each loader worker so draws exactly the faces of its own batches, in ``render_batch`` calls.
        """
        self._draw(self._missing(sorted({int(i) for i in indices}), False), False)
        return [self[int(i)] for i in indices]

    def _missing(self, indices: Sequence[int], with_mask: bool) -> list[int]:
        """The indices (in range) whose image, or with ``with_mask`` whose mask, is not cached."""
        out = []
        for i in indices:
            hit = self._cache.get(i)
            if 0 <= i < len(self) and (hit is None or (with_mask and hit[1] is None)):
                out.append(i)
        return out

    def _draw(self, indices: list[int], with_mask: bool) -> None:
        """Render ``indices`` in ``render_batch`` calls of ``RENDER_BLOCK`` and cache them (the last most recent)."""
        for j in range(0, len(indices), RENDER_BLOCK):
            part = indices[j:j + RENDER_BLOCK]
            images, masks = render_batch([self.factors(i) for i in part], with_mask=with_mask)
            for k, i in enumerate(part):
                self._cache[i] = (images[k].copy(), None if masks is None else masks[k].copy())
                self._cache.move_to_end(i)
        while len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)

    def image_array(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 image of sample ``index`` (the mask is not drawn: faster)."""
        return self.render_arrays(index, with_mask=False)[0]

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.image_array(index))

    def part_mask(self, index: int) -> np.ndarray:
        """(H, W) uint8 part mask of sample ``index``; values index ``PART_NAMES``."""
        return self.render_arrays(index, with_mask=True)[1]

    def identity_traits(self, index: int) -> dict[str, Any]:
        """The fixed look of the sample's identity (plus plausible gender/race/age codes)."""
        return identity_traits(int(self._cols["identity"][int(index)]), self.seed)

    def counterfactual(self, index: int, **changes: Any) -> Image.Image:
        """The same face with some factors changed, e.g. ``counterfactual(i, expression="happiness")``.

        Args:
            index: sample index in this split.
            **changes: factor names (see ``factors``) and their new values.
        """
        return Image.fromarray(render(with_changes(self.factors(index), **changes), with_mask=False)[0])


def with_changes(factors: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Return a copy of ``factors`` with validated changes applied."""
    out = dict(factors)
    for key, value in changes.items():
        if key not in factors or key in ("size", "world_seed"):
            valid = [k for k in factors if k not in ("size", "world_seed")]
            raise FerlensError(f"Cannot change SynthFER factor '{key}'; valid factors are {', '.join(valid)}."
                               + close_matches(key, valid))
        choices = {"expression": EXPRESSIONS, "background": BACKGROUNDS, "occluder": OCCLUDERS,
                   "illumination": ILLUMINATIONS}.get(key)
        if choices is not None and value not in choices:
            raise FerlensError(f"Unknown {key} '{value}'; use one of {', '.join(choices)}."
                               + close_matches(str(value), choices))
        out[key] = value
    return out


def load(root: str | None, split: str, size: Any = 64, n: Any = 12000, seed: Any = 0, **unknown: Any) -> SynthFER:
    """Loader registered as ``synthfer`` in ``train.data.LOADERS``.

    Args:
        root: unused (SynthFER is generated); must be None or empty.
        split: ``train``, ``val`` or ``test``.
        size, n, seed: options (strings from the spec or ints).
    """
    if root:
        raise FerlensError(f"SynthFER takes no path (got '{root}'); write the spec as 'synthfer:size=64,n=2000,seed=0'.")
    size_i, n_i, seed_i = parse_options(size, n, seed, **unknown)
    return SynthFER(split, size=size_i, n=n_i, seed=seed_i)


# the exporters need SynthFER defined above, so they are imported last
from ._synth_export import RAFDB_LABELS, contact_sheet, export  # noqa: E402


__all__ = ["CLASS_PARTS", "EXPRESSIONS", "PART_INDEX", "PART_NAMES", "RAFDB_LABELS", "SynthFER", "contact_sheet", "export",
           "load", "render", "render_batch", "sample_factors", "split_indices", "with_changes"]
