"""SynthFER renderer: faces from flat factor dicts, drawn with vectorised numpy.

Why hand-written: no library draws parametric, FACS-like cartoon faces with a per-pixel part mask
fast enough (>= 2,000 images/s on one core at 64 px). Every shape is an implicit function evaluated
on a precomputed coordinate grid, only inside the shape's bounding window (the box of the shape's
face-space box as rolled), and anti-aliased by a linear ramp of its (approximate) signed distance over
one pixel — no supersampling, no per-shape PIL drawing.

``render_batch`` draws B faces at once: at 64 px a face costs ~300 numpy calls on windows of a few
hundred pixels, so call overhead, not pixels, was most of the time. The small parts (nose, mouth, eyes,
brows, fringe) and the finish are drawn on the whole stack with (B,) parameter columns, one call per
step for all faces (``_Stack``, ``_Win``: each face in its own window, clipped to it, so a face never
depends on its batch-mates and ``render(f)`` is ``render_batch([f])``); the layers with large windows
(background, hair, face, occluders) stay face by face (``_Canvas``), where the fewest pixels are touched
— stacked, their (B, h, w) temporaries fall out of the core's cache and run slower than one face at a
time (tried: stacking them is 10-30% slower at any stack size from 2 to 32). ``np.remainder`` is kept off
pixels (~10x slower than the other ufuncs; ``_fold``). Measured on the 2-core Xeon (Sapphire Rapids),
load average 2.5, CPU time, 64 px: ``python -m bench.bench_synthfer`` (factors + render through the
dataset, blocks of 32) 2,815-2,862 → 4,288-4,435 img/s (1.5x), with numpy capped to AVX2
(``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"``) 2,881-3,007 → 4,487-4,489 (1.5x); one
face per ``render`` call is ~2x slower than before (1,270-1,540 img/s). Pixels match the
one-face-per-call renderer except rare ±1 levels (the eyes and brows now run in float32 throughout;
0.25 % of 2,000 faces have a changed pixel).

Coordinates: image coordinates ``(gx, gy)`` span [-1, 1] (y down). Face coordinates ``(u, v)`` come
from ``q = R(-roll) (p - t) / scale``: the face ellipse has semi-height ~1, eyes sit near v = -0.1,
the mouth near v = 0.5. "Left" parts (``brow_l``, ``eye_l``) are on the image's left.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import FerlensError

# index = value in the part mask
PART_NAMES: tuple[str, ...] = ("background", "face", "hair", "brow_l", "brow_r", "eye_l", "eye_r",
                               "nose", "mouth", "occluder")
PART_INDEX: dict[str, int] = {name: i for i, name in enumerate(PART_NAMES)}

EXPRESSIONS: tuple[str, ...] = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")

# FACS-like expression parameters at full intensity (units: face coordinates, face semi-height ~1).
#   brow_raise   whole-brow lift (AU1+2 up, AU4 down)     brow_inner  inner-end lift (AU1 +, AU4 V-shape -)
#   brow_squeeze brows drawn together (AU4)               eye_open    lid aperture multiplier (AU5 up, AU6/7 down)
#   wrinkle      nose wrinkle lines (AU9)                 curve       mouth-corner lift (AU12 +, AU15 -)
#   open         lip parting / jaw drop (AU25/26/27)      width       mouth width multiplier (AU20 stretch)
#   lip_raise    upper-lip raise (AU10)                   asym        one-sided corner lift
#   teeth        visible teeth (0..1)                     press       lips pressed thin (AU23/24)
PARAM_NAMES: tuple[str, ...] = ("brow_raise", "brow_inner", "brow_squeeze", "eye_open", "wrinkle", "curve",
                                "open", "width", "lip_raise", "asym", "teeth", "press")
EXPRESSION_PARAMS: dict[str, tuple[float, ...]] = {
    #             raise  inner  squeeze eye   wrinkle curve  open   width lip_r asym  teeth press
    "neutral":   (0.00,  0.00,  0.00,  1.00,  0.0,  0.00,  0.00,  1.00, 0.00, 0.00, 0.0, 0.0),
    "happiness": (0.02,  0.00,  0.00,  0.62,  0.0,  0.16,  0.07,  1.30, 0.00, 0.00, 1.0, 0.0),
    "sadness":   (-0.02, 0.13,  0.02,  0.70,  0.0, -0.13,  0.00,  0.88, 0.00, 0.00, 0.0, 0.4),
    "surprise":  (0.15,  0.00, -0.01,  1.65,  0.0,  0.00,  0.22,  0.72, 0.00, 0.00, 0.0, 0.0),
    "fear":      (0.09,  0.10,  0.04,  1.55,  0.0, -0.05,  0.09,  1.32, 0.00, 0.00, 0.7, 0.0),
    "disgust":   (-0.06, -0.03, 0.03,  0.55,  1.0, -0.06,  0.03,  0.95, 0.06, 0.06, 0.6, 0.0),
    "anger":     (-0.09, -0.14, 0.05,  0.72,  0.3, -0.03,  0.00,  0.80, 0.00, 0.00, 0.0, 1.0),
}
# per-sample jitter (standard deviation, same units) applied on top of intensity * class offset
PARAM_JITTER: tuple[float, ...] = (0.015, 0.015, 0.008, 0.06, 0.08, 0.02, 0.012, 0.05, 0.008, 0.01, 0.1, 0.1)

# parts whose change defines each class (vs neutral) — the answer key for attribution metrics
CLASS_PARTS: dict[str, list[str]] = {
    "neutral": ["brow_l", "brow_r", "eye_l", "eye_r", "mouth"],
    "happiness": ["eye_l", "eye_r", "mouth"],
    "sadness": ["brow_l", "brow_r", "eye_l", "eye_r", "mouth"],
    "surprise": ["brow_l", "brow_r", "eye_l", "eye_r", "mouth"],
    "fear": ["brow_l", "brow_r", "eye_l", "eye_r", "mouth"],
    "disgust": ["brow_l", "brow_r", "eye_l", "eye_r", "nose", "mouth"],
    "anger": ["brow_l", "brow_r", "eye_l", "eye_r", "mouth"],
}

BACKGROUNDS: tuple[str, ...] = ("solid", "gradient", "stripes", "checker", "texture")
OCCLUDERS: tuple[str, ...] = ("none", "glasses", "hand", "patch")
ILLUMINATIONS: tuple[str, ...] = ("front", "left", "right", "top")
_ILLUM_DIR = {"front": (0.0, 0.0), "left": (-1.0, 0.0), "right": (1.0, 0.0), "top": (0.0, -1.0)}
HAIR_STYLES: tuple[str, ...] = ("crop", "side", "bangs", "peak", "curly", "long")

_SKIN = np.array([[0.96, 0.80, 0.69], [0.92, 0.72, 0.58], [0.84, 0.62, 0.47], [0.72, 0.52, 0.38],
                  [0.56, 0.38, 0.27], [0.42, 0.28, 0.20], [0.98, 0.86, 0.76]], np.float32)
_SKIN_RACE = (0, 2, 2, 2, 1, 1, 0)  # RAF-DB race code per skin palette entry
_HAIR = np.array([[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.30, 0.15], [0.85, 0.70, 0.40],
                  [0.60, 0.25, 0.10], [0.65, 0.65, 0.65], [0.15, 0.12, 0.12]], np.float32)
_IRIS = np.array([[0.25, 0.15, 0.08], [0.20, 0.35, 0.60], [0.25, 0.45, 0.25], [0.10, 0.07, 0.05]], np.float32)
_LIP = np.array([0.75, 0.35, 0.35], np.float32)
_DARK = np.array([0.22, 0.05, 0.06], np.float32)
_TEETH = np.array([0.97, 0.97, 0.93], np.float32)
_SCLERA = np.array([0.98, 0.98, 0.98], np.float32)


# ----------------------------------------------------------------------------- identities
@lru_cache(maxsize=4096)
def identity_traits(identity: int, world_seed: int) -> dict[str, Any]:
    """The fixed look of one identity (face shape, colours, hair, feature spacing, resting face).

    Args:
        identity: identity index.
        world_seed: the dataset seed (identities of different seeds differ).
    """
    rng = np.random.default_rng([int(world_seed) & 0xFFFFFFFF, int(identity), 0x5F3])
    skin_idx, hair_idx = int(rng.integers(len(_SKIN))), int(rng.integers(len(_HAIR)))
    skin = np.clip(_SKIN[skin_idx] * rng.uniform(0.93, 1.05), 0, 1)
    hair = np.clip(_HAIR[hair_idx] * rng.uniform(0.85, 1.15), 0, 1)
    hair_style = int(rng.integers(len(HAIR_STYLES)))
    return {
        "face_w": rng.uniform(0.70, 0.86), "face_h": rng.uniform(0.96, 1.06), "chin": rng.uniform(0.05, 0.35),
        "skin": skin.astype(np.float32), "hair": hair.astype(np.float32),
        "hair_style": hair_style, "hair_vol": rng.uniform(1.06, 1.16),
        "eye_dx": rng.uniform(0.29, 0.36), "eye_y": rng.uniform(-0.14, -0.05), "eye_w": rng.uniform(0.13, 0.16),
        "eye_h": rng.uniform(0.08, 0.095), "iris": _IRIS[rng.integers(len(_IRIS))],
        "brow_gap": rng.uniform(0.16, 0.21), "brow_w": rng.uniform(0.15, 0.19), "brow_th": rng.uniform(0.065, 0.085),
        "brow_arch": rng.uniform(0.01, 0.05), "brow_dark": rng.uniform(0.3, 0.9),
        "nose_y": rng.uniform(0.20, 0.27), "nose_w": rng.uniform(0.05, 0.07),
        "mouth_y": rng.uniform(0.50, 0.58), "mouth_w": rng.uniform(0.22, 0.27), "lip_th": rng.uniform(0.04, 0.055),
        "lip": np.clip(_LIP * rng.uniform(0.8, 1.1, 3), 0, 1).astype(np.float32),
        "rest_curve": rng.normal(0, 0.015), "rest_inner": rng.normal(0, 0.012), "rest_eye": rng.normal(0, 0.05),
        # RAF-DB-style codes for the exporter, loosely tied to the look (gender 0 male / 1 female,
        # race 0 Caucasian / 1 African-American / 2 Asian, age 0..4 = 0-3, 4-19, 20-39, 40-69, 70+)
        "gender": 1 if HAIR_STYLES[hair_style] in ("long", "bangs") else 0 if hair_style == 0 else int(rng.integers(2)),
        "race": _SKIN_RACE[skin_idx],
        "age": 3 + int(rng.random() < 0.3) if hair_idx == 5 else 1 + int(rng.random() < 0.8),
    }


def expression_params(expression: str, intensity: float, jitter) -> dict[str, float]:
    """Part parameters for one expression: neutral + intensity * (class - neutral) + jitter.

    Args:
        expression: class name.
        intensity: 0 (neutral face) .. 1 (full expression).
        jitter: sequence of len(PARAM_NAMES) standard-normal draws (scaled by PARAM_JITTER here).
    """
    base = EXPRESSION_PARAMS["neutral"]
    target = EXPRESSION_PARAMS[expression]
    return {name: b + intensity * (t - b) + float(j) * sd
            for name, b, t, j, sd in zip(PARAM_NAMES, base, target, jitter, PARAM_JITTER)}


# ----------------------------------------------------------------------------- grids and banks
@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre image coordinates in [-1, 1]: gx (1, W), gy (H, 1)."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1)
    return c[None, :], c[:, None]


@lru_cache(maxsize=16)
def _noise_bank(size: int) -> np.ndarray:
    """Fixed standard-normal noise textures (8, 2H, 2W); samples crop them at seeded offsets."""
    return np.random.default_rng(12345).standard_normal((8, 2 * size, 2 * size)).astype(np.float32)


@lru_cache(maxsize=16)
def _texture_bank(size: int) -> np.ndarray:
    """Smooth random textures (4, 2H, 2W) in [0, 1] for the 'texture' background."""
    rng = np.random.default_rng(54321)
    k = max(4, size // 8)
    coarse = rng.random((4, k, k)).astype(np.float32)
    idx = (np.arange(2 * size) * k // (2 * size))
    tex = coarse[:, idx][:, :, idx]
    kernel = np.ones(max(1, size // 16), np.float32)
    kernel /= kernel.sum()
    for axis in (1, 2):  # box blur for soft blobs
        tex = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), axis, tex)
    return tex.astype(np.float32)


@lru_cache(maxsize=16)
def _texture_shade(size: int) -> np.ndarray:
    """The 'texture' background's brightness layout (4, 2H, 2W): 1 - 0.45 * texture (soft dark blobs)."""
    return 1.0 - 0.45 * _texture_bank(size)


