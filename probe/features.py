"""Token feature store: one frozen pass through a model, every layer's CLS / patch / stem readouts on disk.

``extract(model, dataset)`` returns an in-memory ``FeatureSet``; ``extract_to_disk(run, spec, split)``
writes ``artifacts/runs/<run>/features/<data-slug>-<split>/`` (docs/contracts.md "Probe artifacts"):

* arrays are preallocated with ``np.lib.format.open_memmap`` under temporary names and filled batch by
  batch, so memory stays bounded for datasets larger than RAM;
* ``progress.json`` records how many samples each rank finished: a killed extraction resumes where it
  stopped; on completion the arrays are renamed into place (``os.replace``) and ``index.json`` is
  written atomically with ``complete: true``;
* a fingerprint of (weights sha256, model config, input config, data spec, split) decides whether an
  existing folder is re-used or re-extracted;
* under ``torchrun --nproc_per_node N`` rank r takes samples r, r+N, ... and writes its rows of the
  shared memory-mapped arrays; rank 0 waits for all ranks and finalizes the folder.

Readouts (DESIGN.md): ``cls`` = the CLS token of ``blocks.{i}``, ``patch`` = mean of its patch tokens,
``patch_max`` = max over patch tokens, ``stem`` = global average pool of the CNN stage that feeds the
tokens, ``patch@r,c`` = one grid position (needs ``patch_tokens=True``). Where the CLS and the patches
sit in each layer's sequence comes from the model adapter (``train.models.adapters.model_spec``): every
prefix token (CLS, registers, a distilled DeiT's distillation token) is excluded from the patch readouts,
and layers without a CLS token (CaiT's patch blocks) have no ``cls`` readout.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from train.errors import FerlensError, close_matches
from train.io import atomic_write_json, read_json

# Test hook: FERLENS_DEBUG_KILL_AT_SAMPLE=N SIGKILLs the extraction once N samples of this rank are on disk.
DEBUG_KILL_ENV = "FERLENS_DEBUG_KILL_AT_SAMPLE"

FEATURES_VERSION = 1
READOUTS = ("cls", "patch", "patch_max")  # stored per layer; "stem" and "patch@r,c" are derived
_PATCH_AT = re.compile(r"^patch@(\d+),(\d+)$")


# ----------------------------------------------------------------------------- the in-memory view

@dataclass
class FeatureSet:
    """Cached readouts of one (run, data spec, split), arrays possibly memory-mapped.

    Attributes:
        layers: hook names of the token layers, ``["tokens", "blocks.0", ...]``.
        patch_layers: the layers that still have patch tokens (all of them except for ``clsonly``).
        arrays: ``cls`` (n, len(cls_layers), D); ``patch`` and ``patch_max`` (n, len(patch_layers), D).
        stem: (n, C) GAP of the CNN stage ``stem_layer`` (None when not stored).
        labels: (n,) int64 expression labels; ``label_names`` their names.
        attrs: ``{name: [n values]}``; ``attr_kinds`` ``{name: categorical|continuous}`` (probe targets).
        sample_ids: n ids.
        patch_tokens: optional (n, len(patch_layers), N, D) float16.
        grid_size: token grid (H, W).
        meta: the ``index.json`` dict (empty for in-memory sets).
        cls_layers: the layers that hold a CLS token (default: all ``layers``; CaiT: its class blocks).
    """

    layers: list[str]
    patch_layers: list[str]
    arrays: dict[str, np.ndarray]
    labels: np.ndarray
    label_names: list[str]
    attrs: dict[str, list]
    attr_kinds: dict[str, str]
    sample_ids: list[str]
    stem: np.ndarray | None = None
    stem_layer: str | None = None
    patch_tokens: np.ndarray | None = None
    grid_size: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    cls_layers: list[str] | None = None

    def __post_init__(self) -> None:
        if self.cls_layers is None:
            self.cls_layers = list(self.layers)

    @property
    def n(self) -> int:
        return len(self.labels)

    def readout_names(self) -> list[str]:
        """Readouts this set can serve (``patch@r,c`` written generically)."""
        names = [r for r in READOUTS if r in self.arrays]
        if self.stem is not None:
            names.append("stem")
        if self.patch_tokens is not None:
            names.append("patch@r,c")
        return names

    def layers_for(self, readout: str) -> list[str]:
        """The layers at which ``readout`` exists."""
        self._check_readout(readout)
        if readout == "stem":
            return [self.stem_layer]
        return list(self.cls_layers) if readout == "cls" else list(self.patch_layers)

    def _check_readout(self, readout: str) -> None:
        m = _PATCH_AT.match(readout)
        if m:
            if self.patch_tokens is None:
                raise FerlensError(f"Readout '{readout}' needs all patch tokens; re-extract with "
                                   "'probe extract --patch-tokens' (or pass --patch-tokens to probe linear).")
            r, c = int(m.group(1)), int(m.group(2))
            gh, gw = self.grid_size
            if not (0 <= r < gh and 0 <= c < gw):
                raise FerlensError(f"Readout '{readout}' is outside the {gh}x{gw} token grid; use patch@r,c with "
                                   f"0 <= r < {gh} and 0 <= c < {gw}.")
            return
        valid = self.readout_names()
        if readout not in valid:
            raise FerlensError(f"Unknown readout '{readout}'; valid readouts are {', '.join(valid)}."
                               + close_matches(readout, valid))

    def readout(self, name: str, layer: str) -> np.ndarray:
        """Features (n, D) of readout ``name`` at hook ``layer`` (``stem.stage{k}`` for ``stem``)."""
        self._check_readout(name)
        layers = self.layers_for(name) if not name.startswith("patch@") else self.patch_layers
        if layer not in layers:
            raise FerlensError(f"Readout '{name}' does not exist at layer '{layer}'; valid layers are "
                               f"{', '.join(layers)}." + close_matches(layer, layers))
        if name == "stem":
            return self.stem
        m = _PATCH_AT.match(name)
        if m:
            pos = int(m.group(1)) * self.grid_size[1] + int(m.group(2))
            return np.asarray(self.patch_tokens[:, self.patch_layers.index(layer), pos], dtype=np.float32)
        index = (self.cls_layers if name == "cls" else self.patch_layers).index(layer)
        return self.arrays[name][:, index]

    def resolve_layers(self, spec: str | Sequence[str | int]) -> list[str]:
        """``"all"``, python-style indices into ``layers`` (``0`` = tokens, ``-1`` = last block) or hook names."""
        if isinstance(spec, str):
            if spec.strip() == "all":
                return list(self.layers)
            spec = [s.strip() for s in spec.split(",") if s.strip()]
        out = []
        for item in spec:
            if isinstance(item, str) and re.fullmatch(r"-?\d+", item):
                item = int(item)
            if isinstance(item, int):
                if not -len(self.layers) <= item < len(self.layers):
                    raise FerlensError(f"Layer index {item} is out of range; this model has {len(self.layers)} "
                                       f"layers ({self.layers[0]} .. {self.layers[-1]}), use -{len(self.layers)}.."
                                       f"{len(self.layers) - 1}, 'all' or hook names.")
                out.append(self.layers[item])
            elif item in self.layers:
                out.append(item)
            else:
                raise FerlensError(f"Unknown layer '{item}'; valid layers are {', '.join(self.layers)}, indices "
                                   "into them (0 = tokens, -1 = last block) or 'all'." + close_matches(str(item), self.layers))
        return list(dict.fromkeys(out))

    def pairs(self, readouts: Sequence[str] | str, layers: Sequence[str | int] | str = "all") -> list[tuple[str, str, int]]:
        """(readout, layer, layer_index) for every requested readout at every requested layer where it exists.

        ``layer_index`` follows docs/contracts.md: 0 = tokens, i+1 = blocks.i, -1 = stem.
        """
        if isinstance(readouts, str):
            readouts = split_readouts(readouts)
        chosen = self.resolve_layers(layers)
        out = []
        for r in readouts:
            self._check_readout(r)
            if r == "stem":
                out.append((r, self.stem_layer, -1))
                continue
            have = self.patch_layers if r != "cls" else self.cls_layers
            out += [(r, layer, self.layers.index(layer)) for layer in chosen if layer in have]
        return out

    def target_names(self) -> list[str]:
        """``expression`` and every attr with a known kind."""
        return ["expression"] + [a for a in self.attr_kinds if a in self.attrs]

    def target(self, name: str) -> tuple[np.ndarray, str]:
        """(values (n,), kind) of a probe target."""
        valid = self.target_names()
        if name not in valid:
            raise FerlensError(f"Unknown target '{name}'; valid targets are {', '.join(valid)}." + close_matches(name, valid))
        if name == "expression":
            return np.asarray(self.labels), "categorical"
        return np.asarray(self.attrs[name]), self.attr_kinds[name]


def split_readouts(text: str) -> list[str]:
    """``"cls,patch,patch@1,2"`` → ``["cls", "patch", "patch@1,2"]`` (the comma inside ``@r,c`` is kept)."""
    out: list[str] = []
    for piece in [p.strip() for p in text.split(",") if p.strip()]:
        if out and re.fullmatch(r"\d+", piece) and re.fullmatch(r"patch@\d+", out[-1]):
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


# ----------------------------------------------------------------------------- the forward pass

@dataclass
class Layout:
    """Shapes of one model's readouts, discovered from one forward."""

    layers: list[str]
    cls_layers: list[str]
    patch_layers: list[str]
    stem_layer: str | None
    dim: int
    stem_dim: int
    num_patches: int
    grid_size: tuple[int, int]


