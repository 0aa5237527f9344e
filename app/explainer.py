"""Explain-page computation: upload checks, cached predictions and attribution maps, overlays.

The maps themselves come from ``probe.explain``; this module only prepares inputs, caches results per
(run, image, method, options) and paints overlays (pytorch-grad-cam's ``show_cam_on_image``).
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import streamlit as st
from PIL import Image, UnidentifiedImageError

from train.errors import FerlensError

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
def predict(_model, _x, run_key: str, img_key: str, label_names: tuple[str, ...]) -> Prediction:
    """Softmax probabilities of ``_x`` (1, 3, H, W); cached by (run, image)."""
    import torch

    from .loaders import COMPUTE_LOCK

    with COMPUTE_LOCK, torch.no_grad():
        probs = _model(_x).softmax(-1)[0].numpy()  # (C,)
    return Prediction(list(label_names), probs)


@st.cache_data(show_spinner=False, max_entries=1024)
def attribution(_model, _x, run_key: str, img_key: str, method: str, target: int,
                layer: str | None = None, head: int | None = None) -> np.ndarray:
    """One (H, W) map in [0, 1] from ``probe.explain``; cached by (run, image, method, options)."""
    import probe

    from .loaders import COMPUTE_LOCK

    options = {"layer": layer} if layer else {}
    if head is not None:
        options["head"] = head
    if method == "ig":
        options["n_steps"] = 16  # enough for a smooth map on 64 px inputs; keeps two runs under ~2 s
    with COMPUTE_LOCK:
        return probe.explain(_model, _x, method=method, target=target, **options)[0].numpy()  # (H, W)


def attention_layers(model) -> list[str]:
    """Blocks whose CLS query still attends over patch tokens (model spec: every vit / class-attention block,
    clsonly's block 0, CaiT's class-attention blocks)."""
    from train.models.adapters import model_spec

    spec = model_spec(model)
    return [spec.block_of(n) for n in spec.cls_attention_layers()]


def attention_heads(model) -> int:
    """Number of attention heads (1 when the model names none)."""
    from train.models.adapters import model_spec

    return int(model_spec(model).num_heads or 1)


def overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Heat map over an image with pytorch-grad-cam's colour map.

    Args:
        rgb: (H, W, 3) uint8 image.
        heat: (H, W) map in [0, 1].
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(rgb.astype(np.float32) / 255.0, heat.astype(np.float32), use_rgb=True, image_weight=0.55)


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) part indices -> (H, W, 3) uint8 colours."""
    return PART_COLOURS[np.clip(mask, 0, len(PART_COLOURS) - 1)]


def upscale(rgb: np.ndarray, side: int = 192) -> np.ndarray:
    """Nearest-neighbour upscale so tiny 64 px images stay crisp on screen."""
    return np.asarray(Image.fromarray(rgb).resize((side, side), Image.NEAREST))