# ----------------------------------------------------------------------------- canvas
_uclip = (np._core if hasattr(np, "_core") else np.core).umath.clip  # the ufunc, without np.clip's wrapper
_F32 = np.float32


def _col(rgb) -> np.ndarray:
    """An RGB triple as a (3, 1, 1) float32 array that broadcasts over a (B, 3, h, w) tile."""
    return np.asarray(rgb, _F32).reshape(3, 1, 1)


def _s(x) -> np.ndarray:
    """Per-image scalars (B,) (float64 maths) as (B, 1, 1) float32 that broadcast over (B, h, w) windows."""
    return np.asarray(x, _F32).reshape(-1, 1, 1)


_LID = _col((0.1, 0.07, 0.06))
_SCLERA_C, _DARK_C, _TEETH_C = _col(_SCLERA), _col(_DARK), _col(_TEETH)


class _Stack:
    """A batch of B channel-first RGB float canvases (B, 3, H, W), optional part masks and face transforms.

    Every per-image number is a (B,) float64 array, so each numpy call draws one shape on all B faces:
    the ~300 calls a face needs are paid once per batch instead of once per face (at 64 px those calls,
    not the pixels, were most of the time). Each shape is evaluated in a (B, h, w) stack of windows, one
    per face at that face's own place (``_Win``), and clipped to the face's own window, so a face's
    pixels never depend on the rest of its batch.
    """

    def __init__(self, size: int, fs: Sequence[Mapping[str, Any]], want_mask: bool):
        n = len(fs)
        self.n, self.size = n, size
        self.img = np.empty((n, 3, size, size), _F32)  # (B, 3, H, W) in [0, 1]
        self.mask = np.zeros((n, size, size), np.uint8) if want_mask else None  # (B, H, W) part index
        self.s, self.tx, self.ty, roll = np.array([(f["scale"], f["tx"], f["ty"], f["roll"]) for f in fs], float).T
        roll = [math.radians(r) for r in roll.tolist()]
        self.c, self.sn = np.array([math.cos(r) for r in roll]), np.array([math.sin(r) for r in roll])
        inv = 1.0 / self.s
        self.cs, self.ss = _s(self.c * inv), _s(self.sn * inv)  # as _Canvas: (cos / scale), (sin / scale)
        self.tx32, self.ty32 = _s(self.tx), _s(self.ty)
        self.k = _s(self.size * self.s / 2.0)  # pixels per face unit
        gx, gy = _grid(self.size)
        dx, dy = gx - self.tx32, gy - self.ty32  # (B, 1, W), (B, H, 1)
        self.U = self.cs * dx + self.ss * dy  # (B, H, W) face u
        self.V = self.cs * dy - self.ss * dx  # (B, H, W) face v

    def window(self, u, v, ru, rv) -> "_Win | None":
        """Pixel window covering each face-space box centred (u, v) with half-sizes (ru, rv) ((B,) or scalars).

        Each face's window is a square around the box's circumcircle plus a pixel, cut to the image
        (None: every face's window is empty).
        """
        u, v = np.asarray(u, float), np.asarray(v, float)
        px = self.tx + self.s * (self.c * u - self.sn * v)
        py = self.ty + self.s * (self.sn * u + self.c * v)
        ac, asn = np.abs(self.c), np.abs(self.sn)
        rx, ry = self.s * (ac * ru + asn * rv), self.s * (asn * ru + ac * rv)  # the rotated box's bounding box
        half = self.size / 2
        x0 = np.maximum(0, np.trunc((px - rx + 1) * half).astype(np.int64) - 1)
        x1 = np.clip(np.trunc((px + rx + 1) * half).astype(np.int64) + 2, 0, self.size)
        y0 = np.maximum(0, np.trunc((py - ry + 1) * half).astype(np.int64) - 1)
        y1 = np.clip(np.trunc((py + ry + 1) * half).astype(np.int64) + 2, 0, self.size)
        ok = (x1 > x0) & (y1 > y0)
        if not ok.any():
            return None
        return _Win(self, x0, x1, y0, y1, ok)

    def uv(self, win: "_Win") -> tuple[np.ndarray, np.ndarray]:
        """(B, h, w) face coordinates inside the windows."""
        gx, gy = _grid(self.size)
        dx = gx[0, win.xg][:, None, :] - self.tx32  # (B, 1, w)
        dy = gy[win.yg, 0][:, :, None] - self.ty32  # (B, h, 1)
        return self.cs * dx + self.ss * dy, self.cs * dy - self.ss * dx

    def cov(self, d: np.ndarray) -> np.ndarray:
        """Signed distance (inside > 0, face units) → anti-aliased alpha in [0, 1], in place."""
        d *= self.k
        d += 0.5
        return _uclip(d, 0.0, 1.0, out=d)

    def label(self, win: "_Win", alpha: np.ndarray, part) -> None:
        """Write ``part`` (int or (B, h, w) uint8) into the masks where the (clipped) alpha > 0.5."""
        if self.mask is not None:
            win.clip(alpha)
            tile = win.get(self.mask, mask=True)
            np.copyto(tile, part, where=alpha > 0.5)
            win.set(self.mask, tile, mask=True)

    def paint(self, win: "_Win", alpha: np.ndarray, colour: np.ndarray, part=None) -> None:
        """Blend ``colour`` ((3, 1, 1), (B, 3, 1, 1) or (B, 3, h, w)) into the windows with ``alpha`` (B, h, w).

        ``alpha`` is clipped to each face's window in place; ``part`` labels pixels with alpha > 0.5.
        """
        win.clip(alpha)
        tile = win.get(self.img)  # (B, 3, h, w)
        diff = colour - tile
        diff *= alpha[:, None]
        tile += diff
        win.set(self.img, tile)
        if part is not None and self.mask is not None:
            self.label(win, alpha, part)


