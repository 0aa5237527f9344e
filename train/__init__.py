"""ferlens training: hybrid models, datasets, the training engine and profiling.

``import train`` is cheap; submodules load on first use::

    model = train.create_model("ferlens_tiny_cataftermlp_s3", num_classes=7)
    model, cfg = train.load_run("artifacts/runs/<run>")
    ds = train.data.load_dataset("synthfer:size=64,n=2000", split="test")

``import train`` also registers the ``ferlens_*`` variants with timm, so ``timm.create_model("ferlens_tiny_vit_s3")``
works after it — without importing timm (4 s) itself: the registry module is imported right after timm is.
"""
from __future__ import annotations

import importlib
import sys

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


def _register_variants() -> None:
    """Import ``train.models`` (its registry's @register_model entries run on import). When timm's import came
    from inside ``train.models`` itself, that package is mid-import and registers the variants as it finishes."""
    if "train.models" not in sys.modules:
        importlib.import_module("train.models")


class _RegisteringLoader:
    """timm's own loader, plus registering the ferlens variants once timm's package has executed.
    (Loaders and finders are duck-typed; importlib.abc is not imported because it pulls in
    importlib.resources, tempfile and typing — 14 ms, 7x the rest of ``import train``.)"""

    def __init__(self, inner) -> None:
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        _remove_finder()
        _register_variants()

    def __getattr__(self, name: str):  # resource readers etc. stay timm's
        return getattr(self._inner, name)


class _TimmImportFinder:
    """Python has no post-import hook, so this finder wraps timm's loader when ``timm`` is imported
    (the real spec is found by the other finders; this one steps aside while they look)."""

    _busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm" or self._busy:
            return None
        import importlib.util

        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TimmImportFinder)]


if "timm" in sys.modules:      # timm already loaded: registering costs only the ferlens model modules
    _register_variants()
elif not any(isinstance(f, _TimmImportFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _TimmImportFinder())
