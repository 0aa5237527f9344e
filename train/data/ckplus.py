"""CK+ (Extended Cohn-Kanade, Lucey et al., 2010), read as distributed.

Layout::

    ROOT/cohn-kanade-images/S005/001/S005_001_00000001.png ...      frames of one posed sequence
    ROOT/Emotion/S005/001/S005_001_00000011_emotion.txt             "3.0000000e+00" (labelled sequences)
    ROOT/Landmarks/S005/001/S005_001_00000001_landmarks.txt         68 "x y" lines (optional)

(``Emotion_labels/Emotion`` and ``extended-cohn-kanade-images/cohn-kanade-images`` are accepted too.)
CK+ codes 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise are mapped
to the canonical order. Only sequences with an emotion file are used: their last ``peak`` frames
(default 3) get the sequence's label and, with ``neutral=1`` (default), their first frame is a neutral
sample. Contempt sequences are dropped unless ``classes=8``. When the Landmarks folder is there
(``crop=landmarks``, the default when it exists) each frame is cropped to a square around its 68
landmarks with a 25% margin; CK+ frames are otherwise whole 640x490 photos. attrs: ``subject``
(categorical).

Splits: subject-disjoint folds. Subjects are shuffled with ``seed`` (default 0) and dealt into
``folds`` (default 10) folds; ``test`` is fold ``fold`` (default 0), ``val`` is fold ``fold + 1``
(mod folds), ``train`` the rest. Loop ``fold=0..folds-1`` for the usual k-fold protocol.

Options: ``fold=0``, ``folds=10``, ``peak=3``, ``neutral=1``, ``classes=7|8``, ``crop=landmarks|none``,
``seed=0``, ``strict=0|1``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FerlensError
from ..labels import canonical
from . import _files as F
from .base import FERDataset

NAME = "CK+"
CK_LABELS = ("neutral", "anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise")  # code
IMAGE_DIRS = ("cohn-kanade-images", "extended-cohn-kanade-images/cohn-kanade-images")
EMOTION_DIRS = ("Emotion", "Emotion_labels/Emotion")
LANDMARK_DIRS = ("Landmarks", "Landmarks/Landmarks")
MARGIN = 0.25
OPTIONS = ("fold", "folds", "peak", "neutral", "classes", "crop", "seed", "strict")


def read_emotion(path: Path) -> int | None:
    """The CK+ code in one ``*_emotion.txt``; out-of-range codes raise naming the file (None while
    ``train data check`` collects invalid files)."""
    text = path.read_text(encoding="utf-8", errors="replace").split()
    try:
        code = int(float(text[0]))
    except (ValueError, IndexError):
        F.bad_row(f"{path} line 1 does not hold a CK+ emotion code (0-7); restore it from the distribution.")
        return None
    if not 0 <= code < len(CK_LABELS):
        F.bad_row(f"{path} line 1 has emotion {code}, outside CK+'s 0-7; fix or remove that file.")
        return None
    return code


def landmark_box(path: Path) -> tuple[int, int, int, int] | None:
    """Square crop around one frame's landmarks (None when the file is absent or unreadable)."""
    if not path.is_file():
        return None
    try:
        pts = np.loadtxt(path, dtype=np.float64, ndmin=2)[:, :2]  # (68, 2)
    except ValueError:
        return None
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * MARGIN)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (int(round(cx - side / 2)), int(round(cy - side / 2)),
            int(round(cx + side / 2)), int(round(cy + side / 2)))