class _Win:
    """B windows of one size (h, w), one per face at its own offset, and 0/1 masks of each face's own part.

    One face: plain slices (``ys``, ``xs``) and views. Several: a strided (B, Y, X, [3,] h, w) view of
    the canvas picks each face's window with one fancy index (``get``/``set`` copy in and out).
    """

    __slots__ = ("one", "ys", "xs", "rows", "cols", "ar", "oy", "ox", "yg", "xg", "h", "w")

    def __init__(self, cv: "_Stack", x0, x1, y0, y1, ok):
        self.rows = self.cols = None
        if cv.n == 1:  # one face: its own window, tiles are views
            self.one = True
            self.ys, self.xs = slice(int(y0[0]), int(y1[0])), slice(int(x0[0]), int(x1[0]))
            self.yg = np.arange(self.ys.start, self.ys.stop)[None]  # (1, h) image rows
            self.xg = np.arange(self.xs.start, self.xs.stop)[None]  # (1, w) image columns
            return
        self.one = False
        size = cv.size
        h, w = int((y1 - y0)[ok].max()), int((x1 - x0)[ok].max())
        self.h, self.w = h, w
        self.oy, self.ox = np.minimum(y0, size - h), np.minimum(x0, size - w)  # window origins
        self.ar = np.arange(cv.n)
        self.yg = self.oy[:, None] + np.arange(h)  # (B, h) image rows
        self.xg = self.ox[:, None] + np.arange(w)  # (B, w) image columns
        if not (ok.all() and (y1 - y0 == h).all()):
            self.rows = ((self.yg >= y0[:, None]) & (self.yg < y1[:, None]) & ok[:, None]).astype(_F32)[:, :, None]
        if not (ok.all() and (x1 - x0 == w).all()):
            self.cols = ((self.xg >= x0[:, None]) & (self.xg < x1[:, None])).astype(_F32)[:, None, :]

    def clip(self, alpha: np.ndarray) -> np.ndarray:
        """Zero ``alpha`` (B, h, w) outside each face's own window, in place (fmin: also clears NaN there)."""
        if self.rows is not None:
            np.fmin(alpha, self.rows, out=alpha)
        if self.cols is not None:
            np.fmin(alpha, self.cols, out=alpha)
        return alpha

    def _view(self, arr: np.ndarray, mask: bool) -> np.ndarray:
        h, w = self.h, self.w
        if mask:  # (B, H, W) → (B, Y, X, h, w)
            b, H, W = arr.shape
            st = arr.strides
            return np.ndarray((b, H - h + 1, W - w + 1, h, w), arr.dtype, arr, 0, (st[0], st[1], st[2], st[1], st[2]))
        b, c, H, W = arr.shape  # (B, 3, H, W) → (B, Y, X, 3, h, w)
        st = arr.strides
        return np.ndarray((b, H - h + 1, W - w + 1, c, h, w), arr.dtype, arr, 0,
                          (st[0], st[2], st[3], st[1], st[2], st[3]))

    def get(self, arr: np.ndarray, mask: bool = False) -> np.ndarray:
        """Each face's window of ``arr`` (B, 3, H, W) or (B, H, W): a view for one face, else a copy."""
        if self.one:
            return arr[..., self.ys, self.xs]
        return self._view(arr, mask)[self.ar, self.oy, self.ox]

    def set(self, arr: np.ndarray, tile: np.ndarray, mask: bool = False) -> None:
        """Write ``tile`` from ``get`` back (nothing to do for one face: ``get`` was a view)."""
        if not self.one:
            self._view(arr, mask)[self.ar, self.oy, self.ox] = tile


