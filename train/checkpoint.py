"""Foreign checkpoints, read safely and loaded strictly.

    state = read_checkpoint("ckpt.pth")                      # {"state_dict": {"module.x": ...}} -> {"module.x": ...}
    state = strip_prefixes(state, model.state_dict())        # DataParallel / torch.compile prefixes
    state = apply_key_map(state, parse_key_map(["^backbone\\.=cnn."]))
    load_strict(model, state, "ckpt.pth")                    # any mismatch: one sentence with a --key-map example

``.safetensors`` files are read directly; every other file goes through ``torch.load(weights_only=True)``,
which refuses a pickle that would construct anything but tensors and plain containers (nothing is executed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FerlensError

if TYPE_CHECKING:
    import torch

# Keys under which training scripts nest the state dict, tried in this order ({"epoch": 3, "state_dict": {...}}).
WRAPPERS = ("state_dict", "model_state_dict", "model_state", "model")
# Prefixes that wrappers add to every key: nn.DataParallel / DistributedDataParallel, torch.compile.
PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Checkpoint:
    """A state dict read from a file, and what was unwrapped on the way (for the run config)."""

    path: str
    state: dict[str, torch.Tensor]
    unwrapped: list[str] = field(default_factory=list)   # e.g. ["state_dict", "module."]


def read_checkpoint(path: str | Path, what: str = "The weights file") -> Checkpoint:
    """Read a state dict of tensors from ``.safetensors`` or a torch file (``weights_only=True`` only).

    Args:
        path: the file.
        what: how the file is named in error messages ("The weights file", "Backbone weights").

    Returns:
        a ``Checkpoint`` whose ``state`` maps key -> tensor, with ``state_dict``/``model``/``model_state``
        wrappers already unwrapped.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FerlensError(f"{what} {path} does not exist; pass the path of a .pth/.pt or .safetensors file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return Checkpoint(str(path), load_file(str(path)))
        except (SafetensorError, OSError) as e:
            raise FerlensError(f"{what} {path} is not a readable safetensors file ({e}); re-export it with "
                               "safetensors.torch.save_file(model.state_dict(), path).") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported operand" in str(e) or "weights only" not in str(e).lower():  # bytes that are no pickle
            raise FerlensError(f"{what} {path} cannot be read as a torch file (not a pickle); pass a file "
                               "written by torch.save(model.state_dict(), path) or a .safetensors file.") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        thing = f"the pickled global {found.group(1)}" if found else "objects other than tensors"
        raise FerlensError(f"{what} {path} holds {thing}, and ferlens reads torch files with weights_only=True only "
                           "(an arbitrary pickle could run code); re-save just the weights with "
                           "torch.save(model.state_dict(), path) or as .safetensors.") from None
    except Exception as e:  # truncated or not a torch file at all
        raise FerlensError(f"{what} {path} cannot be read as a torch file ({type(e).__name__}); pass a file "
                           "written by torch.save(model.state_dict(), path) or a .safetensors file.") from None
    state, unwrapped = unwrap(obj, str(path), what)
    return Checkpoint(str(path), state, unwrapped)


def unwrap(obj: object, source: str, what: str = "The weights file") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Descend through ``WRAPPERS`` keys until a dict of tensors remains; returns it and the keys descended."""
    import torch

    path: list[str] = []
    while isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}, path
        key = next((k for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        path.append(key)
        obj = obj[key]
    where = "".join(f"[{k!r}]" for k in path)
    keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
    raise FerlensError(f"{what} {source}{where} holds no state dict of tensors (found: {keys or 'nothing'}); save "
                       "one with torch.save(model.state_dict(), path), or nest it under 'state_dict' or 'model'.")


def strip_prefixes(state: dict[str, torch.Tensor], own_keys) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove a ``module.`` / ``_orig_mod.`` prefix that every key carries and the model's keys do not."""
    own = list(own_keys)
    stripped: list[str] = []
    changed = True
    while changed and state:
        changed = False
        for p in PREFIXES:
            if all(k.startswith(p) for k in state) and not any(k.startswith(p) for k in own):
                state = {k[len(p):]: v for k, v in state.items()}
                stripped.append(p)
                changed = True
    return state, stripped


def parse_key_map(rules: list[str] | None) -> list[tuple[re.Pattern, str]]:
    """``["^backbone\\.=cnn.", ...]`` -> compiled ``(pattern, replacement)`` pairs (split at the last ``=``)."""
    out = []
    for rule in rules or []:
        pattern, eq, repl = rule.rpartition("=")
        if not eq or not pattern:
            raise FerlensError(f"Cannot read the key map '{rule}'; write it as REGEX=REPLACEMENT, "
                               "e.g. --key-map '^backbone\\.=cnn.'.")
        try:
            out.append((re.compile(pattern), repl))
        except re.error as e:
            raise FerlensError(f"The key map '{rule}' is not a valid regular expression ({e}); "
                               "escape dots as '\\.', e.g. --key-map '^backbone\\.=cnn.'.") from None
    return out


def apply_key_map(state: dict[str, torch.Tensor], rules: list[tuple[re.Pattern, str]]) -> dict[str, torch.Tensor]:
    """Rename every key through the rules in order (``re.sub``); a key renamed to ``""`` is dropped."""
    if not rules:
        return state
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = key
        for pattern, repl in rules:
            new = pattern.sub(repl, new)
        if not new:
            continue
        if new in out:
            raise FerlensError(f"The key map renames both '{origin[new]}' and '{key}' to '{new}'; "
                               "anchor the pattern (^...$) so each key maps to its own name.")
        out[new], origin[new] = value, key
    return out


@dataclass
class Mismatch:
    """Keys that differ between a model's state dict and a checkpoint."""

    missing: list[str]
    unexpected: list[str]
    shape: list[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shape)


def compare(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> Mismatch:
    """Missing (in the model, not the file), unexpected (in the file only) and shape-mismatched keys."""
    return Mismatch(missing=[k for k in own if k not in state],
                    unexpected=[k for k in state if k not in own],
                    shape=[f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                           for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)])


def few(keys: list[str], n: int = 3) -> str:
    """``'a, b, c and 7 more'``."""
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def suggest_key_map(missing: list[str], unexpected: list[str]) -> str:
    """A ``--key-map`` rule turning an unexpected key into a missing one with the same ending, e.g.
    ``backbone.layer1.0.weight`` / ``cnn.layer1.0.weight`` -> ``'^backbone\\.=cnn.'``."""
    best = (0, "", "")
    for u in unexpected[:200]:
        up = u.split(".")
        for m in missing[:200]:
            mp = m.split(".")
            n = 0
            while n < min(len(up), len(mp)) and up[-1 - n] == mp[-1 - n]:
                n += 1
            if n > best[0] and up[:len(up) - n] != mp[:len(mp) - n]:
                best = (n, ".".join(up[:len(up) - n]), ".".join(mp[:len(mp) - n]))
    if not best[0]:
        return "--key-map '^OLD\\.=NEW.'"
    old, new = best[1], best[2]
    pattern = "^" + (re.escape(old) + "\\." if old else "")
    return f"--key-map '{pattern}={new + '.' if new else ''}'"


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)``, after naming any mismatch in one sentence.

    A missing BatchNorm ``num_batches_tracked`` (checkpoints from old torch versions) is not a mismatch:
    torch fills it in itself.
    """
    own = model.state_dict()
    diff = compare(own, state)
    diff.missing = [k for k in diff.missing if not k.endswith("num_batches_tracked")]
    if diff:
        parts = []
        if diff.missing:
            parts.append(f"{len(diff.missing)} missing ({few(diff.missing)})")
        if diff.unexpected:
            parts.append(f"{len(diff.unexpected)} unexpected ({few(diff.unexpected)})")
        if diff.shape:
            parts.append(f"{len(diff.shape)} with another shape ({few(diff.shape)})")
        if diff.missing or diff.unexpected:
            fix = f"rename the file's keys with {suggest_key_map(diff.missing, diff.unexpected)}"
        else:
            fix = "build the model with the options it was trained with (--model_kwargs.KEY VALUE)"
        raise FerlensError(f"The weights in {source} do not match the model: {'; '.join(parts)} keys; {fix}.")
    model.load_state_dict(state, strict=True)  # the state carries no _metadata, so BatchNorm fills the counter
