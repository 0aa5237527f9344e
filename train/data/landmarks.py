"""Part masks drawn from the landmarks real datasets ship, with SynthFER's part names (``PART_NAMES``), so
part mass and the pointing game run on real faces with the same answer key (``CLASS_PARTS``).

Landmark schemes (points as (x, y) pixels of the image the mask is drawn for):

- ``rafdb5``: RAF-DB ``Annotation/manual``: the two eye centres, the nose tip, the two mouth corners.
  Eyes, nose and mouth are ellipses scaled by the inter-ocular distance (IOD); there are no brow points,
  so a 5-point mask has no brows.
- ``rafdb37``: RAF-DB ``Annotation/auto`` (Face++, 37 points): brows 0-2 / 3-5, nose 6-12, eyes 13-18 /
  19-24, mouth 25-36 (the grouping RAF-DB users read the Face++ order with).
- ``ibug68``: the 68-point iBUG/Multi-PIE order (AffectNet's ``facial_landmarks``): jaw 0-16, brows 17-21 /
  22-26, nose 27-35, eyes 36-41 / 42-47, mouth 48-67.

Point groups with three or more points become their convex hull (scipy) grown by a margin of 0.06 IOD;
brows are polylines 0.12 IOD thick. The face is the jaw + brow outline (68 points) or an ellipse around
all points (5 / 37 points). ``_l`` parts are the ones on the image's left. Drawn with PIL's ImageDraw.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..errors import FerlensError

SCHEMES: dict[str, dict[str, list[int]]] = {
    "rafdb5": {"eye_l": [0], "eye_r": [1], "nose": [2], "mouth": [3, 4]},
    "rafdb37": {"brow_l": [0, 1, 2], "brow_r": [3, 4, 5], "nose": list(range(6, 13)), "eye_l": list(range(13, 19)),
                "eye_r": list(range(19, 25)), "mouth": list(range(25, 37))},
    "ibug68": {"jaw": list(range(0, 17)), "brow_l": list(range(17, 22)), "brow_r": list(range(22, 27)),
               "nose": list(range(27, 36)), "eye_l": list(range(36, 42)), "eye_r": list(range(42, 48)),
               "mouth": list(range(48, 68))},
}
N_POINTS = {name: max(i for ids in groups.values() for i in ids) + 1 for name, groups in SCHEMES.items()}
# drawing order: later parts overwrite earlier ones
DRAW_ORDER = ("face", "nose", "eye_l", "eye_r", "brow_l", "brow_r", "mouth")


def scheme_for(n_points: int) -> str:
    """The scheme of a landmark set by its size (5, 37 or 68 points)."""
    for name, n in N_POINTS.items():
        if n == n_points:
            return name
    raise FerlensError(f"{n_points} landmarks match no known scheme; part masks need RAF-DB's 5 or 37 or the "
                       "68-point iBUG layout.")


def _ellipse(draw: ImageDraw.ImageDraw, c: np.ndarray, rx: float, ry: float, value: int) -> None:
    draw.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], fill=value)


def _hull(draw: ImageDraw.ImageDraw, pts: np.ndarray, margin: float, value: int) -> None:
    from scipy.spatial import ConvexHull, QhullError

    try:
        ring = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):                      # collinear points: a thick line
        ring = pts
    poly = [tuple(map(float, p)) for p in ring]
    draw.polygon(poly, fill=value)
    if margin > 0:
        draw.line(poly + poly[:1], fill=value, width=max(1, int(round(2 * margin))), joint="curve")


def part_mask_from_landmarks(points: np.ndarray, size: tuple[int, int], scheme: str | None = None) -> np.ndarray:
    """A part mask (values index ``PART_NAMES``) drawn from one face's landmarks.

    Args:
        points: (K, 2) landmark (x, y) pixels in the frame of the image the mask is for.
        size: (width, height) of that image.
        scheme: ``rafdb5``, ``rafdb37`` or ``ibug68`` (default: chosen by K).

    Returns:
        (height, width) uint8 mask.
    """
    from ._synth_render import PART_INDEX

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    scheme = scheme or scheme_for(len(pts))
    groups = SCHEMES[scheme]
    if len(pts) != N_POINTS[scheme]:
        raise FerlensError(f"Scheme {scheme} has {N_POINTS[scheme]} landmarks, got {len(pts)}.")
    g = {k: pts[v] for k, v in groups.items()}
    eyes = (g["eye_l"].mean(0), g["eye_r"].mean(0))
    iod = max(float(np.linalg.norm(eyes[1] - eyes[0])), 1.0)
    img = Image.new("L", tuple(int(s) for s in size), PART_INDEX["background"])
    draw = ImageDraw.Draw(img)
    for part in DRAW_ORDER:
        value = PART_INDEX[part]
        if part == "face":
            if "jaw" in g:
                outline = np.concatenate([g["jaw"], g["brow_r"][::-1], g["brow_l"][::-1]])
                draw.polygon([tuple(map(float, p)) for p in outline], fill=value)
            else:
                lo, hi = pts.min(0), pts.max(0)
                c = (lo + hi) / 2 + np.array([0.0, 0.1 * iod])
                _ellipse(draw, c, (hi[0] - lo[0]) / 2 + 0.45 * iod, (hi[1] - lo[1]) / 2 + 0.75 * iod, value)
        elif part not in g:
            continue
        elif scheme == "rafdb5":
            if part.startswith("eye"):
                _ellipse(draw, g[part][0], 0.25 * iod, 0.15 * iod, value)
            elif part == "nose":
                _ellipse(draw, g[part][0], 0.2 * iod, 0.18 * iod, value)
            else:                                          # mouth: through both corners
                a, b = g["mouth"]
                _ellipse(draw, (a + b) / 2, float(np.linalg.norm(b - a)) / 2 + 0.08 * iod, 0.2 * iod, value)
        elif part.startswith("brow"):
            draw.line([tuple(map(float, p)) for p in g[part]], fill=value, width=max(1, int(round(0.12 * iod))),
                      joint="curve")
        else:
            _hull(draw, g[part], 0.06 * iod, value)
    return np.asarray(img, dtype=np.uint8)


def parse_points(values: Sequence[float], where: str) -> np.ndarray:
    """Flat ``x1, y1, x2, y2, …`` → (K, 2); an odd count ends in one sentence naming ``where``."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size % 2:
        raise FerlensError(f"{where} holds {arr.size} landmark numbers, not (x, y) pairs; restore it from the "
                           "distribution.")
    return arr.reshape(-1, 2)
