"""Read any hook point of a model by name (TransformerLens-style ``run_with_cache``).

Hook names are module paths (DESIGN.md): ``stem.stage{k}``, ``tokens``, ``blocks.{i}``,
``blocks.{i}.attn``, ``pre_logits``. A hook on a module records its output; a hook on an attention
module (timm ``Attention`` / ``ClassAttn``) records the post-softmax probabilities
(B, heads, Nq, 1+N): while requested, that one module runs with ``fused_attn=False`` and the input of
its ``attn_drop`` is captured by a forward-pre-hook, so timm's code is reused unchanged and every
other forward keeps the fused kernel.
"""
from __future__ import annotations

import contextlib
import re
from typing import Iterator, Sequence

import torch
from torch import nn

from train.errors import FerlensError, close_matches


def hook_names(model: nn.Module) -> list[str]:
    """Valid hook names: ``model.hook_names()`` for ferlens hybrids; for plain timm ViTs
    (a ``blocks`` list whose blocks hold a timm-style ``attn``) ``blocks.{i}`` and ``blocks.{i}.attn``."""
    if hasattr(model, "hook_names"):
        return list(model.hook_names())
    names = []
    for i, blk in enumerate(getattr(model, "blocks", [])):
        if hasattr(getattr(blk, "attn", None), "attn_drop"):
            names += [f"blocks.{i}.attn", f"blocks.{i}"]
    return names


def _is_attention(module: nn.Module) -> bool:
    return hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module)


def _check(model: nn.Module, names: Sequence[str]) -> list[str]:
    valid = hook_names(model)
    if not valid:
        raise FerlensError(f"{type(model).__name__} exposes no hook points (no hook_names() and no timm-style "
                           "blocks); use a ferlens hybrid or a timm ViT.")
    for n in names:
        if n not in valid:
            raise FerlensError(f"Unknown hook point '{n}'; valid names are {_summary(valid)}." + close_matches(n, valid))
    return list(names)


def _summary(valid: list[str]) -> str:
    # compress blocks.{i}[.attn] into one pattern each so the sentence stays readable
    blocks = sorted({int(m.group(1)) for v in valid if (m := re.match(r"blocks\.(\d+)", v))})
    other = [v for v in valid if not v.startswith("blocks.")]
    if blocks:
        other.insert(len([o for o in other if o.startswith("stem") or o == "tokens"]),
                     f"blocks.{{0..{blocks[-1]}}}, blocks.{{0..{blocks[-1]}}}.attn")
    return ", ".join(other)


@contextlib.contextmanager
def hooked(model: nn.Module, names: Sequence[str], requires_grad: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager: while open, every forward of ``model`` fills the yielded dict by hook name.

    Args:
        model: a ferlens hybrid or any model whose ``hook_names`` are understood (see ``hook_names``).
        names: hook names to record.
        requires_grad: keep the autograd graph of recorded tensors (attention maps get ``retain_grad``),
            for gradient methods (Grad-CAM, gradient rollout); otherwise tensors are detached.

    Yields:
        dict name -> tensor of the latest forward.
    """
    names = _check(model, names)
    store: dict[str, torch.Tensor] = {}
    handles, restore = [], []

    def keep(name: str, t: torch.Tensor) -> None:
        if requires_grad:
            if t.requires_grad and name.endswith(".attn"):
                t.retain_grad()
            store[name] = t
        else:
            store[name] = t.detach()

    try:
        for name in names:
            module = model.get_submodule(name)
            if _is_attention(module):
                restore.append((module, module.fused_attn))
                module.fused_attn = False
                handles.append(module.attn_drop.register_forward_pre_hook(
                    lambda _m, args, name=name: keep(name, args[0])))  # (B, heads, Nq, 1+N)
            else:
                handles.append(module.register_forward_hook(
                    lambda _m, _args, out, name=name: keep(name, out)))
        yield store
    finally:
        for h in handles:
            h.remove()
        for module, fused in restore:
            module.fused_attn = fused


def run_with_cache(model: nn.Module, images: torch.Tensor, names: Sequence[str] | None = None,
                   requires_grad: bool = False) -> dict[str, torch.Tensor]:
    """One forward of ``images`` (B, 3, H, W); returns {hook name: tensor} for ``names`` (all when None).

    Shapes: ``stem.stage{k}`` (B, C, H, W); ``tokens`` and ``blocks.{i}`` (B, 1+N, D) ((B, 1, D) for clsonly
    after block 0); ``blocks.{i}.attn`` (B, heads, Nq, 1+N), Nq = 1 for class attention; ``pre_logits`` (B, D).
    The model's train/eval mode is left as it is.
    """
    names = hook_names(model) if names is None else list(names)
    grad = torch.enable_grad() if requires_grad else torch.no_grad()
    with grad, hooked(model, names, requires_grad=requires_grad) as store:
        model(images)
    return dict(store)
