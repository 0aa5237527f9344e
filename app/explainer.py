"""Explain-page computation: upload checks, cached predictions, attribution maps and overlays.

Predictions, maps (``probe.explain``) and their overlays come from the explain worker (``app.compute``, a
process of its own, so the server never imports timm, captum or pytorch-grad-cam); this module checks
uploads and caches the worker's results per (run, weights stamp, image, method, options).
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import streamlit as st
from PIL import Image, UnidentifiedImageError

from train.errors import FerlensError

from . import compute

MAX_UPLOAD_BYTES = 10 * 2**20  # 10 MB
MAX_UPLOAD_PIXELS = 20_000_000  # 20 megapixels
METHODS = ("rollout", "cls_attention", "gradcam", "ig")
# Part-mask colours, index = value in SynthFER's mask (background, face, hair, brows, eyes, nose, mouth, occluder).
PART_COLOURS = np.array([[30, 30, 30], [230, 190, 160], [110, 70, 40], [0, 114, 178], [86, 180, 233],
                         [0, 158, 115], [120, 220, 160], [230, 159, 0], [213, 94, 0], [204, 121, 167]],
                        dtype=np.uint8)
# SynthFER factors a user can change for a counterfactual; numeric ranges are those
# train.data.synthfer.sample_factors draws from, categorical choices come from the renderer.
NUMERIC_FACTORS = {"yaw": (-30.0, 30.0), "roll": (-18.0, 18.0), "scale": (0.56, 0.72), "intensity": (0.6, 1.0)}
CATEGORICAL_FACTORS = ("expression", "illumination", "background", "occluder")


def read_upload(name: str, data: bytes) -> Image.Image:
    """Decode an uploaded image after checking its size and format.

    Raises:
        FerlensError: the file is over 10 MB or 20 MP, or is not an image PIL can read.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise FerlensError(f"{name} is {len(data) / 2**20:.1f} MB, over the 10 MB limit; upload a smaller image.")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        w, h = img.size
        if w * h > MAX_UPLOAD_PIXELS:
            raise FerlensError(f"{name} is {w}×{h} = {w * h / 1e6:.0f} MP, over the 20 MP limit; "
                               "resize it before uploading.")
        img.load()
        return img.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise FerlensError(f"{name} is not an image PIL can read; upload a PNG, JPEG, BMP or WebP file.") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise FerlensError(f"{name} is a damaged image ({e}); upload an intact PNG or JPEG file.") from None


def image_key(img: Image.Image) -> str:
    """Content hash of an image (the cache key for its maps)."""
    arr = np.asarray(img.convert("RGB"))
    return hashlib.sha1(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:16]


@dataclass
class Prediction:
    """Class probabilities of one image under one run."""

    label_names: list[str]
    probs: np.ndarray  # (C,)

    @property
    def top(self) -> int:
        return int(self.probs.argmax())


@st.cache_data(show_spinner=False, max_entries=256)
def predict(run: str, run_key: str, img_key: str, label_names: tuple[str, ...], _rgb: np.ndarray) -> Prediction:
    """Softmax probabilities of the (h, w, 3) uint8 image ``_rgb`` from the explain worker; cached by (run, image).

    Raises:
        FerlensError: the run cannot be loaded or the worker stopped.
    """
    _, arrays = compute.request("predict", {"image": _rgb}, run=run)
    return Prediction(list(label_names), arrays["probs"])


@st.cache_data(show_spinner=False, max_entries=1024)
def attribution(run: str, run_key: str, img_key: str, method: str, target: int, layer: str | None,
                head: int | None, _rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One map of ``probe.explain`` from the explain worker; cached by (run, image, method, options).

    Returns:
        (H, W) float32 map in [0, 1] and its (H, W, 3) uint8 overlay on the image (pytorch-grad-cam's
        ``show_cam_on_image``), H = W = the run's input size.
    """
    n_steps = 16 if method == "ig" else None  # enough for a smooth map on 64 px inputs; keeps two runs under ~2 s
    _, arrays = compute.request("map", {"image": _rgb}, run=run, method=method, target=target, layer=layer,
                                head=head, n_steps=n_steps)
    return arrays["heat"], arrays["overlay"]


@st.cache_data(show_spinner=False, max_entries=64)
def attention_spec(run: str, run_key: str) -> tuple[list[str], int]:
    """(blocks whose CLS query still attends over patch tokens, number of heads) from the run's model spec: every
    vit / class-attention block, clsonly's block 0, CaiT's class-attention blocks; 1 head when the model names none."""
    reply, _ = compute.request("spec", run=run)
    return list(reply["layers"]), int(reply["heads"])


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) part indices -> (H, W, 3) uint8 colours."""
    return PART_COLOURS[np.clip(mask, 0, len(PART_COLOURS) - 1)]


def upscale(rgb: np.ndarray, side: int = 192) -> np.ndarray:
    """Nearest-neighbour upscale so tiny 64 px images stay crisp on screen."""
    return np.asarray(Image.fromarray(rgb).resize((side, side), Image.NEAREST))
