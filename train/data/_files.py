"""Shared pieces of the real-dataset loaders: option parsing, file checks, lazy image datasets,
deterministic split carving, label-name aliases.

Every loader reads its label files into memory, builds the list of image paths for one split and
hands it to :func:`file_dataset`, which checks that each file exists and has a readable image header
(no full decode), skips the bad ones with ONE warning (or raises with ``strict=1``) and returns an
:class:`ImageFileDataset` that decodes images lazily in ``load_image``.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import FerlensError, close_matches
from ..labels import CANONICAL8
from .base import SPLITS, AttrKind, FERDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
N_NAMED = 3  # how many bad files a warning / error names

# Lower-case label words used by datasets and folder layouts -> canonical ferlens name.
LABEL_ALIASES: dict[str, str] = {
    **{name: name for name in CANONICAL8},
    "neutrality": "neutral", "calm": "neutral",
    "happy": "happiness", "happ": "happiness", "joy": "happiness", "smile": "happiness",
    "sad": "sadness", "sorrow": "sadness",
    "surprised": "surprise", "surprising": "surprise",
    "fearful": "fear", "afraid": "fear", "scared": "fear",
    "disgusted": "disgust",
    "angry": "anger", "mad": "anger",
    "contemptuous": "contempt",
}


class DataWarning(UserWarning):
    """Images were skipped while loading a dataset (missing or unreadable files)."""


# --------------------------------------------------------------------------------------- options
def parse_bool(name: str, value: str | bool) -> bool:
    """Read a ``0/1/true/false/yes/no`` option value."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise FerlensError(f"Option {name}={value} is not a yes/no value; write {name}=1 or {name}=0.")


def parse_int(name: str, value: str | int, lo: int | None = None, hi: int | None = None) -> int:
    """Read an integer option value within ``[lo, hi]``."""
    try:
        out = int(str(value).strip())
    except ValueError:
        raise FerlensError(f"Option {name}={value} is not an integer; write e.g. {name}={lo or 0}.") from None
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        span = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise FerlensError(f"Option {name}={value} is out of range; use a value {span}.")
    return out


def parse_fraction(name: str, value: str | float) -> float:
    """Read a fraction option value in ``[0, 1)``."""
    try:
        out = float(str(value).strip())
    except ValueError:
        raise FerlensError(f"Option {name}={value} is not a number; write e.g. {name}=0.1.") from None
    if not 0.0 <= out < 1.0:
        raise FerlensError(f"Option {name}={value} is out of range; use a fraction in [0, 1) such as 0.1.")
    return out


def parse_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Read an option value that must be one of ``choices``."""
    text = str(value).strip().lower()
    if text not in choices:
        raise FerlensError(f"Option {name}={value} is not valid; use one of {', '.join(choices)}."
                           + close_matches(text, choices))
    return text


def check_options(dataset: str, options: Mapping[str, Any], valid: Iterable[str]) -> None:
    """Raise when ``options`` holds a key the loader does not know."""
    valid = list(valid)
    for key in options:
        if key not in valid:
            raise FerlensError(f"Unknown option '{key}' for {dataset}; valid options are "
                               f"{', '.join(valid)}." + close_matches(key, valid))


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise FerlensError(f"Unknown split '{split}'; use one of {', '.join(SPLITS)}.")


# ----------------------------------------------------------------------------------------- paths
def require_root(root: str | os.PathLike | None, dataset: str, expected: str) -> Path:
    """The dataset root as a Path; a missing root names what it should contain."""
    if root is None or not str(root).strip():
        raise FerlensError(f"{dataset} needs a path; write the spec as '{dataset}:/path/to/{dataset}'.")
    path = Path(str(root)).expanduser()
    if not path.exists():
        raise FerlensError(f"The {dataset} root {path} does not exist; point the spec at the folder that "
                           f"holds {expected}.")
    return path


def require_file(path: Path, dataset: str, what: str) -> Path:
    """Return ``path`` if it is a file, else raise naming the expected file."""
    if not path.is_file():
        raise FerlensError(f"{dataset} label file {path} is missing; the dataset root must contain {what}.")
    return path


def first_existing(root: Path, candidates: Sequence[str]) -> Path | None:
    """The first ``root / candidate`` that exists, or None."""
    for rel in candidates:
        if (root / rel).exists():
            return root / rel
    return None


def require_columns(header: Sequence[str], needed: Sequence[str], path: Path) -> dict[str, int]:
    """Map column name -> index; a missing column raises naming it."""
    index = {name.strip(): i for i, name in enumerate(header)}
    for name in needed:
        if name not in index:
            raise FerlensError(f"{path} has no '{name}' column (found: {', '.join(index) or 'none'}); "
                               f"use the file as distributed, with columns {', '.join(needed)}.")
    return index


def canonical_label(word: str) -> str | None:
    """Map a label word (``Happy``, ``angry``, ``Surprised``) to a canonical name, or None."""
    return LABEL_ALIASES.get(word.strip().lower().replace("-", "").replace("_", ""))


# ------------------------------------------------------------------------------------- splitting
def carve_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Deterministically mark a ``fraction`` of samples (stratified by label) as held out.

    Args:
        labels: (N,) int labels; each class gives ``round(fraction * count)`` samples.
        fraction: share to hold out.
        seed: the permutation seed (same seed + same label file -> same split).

    Returns:
        (N,) bool mask, True for held-out samples.
    """
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        mask[rng.permutation(idx)[:k]] = True
    return mask


