"""Token blocks of the seed study, assembled from timm parts (Block, Attention, ClassAttn, Mlp,
LayerScale, DropPath) — only the wiring of the class-attention variants is written here.

=============  ==========================================================================================
``vit``        timm ``Block``: pre-norm self-attention + MLP over [CLS; patches] (the baseline)
``cataftermlp``  only CLS queries (timm ``ClassAttn``); CLS gets attention then MLP; patches pass unchanged
``catbeforemlp`` CLS gets attention; the MLP then runs on all tokens
``addpatches``   like ``cataftermlp``, and the CLS attention update is also added to every patch token
``clsonly``      like ``cataftermlp`` but the patches are dropped: after block 0 only CLS remains
=============  ==========================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from timm.layers import DropPath, LayerScale, Mlp
from timm.models.cait import ClassAttn
from timm.models.vision_transformer import Block
from torch import nn

from ..errors import FerlensError


@dataclass(frozen=True)
class BlockArgs:
    """Hyper-parameters shared by every block of a model (``drop_path`` is this block's rate)."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = False
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    init_values: float | None = None


class ClassAttnBlock(nn.Module):
    """Class-attention block: the CLS token (index 0) queries all tokens; patches follow ``mode``.

    Submodule names follow timm's ``Block`` (norm1, attn, ls1, drop_path1, norm2, mlp, ls2, drop_path2),
    so ``blocks.{i}.attn`` is timm's ``ClassAttn`` in every variant.
    """

    def __init__(self, a: BlockArgs, mode: str) -> None:
        super().__init__()
        if a.qk_norm:
            raise FerlensError(f"qk_norm is available only for 'vit' blocks (timm's ClassAttn has no qk norm); "
                               f"drop qk_norm for '{mode}'.")
        self.mode = mode
        self.norm1 = nn.LayerNorm(a.dim)
        self.attn = ClassAttn(a.dim, num_heads=a.num_heads, qkv_bias=a.qkv_bias, attn_drop=a.attn_drop,
                              proj_drop=a.proj_drop)
        self.ls1 = LayerScale(a.dim, init_values=a.init_values) if a.init_values else nn.Identity()
        self.drop_path1 = DropPath(a.drop_path) if a.drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(a.dim)
        self.mlp = Mlp(a.dim, hidden_features=int(a.dim * a.mlp_ratio), act_layer=nn.GELU, drop=a.proj_drop)
        self.ls2 = LayerScale(a.dim, init_values=a.init_values) if a.init_values else nn.Identity()
        self.drop_path2 = DropPath(a.drop_path) if a.drop_path > 0 else nn.Identity()

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:  # (B, n, D) -> (B, n, D)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1+N, D) -> (B, 1+N, D) | (B, 1, D)
        update = self.drop_path1(self.ls1(self.attn(self.norm1(x))))  # (B, 1, D)
        cls, patches = x[:, :1] + update, x[:, 1:]                      # (B, 1, D), (B, N, D)
        if self.mode == "catbeforemlp":
            return self._mlp(torch.cat([cls, patches], dim=1))
        cls = self._mlp(cls)
        if self.mode == "clsonly":
            return cls
        if self.mode == "addpatches":
            patches = patches + update.expand_as(patches)  # the seed's "expand" form: no copy of the update
        return torch.cat([cls, patches], dim=1)


def _vit_block(a: BlockArgs) -> nn.Module:
    return Block(a.dim, a.num_heads, mlp_ratio=a.mlp_ratio, qkv_bias=a.qkv_bias, qk_norm=a.qk_norm,
                 proj_drop=a.proj_drop, attn_drop=a.attn_drop, init_values=a.init_values,
                 drop_path=a.drop_path, norm_layer=nn.LayerNorm)


# block type -> constructor(BlockArgs) -> module. Adding a variant is one entry here.
BLOCK_TYPES: dict[str, Callable[[BlockArgs], nn.Module]] = {
    "vit": _vit_block,
    "cataftermlp": partial(ClassAttnBlock, mode="cataftermlp"),
    "catbeforemlp": partial(ClassAttnBlock, mode="catbeforemlp"),
    "addpatches": partial(ClassAttnBlock, mode="addpatches"),
    "clsonly": partial(ClassAttnBlock, mode="clsonly"),
}

# block types whose attention has a single query (the CLS token)
CLASS_ATTENTION = frozenset({"cataftermlp", "catbeforemlp", "addpatches", "clsonly"})
