"""timm registry entries for the ferlens hybrids.

A variant is a short ``@register_model`` function holding only a dict of hyper-parameters, handed to
``_create_hybrid``. Names read ``ferlens_<backbone>_<block>_s<stage>[_d<depth>]``.
"""
from __future__ import annotations

import fnmatch
from typing import Any

from timm.models import register_model

from ..errors import FerlensError, close_matches
from .hybrid import HybridFER

# user-facing short option names -> HybridFER argument names
ALIASES = {"dim": "embed_dim", "heads": "num_heads", "drop_path": "drop_path_rate", "attn_drop": "attn_drop_rate",
           "proj_drop": "proj_drop_rate", "drop": "drop_rate", "pos_drop": "pos_drop_rate",
           "stage": "stem_stage", "block": "block_type"}
_TIMM_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")

# backbone -> preprocessing (face.evoLVe / POSTER normalise to [-1, 1])
_BACKBONE_CFG = {"ir50": {"img_size": 112, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
                 "tiny": {"img_size": 64, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}}
_IMAGENET = {"img_size": 112, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _hybrid_args() -> list[str]:
    import inspect

    return [p for p in inspect.signature(HybridFER.__init__).parameters if p != "self"]


def _create_hybrid(variant: str, pretrained: bool = False, **kwargs: Any) -> HybridFER:
    """Build ``HybridFER`` from a variant's defaults merged with user overrides (aliases accepted)."""
    if pretrained:
        raise FerlensError(f"No pretrained weights are hosted for '{variant}'; create it with pretrained=False "
                           "and load a POSTER/face.evoLVe backbone with --backbone-weights PATH.")
    for k in _TIMM_ONLY:
        kwargs.pop(k, None)
    kwargs = {ALIASES.get(k, k): v for k, v in kwargs.items()}
    valid = _hybrid_args()
    bad = [k for k in kwargs if k not in valid]
    if bad:
        raise FerlensError(f"Unknown model option '{bad[0]}' for {variant}; valid options are "
                           f"{', '.join(valid + sorted(ALIASES))}." + close_matches(bad[0], valid + list(ALIASES)))
    model = HybridFER(**kwargs)
    base = _BACKBONE_CFG.get(model.backbone_name, _IMAGENET)
    cfg = {"architecture": variant, "input_size": (3, *model.img_size), "mean": base["mean"], "std": base["std"],
           "interpolation": "bilinear", "crop_pct": 1.0, "num_classes": model.num_classes, "classifier": "head"}
    if model.backbone_name in _BACKBONE_CFG:
        cfg["first_conv"] = "stem.input_layer.0" if model.backbone_name == "ir50" else "stem.body.0.conv"
    model.pretrained_cfg = model.default_cfg = cfg
    return model


def _variant(backbone: str, block: str, stage: int, **extra: Any) -> dict[str, Any]:
    """Hyper-parameter dict of a registered variant (the one place defaults per backbone live)."""
    size = {"ir50": dict(img_size=112, embed_dim=512, num_heads=8, depth=8),
            "tiny": dict(img_size=64, embed_dim=160, num_heads=4, depth=4)}[backbone]
    return dict(backbone=backbone, block_type=block, stem_stage=stage, **size, **extra)


def _register(name: str, cfg: dict[str, Any]) -> None:
    def entry(pretrained: bool = False, **kwargs: Any) -> HybridFER:
        return _create_hybrid(name, pretrained, **{**cfg, **kwargs})

    entry.__name__ = name
    entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"{name}: " + ", ".join(f"{k}={v}" for k, v in cfg.items())
    globals()[name] = register_model(entry)


BLOCKS = ("vit", "cataftermlp", "catbeforemlp", "addpatches", "clsonly")

# The study's IR-50 set (dim 512, 8 heads, depth 8) and the CPU demo set (tiny conv stem, stage-3 tokens, 64 px).
VARIANTS: dict[str, dict[str, Any]] = {
    **{f"ferlens_ir50_{b}_s{s}_d8": _variant("ir50", b, s) for b in BLOCKS for s in (3, 4)},
    **{f"ferlens_tiny_{b}_s3": _variant("tiny", b, 3) for b in BLOCKS},
}
for _name, _cfg in VARIANTS.items():
    _register(_name, _cfg)


def list_models(pattern: str = "ferlens_*") -> list[str]:
    """Registered ferlens variant names matching a glob ``pattern``."""
    return sorted(n for n in VARIANTS if fnmatch.fnmatch(n, pattern))


def takes_img_size(name: str) -> bool:
    """Whether ``create_model(name, img_size=...)`` is how this model learns its input side.

    ferlens variants derive their token grid from ``img_size``; a ``MODULE:FUNCTION`` when the function has an
    ``img_size`` parameter; a timm model when its pretrained config says ``fixed_input_size`` (timm's own flag
    for ViT, DeiT, CaiT, the ResNetV2-ViT hybrids ...; CNNs take any size and no ``img_size``).
    """
    from .external import accepts, is_external, load_factory

    if name in VARIANTS:
        return True
    if is_external(name):
        return accepts(load_factory(name), "img_size")
    from timm.models import get_pretrained_cfg, is_model

    cfg = get_pretrained_cfg(name) if is_model(name) else None
    return bool(cfg is not None and cfg.fixed_input_size)


def set_input_config(model, img_size: int, mean=None, std=None) -> None:
    """Make the model's timm ``pretrained_cfg`` (and its ``default_cfg`` alias) describe the run's input,
    so ``timm.data.resolve_data_config(model=model)`` and every consumer read the size it was built for.

    Args:
        model: any nn.Module (models without a ``pretrained_cfg`` get one).
        img_size: input side in pixels.
        mean, std: normalisation (kept from the model's config when None).
    """
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg["input_size"] = (3, int(img_size), int(img_size))
    if mean is not None:
        cfg["mean"] = tuple(float(m) for m in mean)
    if std is not None:
        cfg["std"] = tuple(float(s) for s in std)
    model.pretrained_cfg = model.default_cfg = cfg


def create_model(name: str, num_classes: int = 7, pretrained: bool = False, **kwargs: Any):
    """Create a ferlens hybrid, any timm model or a ``MODULE:FUNCTION`` model; ``kwargs`` override the variant.

    Args:
        name: e.g. ``ferlens_tiny_cataftermlp_s3``, ``ferlens_ir50_vit_s4_d8``, ``deit_tiny_patch16_224`` or
            ``my_code.models:ir50_vit`` (imported from the working directory / PYTHONPATH).
        num_classes: classifier outputs.
        pretrained: must be False for ferlens variants (no hosted weights) and external models.
        **kwargs: model options (``depth=2``, ``img_size=96``, ``drop_path=0.1`` ...).
    """
    import timm

    from .external import create_external, is_external

    if is_external(name):
        if pretrained:
            raise FerlensError(f"pretrained=True has no meaning for the external model '{name}'; load its "
                               "checkpoint with 'train import --weights PATH'.")
        return create_external(name, num_classes=num_classes, **kwargs)
    if name not in VARIANTS and not timm.is_model(name):
        raise FerlensError(f"Unknown model '{name}'; see train.models.list_models() for the ferlens variants, "
                           "or name your own code as MODULE:FUNCTION."
                           + (close_matches(name, VARIANTS) or close_matches(name, timm.list_models())))
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as e:  # option a plain timm model does not take
        hint = " (--img_size: this model has a fixed input size it cannot change)" if "img_size" in str(e) else ""
        raise FerlensError(f"Model '{name}' does not accept these options ({e}){hint}; remove them.") from None
