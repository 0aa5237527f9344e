"""Datasets: one ``load_dataset(spec, split)`` entry for SynthFER and the real FER datasets.

Spec strings (DESIGN.md): ``synthfer[:size=64,n=12000,seed=0]``, ``rafdb:PATH``, ``ferplus:PATH``,
``fer2013:PATH``, ``affectnet:PATH``, ``ckplus:PATH``, ``folder:PATH``. Options after the path are
``,key=value`` pairs, e.g. ``ferplus:/data/fer,mode=probability`` or ``affectnet:/data/an,classes=8``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..errors import FerlensError, close_matches
from .base import SPLITS, FERDataset, collate

# name -> "module:function". The function is called as fn(root: str | None, split: str, **options)
# and returns a FERDataset. Modules are imported lazily so `train --help` stays fast.
LOADERS: dict[str, str] = {
    "synthfer": "train.data.synthfer:load",
    "rafdb": "train.data.rafdb:load",
    "fer2013": "train.data.fer2013:load",
    "ferplus": "train.data.ferplus:load",
    "affectnet": "train.data.affectnet:load",
    "ckplus": "train.data.ckplus:load",
    "folder": "train.data.folder:load",
}


@dataclass
class DataSpec:
    """A parsed spec string: ``name[:PATH][,key=value...]`` (synthfer: ``synthfer[:key=value,...]``)."""

    name: str
    root: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    @property
    def slug(self) -> str:
        """A filesystem-safe short name for folders, e.g. ``synthfer-size64-n2000-seed0``."""
        import hashlib
        import re

        if self.name == "synthfer":
            parts = [self.name] + [f"{k}{v}" for k, v in sorted(self.options.items())]
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))
        digest = hashlib.sha1(self.text.encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"


def parse_spec(spec: str) -> DataSpec:
    """Parse a data spec string.

    Args:
        spec: e.g. ``synthfer:size=64,n=2000``, ``rafdb:/data/RAF-DB``, ``folder:./faces,strict=1``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise FerlensError("The data spec is empty; pass one such as 'synthfer:size=64,n=2000' or 'rafdb:/path/to/RAF-DB'.")
    spec = spec.strip()
    name, _, rest = spec.partition(":")
    name = name.strip().lower()
    if name not in LOADERS:
        raise FerlensError(f"Unknown dataset '{name}' in spec '{spec}'; use one of {', '.join(LOADERS)}."
                           + close_matches(name, LOADERS))
    root: str | None = None
    options: dict[str, str] = {}
    pieces = [p for p in rest.split(",")] if rest else []
    for i, piece in enumerate(pieces):
        if i == 0 and name != "synthfer":
            root = piece.strip()  # the first field of a real dataset's spec is always its path
        elif "=" in piece:
            key, _, value = piece.partition("=")
            options[key.strip()] = value.strip()
        elif piece.strip():
            raise FerlensError(f"Cannot read '{piece}' in data spec '{spec}'; options are written key=value, "
                               "separated by commas.")
    if name != "synthfer" and not root:
        raise FerlensError(f"The spec '{spec}' has no path; write it as '{name}:/path/to/{name}'.")
    return DataSpec(name=name, root=root, options=options, text=spec)


def load_dataset(spec: str, split: str = "train", transform=None) -> FERDataset:
    """Load a dataset split from a spec string.

    Args:
        spec: dataset spec (see module docstring).
        split: ``train``, ``val`` or ``test``.
        transform: optional callable applied to each PIL image.

    Returns:
        A ``FERDataset`` yielding ``(image, label, attrs, sample_id)``.
    """
    if split not in SPLITS:
        raise FerlensError(f"Unknown split '{split}'; use one of {', '.join(SPLITS)}.")
    parsed = parse_spec(spec)
    module_name, fn_name = LOADERS[parsed.name].split(":")
    loader = getattr(importlib.import_module(module_name), fn_name)
    ds = loader(parsed.root, split, **parsed.options)
    if len(ds) == 0:
        raise FerlensError(f"The {split} split of '{spec}' is empty; check the path and the split files.")
    ds.spec = parsed.text
    ds.split = split
    ds.transform = transform
    return ds


__all__ = ["DataSpec", "FERDataset", "LOADERS", "SPLITS", "collate", "load_dataset", "parse_spec"]
