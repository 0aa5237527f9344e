"""SynthFER on disk: RAF-DB "basic" layout, image-folder layout, and a contact sheet PNG.

RAF-DB layout (what ``rafdb:PATH`` readers expect)::

    EmoLabel/list_patition_label.txt        "train_00001.jpg 5" (RAF-DB codes 1..7, see RAFDB_LABELS)
    Image/aligned/train_00001_aligned.jpg
    Annotation/manual/train_00001_manu_attri.txt   5 landmark lines "x y", then gender, race, age

RAF-DB has no validation split: SynthFER's train and val identities become ``train_*`` files (val
after train), its test identities ``test_*``. Image-folder layout: ``{train,val,test}/<class>/<id>.png``.
Every file goes through ``train.io.atomic_write_*``; a ``synthfer.json`` manifest is written last.
``splits`` arguments below are ``{"train"|"val"|"test": SynthFER}``.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from ..errors import FerlensError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..labels import canonical
from ._synth_render import landmarks

# RAF-DB basic label codes: 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger, 7 neutral
RAFDB_LABELS: dict[str, int] = {"surprise": 1, "fear": 2, "disgust": 3, "happiness": 4, "sadness": 5,
                                "anger": 6, "neutral": 7}
FORMATS = ("rafdb", "folder")


def _encode(array: np.ndarray, fmt: str) -> bytes:
    """uint8 (H, W, 3) → JPEG (quality 95) or PNG bytes."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(array).save(buf, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _export_rafdb(out: Path, splits: dict) -> dict[str, int]:
    """Write the RAF-DB basic layout; returns file counts per RAF-DB split."""
    names = canonical(7)
    lines: list[str] = []
    groups = {"train": [splits["train"], splits["val"]], "test": [splits["test"]]}
    counts = {}
    for raf_split, datasets in groups.items():
        total = sum(len(d) for d in datasets)
        width = max(5 if raf_split == "train" else 4, len(str(total)))
        k = 0
        bar = tqdm(total=total, desc=f"export rafdb {raf_split}", unit="img")
        for ds in datasets:
            for i in range(len(ds)):
                k += 1
                stem = f"{raf_split}_{k:0{width}d}"
                atomic_write_bytes(out / "Image" / "aligned" / f"{stem}_aligned.jpg", _encode(ds.image_array(i), "JPEG"),
                                   fsync=False)  # thousands of small files: atomic rename, no fsync
                tr = ds.identity_traits(i)
                pts = landmarks(ds.factors(i))
                attri = "".join(f"{x:.2f}\t{y:.2f}\n" for x, y in pts) + f"{tr['gender']}\n{tr['race']}\n{tr['age']}\n"
                atomic_write_text(out / "Annotation" / "manual" / f"{stem}_manu_attri.txt", attri, fsync=False)
                lines.append(f"{stem}.jpg {RAFDB_LABELS[names[int(ds.labels[i])]]}")
                bar.update(1)
        bar.close()
        counts[raf_split] = total
    atomic_write_text(out / "EmoLabel" / "list_patition_label.txt", "\n".join(lines) + "\n")
    return counts


def _export_folder(out: Path, splits: dict) -> dict[str, int]:
    """Write ``<split>/<class>/<sample_id>.png``; returns file counts per split."""
    counts = {}
    for split, ds in splits.items():
        for i in tqdm(range(len(ds)), desc=f"export folder {split}", unit="img"):
            cls = ds.label_names[int(ds.labels[i])]
            atomic_write_bytes(out / split / cls / f"{ds.sample_ids[i]}.png", _encode(ds.image_array(i), "PNG"),
                               fsync=False)
        counts[split] = len(ds)
    return counts


EXPORTERS = {"rafdb": _export_rafdb, "folder": _export_folder}


def export(out_dir, *, size: int = 64, n: int = 12000, seed: int = 0, fmt: str = "rafdb") -> Path:
    """Render SynthFER and write it to ``out_dir`` in the RAF-DB or image-folder layout.

    Args:
        out_dir: destination folder (created; existing files with the same names are replaced).
        size, n, seed: the SynthFER set (as in the spec ``synthfer:size=..,n=..,seed=..``).
        fmt: ``rafdb`` or ``folder``.

    Returns:
        The output folder.
    """
    from .synthfer import SynthFER, parse_options  # synthfer re-exports this module's functions

    if fmt not in EXPORTERS:
        raise FerlensError(f"Unknown SynthFER export format '{fmt}'; use one of {', '.join(FORMATS)}.")
    size, n, seed = parse_options(size, n, seed)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FerlensError(f"{out} exists and is not a folder; pass a folder path to --out.")
    splits = {s: SynthFER(s, size=size, n=n, seed=seed) for s in ("train", "val", "test")}
    counts = EXPORTERS[fmt](out, splits)
    atomic_write_json(out / "synthfer.json", {
        "spec": f"synthfer:size={size},n={n},seed={seed}", "format": fmt, "counts": counts,
        "label_names": canonical(7), "rafdb_labels": RAFDB_LABELS if fmt == "rafdb" else None})
    return out


def _font(px: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def contact_sheet(path, *, size: int = 64, seed: int = 0, per_class: int = 8, n: int = 12000) -> Path:
    """A PNG grid of SynthFER training samples: one row per class, the class name on the left.

    Args:
        path: output PNG path.
        size, seed, n: the SynthFER set to show.
        per_class: samples per row (1..64).

    Returns:
        The written path.
    """
    from .synthfer import SynthFER, parse_options

    size, n, seed = parse_options(size, n, seed)
    if not 1 <= int(per_class) <= 64:
        raise FerlensError(f"per_class={per_class} is out of range; use 1 to 64 samples per class.")
    ds = SynthFER("train", size=size, n=n, seed=seed)
    tile = size * max(1, round(96 / size)) if size < 96 else size  # small images are shown enlarged
    pad, label_w = 4, 110
    rows = ds.num_classes
    sheet = Image.new("RGB", (label_w + per_class * (tile + pad) + pad, rows * (tile + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(16)
    for c, name in enumerate(ds.label_names):
        y = pad + c * (tile + pad)
        draw.text((6, y + tile // 2 - 9), name, fill=(0, 0, 0), font=font)
        for k, i in enumerate(np.flatnonzero(ds.labels == c)[:per_class]):
            img = Image.fromarray(ds.image_array(int(i))).resize((tile, tile), Image.NEAREST)
            sheet.paste(img, (label_w + pad + k * (tile + pad), y))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
