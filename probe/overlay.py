"""Heat-map overlays on face images and PNG grids (rows = images, columns = methods or runs).

The colouring is pytorch-grad-cam's ``show_cam_on_image``; only the grid layout is written here.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from train.errors import FerlensError
from train.io import atomic_write_bytes


def unnormalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the run's normalisation.

    Args:
        images: (B, 3, H, W) normalised tensors.
        mean, std: per-channel statistics from the run config (``input.mean`` / ``input.std``).

    Returns:
        (B, H, W, 3) float32 in [0, 1].
    """
    m = torch.as_tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return (images.detach().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()


def overlay(image: np.ndarray, heat: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """One overlay: (H, W, 3) float image in [0, 1] and (H, W) map in [0, 1] → (H, W, 3) uint8 RGB.

    The pixels of pytorch-grad-cam's ``show_cam_on_image(img, heat, use_rgb=True)`` (OpenCV's JET colour map
    blended with the image, rescaled to the maximum; a test holds them equal), drawn with OpenCV directly:
    importing ``pytorch_grad_cam.utils.image`` loads every CAM plus matplotlib and scipy.ndimage, 1.3 s CPU
    in ``probe rollout`` and ``probe attribute``, which use no CAM.
    """
    import cv2

    if not 0.0 <= image_weight <= 1.0:
        raise FerlensError(f"image_weight must be in [0, 1], got {image_weight}.")
    img = image.astype(np.float32)
    heatmap = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1).astype(np.float32)), cv2.COLORMAP_JET)
    heatmap = np.float32(cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)) / 255
    cam = (1 - image_weight) * heatmap + image_weight * img
    return np.uint8(255 * (cam / np.max(cam)))


def overlay_grid(images: Tensor, maps: Mapping[str, Tensor], mean: Sequence[float], std: Sequence[float],
                 row_labels: Sequence[str] | None = None, scale: int = 2, header: int = 14) -> Image.Image:
    """A grid: the first column is the image, then one overlay column per entry of ``maps``.

    Args:
        images: (B, 3, H, W) normalised images.
        maps: {column title: (B, H, W) maps in [0, 1]}.
        mean, std: the run's normalisation.
        row_labels: optional text under each row's image (e.g. true/predicted class).
        scale: nearest-neighbour upscaling of each tile.
        header: pixels reserved for the column titles.
    """
    faces = unnormalise(images, mean, std)                               # (B, H, W, 3)
    b, h, w, _ = faces.shape
    for name, m in maps.items():
        if tuple(m.shape) != (b, h, w):
            raise FerlensError(f"Map '{name}' has shape {tuple(m.shape)}, not ({b}, {h}, {w}); pass maps from probe.explain.")
    th, tw = h * scale, w * scale
    cols = ["image"] + list(maps)
    grid = Image.new("RGB", (tw * len(cols), header + th * b), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(cols):
        draw.text((c * tw + 2, 1), name[: max(4, tw // 6)], fill="black")
    for r in range(b):
        tiles = [(faces[r] * 255).astype(np.uint8)]
        tiles += [overlay(faces[r], m[r].detach().cpu().float().numpy()) for m in maps.values()]
        for c, tile in enumerate(tiles):
            grid.paste(Image.fromarray(tile).resize((tw, th), Image.NEAREST), (c * tw, header + r * th))
        if row_labels is not None:
            draw.text((2, header + r * th + th - 12), str(row_labels[r]), fill="white")
    return grid


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PIL image as PNG atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
