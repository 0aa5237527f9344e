"""ferlens models: IR / timm CNN stems, class-attention token blocks, hybrids registered in timm.

Importing ``train.models`` registers every ``ferlens_*`` variant with timm, so both
``train.models.create_model(name)`` and ``timm.create_model(name)`` work.
"""
from __future__ import annotations

from .blocks import BLOCK_TYPES, CLASS_ATTENTION, BlockArgs, ClassAttnBlock
from .hooks import HookPoint
from .hybrid import READOUTS, HybridFER
from .ir import IR_SPECS, BottleneckIR, IRBackbone, LoadReport, TimmBackbone, load_backbone_weights, read_state_dict
from .registry import VARIANTS, create_model, list_models, set_input_config, takes_img_size

__all__ = ["BLOCK_TYPES", "CLASS_ATTENTION", "BlockArgs", "ClassAttnBlock", "HookPoint", "READOUTS", "HybridFER",
           "IR_SPECS", "BottleneckIR", "IRBackbone", "LoadReport", "TimmBackbone", "load_backbone_weights",
           "read_state_dict", "VARIANTS", "create_model", "list_models", "set_input_config", "takes_img_size"]