# ---------------------------------------------------------------------------------- bad images
def image_problem(path: Path | str) -> str | None:
    """Cheap check: None when the file exists and its image header reads, else the reason."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - the header is parsed by open(); size proves it
    except FileNotFoundError:
        return "missing"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"unreadable ({type(e).__name__})"
    return None


def decode_problem(load: Callable[[], Image.Image]) -> str | None:
    """Full check: decode the image; None when it decodes, else the reason."""
    try:
        load()
    except FileNotFoundError:
        return "missing"
    except FerlensError as e:
        return str(e)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"corrupt ({type(e).__name__}: {e})"
    return None


def report_dropped(dataset: str, split: str, dropped: Mapping[str, int], total: int) -> None:
    """One line counting the samples the dataset's own convention leaves out (AffectNet codes 8-10,
    FERPlus unknown/NF winners, contempt in 7-class mode), by reason; silent when nothing was dropped."""
    parts = [f"{n} {why}" for why, n in dropped.items() if n]
    if parts:
        warnings.warn(f"{dataset} {split}: {sum(dropped.values())} of {total} samples left out by the dataset's "
                      f"convention ({'; '.join(parts)}).", DataWarning, stacklevel=3)


def report_skipped(dataset: str, split: str, skipped: list[tuple[str, str]], total: int,
                   strict: bool) -> None:
    """Warn once (or raise with ``strict``) about skipped images, naming the first few."""
    if not skipped:
        return
    named = "; ".join(f"{p} ({why})" for p, why in skipped[:N_NAMED])
    more = f" and {len(skipped) - N_NAMED} more" if len(skipped) > N_NAMED else ""
    head = f"{len(skipped)} of {total} {dataset} {split} images are missing or unreadable: {named}{more}"
    if strict:
        raise FerlensError(f"{head}; restore them, or drop strict=1 to skip them.")
    warnings.warn(f"{head}; they are skipped (add strict=1 to the spec to make this an error, or run "
                  "'train data check SPEC' to list them all).", DataWarning, stacklevel=3)


# ------------------------------------------------------------------------------ invalid rows
# ``train data check`` must list every invalid label row, not only the first: inside
# ``collecting_bad_rows()`` an adapter's ``bad_row`` records the sentence and the adapter skips the row;
# everywhere else ``bad_row`` raises it (a training run never starts on a bad label).
_BAD_ROWS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("ferlens_bad_rows", default=None)


def bad_row(message: str) -> None:
    """Raise ``message`` as a FerlensError, or record it while ``collecting_bad_rows()`` is open (the caller
    then skips that row, file or folder)."""
    store = _BAD_ROWS.get()
    if store is None:
        raise FerlensError(message)
    store.append(message)


@contextlib.contextmanager
def collecting_bad_rows():
    """Yield the list that ``bad_row`` fills while the context is open (for ``train data check``)."""
    token = _BAD_ROWS.set([])
    try:
        yield _BAD_ROWS.get()
    finally:
        _BAD_ROWS.reset(token)


# ----------------------------------------------------------------------------------- datasets
@dataclass
class Record:
    """One sample before its file is checked."""

    path: str
    label: int
    attrs: dict[str, Any]
    sample_id: str
    box: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) crop in pixels
    soft: np.ndarray | None = None  # (C,) label distribution
    landmarks: np.ndarray | None = None  # (K, 2) x, y in the pixels of the image as read (after the crop)


class ImageFileDataset(FERDataset):
    """Samples backed by image files; only metadata is in memory, pixels are decoded per item."""

    def __init__(self, records: Sequence[Record], label_names: Sequence[str],
                 attr_kinds: Mapping[str, AttrKind], skipped: Sequence[tuple[str, str]] = ()):
        self.label_names = list(label_names)
        self.paths = [r.path for r in records]
        self.boxes = [r.box for r in records]
        self.labels = np.asarray([r.label for r in records], dtype=np.int64)
        soft = [r.soft for r in records]
        self.soft_labels = (np.stack(soft).astype(np.float32) if records and soft[0] is not None else None)
        self.attrs = [r.attrs for r in records]
        self.attr_kinds = dict(attr_kinds)
        self.sample_ids = [r.sample_id for r in records]
        self.skipped = list(skipped)  # (path, reason) of files dropped at load time
        self.landmarks = [r.landmarks for r in records]

    @property
    def has_part_masks(self) -> bool:
        """True when the samples carry landmarks that part masks can be drawn from."""
        return any(lm is not None for lm in self.landmarks)

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of image ``index`` as read (its crop box, else the file's header)."""
        box = self.boxes[index]
        if box is not None:
            return box[2] - box[0], box[3] - box[1]
        with Image.open(self.paths[index]) as im:
            return im.size

    def part_mask(self, index: int) -> np.ndarray:
        """(H, W) uint8 part mask of sample ``index`` drawn from its landmarks (``train.data.landmarks``);
        all background when the sample has none (localisation then skips it)."""
        from .landmarks import part_mask_from_landmarks

        w, h = self.image_size(index)
        lm = self.landmarks[index]
        if lm is None:
            return np.zeros((h, w), dtype=np.uint8)
        return part_mask_from_landmarks(lm, (w, h))
        self.dropped: dict[str, int] = {}  # reason -> samples left out by the dataset's convention

    def image_path(self, index: int) -> str:
        return self.paths[index]

    def read_image(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB (cropped to its box); file errors propagate unchanged."""
        with Image.open(self.paths[index]) as im:
            im = im.convert("RGB")
        box = self.boxes[index]
        return im.crop(box) if box is not None else im  # PIL pads out-of-image parts of a box with black

    def load_image(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB; a bad file ends in one sentence naming it."""
        try:
            return self.read_image(index)
        except (OSError, SyntaxError, ValueError) as e:
            raise FerlensError(f"Image {self.paths[index]} cannot be decoded ({type(e).__name__}); run 'train "
                               f"data check {self.spec or 'SPEC'}' to list bad files and remove or replace "
                               "them.") from None


def file_dataset(dataset: str, split: str, records: Sequence[Record], label_names: Sequence[str],
                 attr_kinds: Mapping[str, AttrKind], strict: bool,
                 dropped: Mapping[str, int] | None = None) -> ImageFileDataset:
    """Check every record's file (exists + readable header), skip bad ones, build the dataset.

    Args:
        dataset: name used in messages (``RAF-DB``).
        split: split name used in messages.
        records: samples of one split.
        label_names: canonical label names.
        attr_kinds: kinds of the probe-usable attrs.
        strict: raise instead of warning when files are bad.
        dropped: samples left out by the dataset's convention, by reason (one line is printed).
    """
    good, skipped = [], []
    for rec in tqdm(records, desc=f"{dataset} {split}: checking files", unit="img", leave=False,
                    disable=len(records) < 2000 or None):
        why = image_problem(rec.path)
        if why is None:
            good.append(rec)
        else:
            skipped.append((rec.path, why))
    report_skipped(dataset, split, skipped, len(records), strict)
    dropped = {k: v for k, v in (dropped or {}).items() if v}
    report_dropped(dataset, split, dropped, len(records) + sum(dropped.values()))
    ds = ImageFileDataset(good, label_names, attr_kinds, skipped)
    ds.dropped = dropped
    return ds


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
