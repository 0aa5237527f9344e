"""Run folders: a run folder alone rebuilds the model, its preprocessing and its label names.

config.json schema (keys other parts rely on)::

    {"model": {"name": "ferlens_tiny_vit_s3", "kwargs": {...}},   # kwargs passed to create_model
     "num_classes": 7, "label_names": [...],
     "data": {"spec": "synthfer:size=64,n=2000", "attr_kinds": {"identity": "categorical", ...}},
     "input": {"img_size": 64, "mean": [...], "std": [...]},
     "train": {...resolved TrainConfig...}, "seed": 0,
     "ferlens_version": "0.1.0", "git_commit": "abc123" | null, "created": "2026-11-23T15:00:00"}
"""
from __future__ import annotations

import datetime as _dt
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch appears only in annotations; not importing it keeps run listing fast (app sidebar)
    import torch

from .errors import FerlensError
from .io import atomic_write_bytes, atomic_write_json, read_json

__version__ = "0.1.0"


def artifacts_root() -> Path:
    """The artifacts folder: ``$FERLENS_ARTIFACTS`` or ``./artifacts``."""
    return Path(os.environ.get("FERLENS_ARTIFACTS", "artifacts"))


def runs_root() -> Path:
    return artifacts_root() / "runs"


def resolve_run(run: str | os.PathLike) -> Path:
    """Accept a run folder path or a bare run name under ``artifacts/runs``."""
    p = Path(run)
    if (p / "config.json").is_file():
        return p
    q = runs_root() / str(run)
    if (q / "config.json").is_file():
        return q
    raise FerlensError(f"Run '{run}' not found (no config.json in {p} or {q}); train one with "
                       "'train fit --model NAME --data SPEC' or pass the run folder's path.")


def list_runs(root: str | os.PathLike | None = None) -> list[Path]:
    """Run folders (those holding a config.json) directly under ``root`` (default artifacts/runs)."""
    root = Path(root) if root is not None else runs_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "config.json").is_file())


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except Exception:  # git missing or not a checkout: the commit is simply unknown
        return None


def stamp_config(config: dict[str, Any]) -> dict[str, Any]:
    """Add version, commit and creation time to a config dict (returns a new dict)."""
    out = dict(config)
    out.setdefault("ferlens_version", __version__)
    out.setdefault("git_commit", git_commit())
    out.setdefault("created", _dt.datetime.now().isoformat(timespec="seconds"))
    return out


def save_weights(path: str | os.PathLike, model: torch.nn.Module) -> Path:
    """Atomically write a model's state dict as safetensors."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write_bytes(path, save(state))


def save_run(run_dir: str | os.PathLike, model: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``run_dir`` (atomic writes)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(run_dir / "model.safetensors", model)
    atomic_write_json(run_dir / "config.json", stamp_config(config))
    return run_dir


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """Build the (untrained) model a run config describes."""
    from .models import create_model

    try:
        name = config["model"]["name"]
        kwargs = dict(config["model"].get("kwargs", {}))
        num_classes = int(config["num_classes"])
    except (KeyError, TypeError):
        raise FerlensError("The run config lacks model.name or num_classes; re-create the run with 'train fit'.") from None
    kwargs.pop("num_classes", None)
    return create_model(name, num_classes=num_classes, **kwargs)


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly; on mismatch raise one sentence naming the mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if shape:
            parts.append("shape mismatch in " + _few([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                       for k in shape]))
        raise FerlensError(f"The weights in {source} do not match the model ({'; '.join(parts)}); "
                           "check that the run's config names the same model and options.")
    model.load_state_dict(state, strict=True)


def _few(keys: list[str], n: int = 4) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_run(run: str | os.PathLike, map_location: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a run's model with its weights, in eval mode, plus its config dict.

    Args:
        run: run folder or run name under artifacts/runs.
        map_location: device for the weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = resolve_run(run)
    config = read_json(run_dir / "config.json")
    model = build_model(config)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise FerlensError(f"{weights} is missing; the run never finished an epoch — re-run 'train fit' or '--resume'.")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as e:
        raise FerlensError(f"{weights} is not a readable safetensors file ({e}); re-train or restore the run.") from None
    load_state_strict(model, state, str(weights))
    config["run_dir"] = str(run_dir)
    return model.eval(), config