def _ellipse_batch(U, V, cu, cv, a, b):
    """Signed distance (inside > 0) to axis-aligned ellipses, first order: (1 - r^2) * min(a, b) / 2."""
    du = U - _s(cu)
    du *= _s(1.0 / a)
    du *= du
    dv = V - _s(cv)
    dv *= _s(1.0 / np.asarray(b, float))
    dv *= dv
    du += dv
    return np.subtract(1.0, du, out=du).__imul__(_s(0.5 * np.minimum(a, b)))


class _Batch:
    """Per-image numbers of a batch as columns: traits ``tr[name]`` and expression parameters ``p[name]``."""

    def __init__(self, fs: Sequence[Mapping[str, Any]]):
        rows = [_trait_row(int(f["identity"]), int(f["world_seed"])) for f in fs]
        self.tr: dict[str, np.ndarray] = {}
        scal = np.array([r[0] for r in rows])  # (B, n_scalars) float64
        for j, name in enumerate(_TRAIT_SCALARS):
            self.tr[name] = scal[:, j]
        cols = np.stack([r[1] for r in rows])  # (B, n_colours, 3) float32
        for j, name in enumerate(_TRAIT_COLOURS):
            self.tr[name] = cols[:, j].reshape(-1, 3, 1, 1)
        self.tr["skin"] = cols[:, _TRAIT_COLOURS.index("skin_c")]
        self.tr["hair_style"] = np.array([r[2] for r in rows])
        expr = np.array([_EXPR_INDEX[f["expression"]] for f in fs])
        inten = np.array([f["intensity"] for f in fs], float)[:, None]
        jit = np.array([f["jitter"] for f in fs], float)
        # neutral + intensity * (class - neutral) + jitter, as expression_params
        pm = _PARAM_BASE + inten * (_PARAM_TABLE[expr] - _PARAM_BASE) + jit * _PARAM_SD
        self.p = {name: pm[:, j] for j, name in enumerate(PARAM_NAMES)}
        self.yaw_s = np.array([math.sin(math.radians(float(f["yaw"]))) for f in fs])



_EXPR_INDEX = {name: i for i, name in enumerate(EXPRESSIONS)}
_PARAM_TABLE = np.array([EXPRESSION_PARAMS[e] for e in EXPRESSIONS])  # (7, P)
_PARAM_BASE = _PARAM_TABLE[0]
_PARAM_SD = np.array(PARAM_JITTER)
_TRAIT_SCALARS = ("face_w", "face_h", "chin", "hair_vol", "eye_dx", "eye_y", "eye_w", "eye_h", "brow_gap", "brow_w",
                  "brow_th", "brow_arch", "nose_y", "nose_w", "mouth_y", "mouth_w", "lip_th", "rest_curve",
                  "rest_inner", "rest_eye")
_TRAIT_COLOURS = ("skin_c", "hair_c", "brow_c", "nose_c", "nostril_c", "wrinkle_c", "lip_c", "iris_minus_sclera")


class _Canvas:
    """One face of a ``_Stack``: its channel-first RGB canvas, optional part mask and face transform.

    The layers with large windows (background, hair, face, occluders) are drawn face by face on these:
    their cost is pixels, and per-face windows hold the fewest.

    Shapes are painted inside pixel windows (``window``) with ``paint``; the canvas is channel-first
    (3, H, W) because blending a (h, w) alpha into (h, w, 3) makes numpy loop over length-3 rows.
    """

    def __init__(self, st: "_Stack", i: int):
        self.size = st.size
        self.img = st.img[i]  # (3, H, W) in [0, 1]
        self.mask = None if st.mask is None else st.mask[i]  # (H, W) part index or None
        self.s, self.tx, self.ty = float(st.s[i]), float(st.tx[i]), float(st.ty[i])
        self.c, self.sn = float(st.c[i]), float(st.sn[i])
        self.U, self.V = st.U[i], st.V[i]  # (H, W) face coordinates
        self.k = self.size * self.s / 2.0  # pixels per face unit

    def window(self, u: float, v: float, ru: float, rv: float, disc: bool = False) -> tuple[slice, slice]:
        """Pixel window covering the face-space box centred (u, v) with half-sizes (ru, rv), plus a pixel.

        The window bounds the box as rotated by the roll (``disc``: the box's circumcircle, for shapes
        that reach past their box, such as the forearm).
        """
        px = self.tx + self.s * (self.c * u - self.sn * v)
        py = self.ty + self.s * (self.sn * u + self.c * v)
        if disc:
            rx = ry = self.s * math.hypot(ru, rv)
        else:  # the rotated box's bounding box
            ac, asn = abs(self.c), abs(self.sn)
            rx, ry = self.s * (ac * ru + asn * rv), self.s * (asn * ru + ac * rv)
        half = self.size / 2
        x0, x1 = int((px - rx + 1) * half) - 1, int((px + rx + 1) * half) + 2
        y0, y1 = int((py - ry + 1) * half) - 1, int((py + ry + 1) * half) + 2
        return slice(max(0, y0), max(0, min(self.size, y1))), slice(max(0, x0), max(0, min(self.size, x1)))

    def cov(self, d: np.ndarray) -> np.ndarray:
        """Signed distance (inside > 0, face units) → anti-aliased alpha in [0, 1], in place."""
        d *= self.k
        d += 0.5
        return _uclip(d, 0.0, 1.0, out=d)

    def paint(self, win, alpha: np.ndarray, colour: np.ndarray, part=None) -> None:
        """Blend ``colour`` ((3, 1, 1) or (3, h, w)) into the window with ``alpha`` (h, w).

        ``part`` (int or (h, w) uint8) labels pixels with alpha > 0.5 when a mask is kept.
        """
        if alpha.size == 0:
            return
        tile = self.img[:, win[0], win[1]]  # (3, h, w) view
        diff = colour - tile
        diff *= alpha
        tile += diff
        if part is not None and self.mask is not None:
            np.copyto(self.mask[win], part, where=alpha > 0.5)


def _fold(x: np.ndarray, period: float) -> np.ndarray:
    """x mod period in place, as x - period * floor(x / period): ~10x cheaper than np.remainder here.

    Where x / period rounds up to a whole number the result is ~0 instead of ~period; the callers take
    |x - period / 2|, which is the same at both ends.
    """
    y = x * (1.0 / period)
    np.floor(y, out=y)
    y *= period
    x -= y
    return x


