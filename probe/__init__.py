"""ferlens probes: token caches, linear probes, similarity, embeddings, attributions, interventions,
figures and the findings report. ``import probe`` is cheap; submodules load on first use."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {"cache", "features", "linear", "similarity", "embed", "norms", "rollout", "attribution",
               "metrics", "intervene", "overlay", "figures", "report", "plotting"}


def explain(model, images, method: str = "gradcam", target=None, **kwargs):
    """Attribution maps (B, H, W) in [0, 1] for ``images`` (B, 3, H, W); see ``probe.attribution``."""
    from .attribution import explain as _explain

    return _explain(model, images, method=method, target=target, **kwargs)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"probe.{name}")
    raise AttributeError(f"module 'probe' has no attribute '{name}'")