def check_frames(frames: list[Path], emotion: Path) -> bool:
    """A labelled sequence holds frames 1..K without gaps, K being the peak frame its emotion file names
    (``S005_001_00000011_emotion.txt`` -> 11 frames); a missing frame raises naming the folder (False
    while ``train data check`` collects invalid sequences)."""
    try:
        peak = int(emotion.name.split("_")[2])
        numbers = sorted(int(p.stem.split("_")[2]) for p in frames)
    except (IndexError, ValueError):
        return True  # non-standard names: nothing to check against
    missing = sorted(set(range(1, peak + 1)) - set(numbers))
    if missing:
        shown = ", ".join(str(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        F.bad_row(f"{frames[0].parent} is missing frame(s) {shown} of the {peak} that {emotion.name} "
                  "labels; restore the sequence from the distribution or remove its emotion file.")
        return False
    return True


def assign_folds(subjects: list[str], folds: int, seed: int) -> dict[str, int]:
    """Subject -> fold, by dealing a seeded permutation of the sorted subjects round-robin."""
    order = np.random.default_rng(seed).permutation(len(subjects))
    return {subjects[j]: pos % folds for pos, j in enumerate(order)}


def split_of(fold_of_subject: int, fold: int, folds: int) -> str:
    if fold_of_subject == fold:
        return "test"
    return "val" if fold_of_subject == (fold + 1) % folds else "train"


def sequence_records(frames: list[Path], code: int, subject: str, peak: int, neutral: bool,
                     names: list[str], landmarks: Path | None) -> list[F.Record]:
    """Peak frames (+ first frame as neutral) of one labelled sequence."""
    picks: list[tuple[Path, str]] = []
    if CK_LABELS[code] in names:
        picks += [(p, CK_LABELS[code]) for p in frames[-peak:]]
    if neutral and len(frames) > peak and "neutral" in names:
        picks.append((frames[0], "neutral"))
    out = []
    for path, label in picks:
        box = None
        if landmarks is not None:
            box = landmark_box(landmarks / path.parent.parent.name / path.parent.name
                               / f"{path.stem}_landmarks.txt")
        out.append(F.Record(str(path), names.index(label), {"subject": subject}, path.stem, box))
    return out


def load(root: str | None, split: str, **options: str) -> FERDataset:
    """Load one CK+ split (see the module docstring for frames, folds and options)."""
    F.check_options("ckplus", options, OPTIONS)
    F.check_split(split)
    folds = F.parse_int("folds", options.get("folds", "10"), lo=3)
    fold = F.parse_int("fold", options.get("fold", "0"), lo=0, hi=folds - 1)
    peak = F.parse_int("peak", options.get("peak", "3"), lo=1)
    neutral = F.parse_bool("neutral", options.get("neutral", "1"))
    num_classes = int(F.parse_choice("classes", options.get("classes", "7"), ("7", "8")))
    seed = F.parse_int("seed", options.get("seed", "0"), lo=0)
    strict = F.parse_bool("strict", options.get("strict", "0"))

    base = F.require_root(root, "ckplus", "cohn-kanade-images/ and Emotion/")
    images = F.first_existing(base, IMAGE_DIRS)
    emotions = F.first_existing(base, EMOTION_DIRS)
    if images is None or emotions is None:
        missing = IMAGE_DIRS[0] if images is None else EMOTION_DIRS[0]
        raise FerlensError(f"{base / missing} does not exist; the CK+ root must hold cohn-kanade-images/ "
                           "(frames) and Emotion/ (labels).")
    landmarks = F.first_existing(base, LANDMARK_DIRS)
    crop = F.parse_choice("crop", options.get("crop", "landmarks" if landmarks else "none"),
                          ("landmarks", "none"))
    if crop == "landmarks" and landmarks is None:
        raise FerlensError(f"crop=landmarks needs {base / LANDMARK_DIRS[0]}; add CK+'s Landmarks folder or "
                           "use crop=none.")
    names = canonical(num_classes)

    labelled = sorted(emotions.glob("S*/*/*_emotion.txt"))
    if not labelled:
        raise FerlensError(f"{emotions} holds no Sxxx/yyy/*_emotion.txt files; use CK+'s Emotion folder as "
                           "distributed.")
    subjects = sorted({p.parent.parent.name for p in labelled})
    if len(subjects) < folds:
        raise FerlensError(f"CK+ in {base} has {len(subjects)} labelled subjects, fewer than folds={folds}; "
                           f"use folds={max(3, len(subjects))} or fewer.")
    fold_of = assign_folds(subjects, folds, seed)

    records: list[F.Record] = []
    dropped: dict[str, int] = {}
    for emo in labelled:
        subject, seq = emo.parent.parent.name, emo.parent.name
        if split_of(fold_of[subject], fold, folds) != split:
            continue
        frames = F.list_images(images / subject / seq) if (images / subject / seq).is_dir() else []
        if not frames:
            F.bad_row(f"{images / subject / seq} holds no frames for {emo.name}; restore the "
                      "sequence or remove its emotion file.")
            continue
        code = read_emotion(emo) if check_frames(frames, emo) else None
        if code is None:
            continue
        if CK_LABELS[code] not in names:
            dropped["contempt peak frames (classes=7)"] = dropped.get("contempt peak frames (classes=7)", 0) + \
                min(peak, len(frames))
        records += sequence_records(frames, code, subject, peak, neutral, names,
                                    landmarks if crop == "landmarks" else None)
    return F.file_dataset(NAME, split, records, names, {"subject": "categorical"}, strict, dropped)
