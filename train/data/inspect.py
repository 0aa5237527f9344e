"""``train data info`` / ``train data check`` as library functions: what a dataset spec holds, and
which of its image files are missing or corrupt.

``info`` reads only metadata plus a small, evenly spaced sample of images per split; ``check`` decodes
every image of every split.
"""
from __future__ import annotations

import contextlib

import importlib
import warnings
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import FerlensError
from . import LOADERS, load_dataset, parse_spec
from ._files import N_NAMED, collecting_bad_rows, decode_problem
from .base import SPLITS, FERDataset


def _load_splits(spec: str, invalid: dict[str, list[str]] | None = None,
                 **override: str) -> tuple[dict[str, FERDataset], dict[str, str]]:
    """Every split of ``spec`` that loads, and the error message of each that does not.

    With ``invalid`` (a dict), invalid label rows/files do not stop a split: each adapter's sentence is
    recorded in ``invalid[split]`` and the row is left out (``_files.collecting_bad_rows``).

    Warnings about skipped files are silenced here: the skipped files are reported in the result.
    ``override`` replaces spec options (``check`` loads with ``strict`` off to see every bad file).
    """
    parsed = parse_spec(spec)
    options = {**parsed.options, **override}
    module_name, fn_name = LOADERS[parsed.name].split(":")
    loader = getattr(importlib.import_module(module_name), fn_name)
    loaded, errors = {}, {}
    for split in SPLITS:
        try:
            with warnings.catch_warnings(), collecting_bad_rows() if invalid is not None \
                    else contextlib.nullcontext() as bad:
                warnings.simplefilter("ignore")
                if invalid is not None:
                    invalid[split] = bad
                if override:
                    ds = loader(parsed.root, split, **options)
                    ds.spec, ds.split = parsed.text, split
                    if len(ds) == 0 and not getattr(ds, "skipped", None):
                        raise FerlensError(f"The {split} split of '{spec}' is empty; check the path and the "
                                           "split files.")
                else:
                    ds = load_dataset(spec, split)
            loaded[split] = ds
        except FerlensError as e:
            errors[split] = str(e)
    if not loaded:
        raise FerlensError(next(iter(errors.values())))
    return loaded, errors


def _attr_coverage(ds: FERDataset) -> dict[str, float]:
    """Share of samples with a non-None value, for every attr key."""
    keys = sorted({k for a in ds.attrs for k in a})
    n = max(1, len(ds))
    return {k: sum(a.get(k) is not None for a in ds.attrs) / n for k in keys}


def _size_stats(ds: FERDataset, sample: int) -> dict[str, Any]:
    """Width/height statistics over ``sample`` evenly spaced images (as returned, after crops)."""
    idx = np.unique(np.linspace(0, len(ds) - 1, num=min(sample, len(ds))).round().astype(int))
    sizes, bad = [], 0
    for i in idx:
        try:
            sizes.append(ds.load_image(int(i)).size)
        except (FerlensError, OSError, ValueError):
            bad += 1
    if not sizes:
        return {"sampled": int(len(idx)), "unreadable": bad}
    width, height = np.asarray(sizes, dtype=np.float64).T  # (S,), (S,)
    return {"sampled": int(len(idx)), "unreadable": bad,
            "width": {"min": int(width.min()), "mean": float(width.mean()), "max": int(width.max())},
            "height": {"min": int(height.min()), "mean": float(height.mean()), "max": int(height.max())}}


def info(spec: str, sample: int = 32) -> dict[str, Any]:
    """Counts per split and class, attribute coverage and image sizes of a dataset spec.

    Args:
        spec: a data spec (``rafdb:/data/RAF-DB``).
        sample: images decoded per split for the size statistics.

    Returns:
        ``{"spec", "dataset", "label_names", "attr_kinds", "total", "splits": {split: {"n",
        "class_counts": {name: n}, "skipped", "attr_coverage": {attr: fraction}, "image_size": {...}}
        | {"n": 0, "error": msg}}}``.
    """
    loaded, errors = _load_splits(spec)
    first = next(iter(loaded.values()))
    splits: dict[str, Any] = {}
    for split in SPLITS:
        if split in errors:
            splits[split] = {"n": 0, "error": errors[split]}
            continue
        ds = loaded[split]
        splits[split] = {
            "n": len(ds),
            "class_counts": dict(zip(ds.label_names, ds.class_counts().tolist())),
            "skipped": len(getattr(ds, "skipped", [])),
            "attr_coverage": _attr_coverage(ds),
            "image_size": _size_stats(ds, sample),
        }
    return {"spec": spec, "dataset": parse_spec(spec).name, "label_names": list(first.label_names),
            "attr_kinds": dict(first.attr_kinds), "soft_labels": first.soft_labels is not None,
            "total": sum(s["n"] for s in splits.values()), "splits": splits}


