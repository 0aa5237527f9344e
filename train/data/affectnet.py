"""AffectNet (Mollahosseini et al., 2017), both distributed releases.

Release with file lists (the original)::

    ROOT/Manually_Annotated_file_lists/training.csv, validation.csv
        subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal
    ROOT/Manually_Annotated_Images/<subDirectory_filePath>        (also ROOT/Manually_Annotated/...)

The face is cropped from the box (face_x, face_y, face_width, face_height) when the image is read.
(validation.csv ships without a header row in some copies; a header-less file is read in the column
order above.)

Release with per-image annotations::

    ROOT/train_set/images/<id>.jpg, ROOT/train_set/annotations/<id>_exp.npy, <id>_val.npy, <id>_aro.npy
    ROOT/val_set/...                        (already cropped faces; .npy read with allow_pickle=False)

Expression codes 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt are
mapped to the canonical order; 8-10 (None, Uncertain, Non-Face) are dropped, and so is 7 unless
``classes=8``. attrs: ``valence`` and ``arousal`` in [-1, 1] (continuous).

Splits: AffectNet's test set is not public, so its validation set is ferlens' ``test`` split, and
``val`` is a deterministic, class-stratified ``val_frac`` (default 10%) of the training list drawn with
``seed`` (default 0); ``train`` is the rest.

Part masks (``part_mask(i)``) are drawn from the 68-point landmarks AffectNet ships
(``train.data.landmarks``, iBUG order): the file lists' ``facial_landmarks`` column ("x1;y1;…;x68;y68" in
photo pixels, shifted into the face crop) or ``annotations/<id>_lnd.npy`` (136 values, x and y interleaved,
in the cropped image's pixels). Rows without 68 points have no mask.

Options: ``classes=7|8``, ``val_frac=0.1``, ``seed=0``, ``strict=0|1``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import FerlensError
from ..labels import canonical
from . import _files as F
from .base import FERDataset

NAME = "AffectNet"
AN_LABELS = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")  # code
N_CODES = 11  # 8 None, 9 Uncertain, 10 Non-Face
LIST_DIR = "Manually_Annotated_file_lists"
LIST_FILES = {"train": "training.csv", "test": "validation.csv"}
IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images", "Manually_Annotated")
NPY_DIRS = {"train": "train_set", "test": "val_set"}
CSV_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
               "expression", "valence", "arousal")
ATTR_KINDS = {"valence": "continuous", "arousal": "continuous"}
OPTIONS = ("classes", "val_frac", "seed", "strict")


DROP_REASONS = {8: "code 8-10 (None, Uncertain, Non-Face)", 9: "code 8-10 (None, Uncertain, Non-Face)",
                10: "code 8-10 (None, Uncertain, Non-Face)", 7: "code 7 contempt (classes=7)"}


def map_code(code: int, where: str, num_classes: int) -> int | None:
    """AffectNet expression code -> canonical index, None for dropped codes; out of range raises
    (-1 while ``train data check`` collects invalid rows: the caller skips it)."""
    if not 0 <= code < N_CODES:
        F.bad_row(f"{where} has expression {code}, outside AffectNet's 0-10; fix or remove it.")
        return -1
    if code >= num_classes:
        return None
    return canonical(num_classes).index(AN_LABELS[code])


def read_file_list(path: Path, image_root: Path, num_classes: int,
                   dropped: dict[str, int] | None = None) -> list[F.Record]:
    """Records of one ``Manually_Annotated_file_lists`` CSV, with face boxes (``dropped`` counts the
    samples left out by code)."""
    records = []
    dropped = {} if dropped is None else dropped
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        first = next(reader, None)
        if first is None:
            raise FerlensError(f"{path} is empty; use the AffectNet file list as distributed.")
        if first[0].strip() == CSV_COLUMNS[0]:
            cols = F.require_columns(first, CSV_COLUMNS, path)
            rows = reader
        else:  # header-less copy: the documented column order
            cols = {c: i for i, c in enumerate(CSV_COLUMNS)}
            rows = _chain([first], reader)
        for row in rows:
            if not row:
                continue
            where = f"{path} line {reader.line_num}"
            try:
                code = int(float(row[cols["expression"]]))
                x, y, w, h = (int(float(row[cols[k]])) for k in ("face_x", "face_y", "face_width", "face_height"))
                valence, arousal = float(row[cols["valence"]]), float(row[cols["arousal"]])
                rel = row[cols["subDirectory_filePath"]].strip()
            except (ValueError, IndexError):
                raise FerlensError(f"{where} cannot be read as {','.join(CSV_COLUMNS)}; restore the file "
                                   "from the distribution.") from None
            label = map_code(code, where, num_classes)
            if label is None:
                dropped[DROP_REASONS[code]] = dropped.get(DROP_REASONS[code], 0) + 1
                continue
            if label < 0:
                continue
            box = (x, y, x + w, y + h) if w > 0 and h > 0 else None
            points = _csv_landmarks(row[cols["facial_landmarks"]], where, (x, y) if box else (0, 0))
            records.append(F.Record(str(image_root / rel), label, {"valence": valence, "arousal": arousal},
                                    str(Path(rel).with_suffix("")), box, landmarks=points))
    return records


def _csv_landmarks(text: str, where: str, offset: tuple[int, int]) -> np.ndarray | None:
    """``facial_landmarks`` ("x1;y1;…") → (68, 2) in the crop's pixels, None unless it holds 68 points."""
    from .landmarks import parse_points

    try:
        values = [float(v) for v in str(text).replace(",", ";").split(";") if v.strip()]
    except ValueError:
        return None
    if len(values) != 136:
        return None
    return parse_points(values, where) - np.asarray(offset, dtype=np.float64)


