"""``HybridFER``: CNN stem → 1×1 projection → [CLS; patches] + position embedding → token blocks → head.

Interface (timm's): ``forward_features``, ``forward_head(pre_logits=)``, ``forward_intermediates``,
``num_prefix_tokens``, ``grid_size``; hook points ``stem.stage{k}``, ``tokens``, ``blocks.{i}``,
``blocks.{i}.attn``, ``pre_logits`` (see DESIGN.md) listed by ``hook_names()``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn

from ..errors import FerlensError, close_matches
from .blocks import BLOCK_TYPES, CLASS_ATTENTION, BlockArgs
from .hooks import HookPoint
from .ir import build_backbone

READOUTS = ("cls", "gap", "seqpool")


class SeqPool(nn.Module):
    """CCT-style sequence pooling: softmax(Linear(x)) weighted mean over all tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attention_pool = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, D)
        w = self.attention_pool(x).softmax(dim=1)  # (B, T, 1)
        return (w * x).sum(dim=1)


class HybridFER(nn.Module):
    """CNN–transformer hybrid for FER.

    Args:
        backbone: ``ir50``, ``tiny`` or ``timm:<cnn>``.
        block_type: one of ``BLOCK_TYPES`` (vit, cataftermlp, catbeforemlp, addpatches, clsonly).
        stem_stage: CNN stage (3 or 4) whose feature map becomes the patch tokens.
        cut_last_stage: keep only the first (downsampling) unit of ``stem_stage`` (the study's
            "stage 4 cut to one unit").
        img_size: input side (int) or (H, W); the token grid is derived from it.
        num_classes: classifier outputs (0 → no head, ``forward`` returns pre-logits).
        embed_dim: token width D (1×1 projection from the CNN channels).
        depth: number of token blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: bias in the q/k/v projections.
        qk_norm: LayerNorm on q and k (vit blocks only).
        drop_rate: dropout before the head.
        pos_drop_rate: dropout after adding the position embedding.
        proj_drop_rate: dropout after attention/MLP projections.
        attn_drop_rate: dropout on attention probabilities.
        drop_path_rate: stochastic depth, linearly increasing to this rate over the blocks.
        init_values: LayerScale init (None → no layer scale).
        readout: ``cls``, ``gap`` (mean of patch tokens) or ``seqpool``.
        final_norm: LayerNorm on the tokens after the last block.
    """

    num_prefix_tokens = 1

    def __init__(self, backbone: str = "ir50", block_type: str = "vit", stem_stage: int = 4,
                 cut_last_stage: bool = False, img_size: int | tuple[int, int] = 112, num_classes: int = 7,
                 embed_dim: int = 512, depth: int = 8, num_heads: int = 8, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_norm: bool = False, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, init_values: float | None = None, readout: str = "cls",
                 final_norm: bool = True) -> None:
        super().__init__()
        _check_choice("block_type", block_type, BLOCK_TYPES)
        _check_choice("readout", readout, READOUTS)
        if stem_stage not in (3, 4):
            raise FerlensError(f"stem_stage must be 3 or 4, got {stem_stage}; pick the CNN stage that feeds the tokens.")
        if embed_dim % num_heads:
            raise FerlensError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}; change one of them.")
        if depth < 1:
            raise FerlensError(f"depth must be at least 1, got {depth}.")
        if block_type == "clsonly" and readout != "cls":
            raise FerlensError(f"readout '{readout}' needs patch tokens, which 'clsonly' drops after block 0; use readout='cls'.")
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.backbone_name, self.block_type, self.readout = backbone, block_type, readout
        self.stem_stage, self.depth, self.num_heads = stem_stage, depth, num_heads
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.num_classes = num_classes

        self.stem = build_backbone(backbone, stem_stage, cut_last_stage)
        self.grid_size = tuple(int(s) for s in self.stem.feature_size(self.img_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(self.stem.out_chs, embed_dim, kernel_size=1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.tokens = HookPoint()
        rates = np.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth, linear
        make = BLOCK_TYPES[block_type]
        self.blocks = nn.ModuleList([
            make(BlockArgs(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_norm, proj_drop_rate, attn_drop_rate,
                           rates[i], init_values)) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim) if final_norm else nn.Identity()
        self.pool = SeqPool(embed_dim) if readout == "seqpool" else nn.Identity()
        self.pre_logits = HookPoint()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_token_weights()

    # ---------------------------------------------------------------- set-up
    def _init_token_weights(self) -> None:
        """timm ViT init for the token part; the CNN stem keeps torch's default init."""
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for name, m in self.named_modules():
            if name.startswith("stem"):
                continue
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @property
    def class_attention(self) -> bool:
        """True when the blocks' attention has a single query (the CLS token)."""
        return self.block_type in CLASS_ATTENTION

    def hook_names(self) -> list[str]:
        """Every valid hook point name, in forward order."""
        names = [f"stem.stage{k}" for k in range(1, self.stem.num_stages + 1)] + ["tokens"]
        for i in range(self.depth):
            names += [f"blocks.{i}.attn", f"blocks.{i}"]
        return names + ["pre_logits"]

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # ---------------------------------------------------------------- forward
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → token sequence entering block 0, (B, 1+N, D)."""
        f = self.proj(self.stem(x))  # (B, D, h, w)
        if tuple(f.shape[-2:]) != self.grid_size:
            raise FerlensError(f"Input {tuple(x.shape[-2:])} gives a {tuple(f.shape[-2:])} token grid but the model "
                               f"was built for img_size={self.img_size} (grid {self.grid_size}); resize the images "
                               "or create the model with img_size=<your size>.")
        t = f.flatten(2).transpose(1, 2)  # (B, N, D)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed  # (B, 1+N, D)
        return self.tokens(self.pos_drop(t))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → normed tokens after the last block, (B, 1+N, D) ((B, 1, D) for clsonly)."""
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, T, D) → logits (B, num_classes), or the readout (B, D) with ``pre_logits=True``."""
        if self.readout == "cls":
            x = x[:, 0]
        elif self.readout == "gap":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        else:
            x = self.pool(x)
        x = self.pre_logits(x)  # (B, D)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes)
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False) -> Any:
        """timm-style intermediates of the token blocks.

        Args:
            x: images (B, 3, H, W).
            indices: last n blocks if int, all if None, else these block indices.
            return_prefix_tokens: also return the CLS token of each intermediate, as (patches, cls) pairs.
            norm: apply the final norm to each intermediate.
            stop_early: stop after the last requested block (only with ``intermediates_only``).
            output_fmt: ``NCHW`` (B, D, h, w) or ``NLC`` (B, N, D) for the patch tokens.
            intermediates_only: return only the list of intermediates.

        Returns:
            list of intermediates, or (final normed tokens, intermediates).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise FerlensError(f"output_fmt must be 'NCHW' or 'NLC', got '{output_fmt}'.")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        if self.block_type == "clsonly" and output_fmt == "NCHW":
            raise FerlensError("A 'clsonly' model has no patch tokens after block 0, so NCHW intermediates do not "
                               "exist; use output_fmt='NLC' with return_prefix_tokens=True.")
        blocks = self.blocks[:max_index + 1] if (stop_early and intermediates_only) else self.blocks
        x = self.embed(x)
        inter = []
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take:
                inter.append(self.norm(x) if norm else x)
        prefix = [y[:, :self.num_prefix_tokens] for y in inter]  # (B, 1, D)
        inter = [y[:, self.num_prefix_tokens:] for y in inter]     # (B, N, D)
        if output_fmt == "NCHW":
            h, w = self.grid_size
            inter = [y.reshape(y.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() for y in inter]
        if return_prefix_tokens:
            inter = list(zip(inter, prefix))
        if intermediates_only:
            return inter
        return self.norm(x), inter


def _check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise FerlensError(f"Unknown {what} '{value}'; use one of {', '.join(choices)}." + close_matches(value, choices))
