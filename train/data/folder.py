"""Image folders with one sub-folder per class.

Layouts::

    ROOT/train/<class>/*.jpg, ROOT/val/<class>/..., ROOT/test/<class>/...   split folders
    ROOT/<class>/*.jpg                                                       one pool, split here

Class folder names are matched case-insensitively to the canonical names and common aliases
(``happy``, ``sad``, ``angry``, ``surprised``, ``fearful``, ``disgusted``, ...); an unknown folder
name is an error that lists the valid ones. The classes are the canonical 7, or 8 when a contempt
folder exists. Images may be .jpg, .jpeg, .png, .bmp, .webp, .tif(f), .gif, .ppm, .pgm.

Splits: with split folders, a missing ``val/`` is carved from ``train/`` (class-stratified
``val_frac``, default 10%, seeded); with one pool, ``val_frac`` and ``test_frac`` (default 10% each)
are carved, class-stratified, from a permutation drawn with ``seed`` (default 0): the same files give
the same split on every machine. Sample ids are paths relative to ROOT without extension; attrs are
empty (a folder carries no annotations).

Options: ``val_frac=0.1``, ``test_frac=0.1``, ``seed=0``, ``strict=0|1``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FerlensError
from ..labels import canonical
from . import _files as F
from .base import SPLITS, FERDataset

NAME = "folder"
OPTIONS = ("val_frac", "test_frac", "seed", "strict")


def class_folders(folder: Path) -> dict[str, list[Path]]:
    """Canonical class name -> image files, for the class sub-folders of ``folder``."""
    out: dict[str, list[Path]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = F.canonical_label(sub.name)
        if name is None:
            F.bad_row(f"Class folder '{sub.name}' in {folder} is not an expression name; rename it to "
                      f"one of {', '.join(canonical(8))} (aliases such as happy, sad, angry, "
                      "surprised, fearful, disgusted also work)." + F.close_matches(sub.name.lower(), F.LABEL_ALIASES))
            continue
        out.setdefault(name, []).extend(F.list_images(sub))
    return out


def split_layout(base: Path) -> bool:
    """True when ROOT holds train/ (and optionally val/, test/) split folders."""
    return (base / "train").is_dir() or (base / "test").is_dir()


def _records(files: dict[str, list[Path]], base: Path, names: list[str]) -> list[F.Record]:
    return [F.Record(str(p), names.index(c), {}, str(p.relative_to(base).with_suffix("")))
            for c in names for p in files.get(c, [])]


def _carve(records: list[F.Record], fraction: float, seed: int) -> np.ndarray:
    return F.carve_split(np.asarray([r.label for r in records], dtype=np.int64), fraction, seed)


def split_records(base: Path, split: str, val_frac: float, test_frac: float, seed: int
                  ) -> tuple[list[F.Record], list[str]]:
    """The records of ``split`` and the label names, for either layout."""
    if split_layout(base):
        per_split = {s: class_folders(base / s) for s in SPLITS if (base / s).is_dir()}
        present = {c for files in per_split.values() for c in files}
        names = canonical(8 if "contempt" in present else 7)
        if "val" in per_split or split == "test":
            return _records(per_split.get(split, {}), base, names), names
        pool = _records(per_split.get("train", {}), base, names)  # no val/: carve it from train/
        held = _carve(pool, val_frac, seed)
        return [r for r, h in zip(pool, held) if h == (split == "val")], names
    files = class_folders(base)
    names = canonical(8 if "contempt" in files else 7)
    pool = _records(files, base, names)
    test = _carve(pool, test_frac, seed)
    rest = [r for r, t in zip(pool, test) if not t]
    val = _carve(rest, val_frac / max(1e-9, 1 - test_frac), seed + 1)
    chosen = {"test": [r for r, t in zip(pool, test) if t],
              "val": [r for r, v in zip(rest, val) if v],
              "train": [r for r, v in zip(rest, val) if not v]}
    return chosen[split], names


def load(root: str | None, split: str, **options: str) -> FERDataset:
    """Load one split of an image-folder dataset (see the module docstring)."""
    F.check_options("folder", options, OPTIONS)
    F.check_split(split)
    val_frac = F.parse_fraction("val_frac", options.get("val_frac", "0.1"))
    test_frac = F.parse_fraction("test_frac", options.get("test_frac", "0.1"))
    seed = F.parse_int("seed", options.get("seed", "0"), lo=0)
    strict = F.parse_bool("strict", options.get("strict", "0"))
    if val_frac + test_frac >= 1:
        raise FerlensError(f"val_frac={val_frac} and test_frac={test_frac} leave nothing to train on; keep "
                           "their sum below 1.")
    base = F.require_root(root, "folder", "train/ val/ test/ or class folders such as happy/ sad/")
    if not base.is_dir():
        raise FerlensError(f"{base} is a file; point folder: at a directory of class folders.")
    records, names = split_records(base, split, val_frac, test_frac, seed)
    return F.file_dataset(NAME, split, records, names, {}, strict)
