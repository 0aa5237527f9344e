"""Read any hook point of a model by name (TransformerLens-style ``run_with_cache``).

Hook names (DESIGN.md): ``stem.stage{k}``, ``tokens``, ``blocks.{i}``, ``blocks.{i}.attn``, ``pre_logits``
(CaiT adds ``blocks_token_only.{j}[.attn]``). Which module each name reads, and how, comes from the one
model adapter, ``train.models.adapters.model_spec``: a module's output or input, or the post-softmax
attention probabilities (B, heads, Nq, K) — while requested, that one attention module runs with
``fused_attn=False`` and the input of its ``attn_drop`` (``proj_w`` for TalkingHeadAttn) is captured by a
forward-pre-hook, so timm's code is reused unchanged and every other forward keeps the fused kernel.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from train.models.adapters import ModelSpec, model_spec


def hook_names(model: nn.Module) -> list[str]:
    """Every hook name of ``model`` that can be recorded, in forward order (from ``model_spec``)."""
    return model_spec(model).names


def _check(spec: ModelSpec, names: Sequence[str]) -> list[str]:
    for n in names:
        spec.hook(n)  # one sentence for an unknown name or an attention that cannot be read
    return list(names)


@contextlib.contextmanager
def hooked(model: nn.Module, names: Sequence[str], requires_grad: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager: while open, every forward of ``model`` fills the yielded dict by hook name.

    Args:
        model: any model ``model_spec`` understands.
        names: hook names to record.
        requires_grad: keep the autograd graph of recorded tensors (attention maps get ``retain_grad``),
            for gradient methods (Grad-CAM, gradient rollout); otherwise tensors are detached.

    Yields:
        dict name -> tensor of the latest forward.
    """
    spec = model_spec(model)
    names = _check(spec, names)
    store: dict[str, torch.Tensor] = {}
    handles, restore = [], []

    def keep(name: str, t: torch.Tensor) -> None:
        if requires_grad:
            if t.requires_grad and spec.hooks[name].kind == "attn":
                t.retain_grad()
            store[name] = t
        else:
            store[name] = t.detach()

    def heads_last(name: str):
        # TalkingHeadAttn feeds proj_w (B, Nq, K, heads): record it as (B, heads, Nq, K) and hand the
        # permuted-back view on, so the recorded tensor lies on the graph (gradient rollout needs that)
        def pre(_m, args):
            probs = args[0].permute(0, 3, 1, 2)                       # (B, heads, Nq, K)
            keep(name, probs)
            return (probs.permute(0, 2, 3, 1), *args[1:])
        return pre

    try:
        for name in names:
            hook = spec.hooks[name]
            module = model.get_submodule(hook.module)
            if hook.unfuse is not None:
                attn = model.get_submodule(hook.unfuse)
                restore.append((attn, attn.fused_attn))
                attn.fused_attn = False
            if hook.heads_last:
                handles.append(module.register_forward_pre_hook(heads_last(name)))
            elif hook.read == "input":
                handles.append(module.register_forward_pre_hook(
                    lambda _m, args, name=name: keep(name, args[0])))
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

    Shapes: ``stem.stage{k}`` (B, C, H, W); token hooks (B, T, D) laid out as ``model_spec(model).layout(name)``
    says (ferlens: (B, 1+N, D), (B, 1, D) for clsonly after block 0); ``*.attn`` (B, heads, Nq, K), Nq = 1
    for class attention; ``pre_logits`` (B, D). The model's train/eval mode is left as it is.
    """
    names = hook_names(model) if names is None else list(names)
    grad = torch.enable_grad() if requires_grad else torch.no_grad()
    with grad, hooked(model, names, requires_grad=requires_grad) as store:
        model(images)
    return dict(store)