def token_layers(model) -> list[str]:
    """The residual-stream hook names in forward order (``["tokens", "blocks.0", ...]``; from the model spec)."""
    from train.models.adapters import model_spec

    return list(model_spec(model).token_layers)


def stem_layer(model) -> str | None:
    """The hook of the CNN stage that feeds the tokens (ferlens: ``stem.stage{model.stem_stage}``), if any."""
    from train.models.adapters import model_spec

    return model_spec(model).stem_layer


def batch_readouts(model, images, *, layers: Sequence[str], stem: str | None, patch_tokens: bool = False,
                   readouts: Sequence[str] = READOUTS) -> dict[str, np.ndarray]:
    """One frozen forward → readouts of every layer for a batch.

    Args:
        model: a model ``model_spec`` understands, in eval mode.
        images: (B, 3, H, W) on the model's device.
        layers: token hook names (``tokens``, ``blocks.i``).
        stem: CNN stage hook name for the ``stem`` readout, or None.
        patch_tokens: also return all patch tokens (float16).

    Returns:
        ``cls`` (B, Lc, D) float32 over the layers with a CLS token; ``patch``/``patch_max`` (B, Lp, D) over
        the layers with patches (every prefix token excluded); ``stem`` (B, C); ``patch_tokens``
        (B, Lp, N, D) float16. Which layers have which is ``model_spec(model).layout(name)``.
    """
    import torch

    from train.models.adapters import model_spec

    from .cache import run_with_cache

    spec = model_spec(model)
    names = list(layers) + ([stem] if stem else [])
    with torch.inference_mode():
        cache = run_with_cache(model, images, names=names)
    _check_token_shapes(cache, layers, type(model).__name__)
    cls = [spec.cls(cache[n], n) for n in layers if spec.layout(n).cls_index is not None]       # each (B, D)
    patches = [spec.patches(cache[n], n) for n in layers if spec.layout(n).patches]            # each (B, N, D)
    out: dict[str, np.ndarray] = {}
    if cls:
        out["cls"] = torch.stack(cls, 1).float().cpu().numpy()
    if patches:
        if "patch" in readouts:
            out["patch"] = torch.stack([p.mean(1) for p in patches], 1).float().cpu().numpy()
        if "patch_max" in readouts:
            out["patch_max"] = torch.stack([p.amax(1) for p in patches], 1).float().cpu().numpy()
        if patch_tokens:
            out["patch_tokens"] = torch.stack(patches, 1).half().cpu().numpy()
    if stem:
        out["stem"] = cache[stem].float().mean((2, 3)).cpu().numpy()  # (B, C)
    return out