def _where(ds: FERDataset, index: int) -> str:
    path = getattr(ds, "image_path", None)
    return path(index) if path is not None else ds.sample_ids[index]


def check(spec: str, strict: bool = False) -> dict[str, Any]:
    """Decode every image of every split and list the missing and corrupt ones.

    Args:
        spec: a data spec; a ``strict`` option in it is ignored (every file is scanned either way).
        strict: raise a FerlensError after the scan when any file is missing or corrupt.

    Returns:
        ``{"spec", "ok", "n_checked", "n_bad", "splits": {split: {"n_listed", "n_ok", "missing": [...],
        "corrupt": [...]} | {"error": msg}}}``; ``missing``/``corrupt`` hold ``{"path", "problem"}``.
    """
    parsed = parse_spec(spec)
    invalid: dict[str, list[str]] = {}
    seen: set[str] = set()
    loaded, errors = _load_splits(spec, invalid, **({"strict": "0"} if parsed.name != "synthfer" else {}))
    splits: dict[str, Any] = {}
    n_checked = n_bad = 0
    for split in SPLITS:
        if split in errors:
            splits[split] = {"error": errors[split]}
            continue
        ds = loaded[split]
        missing, corrupt = [], []
        read = getattr(ds, "read_image", ds.load_image)  # raw decode errors when the dataset offers them
        for path, why in getattr(ds, "skipped", []):
            (missing if why == "missing" else corrupt).append({"path": path, "problem": why})
        for i in tqdm(range(len(ds)), desc=f"check {split}", unit="img", leave=False):
            why = decode_problem(lambda: read(i))
            if why is not None:
                (missing if why == "missing" else corrupt).append({"path": _where(ds, i), "problem": why})
        # a label file shared by the splits (RAF-DB's list) reports its rows once, under the first split
        labels = [{"path": next((w for w in msg.split() if "/" in w), parsed.text), "problem": msg}
                  for msg in dict.fromkeys(invalid.get(split, [])) if msg not in seen]
        seen.update(item["problem"] for item in labels)
        listed = len(ds) + len(getattr(ds, "skipped", [])) + len(labels)
        bad = len(missing) + len(corrupt) + len(labels)
        splits[split] = {"n_listed": listed, "n_ok": listed - bad, "missing": missing, "corrupt": corrupt,
                         "invalid": labels, "dropped": dict(getattr(ds, "dropped", {}) or {})}
        n_checked += listed
        n_bad += bad
    report = {"spec": spec, "ok": n_bad == 0 and not errors, "n_checked": n_checked, "n_bad": n_bad,
              "splits": splits}
    if strict and (n_bad or errors):
        raise FerlensError(problem_sentence(report))
    return report


def problem_sentence(report: dict[str, Any]) -> str:
    """One sentence summarising a ``check`` report's bad files (names the first few)."""
    errors = [s["error"] for s in report["splits"].values() if "error" in s]
    if errors and not report["n_bad"]:
        return errors[0]  # already one sentence naming the file and the fix
    labels = [item["problem"] for s in report["splits"].values() for item in s.get("invalid", [])]
    if labels:
        more = f" (and {len(labels) - 1} more invalid rows: 'train data check SPEC' lists them)" if len(labels) > 1 else ""
        return labels[0].rstrip(".") + more + "."
    bad = [item["path"] for s in report["splits"].values() for key in ("missing", "corrupt")
           for item in s.get(key, [])]
    more = f" and {len(bad) - N_NAMED} more" if len(bad) > N_NAMED else ""
    return (f"{report['n_bad']} of {report['n_checked']} images in '{report['spec']}' are missing or corrupt "
            f"({', '.join(bad[:N_NAMED])}{more}); restore or remove them.")