def _ellipse_d(U, V, cu, cv, a, b):
    """Signed distance (inside > 0) to an axis-aligned ellipse, first order: (1 - r^2) * min(a, b) / 2."""
    du = U - cu
    du *= 1.0 / a
    du *= du
    dv = V - cv
    dv *= 1.0 / b
    dv *= dv
    du += dv
    return np.subtract(1.0, du, out=du).__imul__(0.5 * min(a, b))


# ----------------------------------------------------------------------------- layers drawn face by face
def _background(cv: _Canvas, f) -> None:
    """Five scene types with type-specific brightness layouts (light colour c1, dark colour c2)."""
    kind = f["background"]
    c1 = _col(f["bg_c1"])
    if kind == "solid":
        cv.img[:] = c1
        return
    gx, gy = _grid(cv.size)
    ang = float(f["bg_angle"])
    ca, sa = math.cos(ang), math.sin(ang)
    if kind == "gradient":  # light at the top, dark at the bottom
        t = (0.5 * sa) * gx + ((0.5 * ca) * gy + 0.5)
    elif kind == "stripes":  # near-vertical stripes
        fr = float(f["bg_freq"])
        t = np.sin((fr * ca) * gx + (fr * sa) * gy) > 0
    elif kind == "checker":
        k = float(f["bg_freq"]) / 3.5
        # parity of (column cell + row cell), taken on the (1, W) and (H, 1) cells: np.remainder is slow
        t = (np.floor((gx + 1) * k) % 2) != (np.floor((gy + 1) * k) % 2)
    else:  # texture: soft dark blobs
        s = cv.size
        o = int(f["noise_seed"]) % s
        t = _texture_shade(s)[int(f["noise_seed"]) % 4, o:o + s, o:o + s]
    np.multiply(t, _col(f["bg_c2"]) - c1, out=cv.img)
    cv.img += c1


def _hair_back(cv: _Canvas, tr, yaw_s: float) -> None:
    a, b = tr["face_w"] * tr["hair_vol"], tr["face_h"] * 1.08
    cu = -0.06 * yaw_s
    long = HAIR_STYLES[tr["hair_style"]] == "long"
    win = cv.window(cu, 0.05 if long else -0.1, a + 0.05, b + (0.35 if long else 0.02))
    U, V = cv.U[win], cv.V[win]
    d = _ellipse_d(U, V, cu, -0.1, a, b)
    if long:  # hair falling to the shoulders behind the face
        side = (a + 0.04) - np.abs(U - cu)
        np.minimum(side, 1.15 - V, out=side)
        np.minimum(side, V + 0.2, out=side)
        np.maximum(d, side, out=d)
    cv.paint(win, cv.cov(d), tr["hair_c"], PART_INDEX["hair"])


def _face(cv: _Canvas, tr, yaw_s: float):
    a, b = tr["face_w"] * (1 - 0.06 * abs(yaw_s)), tr["face_h"]
    cu = 0.07 * yaw_s
    win = cv.window(cu, 0.0, a, b)
    U, V = cv.U[win], cv.V[win]
    dv = V * (1.0 / b)
    narrow = np.maximum(dv, 0.0)  # narrower jaw towards the chin
    narrow *= narrow
    narrow *= -tr["chin"] * a
    narrow += a
    du = U - cu
    du /= narrow
    du *= du
    dv *= dv
    du += dv
    d = np.subtract(1.0, du, out=du)
    d *= 0.5 * a
    cv.paint(win, cv.cov(d), tr["skin_c"], PART_INDEX["face"])
    return cu, a, b


def _pair(cv: _Canvas, yaw_s: float, dx: float, width: float, cy: float, ry: float, squeeze: float = 0.0):
    """Shared set-up of a left/right pair of parts (brows, eyes) drawn in one window.

    Returns:
        window, U, V, right (h, w) bool, x (h, w) offset from each part's centre, t (h, w) = x / width
        (-1..1 along the part), per-side widths (wl, wr).
    """
    shift = 0.12 * yaw_s
    dx = (dx - squeeze) * (1 - 0.1 * abs(yaw_s))
    cl, cr = shift - dx, shift + dx
    wl, wr = width * (1 + 0.35 * yaw_s), width * (1 - 0.35 * yaw_s)
    win = cv.window(shift, cy, dx + max(wl, wr) + 0.03, ry)
    U, V = cv.U[win], cv.V[win]
    right = U > shift
    x = U - np.where(right, cr, cl)
    t = x * np.where(right, 1.0 / wr, 1.0 / wl)
    return win, U, V, right, x, t, (wl, wr)


def _pair_part(cv: _Canvas, right: np.ndarray, left_name: str, right_name: str):
    if cv.mask is None:
        return None
    return np.where(right, np.uint8(PART_INDEX[right_name]), np.uint8(PART_INDEX[left_name]))


_OCC_ANCHORS = ((-1.0, "mouth"), (1.0, "mouth"), (-1.0, "eye"), (1.0, "eye"), (-1.0, "cheek"), (1.0, "cheek"))


def _glasses(cv: _Canvas, f, tr, yaw_s: float) -> None:
    part = PART_INDEX["occluder"]
    frame_c = _col(np.asarray(f["occ_colour"], np.float32) * 0.2)
    glass_c = _col(np.asarray(f["occ_colour"], np.float32) * 0.5 + 0.5)
    cvv = tr["eye_y"]
    r = tr["eye_w"] + 0.05
    win, U, V, right, x, t, _ = _pair(cv, yaw_s, tr["eye_dx"], r, cvv, r)
    dv = V - cvv
    dv *= 1.0 / 0.75
    rr = x * x
    rr += dv * dv
    np.sqrt(rr, out=rr)
    rr *= 1.0 / r  # (h, w) normalised radius around each eye
    lens = np.subtract(1.0, rr)
    lens *= r
    lens = cv.cov(lens)
    lens *= 0.18
    cv.paint(win, lens, glass_c)  # faint tinted glass
    rr -= 1.0
    np.abs(rr, out=rr)
    rr *= -r
    rr += 0.045
    cv.paint(win, cv.cov(rr), frame_c, part)
    bu = 0.12 * yaw_s
    gap = tr["eye_dx"] * (1 - 0.1 * abs(yaw_s)) - r
    win = cv.window(bu, cvv, gap + 0.03, 0.05)
    U, V = cv.U[win], cv.V[win]
    d = np.minimum(0.018 - np.abs(V - (cvv - 0.02)), gap + 0.02 - np.abs(U - bu))
    cv.paint(win, cv.cov(d), frame_c, part)