def _check_token_shapes(cache: dict[str, Any], layers: Sequence[str], model_name: str) -> None:
    """Every token hook must hold a (B, T, D) sequence with one D (a hook map pointing at a CNN stage or at
    modules of different widths would otherwise fail deep inside torch.stack)."""
    dims = {}
    for name in layers:
        shape = tuple(getattr(cache[name], "shape", ()))
        if len(shape) != 3:
            raise FerlensError(f"The hook point '{name}' of {model_name} holds a tensor of shape {shape}, not a token "
                               "sequence (B, T, D); point it at a module that outputs tokens (fix model.hook_map "
                               "in the run config or --hook-map).")
        dims[name] = shape[-1]
    if len(set(dims.values())) > 1:
        shown = ", ".join(f"{k}: D={v}" for k, v in list(dims.items())[:4])
        raise FerlensError(f"The token hook points of {model_name} differ in width ({shown}); map 'blocks' to modules "
                           "of one residual stream (fix model.hook_map in the run config or --hook-map).")


def discover_layout(model, image) -> Layout:
    """Run one image (3, H, W) through ``model`` to learn the readout shapes (layers from the model spec)."""
    import torch

    from train.models.adapters import model_spec

    from .cache import run_with_cache

    spec = model_spec(model)
    layers = list(spec.token_layers)
    if not layers:
        raise FerlensError(f"ferlens does not know where the tokens of {type(model).__name__} live; describe them "
                           "with --hook-map NAME=MODULE_PATH (e.g. blocks=layers tokens=embed stem.stage3=cnn.layer3).")
    stem = spec.stem_layer
    with torch.inference_mode():
        cache = run_with_cache(model, image[None].to(_device(model)), names=layers + ([stem] if stem else []))
    patch_layers = [n for n in layers if spec.layout(n).patches]
    n_patches = int(spec.patches(cache[patch_layers[0]], patch_layers[0]).shape[1]) if patch_layers else 0
    grid = spec.grid(n_patches) if n_patches else (0, 0)
    return Layout(layers=layers, cls_layers=[n for n in layers if spec.layout(n).cls_index is not None],
                  patch_layers=patch_layers, stem_layer=stem, dim=int(cache[layers[0]].shape[-1]),
                  stem_dim=int(cache[stem].shape[1]) if stem else 0, num_patches=n_patches,
                  grid_size=(int(grid[0]), int(grid[1])))


