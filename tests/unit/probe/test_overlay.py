"""Overlay tiles: the pixels of pytorch-grad-cam's show_cam_on_image, without importing it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probe import overlay
from train.errors import FerlensError


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_overlay_equals_show_cam_on_image(weight):
    image_mod = pytest.importorskip("pytorch_grad_cam.utils.image")
    rng = np.random.default_rng(0)
    image = rng.random((24, 20, 3), dtype=np.float32)
    heat = rng.random((24, 20)).astype(np.float32) * 1.2 - 0.1           # outside [0, 1] is clipped
    want = image_mod.show_cam_on_image(image, np.clip(heat, 0, 1), use_rgb=True, image_weight=weight)
    got = overlay.overlay(image, heat, image_weight=weight)
    assert got.dtype == np.uint8 and got.shape == (24, 20, 3)
    assert np.array_equal(got, want)


def test_overlay_grid_layout_and_bad_weight():
    images = torch.randn(3, 3, 16, 16)
    grid = overlay.overlay_grid(images, {"a": torch.rand(3, 16, 16), "b": torch.rand(3, 16, 16)},
                                [0.5] * 3, [0.25] * 3, scale=2, header=14)
    assert grid.size == (3 * 32, 14 + 3 * 32)
    with pytest.raises(FerlensError, match="image_weight"):
        overlay.overlay(np.zeros((4, 4, 3)), np.zeros((4, 4)), image_weight=1.5)
