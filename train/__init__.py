"""ferlens training: hybrid models, datasets, the training engine and profiling.

``import train`` is cheap; submodules load on first use::

    model = train.create_model("ferlens_tiny_cataftermlp_s3", num_classes=7)
    model, cfg = train.load_run("artifacts/runs/<run>")
    ds = train.data.load_dataset("synthfer:size=64,n=2000", split="test")
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "create_model": ("train.models", "create_model"),
    "list_models": ("train.models", "list_models"),
    "load_run": ("train.runs", "load_run"),
    "save_run": ("train.runs", "save_run"),
    "FerlensError": ("train.errors", "FerlensError"),
}
_SUBMODULES = {"data", "models", "engine", "config", "runs", "profile", "io", "labels", "errors", "metrics"}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"train.{name}")
    raise AttributeError(f"module 'train' has no attribute '{name}'")
