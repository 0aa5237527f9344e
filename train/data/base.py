"""The dataset contract every adapter follows.

A dataset yields ``(image, label, attrs, sample_id)``:
  image      PIL RGB image (or the output of ``transform`` when one is set)
  label      int index into ``label_names`` (canonical ferlens order)
  attrs      dict of expression-unrelated annotations (identity, yaw, gender ...), JSON-able scalars
  sample_id  str, unique within the dataset

The metadata (labels, attrs, ids) is held in memory without decoding images, so samplers, probes and
``train data info`` never touch pixels.
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

AttrKind = Literal["categorical", "continuous"]
SPLITS = ("train", "val", "test")


class FERDataset(Dataset):
    """Base class. Subclasses fill the metadata fields in ``__init__`` and implement ``load_image``.

    Attributes:
        spec: the spec string that built it (``rafdb:/data/RAF``), stored in run configs.
        split: ``train``, ``val`` or ``test``.
        label_names: class names in canonical order (7 or 8).
        labels: (N,) int64 hard labels.
        soft_labels: optional (N, C) float32 label distributions (FERPlus probability mode).
        attrs: list of N dicts (same keys for every sample).
        attr_kinds: ``{name: "categorical" | "continuous"}`` for the keys of ``attrs`` that probes use.
        sample_ids: list of N unique strings.
        transform: callable applied to the PIL image in ``__getitem__`` (None: return PIL).
    """

    spec: str = ""
    split: str = "train"
    label_names: list[str]
    labels: np.ndarray
    soft_labels: np.ndarray | None = None
    attrs: list[dict[str, Any]]
    attr_kinds: dict[str, AttrKind]
    sample_ids: list[str]
    transform: Callable[[Image.Image], Any] | None = None
    dropped: dict[str, int] = {}  # reason -> samples left out by the dataset's convention (never mutated)

    def load_image(self, index: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement load_image")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index]), self.attrs[index], self.sample_ids[index]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def attr_array(self, name: str) -> np.ndarray:
        """One attribute for every sample as an array (categorical values stay as given)."""
        return np.asarray([a.get(name) for a in self.attrs])


def collate(batch):
    """Collate ``(image, label, attrs, id)`` samples: stacks images/labels, keeps attrs as a list.

    Returns:
        images (B, 3, H, W) float tensor (or list of PIL when no transform), labels (B,) int64,
        attrs list[dict], ids list[str].
    """
    images, labels, attrs, ids = zip(*batch)
    if isinstance(images[0], torch.Tensor):
        images = torch.stack(images)
    else:
        images = list(images)
    return images, torch.as_tensor(labels, dtype=torch.long), list(attrs), list(ids)
