"""FER2013 (Kaggle ICML 2013 challenge), read from ``fer2013.csv`` as distributed.

``ROOT/fer2013.csv`` (or the CSV path itself) has columns ``emotion,pixels,Usage``: emotion 0 Angry,
1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral (mapped to the canonical order); pixels are
2304 space-separated grey values of a 48x48 face (returned as RGB); Usage ``Training`` / ``PublicTest``
/ ``PrivateTest`` -> ``train`` / ``val`` / ``test``. Sample ids are ``fer%07d`` of the 0-based data row,
the names FERPlus gives the same images. FER2013 has no non-expression annotations (attrs are empty).

The pixel strings of the split stay in memory (about 8 kB per image); each is parsed to pixels only
when its image is requested. Rows whose pixel field does not hold 2304 values are skipped with one
warning (``strict=1``: an error).

Options: ``strict=0|1``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import FerlensError
from ..labels import canonical
from . import _files as F
from .base import FERDataset

NAME = "FER2013"
CSV_NAME = "fer2013.csv"
SIDE = 48
FER_LABELS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")  # index = code
USAGE_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
OPTIONS = ("strict",)


class PixelDataset(FERDataset):
    """Images stored as FER2013 pixel strings; decoded to 48x48 grey -> RGB on access."""

    def __init__(self, pixels: list[str], labels: np.ndarray, label_names: list[str], sample_ids: list[str],
                 soft_labels: np.ndarray | None = None, skipped: list[tuple[str, str]] | None = None,
                 locations: list[str] | None = None):
        self.pixels = pixels
        self.labels = np.asarray(labels, dtype=np.int64)
        self.soft_labels = soft_labels
        self.label_names = label_names
        self.sample_ids = sample_ids
        self.attrs = [{} for _ in sample_ids]
        self.attr_kinds = {}
        self.skipped = skipped or []
        self.locations = locations  # "fer2013.csv line N" of each sample (messages, train data check)

    def image_path(self, index: int) -> str:
        """Where image ``index`` lives: its CSV line (or its sample id)."""
        return self.locations[index] if self.locations else self.sample_ids[index]

    def read_image(self, index: int) -> Image.Image:
        """Decode image ``index``; a bad pixel field raises ValueError."""
        return decode_pixels(self.pixels[index])

    def load_image(self, index: int) -> Image.Image:
        """Decode image ``index``; a bad pixel field ends in one sentence naming the row."""
        try:
            return decode_pixels(self.pixels[index])
        except ValueError as e:
            raise FerlensError(f"FER2013 image {self.sample_ids[index]} ({self.image_path(index)}) {e}; restore "
                               "fer2013.csv from the distribution.") from None


def decode_pixels(text: str) -> Image.Image:
    """2304 space-separated grey values -> 48x48 RGB PIL image (ValueError when malformed)."""
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise ValueError("has non-numeric pixel values") from None
    if values.size != SIDE * SIDE or values.min() < 0 or values.max() > 255:
        raise ValueError(f"does not hold {SIDE * SIDE} grey values in 0-255")
    return Image.fromarray(values.astype(np.uint8).reshape(SIDE, SIDE), mode="L").convert("RGB")


def csv_path(root: str | None, dataset: str = "fer2013") -> Path:
    """``ROOT/fer2013.csv`` or the CSV file given directly."""
    base = F.require_root(root, dataset, CSV_NAME)
    path = base if base.is_file() else base / CSV_NAME
    return F.require_file(path, NAME, CSV_NAME)


def read_rows(path: Path) -> Iterator[tuple[int, int, dict[str, str]]]:
    """Yield ``(row index, line number, {column: value})`` for every data row of fer2013.csv."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise FerlensError(f"{path} is empty; use fer2013.csv as distributed (columns emotion,pixels,Usage).")
        cols = F.require_columns(header, ("emotion", "pixels", "Usage"), path)
        for i, row in enumerate(reader):
            if not row:
                continue
            try:
                yield i, reader.line_num, {k: row[j].strip() for k, j in cols.items()}
            except IndexError:
                raise FerlensError(f"{path} line {reader.line_num} has {len(row)} fields; each row needs "
                                   f"{', '.join(cols)}.") from None


def check_pixels(text: str) -> str | None:
    """Cheap check of a pixel field: None when it has 2304 values, else the reason."""
    n = len(text.split())
    return None if n == SIDE * SIDE else f"{n} pixel values instead of {SIDE * SIDE}"


def load(root: str | None, split: str, **options: str) -> FERDataset:
    """Load one FER2013 split (see the module docstring)."""
    F.check_options("fer2013", options, OPTIONS)
    F.check_split(split)
    strict = F.parse_bool("strict", options.get("strict", "0"))
    names = canonical(7)
    path = csv_path(root)
    pixels, labels, ids, skipped, total, where = [], [], [], [], 0, []
    for i, lineno, row in read_rows(path):
        if USAGE_SPLIT.get(row["Usage"]) is None:
            F.bad_row(f"{path} line {lineno} has Usage '{row['Usage']}'; use Training, PublicTest "
                      "or PrivateTest.")
            continue
        if USAGE_SPLIT[row["Usage"]] != split:
            continue
        code = row["emotion"]
        if not code.isdigit() or int(code) >= len(FER_LABELS):
            F.bad_row(f"{path} line {lineno} has emotion '{code}', outside FER2013's 0-6; fix or "
                      "remove that line.")
            continue
        total += 1
        sid = f"fer{i:07d}"
        why = check_pixels(row["pixels"])
        if why:
            skipped.append((f"{path.name} line {lineno}", why))
            continue
        pixels.append(row["pixels"])
        labels.append(names.index(FER_LABELS[int(code)]))
        ids.append(sid)
        where.append(f"{path.name} line {lineno}")
    F.report_skipped(NAME, split, skipped, total, strict)
    return PixelDataset(pixels, np.asarray(labels, dtype=np.int64), names, ids, skipped=skipped, locations=where)
