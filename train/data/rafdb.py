"""RAF-DB basic emotion set, read as distributed.

Layout::

    ROOT/EmoLabel/list_patition_label.txt        "train_00001.jpg 5" (the file name's typo is RAF-DB's)
    ROOT/Image/aligned/train_00001_aligned.jpg   100x100 aligned faces   (images=aligned, the default)
    ROOT/Image/original/train_00001.jpg          original photos         (images=original)
    ROOT/Annotation/manual/train_00001_manu_attri.txt   5 landmark lines "x<TAB>y", then gender,
                                                      race, age group (one number per line)

RAF-DB labels 1-7 are surprise, fear, disgust, happiness, sadness, anger, neutral; they are mapped to
the canonical ferlens order. attrs: ``gender`` (0 male, 1 female, 2 unsure), ``race`` (0 Caucasian,
1 African-American, 2 Asian), ``age`` (0: 0-3, 1: 4-19, 2: 20-39, 3: 40-69, 4: 70+), all categorical,
and ``landmarks`` (5 [x, y] points in original-image pixels; not a probe target). Samples without a
manual annotation file get ``None`` values (``train data info`` reports the coverage).

Splits: RAF-DB has only train and test. ``val`` is a deterministic, class-stratified ``val_frac``
(default 10%) of the train list drawn with ``seed`` (default 0); ``train`` is the rest, so train and val
never overlap and are the same on every machine.

Part masks (``part_mask(i)``, for part mass and the pointing game): drawn from the landmarks
(``train.data.landmarks``) — ``Annotation/auto/<stem>_auto_attri.txt`` (37 Face++ points, one "x y" line
each) when present, else the 5 manual points (no brows). Both are in original-image pixels, so masks come with
``images=original``; the aligned images were warped by a similarity transform RAF-DB does not ship, so an
aligned split has no part masks (``has_part_masks`` is False). ``parts=auto|manual|none`` picks the source.

Options: ``images=aligned|original``, ``val_frac=0.1``, ``seed=0``, ``strict=0|1``, ``parts=auto|manual|none``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FerlensError
from ..labels import canonical
from . import _files as F
from .base import FERDataset

NAME = "RAF-DB"
LABEL_FILE = "EmoLabel/list_patition_label.txt"
# RAF-DB label (1-7) -> canonical name
RAF_LABELS: dict[int, str] = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness",
                              6: "anger", 7: "neutral"}
ATTR_NAMES = ("gender", "race", "age")
ATTR_RANGES = {"gender": 3, "race": 3, "age": 5}
OPTIONS = ("images", "val_frac", "seed", "strict", "parts")
AUTO_DIR = "Annotation/auto"


def read_label_file(path: Path) -> list[tuple[str, int, int]]:
    """Parse ``list_patition_label.txt`` into ``(file name, canonical label, line number)`` rows."""
    names = canonical(7)
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            F.bad_row(f"{path} line {lineno} reads '{line.strip()}'; each line must be "
                      "'<image name> <label 1-7>'.")
            continue
        raf = int(parts[1])
        if raf not in RAF_LABELS:
            F.bad_row(f"{path} line {lineno} has label {raf}, outside RAF-DB's 1-7; fix or remove that line.")
            continue
        rows.append((parts[0], names.index(RAF_LABELS[raf]), lineno))
    return rows


def read_manual_attrs(path: Path) -> dict[str, Any] | None:
    """Parse one ``*_manu_attri.txt`` (5 landmark lines, gender, race, age); None if absent/invalid."""
    if not path.is_file():
        return None
    lines = [ln.split() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if len(lines) < 8:
        F.bad_row(f"{path} has {len(lines)} lines; a RAF-DB manual attribute file has 5 landmark "
                  "lines then gender, race and age.")
        return None
    try:
        landmarks = [[float(v) for v in ln[:2]] for ln in lines[:5]]
        values = {k: int(float(lines[5 + i][0])) for i, k in enumerate(ATTR_NAMES)}
    except (ValueError, IndexError):
        F.bad_row(f"{path} is not a RAF-DB manual attribute file (5 'x y' lines, then gender, race, "
                  "age as integers); restore it from the distribution.")
        return None
    for key, value in values.items():
        if not 0 <= value < ATTR_RANGES[key]:
            F.bad_row(f"{path} line {6 + ATTR_NAMES.index(key)} has {key}={value}, outside "
                      f"0-{ATTR_RANGES[key] - 1}; restore the file from the distribution.")
            return None
    return {**values, "landmarks": landmarks}


def read_auto_landmarks(path: Path) -> np.ndarray | None:
    """Parse one ``*_auto_attri.txt`` (37 "x y" lines, Face++); None if absent."""
    from .landmarks import parse_points

    if not path.is_file():
        return None
    try:
        values = [float(v) for v in path.read_text(encoding="utf-8", errors="replace").split()]
    except ValueError:
        raise FerlensError(f"{path} is not a RAF-DB auto landmark file (37 'x y' lines); restore it from the "
                           "distribution.") from None
    pts = parse_points(values, str(path))
    if len(pts) != 37:
        raise FerlensError(f"{path} has {len(pts)} landmarks; a RAF-DB auto file has 37 'x y' lines.")
    return pts


def image_dir(root: Path, images: str | None) -> tuple[Path, str]:
    """The image folder and its kind (``aligned`` or ``original``)."""
    kinds = [images] if images else ["aligned", "original"]
    for kind in kinds:
        folder = root / "Image" / kind
        if folder.is_dir():
            return folder, kind
    raise FerlensError(f"{root / 'Image' / kinds[0]} does not exist; RAF-DB images belong in "
                       "Image/aligned/ (*_aligned.jpg) or Image/original/.")


def image_path(folder: Path, kind: str, name: str) -> Path:
    """``train_00001.jpg`` -> ``Image/aligned/train_00001_aligned.jpg`` (or the original file)."""
    if kind == "aligned":
        return folder / f"{Path(name).stem}_aligned.jpg"
    return folder / name


def load(root: str | None, split: str, **options: str) -> FERDataset:
    """Load one RAF-DB split (see the module docstring for layout, labels, attrs and splits)."""
    F.check_options("rafdb", options, OPTIONS)
    F.check_split(split)
    images = F.parse_choice("images", options["images"], ("aligned", "original")) if "images" in options else None
    val_frac = F.parse_fraction("val_frac", options.get("val_frac", "0.1"))
    seed = F.parse_int("seed", options.get("seed", "0"), lo=0)
    strict = F.parse_bool("strict", options.get("strict", "0"))
    parts = F.parse_choice("parts", options["parts"], ("auto", "manual", "none")) if "parts" in options else "auto"

    base = F.require_root(root, "rafdb", f"{LABEL_FILE} and Image/aligned/")
    rows = read_label_file(F.require_file(base / LABEL_FILE, NAME, LABEL_FILE))
    folder, kind = image_dir(base, images)
    attr_dir = base / "Annotation" / "manual"

    part = "test" if split == "test" else "train"
    rows = [r for r in rows if r[0].startswith(f"{part}_")]
    if split != "test":
        held = F.carve_split(np.asarray([r[1] for r in rows]), val_frac, seed)
        rows = [r for r, h in zip(rows, held) if h == (split == "val")]

    auto_dir = base / AUTO_DIR
    masks = kind == "original" and parts != "none"     # landmarks are in original-image pixels
    records = []
    for name, label, _ in rows:
        stem = Path(name).stem
        attrs: dict[str, Any] = {}
        if attr_dir.is_dir():
            attrs = (read_manual_attrs(attr_dir / f"{stem}_manu_attri.txt")
                     or {**{k: None for k in ATTR_NAMES}, "landmarks": None})
        points = None
        if masks:
            points = read_auto_landmarks(auto_dir / f"{stem}_auto_attri.txt") if parts == "auto" else None
            if points is None and attrs.get("landmarks") is not None:
                points = np.asarray(attrs["landmarks"], dtype=np.float64)
        records.append(F.Record(str(image_path(folder, kind, name)), label, attrs, stem, landmarks=points))
    kinds = {k: "categorical" for k in ATTR_NAMES} if attr_dir.is_dir() else {}
    return F.file_dataset(NAME, split, records, canonical(7), kinds, strict)
