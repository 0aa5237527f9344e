"""FERPlus: the FER2013 images relabelled by 10 annotators (Barsoum et al., 2016).

Layout: ``ROOT/fer2013new.csv`` (``Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,
fear,contempt,unknown,NF`` vote counts, rows aligned with fer2013.csv) and ``fer2013.csv`` (the pixels)
in ROOT or its parent folder. Rows with an empty ``Image name`` are the images FERPlus removed. Usage
``Training`` / ``PublicTest`` / ``PrivateTest`` -> ``train`` / ``val`` / ``test``. Classes: the 8
canonical ones (with contempt); ``classes=7`` drops contempt samples (and the contempt column).

Label modes (``mode=``), following the reference code (microsoft/FERPlus ``src/ferplus.py``):
  majority     (default) votes of 1 are dropped as outliers; the top emotion must hold more than half of
               the remaining votes (unknown and NF votes count in the total); images whose winner is
               unknown or NF, or without such a majority, are dropped.
  probability  soft targets: the reference ``probability`` rule (after dropping single votes, take the
               top emotions, at most 3, until 75% of the votes are covered; drop the image when 50% or
               less are covered or the winner is unknown/NF), renormalised over the emotions ->
               ``soft_labels``; ``labels`` is its argmax.
  plurality    the emotion with the most raw votes (first in FERPlus column order on ties); images whose
               most-voted column is unknown or NF, or without votes, are dropped.

The folders written by FERPlus' ``generate_training_data.py`` are read too: ``ROOT/FER2013Train``,
``FER2013Valid``, ``FER2013Test`` (-> train / val / test), each with ``fer*.png`` images and a
header-less ``label.csv`` (``fer0000000.png,"(0, 0, 48, 48)",<10 vote counts>``); the same label
modes apply. The CSV pair is used when both layouts are present.

Options: ``mode=majority|probability|plurality``, ``classes=8|7``, ``strict=0|1``.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from ..errors import FerlensError
from ..labels import canonical
from . import _files as F
from .base import FERDataset
from .fer2013 import CSV_NAME as PIXELS_CSV, USAGE_SPLIT, PixelDataset, check_pixels, read_rows

NAME = "FERPlus"
VOTES_CSV = "fer2013new.csv"
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF")
N_EMOTIONS = 8  # the first 8 vote columns are emotions; unknown and NF follow
DROP_NO_WINNER = "winner unknown/NF or no majority (mode's rule)"
DROP_CONTEMPT = "contempt only (classes=7)"
MODES = ("majority", "probability", "plurality")
OPTIONS = ("mode", "classes", "strict")
FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}


def _drop_single_votes(votes: np.ndarray) -> np.ndarray:
    """The reference outlier removal: counts of 1 (or less) become 0."""
    return np.where(votes < 1.0 + sys.float_info.epsilon, 0.0, votes)


def majority_distribution(votes: np.ndarray) -> np.ndarray | None:
    """Reference ``majority`` rule on one row of 10 vote counts -> 8-way one-hot, or None (dropped)."""
    v = _drop_single_votes(np.asarray(votes, dtype=np.float64))
    total = v.sum()
    top = int(np.argmax(v))
    if not v[top] > 0.5 * total or top >= N_EMOTIONS:
        return None
    out = np.zeros(N_EMOTIONS)
    out[top] = 1.0
    return out


def probability_distribution(votes: np.ndarray) -> np.ndarray | None:
    """Reference ``probability`` rule on one row of 10 vote counts -> 8-way distribution, or None.

    A line-by-line port of ``FERPlusReader._process_data(mode='probability')``: the tie handling of
    the greedy top-3 loop is the reference's own, so it is written out by hand.
    """
    raw = list(_drop_single_votes(np.asarray(votes, dtype=np.float64)))
    size, total = len(raw), sum(raw)
    emotion = [0.0] * size
    covered, count, valid = 0.0, 0, True
    while covered < 0.75 * total and count < 3 and valid:
        top = max(raw)
        for i in range(size):
            if raw[i] == top:
                emotion[i], raw[i] = top, 0.0
                covered += emotion[i]
                count += 1
                if i >= N_EMOTIONS:  # unknown or NF ties with the current maximum
                    valid = False
                    if sum(emotion) > top:  # emotions came before unknown/NF: keep those
                        emotion[i] = 0.0
                        count -= 1
                    break
    if sum(emotion) <= 0.5 * total or count > 3:
        return None
    dist = np.asarray(emotion)
    if int(np.argmax(dist)) >= N_EMOTIONS:
        return None
    return dist[:N_EMOTIONS] / dist[:N_EMOTIONS].sum()


def plurality_distribution(votes: np.ndarray) -> np.ndarray | None:
    """Most raw votes wins (first column on ties) -> 8-way one-hot, or None for unknown/NF/no votes."""
    v = np.asarray(votes, dtype=np.float64)
    top = int(np.argmax(v))
    if v[top] <= 0 or top >= N_EMOTIONS:
        return None
    out = np.zeros(N_EMOTIONS)
    out[top] = 1.0
    return out


RULES = {"majority": majority_distribution, "probability": probability_distribution,
         "plurality": plurality_distribution}


def to_canonical(dist: np.ndarray, num_classes: int) -> np.ndarray | None:
    """Reorder an 8-way FERPlus-order distribution into canonical order (7 drops contempt)."""
    names = canonical(num_classes)
    out = np.zeros(num_classes)
    for j, name in enumerate(VOTE_COLUMNS[:N_EMOTIONS]):
        if name in names:
            out[names.index(name)] = dist[j]
    total = out.sum()
    return out / total if total > 0 else None


def find_pixels_csv(base: Path) -> Path:
    """fer2013.csv in the FERPlus root or its parent."""
    for folder in (base, base.parent):
        if (folder / PIXELS_CSV).is_file():
            return folder / PIXELS_CSV
    raise FerlensError(f"FERPlus takes its pixels from {PIXELS_CSV}, which is in neither {base} nor "
                       f"{base.parent}; copy FER2013's {PIXELS_CSV} next to {VOTES_CSV}.")


def read_votes(path: Path) -> list[tuple[int, str, str, np.ndarray]]:
    """Rows of fer2013new.csv as ``(line number, usage, image name, (10,) votes)``."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise FerlensError(f"{path} is empty; use fer2013new.csv as distributed by FERPlus.")
        cols = F.require_columns(header, ("Usage", "Image name", *VOTE_COLUMNS), path)
        for row in reader:
            if not row:
                continue
            try:
                votes = np.asarray([float(row[cols[c]]) for c in VOTE_COLUMNS])
            except (ValueError, IndexError):
                raise FerlensError(f"{path} line {reader.line_num} does not hold 10 numeric vote counts; "
                                   "restore the file from the FERPlus distribution.") from None
            if (votes < 0).any():
                raise FerlensError(f"{path} line {reader.line_num} has a negative vote count; restore the "
                                   "file from the FERPlus distribution.")
            rows.append((reader.line_num, row[cols["Usage"]].strip(), row[cols["Image name"]].strip(), votes))
    return rows