def _npy_landmarks(path: Path) -> np.ndarray | None:
    """``<id>_lnd.npy`` (136 values) → (68, 2), None when absent or not 68 points."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False).astype(np.float64).reshape(-1)
    except (ValueError, OSError):
        raise FerlensError(f"AffectNet landmarks {path} are not a readable numeric .npy; restore the file from "
                           "the distribution.") from None
    return arr.reshape(68, 2) if arr.size == 136 else None


def _chain(head, tail):
    yield from head
    yield from tail


def _npy_scalar(path: Path) -> str:
    """The single value stored in an annotation .npy (AffectNet stores strings), as text."""
    try:
        return str(np.load(path, allow_pickle=False).reshape(-1)[0])
    except FileNotFoundError:
        raise FerlensError(f"AffectNet annotation {path} is missing; each image needs <id>_exp.npy, "
                           "<id>_val.npy and <id>_aro.npy in annotations/.") from None
    except (ValueError, OSError, IndexError):
        raise FerlensError(f"AffectNet annotation {path} is not a readable .npy scalar; restore it from "
                           "the distribution.") from None


def read_npy_set(folder: Path, num_classes: int, dropped: dict[str, int] | None = None) -> list[F.Record]:
    """Records of a ``train_set`` / ``val_set`` folder (images/ + annotations/)."""
    dropped = {} if dropped is None else dropped
    ann = folder / "annotations"
    if not ann.is_dir():
        raise FerlensError(f"{ann} does not exist; the AffectNet {folder.name} folder must hold images/ and "
                           "annotations/ (<id>_exp.npy, <id>_val.npy, <id>_aro.npy).")
    exp_files = sorted(ann.glob("*_exp.npy"), key=lambda p: (len(p.name), p.name))
    records = []
    for exp in tqdm(exp_files, desc=f"AffectNet {folder.name}: annotations", unit="img", leave=False,
                    disable=len(exp_files) < 2000 or None):
        sid = exp.name[: -len("_exp.npy")]
        text = _npy_scalar(exp)
        try:
            code = int(float(text))
            valence = float(_npy_scalar(ann / f"{sid}_val.npy"))
            arousal = float(_npy_scalar(ann / f"{sid}_aro.npy"))
        except ValueError:
            raise FerlensError(f"AffectNet annotations of {sid} in {ann} are not numbers; restore them from "
                               "the distribution.") from None
        label = map_code(code, str(exp), num_classes)
        if label is None:
            dropped[DROP_REASONS[code]] = dropped.get(DROP_REASONS[code], 0) + 1
            continue
        if label < 0:
            continue
        records.append(F.Record(str(folder / "images" / f"{sid}.jpg"), label,
                                {"valence": valence, "arousal": arousal}, f"{folder.name}/{sid}",
                                landmarks=_npy_landmarks(ann / f"{sid}_lnd.npy")))
    return records


def read_records(base: Path, part: str, num_classes: int, dropped: dict[str, int] | None = None) -> list[F.Record]:
    """All records of AffectNet's ``train`` or ``test`` (= validation) part, from either release."""
    if (base / LIST_DIR).is_dir():
        image_root = F.first_existing(base, IMAGE_DIRS)
        if image_root is None:
            raise FerlensError(f"No AffectNet image folder in {base}; put the images in "
                               f"{base / IMAGE_DIRS[0]} (the paths in the file lists are relative to it).")
        path = F.require_file(base / LIST_DIR / LIST_FILES[part], NAME, f"{LIST_DIR}/{LIST_FILES[part]}")
        return read_file_list(path, image_root, num_classes, dropped)
    if (base / NPY_DIRS[part]).is_dir():
        return read_npy_set(base / NPY_DIRS[part], num_classes, dropped)
    raise FerlensError(f"{base} holds neither {LIST_DIR}/{LIST_FILES[part]} nor {NPY_DIRS[part]}/annotations; "
                       "point the spec at the AffectNet root of either release.")


def load(root: str | None, split: str, **options: str) -> FERDataset:
    """Load one AffectNet split (see the module docstring for releases, labels and splits)."""
    F.check_options("affectnet", options, OPTIONS)
    F.check_split(split)
    num_classes = int(F.parse_choice("classes", options.get("classes", "7"), ("7", "8")))
    val_frac = F.parse_fraction("val_frac", options.get("val_frac", "0.1"))
    seed = F.parse_int("seed", options.get("seed", "0"), lo=0)
    strict = F.parse_bool("strict", options.get("strict", "0"))
    base = F.require_root(root, "affectnet", f"{LIST_DIR}/ or train_set/ and val_set/")
    dropped: dict[str, int] = {}
    records = read_records(base, "test" if split == "test" else "train", num_classes, dropped)
    if split != "test":  # the dropped counts are of the whole training list (train and val are carved from it)
        held = F.carve_split(np.asarray([r.label for r in records]), val_frac, seed)
        records = [r for r, h in zip(records, held) if h == (split == "val")]
    return F.file_dataset(NAME, split, records, canonical(num_classes), ATTR_KINDS, strict, dropped)
