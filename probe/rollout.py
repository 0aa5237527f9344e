"""Attention rollout (Abnar & Zuidema 2020) and gradient-weighted rollout (Chefer et al. 2021).

Pure tensor functions over the attention probabilities a model exposes at its ``blocks.{i}.attn`` hook
points, each ``(B, heads, Nq, K)`` with ``K = P + N`` keys (``P`` prefix tokens, ``N`` patches):

- self-attention blocks (``vit``): ``Nq = K`` — every token mixes;
- class-attention blocks (``cataftermlp``, ``catbeforemlp``, ``addpatches``): ``Nq = 1`` — only the CLS
  row mixes, the patch rows of the layer matrix are the identity;
- ``clsonly`` blocks after the first: ``K = 1`` (only the CLS token is left) — the layer is the identity.

No library implements rollout for class-attention or CLS-only stacks (pytorch-grad-cam and captum have
no rollout; the common reference code hard-codes square self-attention), so the recursion is written here.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor

from train.errors import FerlensError

HeadFusion = Literal["mean", "max", "min"]

# name -> reduction over the head axis of (B, heads, Nq, K)
HEAD_FUSIONS = {
    "mean": lambda a: a.mean(dim=1),
    "max": lambda a: a.amax(dim=1),
    "min": lambda a: a.amin(dim=1),
}


def fuse_heads(attn: Tensor, head_fusion: HeadFusion = "mean") -> Tensor:
    """Reduce the head axis.

    Args:
        attn: (B, heads, Nq, K) attention probabilities.
        head_fusion: ``mean``, ``max`` or ``min``.

    Returns:
        (B, Nq, K) fused attention.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise FerlensError(f"Unknown head fusion '{head_fusion}'; use one of {', '.join(HEAD_FUSIONS)}.")
    if attn.dim() != 4:
        raise FerlensError(f"Attention must be (B, heads, Nq, K), got shape {tuple(attn.shape)}; pass the "
                           "tensors cached at the blocks.{i}.attn hook points.")
    return HEAD_FUSIONS[head_fusion](attn)


def _discard_lowest(a: Tensor, ratio: float, num_prefix: int) -> Tensor:
    """Zero the lowest ``ratio`` share of patch-key weights in every row (prefix keys are kept).

    Args:
        a: (B, Nq, K) fused attention.
    """
    n_patch = a.shape[-1] - num_prefix
    k = int(n_patch * ratio)
    if k <= 0 or n_patch <= 0:
        return a
    patch = a[..., num_prefix:]                                      # (B, Nq, N)
    idx = patch.topk(k, dim=-1, largest=False).indices
    patch = patch.scatter(-1, idx, 0.0)
    return torch.cat([a[..., :num_prefix], patch], dim=-1)


def layer_matrix(attn: Tensor, n_tokens: int, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0,
                 residual: bool = True, num_prefix: int = 1) -> Tensor:
    """The (B, T, T) token-mixing matrix of one block for rollout, rows summing to 1.

    Args:
        attn: (B, heads, Nq, K) probabilities of the block.
        n_tokens: T, the full sequence length (prefix + patches) of the rollout.
        head_fusion: head reduction.
        discard_ratio: share of the lowest patch weights per row set to zero.
        residual: mix with the identity (0.5 A + 0.5 I) to account for the skip connection.
        num_prefix: number of prefix (CLS) tokens.

    Returns:
        (B, T, T) row-stochastic matrix; patch rows are identity for class attention, the whole
        matrix is identity for a block that only sees the CLS token.
    """
    b, _, nq, k = attn.shape
    eye = torch.eye(n_tokens, dtype=attn.dtype, device=attn.device).expand(b, n_tokens, n_tokens)
    if k == 1:                                                       # clsonly: nothing left to mix
        return eye.clone()
    if k != n_tokens or nq not in (1, k):
        raise FerlensError(f"Attention of shape {tuple(attn.shape)} does not fit a sequence of {n_tokens} "
                           "tokens; pass all blocks.{i}.attn tensors of one model in block order.")
    a = _discard_lowest(fuse_heads(attn, head_fusion), discard_ratio, num_prefix)  # (B, Nq, T)
    if nq == 1:                                                      # class attention: only CLS row mixes
        full = eye.clone()
        full[:, :1] = a
        a = full
    if residual:
        a = 0.5 * a + 0.5 * eye
    return a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def _sequence_length(attns: Sequence[Tensor]) -> int:
    if len(attns) == 0:
        raise FerlensError("No attention tensors were given; cache blocks.{i}.attn for every block first.")
    return max(int(a.shape[-1]) for a in attns)


