"""Named hook points (TransformerLens-style): identity modules whose module path is the hook name.

``probe.cache`` attaches forward hooks to these modules by name; a normal forward pays nothing.
"""
from __future__ import annotations

import torch
from torch import nn


class HookPoint(nn.Identity):
    """An identity module that marks a readable tensor (``stem.stage3``, ``tokens``, ``pre_logits``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # same tensor, any shape
        return x