def _device(model):
    return next(model.parameters()).device


def _loader(dataset, indices: Sequence[int], batch_size: int, num_workers: int = 0):
    from torch.utils.data import DataLoader, Subset

    from train.data import collate

    return DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=collate)


def _iter_batches(model, dataset, indices: Sequence[int], *, layout: Layout, batch_size: int,
                  patch_tokens: bool, readouts: Sequence[str], desc: str, progress: bool
                  ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield (offset into ``indices``, batch readouts) for consecutive batches."""
    from tqdm.auto import tqdm

    device = _device(model)
    offset = 0
    quiet = {} if progress else {"disable": True}  # an explicit disable=False would override TQDM_DISABLE
    bar = tqdm(total=len(indices), desc=desc, unit="img", **quiet)
    for images, *_ in _loader(dataset, indices, batch_size):
        if not hasattr(images, "shape"):
            raise FerlensError("The dataset yields PIL images; load it with transform=train.engine.make_eval_transform(config).")
        out = batch_readouts(model, images.to(device), layers=layout.layers, stem=layout.stem_layer,
                             patch_tokens=patch_tokens, readouts=readouts)
        yield offset, out
        offset += len(images)
        bar.update(len(images))
    bar.close()


def _metadata(dataset) -> dict[str, Any]:
    kinds = dict(getattr(dataset, "attr_kinds", {}) or {})
    keys = list(dict.fromkeys(list(kinds) + (list(dataset.attrs[0]) if len(dataset.attrs) else [])))
    attrs = {k: [a.get(k) for a in dataset.attrs] for k in keys}
    attrs = {k: [v.item() if isinstance(v, np.generic) else v for v in vals] for k, vals in attrs.items()}
    return {"labels": np.asarray(dataset.labels, dtype=np.int64), "label_names": list(dataset.label_names),
            "attrs": attrs, "attr_kinds": kinds, "sample_ids": [str(s) for s in dataset.sample_ids]}


def extract(model, dataset, *, batch_size: int = 64, readouts: Sequence[str] = READOUTS,
            patch_tokens: bool = False, device: str = "cpu", progress: bool = True) -> FeatureSet:
    """Extract every layer's readouts of ``dataset`` in memory (see ``extract_to_disk`` for large sets).

    Args:
        model: a ferlens hybrid (put in eval mode here; weights are not changed).
        dataset: a FERDataset whose transform yields (3, H, W) tensors (``make_eval_transform``).
        batch_size: images per forward.
        readouts: which of ``cls``, ``patch``, ``patch_max`` to keep (``stem`` is always kept).
        patch_tokens: also keep all patch tokens (float16) for ``patch@r,c``.
        device: torch device.

    Returns:
        A FeatureSet with arrays in memory.
    """
    _check_readouts(readouts)
    model = model.eval().to(device)
    layout = discover_layout(model, dataset[0][0])
    chunks: dict[str, list[np.ndarray]] = {}
    for _, out in _iter_batches(model, dataset, range(len(dataset)), layout=layout, batch_size=batch_size,
                                patch_tokens=patch_tokens, readouts=readouts, desc="extract", progress=progress):
        for k, v in out.items():
            chunks.setdefault(k, []).append(v)
    arrays = {k: np.concatenate(v) for k, v in chunks.items()}
    meta = _metadata(dataset)
    return FeatureSet(layers=layout.layers, patch_layers=layout.patch_layers,
                      arrays={k: arrays[k] for k in READOUTS if k in arrays}, stem=arrays.get("stem"),
                      stem_layer=layout.stem_layer, patch_tokens=arrays.get("patch_tokens"),
                      grid_size=layout.grid_size, cls_layers=layout.cls_layers, **meta)


def _check_readouts(readouts: Sequence[str]) -> None:
    for r in readouts:
        if r not in READOUTS:
            raise FerlensError(f"Unknown readout '{r}' to extract; use any of {', '.join(READOUTS)} "
                               "(stem is always stored, patch@r,c comes from --patch-tokens)." + close_matches(r, READOUTS))


# ----------------------------------------------------------------------------- the on-disk store

def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Streaming sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(run_dir: Path, config: dict[str, Any], spec: str, split: str) -> str:
    """Hash of everything the features depend on: weights, model + input config, data spec, split."""
    weights = run_dir / "model.safetensors"
    parts = {"version": FEATURES_VERSION, "weights": file_sha256(weights) if weights.is_file() else None,
             "model": config.get("model"), "num_classes": config.get("num_classes"), "input": config.get("input"),
             "data": spec, "split": split}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def features_dir(run_dir: Path, spec: str, split: str) -> Path:
    """``<run>/features/<data-slug>-<split>``."""
    from train.data import parse_spec

    return Path(run_dir) / "features" / f"{parse_spec(spec).slug}-{split}"


def _dist() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment (0, 1 otherwise)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()


def _shapes(layout: Layout, n: int, readouts: Sequence[str], patch_tokens: bool) -> dict[str, tuple[tuple, str]]:
    Lc, Lp, D = len(layout.cls_layers), len(layout.patch_layers), layout.dim
    shapes = {"cls": ((n, Lc, D), "float32")} if Lc else {}
    if Lp:
        for r in ("patch", "patch_max"):
            if r in readouts:
                shapes[r] = ((n, Lp, D), "float32")
        if patch_tokens:
            shapes["patch_tokens"] = ((n, Lp, layout.num_patches, D), "float16")
    if layout.stem_layer:
        shapes["stem"] = ((n, layout.stem_dim), "float32")
    return shapes


def _partial(folder: Path, name: str) -> Path:
    return folder / f".{name}.npy.partial"


def _open_arrays(folder: Path, shapes: dict[str, tuple[tuple, str]], create: bool) -> dict[str, np.memmap]:
    """The memory-mapped ``.partial`` arrays; ``create`` makes them with every block reserved on disk."""
    if create:
        _check_free_space(folder, shapes)
    arrays = {}
    for name, (shape, dtype) in shapes.items():
        path = _partial(folder, name)
        if create:
            arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            try:
                _reserve(path)
            except BaseException:
                for p in folder.glob("*.npy.partial"):
                    p.unlink()
                raise
        else:
            arrays[name] = np.lib.format.open_memmap(path, mode="r+")
    return arrays


def _check_free_space(folder: Path, shapes: dict[str, tuple[tuple, str]]) -> None:
    """Refuse, in one sentence, an extraction whose arrays do not fit on the disk."""
    import shutil

    need = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes.values())
    free = shutil.disk_usage(folder).free
    if need > free:
        raise FerlensError(f"The features need {need / 2**20:.1f} MiB in {folder} but only {free / 2**20:.1f} MiB "
                           "are free; free some space (or point FERLENS_ARTIFACTS at a larger disk) and re-run.")


def _reserve(path: Path) -> None:
    """Allocate every block of a sparse memory-mapped file now: a write into an unbacked page of a
    full disk kills the process with SIGBUS, a failed allocation here is one sentence instead."""
    import errno

    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            chunk = b"\0" * (1 << 20)  # file systems without fallocate: write the zeros (no mmap involved)
            os.lseek(fd, 0, os.SEEK_SET)
            for start in range(0, size, len(chunk)):
                os.write(fd, chunk[: min(len(chunk), size - start)])
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            from train.errors import disk_full_sentence

            raise FerlensError(disk_full_sentence(OSError(e.errno, e.strerror, str(path)))) from None
        raise
    finally:
        os.close(fd)


def _read_progress(folder: Path) -> dict[str, Any] | None:
    path = folder / "progress.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def _clear(folder: Path) -> None:
    """Remove a stale extraction (only the files this module writes)."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name in ("index.json", "labels.npy", "attrs.json", "sample_ids.json") or p.name.startswith("progress") \
                or p.name.endswith(".npy.partial") or (p.suffix == ".npy" and p.stem in (*READOUTS, "stem", "patch_tokens")):
            p.unlink()


def _is_reusable(folder: Path, fp: str, patch_tokens: bool, readouts: Sequence[str]) -> bool:
    index = folder / "index.json"
    if not index.is_file():
        return False
    try:
        meta = json.loads(index.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    if not isinstance(meta, dict):
        return False
    up_to_date = (meta.get("complete") is True and meta.get("fingerprint") == fp
                  and (not patch_tokens or meta.get("patch_tokens", False))
                  and all(r in meta.get("readouts", []) for r in readouts))
    if not up_to_date:
        return False
    problem = damage(folder, meta)
    if problem:
        import sys

        print(f"probe: the features in {folder} are damaged ({problem}); extracting them again.", file=sys.stderr)
        return False
    return True


def _expected_files(meta: dict[str, Any]) -> list[str]:
    """The array files a complete ``index.json`` promises (without the .npy suffix)."""
    names = [r for r in meta.get("readouts", []) if r in READOUTS] + ["labels"]
    if meta.get("stem"):
        names.append("stem")
    if meta.get("patch_tokens"):
        names.append("patch_tokens")
    return names


def damage(folder: Path, meta: dict[str, Any]) -> str | None:
    """Check a features folder against its ``index.json``: every promised array present, readable
    and holding ``n`` rows, and the metadata files present. None when intact, else what is wrong."""
    n = meta.get("n")
    for name in _expected_files(meta):
        path = folder / f"{name}.npy"
        if not path.is_file():
            return f"{path.name} is missing"
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)   # reads the header; a short file fails here
        except (ValueError, OSError, EOFError) as e:
            return f"{path.name} is truncated or unreadable ({type(e).__name__})"
        if not arr.shape or (isinstance(n, int) and arr.shape[0] != n):
            return f"{path.name} holds {arr.shape[0] if arr.shape else 0} rows, index.json says {n}"
    for name in ("attrs.json", "sample_ids.json"):
        if not (folder / name).is_file():
            return f"{name} is missing"
    return None


def extract_to_disk(run: str | os.PathLike, spec: str | None = None, split: str = "test", *, batch_size: int = 64,
                    readouts: Sequence[str] = READOUTS, patch_tokens: bool = False, force: bool = False,
                    device: str = "cpu", progress: bool = True, stop_after: int | None = None) -> Path:
    """Extract a run's readouts on ``spec``/``split`` into its features folder (re-used when up to date).

    Args:
        run: run name or folder.
        spec: data spec (None: the run's own ``data.spec``).
        split: ``train``, ``val`` or ``test``.
        batch_size: images per forward.
        readouts: stored per-layer readouts (``cls``, ``patch``, ``patch_max``).
        patch_tokens: also store all patch tokens (float16).
        force: re-extract even when an up-to-date folder exists.
        device: torch device.
        stop_after: stop after this many samples of this rank (leaves a resumable partial folder;
            used to test resumption).

    Returns:
        The features folder (complete unless ``stop_after`` stopped it early).
    """
    from train.data import load_dataset
    from train.engine import make_eval_transform
    from train.runs import load_run, resolve_run

    _check_readouts(readouts)
    run_dir = resolve_run(run)
    config = read_json(run_dir / "config.json")
    spec = spec or config.get("data", {}).get("spec")
    if not spec:
        raise FerlensError(f"Run {run_dir.name} records no data spec; pass --data SPEC.")
    folder = features_dir(run_dir, spec, split)
    fp = fingerprint(run_dir, config, spec, split)
    rank, world = _dist()
    if not force and _is_reusable(folder, fp, patch_tokens, readouts):
        return folder
    model, config = load_run(run_dir, map_location=device)
    dataset = load_dataset(spec, split, transform=make_eval_transform(config))
    layout = discover_layout(model, dataset[0][0])
    n = len(dataset)
    shapes = _shapes(layout, n, readouts, patch_tokens)
    state = {"fingerprint": fp, "world": world, "patch_tokens": patch_tokens, "readouts": list(readouts),
             "shapes": {k: list(v[0]) for k, v in shapes.items()}}
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        prev = _read_progress(folder)
        fresh = force or prev != state or not all(_partial(folder, k).is_file() for k in shapes)
        if fresh:
            _clear(folder)
            try:
                _open_arrays(folder, shapes, create=True)
                atomic_write_json(folder / "progress.json", state)
            except BaseException:  # nothing started: leave no empty folders (features/<slug>-<split>)
                _remove_unstarted(folder)
                raise
    _barrier(world)
    arrays = _open_arrays(folder, shapes, create=False)
    mine = np.arange(rank, n, world)
    done = _rank_done(folder, rank)
    todo = mine[done:] if stop_after is None else mine[done:done + stop_after]
    try:
        for offset, out in _iter_batches(model, dataset, todo, layout=layout, batch_size=batch_size,
                                         patch_tokens=patch_tokens, readouts=readouts,
                                         desc=f"extract {split}" + (f" [rank {rank}]" if world > 1 else ""),
                                         progress=progress and rank == 0):
            rows = todo[offset: offset + len(next(iter(out.values())))]
            for name, arr in arrays.items():
                if not np.isfinite(out[name]).all():
                    raise FerlensError(f"The '{name}' features of run {run_dir.name} contain NaN/inf; check the run's "
                                       "weights (its training loss may have diverged).")
                arr[rows] = out[name]
            for arr in arrays.values():
                arr.flush()
            atomic_write_json(folder / f"progress.rank{rank}.json", {"done": done + offset + len(rows)})
            if os.environ.get(DEBUG_KILL_ENV) == str(done + offset + len(rows)):  # test hook (crash safety)
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
    except BaseException:
        if world == 1 and done == 0 and _rank_done(folder, 0) == 0:  # failed before its first batch: no folder
            del arrays
            _remove_unstarted(folder)
        raise
    _barrier(world)
    if rank == 0 and all(_rank_done(folder, r) >= len(range(r, n, world)) for r in range(world)):
        _finalize(folder, arrays, dataset, layout, config, run_dir, spec, split, fp, readouts, patch_tokens)
    _barrier(world)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return folder


def _remove_unstarted(folder: Path) -> None:
    """Delete an extraction that wrote no sample (its partial arrays, progress.json, empty folders);
    one that wrote samples stays and resumes."""
    for p in [*folder.glob(".*.npy.partial"), folder / "progress.json"]:
        if p.exists():
            p.unlink()
    for d in (folder, folder.parent):
        try:
            d.rmdir()
        except OSError:
            break


def _rank_done(folder: Path, rank: int) -> int:
    """How many samples of its stride ``rank`` has written (0 when it has not started)."""
    path = folder / f"progress.rank{rank}.json"
    if not path.is_file():
        return 0
    try:
        return int(json.loads(path.read_text())["done"])
    except (json.JSONDecodeError, KeyError, ValueError, OSError):
        return 0


def _finalize(folder, arrays, dataset, layout, config, run_dir, spec, split, fp, readouts, patch_tokens) -> None:
    """Rename the filled arrays into place and write metadata, then ``index.json`` (complete) last."""
    from train.io import atomic_save_npy, atomic_write_json as write_json

    for name, arr in arrays.items():
        arr.flush()
        os.replace(_partial(folder, name), folder / f"{name}.npy")
    meta = _metadata(dataset)
    atomic_save_npy(folder / "labels.npy", meta["labels"])
    write_json(folder / "attrs.json", meta["attrs"])
    write_json(folder / "sample_ids.json", meta["sample_ids"])
    dims = {"cls": layout.dim, "patch": layout.dim, "patch_max": layout.dim, "stem": layout.stem_dim,
            "num_patches": layout.num_patches}
    index = {"fingerprint": fp, "run": run_dir.name, "data_spec": spec, "split": split, "n": len(dataset),
             "layers": layout.layers, "cls_layers": layout.cls_layers, "patch_layers": layout.patch_layers,
             "readouts": [r for r in readouts if r in arrays], "stem": layout.stem_layer, "dims": dims,
             "grid_size": list(layout.grid_size), "patch_tokens": bool(patch_tokens and "patch_tokens" in arrays),
             "label_names": meta["label_names"], "attr_kinds": meta["attr_kinds"],
             "model": config.get("model", {}).get("name"), "complete": True}
    write_json(folder / "index.json", index)
    for p in folder.glob("progress*.json"):
        p.unlink()


def load_features(run: str | os.PathLike, spec: str | None = None, split: str = "test",
                  check: bool = True) -> FeatureSet:
    """Open a run's extracted features (memory-mapped).

    Args:
        run: run name or folder.
        spec: data spec (None: the run's own).
        split: data split.
        check: verify the fingerprint against the run's current weights/config (stale → error).
    """
    from train.runs import resolve_run

    run_dir = resolve_run(run)
    config = read_json(run_dir / "config.json")
    spec = spec or config.get("data", {}).get("spec")
    folder = features_dir(run_dir, spec, split)
    index_path = folder / "index.json"
    if not index_path.is_file():
        raise FerlensError(f"No features for run {run_dir.name} on '{spec}' ({split}); run "
                           f"'probe extract --run {run_dir.name} --data {spec} --split {split}' first.")
    meta = read_json(index_path)
    if not meta.get("complete"):
        raise FerlensError(f"The features in {folder} are incomplete; re-run 'probe extract' to finish them.")
    if check and meta.get("fingerprint") != fingerprint(run_dir, config, spec, split):
        raise FerlensError(f"The features in {folder} were extracted from other weights or settings; "
                           "re-run 'probe extract --force' (probe linear does this automatically).")
    return open_folder(folder)


def open_folder(folder: str | os.PathLike) -> FeatureSet:
    """A FeatureSet over a complete features folder (arrays memory-mapped read-only)."""
    folder = Path(folder)
    meta = read_json(folder / "index.json")
    if not isinstance(meta, dict) or not meta.get("complete") or "layers" not in meta:
        raise FerlensError(f"{folder / 'index.json'} does not describe a complete features folder; re-run "
                           "'probe extract --run RUN --force' to extract them again.")
    problem = damage(folder, meta)
    if problem:
        raise FerlensError(f"The features in {folder} are damaged ({problem}); re-run 'probe extract --run "
                           f"{meta.get('run', 'RUN')} --force' to extract them again.")

    def npy(name: str):
        p = folder / f"{name}.npy"
        return np.load(p, mmap_mode="r", allow_pickle=False) if p.is_file() else None

    arrays = {r: npy(r) for r in READOUTS if (folder / f"{r}.npy").is_file()}
    return FeatureSet(layers=meta["layers"], patch_layers=meta.get("patch_layers", meta["layers"]), arrays=arrays,
                      labels=np.load(folder / "labels.npy", allow_pickle=False), label_names=meta["label_names"],
                      attrs=read_json(folder / "attrs.json"), attr_kinds=meta.get("attr_kinds", {}),
                      sample_ids=read_json(folder / "sample_ids.json"), stem=npy("stem"),
                      stem_layer=meta.get("stem"), patch_tokens=npy("patch_tokens"),
                      grid_size=tuple(meta["grid_size"]) if meta.get("grid_size") else None, meta=meta,
                      cls_layers=meta.get("cls_layers"))


def ensure_features(run: str | os.PathLike, spec: str | None = None, split: str = "test", **kwargs: Any) -> FeatureSet:
    """Extract when missing or stale, then open: the one call ``probe linear``/``cka``/``umap`` use."""
    folder = extract_to_disk(run, spec, split, **kwargs)
    return open_folder(folder)


def random_init_run(run: str | os.PathLike, seed: int = 0) -> Path:
    """A run folder holding an untrained, seed-initialised copy of ``run``'s architecture.

    Written once to ``<run>/baselines/random-init-s<seed>/`` (config copied, weights from
    ``torch.manual_seed(seed)``), so its features are extracted and cached like any run's.
    """
    import torch

    from train.runs import build_model, resolve_run, save_run

    run_dir = resolve_run(run)
    out = run_dir / "baselines" / f"random-init-s{seed}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    config = read_json(run_dir / "config.json")
    torch.manual_seed(seed)
    model = build_model(config)
    return save_run(out, model, {**config, "baseline": {"kind": "random-init", "seed": seed, "of": run_dir.name}})