def rollout_matrix(attns: Sequence[Tensor], head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0,
                   residual: bool = True, num_prefix: int = 1) -> Tensor:
    """Full rollout ``R = A_L ... A_1`` over all blocks.

    Args:
        attns: per block (B, heads, Nq, K) attention probabilities, block 0 first.
        head_fusion: ``mean``, ``max`` or ``min`` over heads.
        discard_ratio: share of the lowest patch weights per row dropped in each layer.
        residual: identity mixing 0.5·A + 0.5·I with rows renormalised.
        num_prefix: number of prefix tokens (1 = CLS).

    Returns:
        (B, T, T) row-stochastic rollout (float32 or the input dtype if float64).
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise FerlensError(f"discard_ratio must be in [0, 1), got {discard_ratio}.")
    t = _sequence_length(attns)
    dtype = torch.float64 if attns[0].dtype == torch.float64 else torch.float32
    result = None
    for attn in attns:
        a = layer_matrix(attn.detach().to(dtype), t, head_fusion, discard_ratio, residual, num_prefix)
        result = a if result is None else a @ result                # (B, T, T)
    return result


def attention_rollout(attns: Sequence[Tensor], head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0,
                      residual: bool = True, num_prefix: int = 1, grid_size: tuple[int, int] | None = None
                      ) -> Tensor:
    """CLS→patch relevance by attention rollout.

    Args:
        attns: per block (B, heads, Nq, K) attention probabilities, block 0 first.
        head_fusion: ``mean``, ``max`` or ``min``.
        discard_ratio: share of the lowest patch weights dropped per row and layer.
        residual: identity mixing for the skip connections.
        num_prefix: number of prefix tokens.
        grid_size: (H, W) token grid; when given the result is reshaped to (B, H, W).

    Returns:
        (B, N) CLS row of the rollout over the patch tokens, or (B, H, W) with ``grid_size``.
    """
    rel = rollout_matrix(attns, head_fusion, discard_ratio, residual, num_prefix)[:, 0, num_prefix:]
    return to_grid(rel, grid_size)


def cls_attention(attns: Sequence[Tensor], num_prefix: int = 1) -> dict[int, Tensor]:
    """Raw CLS→patch attention per layer and head.

    Args:
        attns: per block (B, heads, Nq, K) attention probabilities.
        num_prefix: number of prefix tokens.

    Returns:
        ``{block index: (B, heads, N)}`` for every block whose keys include patch tokens.
    """
    return {i: a[:, :, 0, num_prefix:] for i, a in enumerate(attns) if a.shape[-1] > num_prefix}


def grad_rollout_matrix(attns: Sequence[Tensor], grads: Sequence[Tensor], num_prefix: int = 1) -> Tensor:
    """Gradient-weighted rollout of Chefer, Gur & Wolf (CVPR 2021 / ICCV 2021 "generic" rule).

    Per block the head-averaged positive part of attention × gradient, ``Ā = E_h[(∇A ⊙ A)⁺]``, updates
    the relevance by ``R ← R + Ā R`` starting from ``R = I``. Class-attention blocks contribute only a CLS
    row (the patch rows of ``Ā`` are zero, so the patch rows of ``R`` are unchanged); blocks that see only
    the CLS token contribute nothing.

    Args:
        attns: per block (B, heads, Nq, K) attention probabilities.
        grads: matching gradients of the target score with respect to each attention tensor.
        num_prefix: number of prefix tokens (unused in the recursion; kept for symmetry).

    Returns:
        (B, T, T) relevance matrix (rows do not sum to 1).
    """
    if len(grads) != len(attns):
        raise FerlensError(f"Got {len(attns)} attention tensors but {len(grads)} gradients; "
                           "cache both with requires_grad=True for every block.")
    t = _sequence_length(attns)
    b = attns[0].shape[0]
    dtype = torch.float64 if attns[0].dtype == torch.float64 else torch.float32
    r = torch.eye(t, dtype=dtype, device=attns[0].device).repeat(b, 1, 1)   # (B, T, T)
    for attn, grad in zip(attns, grads):
        nq, k = attn.shape[-2:]
        if k == 1:
            continue
        cam = (grad.detach().to(dtype) * attn.detach().to(dtype)).clamp_min(0).mean(dim=1)  # (B, Nq, T)
        if nq == 1:
            full = torch.zeros_like(r)
            full[:, :1] = cam
            cam = full
        r = r + cam @ r
    return r


def grad_rollout(attns: Sequence[Tensor], grads: Sequence[Tensor], num_prefix: int = 1,
                 grid_size: tuple[int, int] | None = None) -> Tensor:
    """CLS→patch relevance of the gradient-weighted rollout (see ``grad_rollout_matrix``).

    Returns:
        (B, N), or (B, H, W) with ``grid_size``.
    """
    rel = grad_rollout_matrix(attns, grads, num_prefix)[:, 0, num_prefix:]
    return to_grid(rel, grid_size)


def to_grid(rel: Tensor, grid_size: tuple[int, int] | None) -> Tensor:
    """Reshape (B, N) token relevance to (B, H, W) (no-op without ``grid_size``)."""
    if grid_size is None:
        return rel
    h, w = int(grid_size[0]), int(grid_size[1])
    if h * w != rel.shape[-1]:
        raise FerlensError(f"{rel.shape[-1]} patch tokens do not fill a {h}x{w} grid; pass the model's grid_size.")
    return rel.reshape(rel.shape[0], h, w)