def _occluder(cv: _Canvas, f, tr, yaw_s: float) -> None:
    """Glasses, or a hand / patch anchored beside one part so it covers only part of that region."""
    kind = f["occluder"]
    if kind == "none":
        return
    if kind == "glasses":
        _glasses(cv, f, tr, yaw_s)
        return
    part = PART_INDEX["occluder"]
    side, where = _OCC_ANCHORS[int(f["occ_anchor"]) % len(_OCC_ANCHORS)]
    size = float(f["occ_size"])
    if where == "mouth":
        cu, cvv = side * (tr["mouth_w"] + size * 0.55), tr["mouth_y"] + 0.08
    elif where == "eye":
        cu, cvv = side * (tr["eye_dx"] + tr["eye_w"] + size * 0.45), tr["eye_y"] + 0.08
    else:
        cu, cvv = side * 0.5, 0.28
    cu += 0.1 * yaw_s
    ang = float(f["occ_angle"])
    ca, sa = math.cos(ang), math.sin(ang)
    if kind == "hand":
        _hand(cv, tr, cu, cvv, side, size, ang, part)
        return
    win = cv.window(cu, cvv, size * 1.4, size * 1.4)
    U, V = cv.U[win], cv.V[win]
    du, dv = U - cu, V - cvv
    x = ca * du + sa * dv
    y = ca * dv - sa * du
    d = np.minimum(size * 0.9 - np.abs(x), size * 0.6 - np.abs(y))
    cv.paint(win, cv.cov(d), _col(f["occ_colour"]), part)


def _hand(cv: _Canvas, tr, cu: float, cvv: float, side: float, size: float, ang: float, part: int) -> None:
    """A raised hand: palm with finger gaps at (cu, cvv) and a forearm reaching the bottom of the frame."""
    ax, ay = side * math.sin(0.45 + 0.5 * ang), math.cos(0.45 + 0.5 * ang)  # forearm direction (down, outwards)
    win = cv.window(cu + ax * 0.6, cvv + ay * 0.6, 0.75, 0.75, disc=True)
    U, V = cv.U[win], cv.V[win]
    du, dv = U - cu, V - cvv
    palm = _ellipse_d(du, dv, 0.0, 0.0, size * 0.75, size * 1.2)
    along = du * ax + dv * ay
    arm = du * ay - dv * ax
    np.abs(arm, out=arm)
    np.subtract(size * 0.55, arm, out=arm)
    np.minimum(arm, along, out=arm)
    np.maximum(palm, arm, out=palm)
    a = cv.cov(palm)
    skin = tr["skin"] * 0.97 + 0.03
    cv.paint(win, a, _col(skin), part)
    gaps = np.abs(du)
    gaps += size * 0.2
    _fold(gaps, size * 0.4)
    gaps -= size * 0.2
    np.abs(gaps, out=gaps)
    np.subtract(0.014, gaps, out=gaps)  # three finger gaps in the upper palm
    np.minimum(gaps, -dv - size * 0.1, out=gaps)
    g = cv.cov(gaps)
    g *= a
    cv.paint(win, g, _col(skin * 0.6))


# ----------------------------------------------------------------------------- layers drawn on the whole stack
def _pair_batch(cv: _Stack, yaw_s, dx, width, cy, ry, squeeze=0.0):
    """Shared set-up of a left/right pair of parts (brows, eyes) drawn in one window.

    Returns:
        window, U, V, right (B, h, w) bool, x (B, h, w) offset from each part's centre, t (B, h, w) =
        x / width (-1..1 along the part), per-side widths (wl, wr) (B,).
    """
    shift = 0.12 * yaw_s
    dx = (dx - squeeze) * (1 - 0.1 * np.abs(yaw_s))
    cl, cr = shift - dx, shift + dx
    wl, wr = width * (1 + 0.35 * yaw_s), width * (1 - 0.35 * yaw_s)
    win = cv.window(shift, cy, dx + np.maximum(wl, wr) + 0.03, ry)
    if win is None:
        return None
    U, V = cv.uv(win)
    right = U > _s(shift)
    x = U - np.where(right, _s(cr), _s(cl))
    t = x * np.where(right, _s(1.0 / wr), _s(1.0 / wl))
    return win, U, V, right, x, t, (wl, wr)


def _brows(cv: _Stack, b: _Batch) -> None:
    tr, p = b.tr, b.p
    cvv = tr["eye_y"] - tr["brow_gap"] - p["brow_raise"]
    inner = p["brow_inner"] + tr["rest_inner"]
    pair = _pair_batch(cv, b.yaw_s, tr["eye_dx"] + 0.01, tr["brow_w"], cvv, 0.2,
                         p["brow_squeeze"])
    if pair is None:  # every face off the image
        return
    win, U, V, right, x, t, (wl, wr) = pair
    t2 = t * t
    # centre line: arch, plus the inner end (towards the nose) lifted by `inner` (t_in = -side * t)
    t_in = np.where(right, _s(-0.5 * inner), _s(0.5 * inner)) * t
    centre = t2 * _s(tr["brow_arch"])
    centre -= t_in
    centre += _s(cvv - tr["brow_arch"])
    np.subtract(V, centre, out=centre)
    np.abs(centre, out=centre)
    half = t2 * _s(-0.175 * tr["brow_th"])
    half += _s(0.5 * tr["brow_th"])
    half -= centre
    end = np.abs(t)
    np.subtract(1.0, end, out=end)
    end *= _s(np.minimum(wl, wr))
    np.minimum(half, end, out=half)
    cv.paint(win, cv.cov(half), tr["brow_c"], _pair_part(cv, right, "brow_l", "brow_r"))


def _eyes(cv: _Stack, b: _Batch) -> None:
    tr, p, yaw_s = b.tr, b.p, b.yaw_s
    h = tr["eye_h"] * np.maximum(0.15, p["eye_open"] + tr["rest_eye"])
    cvv = tr["eye_y"]
    pair = _pair_batch(cv, yaw_s, tr["eye_dx"], tr["eye_w"], cvv, h + 0.06)
    if pair is None:  # every face off the image
        return
    win, U, V, right, x, t, _ = pair
    bulge = t * t
    np.subtract(1.0, bulge, out=bulge)  # 1 at the centre, 0 at the corners, < 0 outside
    dy = V - _s(cvv)
    hb = bulge * _s(h)
    up = dy + hb  # > 0 below the upper lid
    d_open = np.minimum(up, hb * 0.8 - dy)
    a_open = cv.cov(d_open)
    # iris (dark disc) inside the opening
    r = x - _s(0.03 * yaw_s)
    r *= r
    r += dy * dy
    np.sqrt(r, out=r)
    np.subtract(_s(0.62 * tr["eye_h"] + 0.02), r, out=r)
    a_iris = cv.cov(r)
    colour = a_iris[:, None] * tr["iris_minus_sclera"]
    colour += _SCLERA_C
    part = _pair_part(cv, right, "eye_l", "eye_r")
    cv.paint(win, a_open, colour, part)
    # upper lid line (lashes)
    up -= 0.01
    np.abs(up, out=up)
    np.subtract(0.022, up, out=up)
    bulge *= _s(0.5 * tr["eye_w"])
    bulge += 0.01
    np.minimum(up, bulge, out=up)
    cv.paint(win, cv.cov(up), _LID, part)