def load_folders(folder: Path, split: str, mode: str, num_classes: int, strict: bool) -> FERDataset:
    """One split of the ``generate_training_data.py`` layout (PNG folder + header-less label.csv)."""
    label_csv = F.require_file(folder / "label.csv", NAME, f"{folder.name}/label.csv")
    records, dropped = [], {}
    with open(label_csv, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            if not row:
                continue
            try:
                votes = np.asarray([float(v) for v in row[2:12]])
            except ValueError:
                votes = np.zeros(0)
            if len(votes) != len(VOTE_COLUMNS) or (votes < 0).any():
                F.bad_row(f"{label_csv} line {reader.line_num} does not hold an image name, a box and "
                          "10 vote counts; regenerate it with FERPlus' generate_training_data.py.")
                continue
            dist = RULES[mode](votes)
            why = DROP_NO_WINNER if dist is None else None
            dist = to_canonical(dist, num_classes) if dist is not None else None
            if dist is None:
                why = why or DROP_CONTEMPT
                dropped[why] = dropped.get(why, 0) + 1
            else:
                records.append(F.Record(str(folder / row[0]), int(np.argmax(dist)), {}, Path(row[0]).stem,
                                        soft=dist.astype(np.float32) if mode == "probability" else None))
    return F.file_dataset(NAME, split, records, canonical(num_classes), {}, strict, dropped)


def load(root: str | None, split: str, **options: str) -> FERDataset:
    """Load one FERPlus split (see the module docstring for layout, modes and splits)."""
    F.check_options("ferplus", options, OPTIONS)
    F.check_split(split)
    mode = F.parse_choice("mode", options.get("mode", "majority"), MODES)
    num_classes = int(F.parse_choice("classes", options.get("classes", "8"), ("8", "7")))
    strict = F.parse_bool("strict", options.get("strict", "0"))
    base = F.require_root(root, "ferplus", f"{VOTES_CSV} and {PIXELS_CSV}")
    base = base.parent if base.is_file() else base
    if not (base / VOTES_CSV).is_file() and (base / FOLDERS["train"]).is_dir():
        return load_folders(base / FOLDERS[split], split, mode, num_classes, strict)
    votes_path = F.require_file(base / VOTES_CSV, NAME, VOTES_CSV)
    vote_rows = read_votes(votes_path)
    pixels_path = find_pixels_csv(base)
    rule = RULES[mode]

    pixels, labels, soft, ids, skipped, total, dropped, where = [], [], [], [], [], 0, {}, []
    n_pixel_rows = 0
    for i, lineno, row in read_rows(pixels_path):
        n_pixel_rows += 1
        if i >= len(vote_rows):
            continue
        v_line, usage, image_name, votes = vote_rows[i]
        if usage not in USAGE_SPLIT:
            F.bad_row(f"{votes_path} line {v_line} has Usage '{usage}'; use Training, PublicTest or "
                      "PrivateTest.")
            continue
        if USAGE_SPLIT[usage] != split or not image_name:
            continue
        dist = rule(votes)
        why = DROP_NO_WINNER if dist is None else None
        dist = to_canonical(dist, num_classes) if dist is not None else None
        if dist is None:
            why = why or DROP_CONTEMPT
            dropped[why] = dropped.get(why, 0) + 1
            continue
        total += 1
        why = check_pixels(row["pixels"])
        if why:
            skipped.append((f"{pixels_path.name} line {lineno}", why))
            continue
        pixels.append(row["pixels"])
        soft.append(dist)
        labels.append(int(np.argmax(dist)))
        ids.append(Path(image_name).stem)
        where.append(f"{pixels_path.name} line {lineno}")
    if n_pixel_rows != len(vote_rows):
        raise FerlensError(f"{votes_path} has {len(vote_rows)} rows but {pixels_path} has {n_pixel_rows}; "
                           "FERPlus rows must align one-to-one with the original fer2013.csv.")
    F.report_skipped(NAME, split, skipped, total, strict)
    F.report_dropped(NAME, split, dropped, total + sum(dropped.values()))
    soft_labels = np.asarray(soft, dtype=np.float32).reshape(-1, num_classes) if mode == "probability" else None
    ds = PixelDataset(pixels, np.asarray(labels, dtype=np.int64), canonical(num_classes), ids,
                      soft_labels=soft_labels, skipped=skipped, locations=where)
    ds.dropped = dropped
    return ds