def _nose(cv: _Stack, b: _Batch) -> None:
    tr, yaw_s = b.tr, b.yaw_s
    cu = 0.2 * yaw_s
    ny = tr["nose_y"]
    wr = b.p["wrinkle"]
    nw = tr["nose_w"] * (1 + 0.25 * wr)
    top = tr["eye_y"] + 0.02
    win = cv.window(cu, (top + ny) / 2 + 0.03, 0.16, (ny - top) / 2 + 0.08)
    if win is None:
        return
    U, V = cv.uv(win)
    x = np.abs(U - _s(cu))
    part = PART_INDEX["nose"]
    # nose body: a slightly darker soft wedge widening towards the tip
    vt = V - _s(top)
    half = vt * _s((nw + 0.03) / (ny - top))
    np.minimum(half, _s(nw + 0.03), out=half)
    half += 0.03
    half -= x
    np.minimum(half, vt, out=half)
    np.minimum(half, _s(ny + 0.05) - V, out=half)
    body = cv.cov(half)
    cv.label(win, body, part)
    body *= 0.55
    cv.paint(win, body, tr["nose_c"])
    # nostrils: one ellipse mirrored through |x|
    d = _ellipse_batch(x, V, nw * 0.75, ny - 0.03 * wr, 0.03, 0.02)
    cv.paint(win, cv.cov(d), tr["nostril_c"], part)
    # AU9 wrinkles: three short dark lines over the upper nose (one periodic distance)
    on = wr > 0.05
    if on.any():
        y = (x * x) * 0.2
        y += vt
        y -= 0.03
        band = np.minimum(y, 0.17 - y)
        _fold(y, 0.06)
        y -= 0.03
        np.abs(y, out=y)
        np.subtract(0.013, y, out=y)
        np.minimum(y, band, out=y)
        np.minimum(y, 0.11 - x, out=y)
        a = cv.cov(y)
        a *= _s(np.where(on, np.minimum(1.0, wr), 0.0))
        cv.paint(win, a, tr["wrinkle_c"], part)


def _mouth(cv: _Stack, b: _Batch) -> None:
    tr, p, yaw_s = b.tr, b.p, b.yaw_s
    cu = 0.14 * yaw_s
    my = tr["mouth_y"]
    w = tr["mouth_w"] * p["width"] * (1 - 0.08 * np.abs(yaw_s))
    curve = p["curve"] + tr["rest_curve"]
    op = np.maximum(0.0, p["open"])
    lip = tr["lip_th"] * (1.0 - 0.55 * np.minimum(1.0, np.maximum(0.0, p["press"])))
    lr = p["lip_raise"]
    win = cv.window(cu, my, w + 0.04, 0.2 + op)
    if win is None:
        return
    U, V = cv.uv(win)
    t = U - _s(cu)
    t *= _s(1.0 / w)
    tt = np.minimum(t * t, 1.0)
    env = np.subtract(1.0, tt)  # (1 - t^2): 1 in the middle, 0 at the corners
    # centre line: corners lifted by `curve`, one corner by `asym`, middle of the upper lip by `lip_raise`
    dy = tt * _s(curve)
    if (p["asym"] != 0.0).any():
        dy += np.maximum(t, 0.0) * _s(p["asym"])
    dy += env * _s(0.5 * lr)
    dy += V
    dy -= _s(my + 0.3 * curve)  # dy = V - centre line
    senv = np.sqrt(env)
    ho = senv * _s(op)  # half-height of the opening
    up_edge = senv * _s(lip)
    up_edge += ho
    up_edge += env * _s(lr)
    up_edge += dy  # distance below the upper lip edge
    lo = senv * _s(1.2 * lip)
    lo += ho
    lo -= dy
    np.minimum(up_edge, lo, out=up_edge)
    end = np.abs(t)
    np.subtract(1.0, end, out=end)
    end *= _s(w)
    np.minimum(up_edge, end, out=up_edge)
    cv.paint(win, cv.cov(up_edge), tr["lip_c"], PART_INDEX["mouth"])
    # open mouths: the dark opening with teeth; closed ones: the dark line between the lips. A face has
    # one of the two, so both go into one paint (each alpha is zero on the faces of the other)
    is_open = op > 0.01
    teeth = np.where(is_open & (p["teeth"] > 0.05), np.minimum(1.0, p["teeth"]), 0.0)
    colour = _DARK_C
    if is_open.any():
        a_in = np.minimum(dy + ho, ho - dy)
        np.minimum(a_in, end - _s(0.04 * w), out=a_in)
        a_in = cv.cov(a_in)
        if teeth.any():
            tooth = cv.cov((ho * 0.1) - dy)  # upper half of the opening
            tooth *= _s(teeth)
            colour = tooth[:, None] * (_TEETH_C - _DARK_C)
            colour += _DARK_C
    if not is_open.all():
        np.abs(dy, out=dy)
        np.subtract(0.012, dy, out=dy)
        end -= _s(0.05 * w)
        np.minimum(dy, end, out=dy)
        a_line = cv.cov(dy)
    if is_open.all():
        alpha = a_in
    elif not is_open.any():
        alpha = a_line
    else:
        alpha = a_in * _s(is_open)
        a_line *= _s(~is_open)
        alpha += a_line
    cv.paint(win, alpha, colour)


# fringe line v(x) per hair style: (x^2, x, |x|, sin(30 x), constant) coefficients
_FRINGE = np.array([[0.25, 0.0, 0.0, 0.0, -0.80],   # crop
                    [0.0, 0.14, 0.0, 0.0, -0.62],   # side
                    [0.0, 0.0, 0.02, 0.0, -0.56],   # bangs
                    [0.0, 0.0, 0.25, 0.0, -0.70],   # peak
                    [0.0, 0.0, 0.0, 0.03, -0.64],   # curly
                    [0.18, 0.0, 0.0, 0.0, -0.66]])  # long


def _fringe_batch(cv: _Stack, b: _Batch) -> None:
    """The hair's fringe over the forehead, one line per hair style, cut to the face ellipse."""
    tr, yaw_s = b.tr, b.yaw_s
    a, bb = tr["face_w"] * (1 - 0.06 * np.abs(yaw_s)), tr["face_h"]  # the face ellipse, as _face
    cu = 0.07 * yaw_s
    coef = _FRINGE[b.tr["hair_style"]]  # (B, 5)
    win = cv.window(cu, -0.72, a, 0.32)
    if win is None:
        return
    U, V = cv.uv(win)
    x = U - _s(cu)
    line = (_s(coef[:, 0]) * x) * x
    if coef[:, 1].any():
        line += _s(coef[:, 1]) * x
    if coef[:, 2].any():
        line += np.abs(x) * _s(coef[:, 2])
    if coef[:, 3].any():
        line += np.sin(x * 30.0) * _s(coef[:, 3])
    line += _s(coef[:, 4])
    line -= V
    d_face = _ellipse_batch(U, V, cu, 0.0, a * 1.01, bb * 1.01)
    np.minimum(line, d_face, out=line)
    cv.paint(win, cv.cov(line), b.tr["hair_c"], PART_INDEX["hair"])


def _finish(cv: _Stack, fs) -> np.ndarray:
    """Lighting gradient, brightness, sensor noise; returns uint8 (B, H, W, 3)."""
    light = np.array([_ILLUM_DIR[f["illumination"]] for f in fs])  # (B, 2)
    k = 127.5 * np.array([float(f["illum_strength"]) for f in fs])
    bright = np.array([float(f["brightness"]) for f in fs])
    gx, gy = _grid(cv.size)
    img = cv.img
    shade = _s(k * light[:, 0]) * gx + (_s(k * light[:, 1]) * gy + _s(255.0 * bright))  # (B, H, W), x255 folded in
    img *= shade[:, None]
    level = np.array([max(0.0, float(f["noise"])) for f in fs])
    if level.any():
        s = cv.size
        bank = _noise_bank(s)
        seeds = [int(f["noise_seed"]) for f in fs]
        noise = np.stack([bank[q % 8, (q // 8) % s:(q // 8) % s + s, (q // (8 * s)) % s:(q // (8 * s)) % s + s]
                          for q in seeds])
        noise *= _s(255.0 * level)
        img += noise[:, None]
    _uclip(img, 0.0, 255.0, out=img)
    out = np.empty((cv.n, cv.size, cv.size, 3), np.uint8)
    for ch in range(3):  # one strided write per channel (the cast happens in it): cheaper than a transpose
        out[..., ch] = img[:, ch]
    return out


def landmarks(factors: Mapping[str, Any]) -> np.ndarray:
    """Five RAF-DB-style landmarks in pixel coordinates of the rendered image.

    Returns:
        (5, 2) float array of (x, y): left eye, right eye, nose tip, left mouth corner, right mouth corner
        ("left" = image left).
    """
    tr = identity_traits(int(factors["identity"]), int(factors["world_seed"]))
    p = expression_params(factors["expression"], float(factors["intensity"]), factors["jitter"])
    ys = math.sin(math.radians(float(factors["yaw"])))
    ex = tr["eye_dx"] * (1 - 0.1 * abs(ys))
    cu = 0.14 * ys
    w = tr["mouth_w"] * p["width"] * (1 - 0.08 * abs(ys))
    curve = p["curve"] + tr["rest_curve"]
    corner_v = tr["mouth_y"] - 0.7 * curve
    pts = np.array([[0.12 * ys - ex, tr["eye_y"]], [0.12 * ys + ex, tr["eye_y"]], [0.2 * ys, tr["nose_y"]],
                    [cu - w, corner_v], [cu + w, corner_v - p["asym"]]])  # (5, 2) face (u, v)
    s, r = float(factors["scale"]), math.radians(float(factors["roll"]))
    c, sn = math.cos(r), math.sin(r)
    u, v = pts.T                                                        # (5,), (5,)
    gx = float(factors["tx"]) + s * (c * u - sn * v)
    gy = float(factors["ty"]) + s * (sn * u + c * v)
    size = int(factors["size"])
    return np.stack([(gx + 1) * size / 2 - 0.5, (gy + 1) * size / 2 - 0.5], axis=1)


@lru_cache(maxsize=4096)
def _colours(identity: int, world_seed: int) -> dict[str, Any]:
    """Identity traits plus the derived (3, 1, 1) paint colours."""
    tr = dict(identity_traits(identity, world_seed))
    skin = tr["skin"]
    brow = np.minimum(tr["hair"] * tr["brow_dark"], skin * 0.45)  # brows always darker than the skin
    lip = np.clip(skin * np.array([0.8, 0.42, 0.42], np.float32) + tr["lip"] * 0.25, 0, 1)  # reddened skin
    tr.update(skin_c=_col(skin), hair_c=_col(tr["hair"]), brow_c=_col(brow),
              nose_c=_col(skin * 0.86), nostril_c=_col(skin * 0.35), wrinkle_c=_col(skin * 0.45),
              lip_c=_col(lip), iris_minus_sclera=_col(tr["iris"] - _SCLERA))
    return tr


@lru_cache(maxsize=4096)
def _trait_row(identity: int, world_seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One identity's traits as numbers: scalars (``_TRAIT_SCALARS``) float64, paint colours
    (``_TRAIT_COLOURS``, (8, 3) float32) and the hair style index."""
    tr = identity_traits(identity, world_seed)
    skin = tr["skin"]
    brow = np.minimum(tr["hair"] * tr["brow_dark"], skin * 0.45)  # brows always darker than the skin
    lip = np.clip(skin * np.array([0.8, 0.42, 0.42], _F32) + tr["lip"] * 0.25, 0, 1)  # reddened skin
    colours = np.stack([skin, tr["hair"], brow, skin * 0.86, skin * 0.35, skin * 0.45, lip,
                        tr["iris"] - _SCLERA]).astype(_F32)
    return np.array([tr[name] for name in _TRAIT_SCALARS], float), colours, int(tr["hair_style"])


def render_batch(factors: Sequence[Mapping[str, Any]], with_mask: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw several SynthFER faces of one size at once (each exactly as ``render`` draws it alone).

    Args:
        factors: factor dicts as returned by ``SynthFER.factors(i)``, all with the same ``size``.
        with_mask: also build the part masks (False skips them and returns None).

    Returns:
        images (B, H, W, 3) uint8 and part masks (B, H, W) uint8 with values indexing ``PART_NAMES``.
    """
    fs = list(factors)
    if not fs:
        raise FerlensError("render_batch got no factor dicts; pass at least one (e.g. [ds.factors(0)]).")
    sizes = sorted({int(f["size"]) for f in fs})
    if len(sizes) > 1:
        raise FerlensError(f"render_batch got faces of sizes {sizes}; render each size in its own batch.")
    size = sizes[0]
    st = _Stack(size, fs, with_mask)
    faces = []
    for i, f in enumerate(fs):  # large windows, face by face: background, hair behind, face
        cv = _Canvas(st, i)
        tr = _colours(int(f["identity"]), int(f["world_seed"]))
        yaw_s = math.sin(math.radians(float(f["yaw"])))
        _background(cv, f)
        _hair_back(cv, tr, yaw_s)
        _face(cv, tr, yaw_s)
        faces.append((cv, tr, yaw_s))
    b = _Batch(fs)  # small windows, the whole stack at once: nose, mouth, eyes, brows, fringe
    _nose(st, b)
    _mouth(st, b)
    _eyes(st, b)
    _brows(st, b)
    _fringe_batch(st, b)
    for (cv, tr, yaw_s), f in zip(faces, fs):  # then the occluder on top, face by face
        _occluder(cv, f, tr, yaw_s)
    return _finish(st, fs), st.mask


def render(factors: Mapping[str, Any], with_mask: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw one SynthFER face.

    Args:
        factors: a factor dict as returned by ``SynthFER.factors(i)`` (size, expression, intensity,
            jitter, identity, world_seed, yaw, roll, scale, tx, ty, illumination, illum_strength,
            brightness, background + bg_*, occluder + occ_*, noise, noise_seed).
        with_mask: also build the part mask (False skips it for speed and returns None).

    Returns:
        image (H, W, 3) uint8 and part mask (H, W) uint8 with values indexing ``PART_NAMES``.
    """
    images, masks = render_batch([factors], with_mask)
    return images[0], None if masks is None else masks[0]
