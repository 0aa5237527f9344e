"""One interface for every attribution method: ``explain(model, images, method, target) -> (B, H, W)``.

Methods share one base class (``Attribution``) and are looked up by name in ``METHODS``:

==============  ==================================================================================
rollout         attention rollout (Abnar & Zuidema), ``probe.rollout`` — needs attention hook points
grad_rollout    gradient-weighted rollout (Chefer et al. 2021) — needs attention hook points
cls_attention   raw CLS→patch attention of one block, mean over heads
gradcam …       pytorch-grad-cam's GradCAM, GradCAMPlusPlus, LayerCAM, EigenCAM, ScoreCAM on any CNN
                stage (``stem.stage3``) or token block (``blocks.3``)
ig, saliency,   captum's IntegratedGradients, Saliency, Occlusion (patch-sized windows) and
occlusion,      NoiseTunnel(Saliency); every captum method takes ``nt_samples`` to add a NoiseTunnel
smoothgrad
==============  ==================================================================================

``target``: None (the predicted class), a class index, a (B,) tensor/list of classes, or ``"cls"`` —
the L2 norm of the CLS feature the head reads (``pre_logits``), to ask what the CLS token itself
depends on. Maps are upsampled to the image size and min–max normalised to [0, 1] per image after
keeping the positive part.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.errors import FerlensError, close_matches

from . import rollout as _rollout

Target = int | Sequence[int] | Tensor | str | None


# ------------------------------------------------------------------------------ model geometry
def model_input_size(model: nn.Module) -> tuple[int, int] | None:
    """(H, W) the model was built for, read from its ``pretrained_cfg`` (None when unknown)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return (int(size[-2]), int(size[-1])) if size else None


def hook_names(model: nn.Module) -> list[str]:
    """The model's hook point names (empty for a model without ferlens hook points)."""
    fn = getattr(model, "hook_names", None)
    return list(fn()) if callable(fn) else []


def check_images(model: nn.Module, images: Tensor) -> None:
    """Raise one sentence when ``images`` is not a (B, 3, H, W) batch of the model's input size."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise FerlensError(f"Images must be a (B, 3, H, W) tensor, got {shape}; preprocess them with "
                           "train.engine.make_eval_transform(config).")
    expected = model_input_size(model)
    if expected is not None and tuple(images.shape[-2:]) != expected:
        raise FerlensError(f"Images are {images.shape[-2]}x{images.shape[-1]} but the model expects "
                           f"{expected[0]}x{expected[1]}; resize them with train.engine.make_eval_transform(config).")


def is_clsonly(model: nn.Module) -> bool:
    return getattr(model, "block_type", "") == "clsonly"


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The module at hook/module path ``name``, or one sentence naming the valid hook points."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        valid = hook_names(model) or [n for n in modules if n]
        raise FerlensError(f"Layer '{name}' does not exist in this model; use one of "
                           f"{', '.join(v for v in valid if not v.endswith('.attn'))}." + close_matches(name, valid))
    if is_clsonly(model) and name.startswith("blocks."):
        raise FerlensError(f"Layer '{name}' of a clsonly model holds only the CLS token, so it has no patch "
                           f"grid to map; target 'tokens' or 'stem.stage{getattr(model, 'stem_stage', 3)}' instead.")
    return modules[name]


def default_cam_layer(model: nn.Module) -> str:
    """Where a CAM looks by default: the token stream the last block reads (its patch tokens still
    influence the CLS readout), the last block for gap/seqpool readouts, the CNN stage for clsonly."""
    if is_clsonly(model) or not hasattr(model, "blocks"):
        return f"stem.stage{getattr(model, 'stem_stage', 3)}"
    depth = len(model.blocks)
    if getattr(model, "readout", "cls") != "cls":
        return f"blocks.{depth - 1}"
    return f"blocks.{depth - 2}" if depth >= 2 else "tokens"


def token_reshape(grid_size: Sequence[int], num_prefix: int):
    """A pytorch-grad-cam ``reshape_transform`` from the model's geometry.

    Tokens (B, P+N, D) lose their P prefix tokens and become (B, D, H, W); CNN maps (B, C, H, W)
    pass through, so one transform serves stage and block targets for any grid (7×7, 8×8, 4×6 …).
    """
    h, w = int(grid_size[0]), int(grid_size[1])

    def reshape(x: Tensor) -> Tensor:
        if x.dim() == 4:
            return x
        n = x.shape[1] - num_prefix
        if n != h * w:
            raise FerlensError(f"The target layer has {x.shape[1]} tokens, not {num_prefix} prefix + {h}x{w} "
                               "patches; choose a layer that keeps the patch tokens (e.g. 'tokens').")
        return x[:, num_prefix:].reshape(x.shape[0], h, w, x.shape[-1]).permute(0, 3, 1, 2)  # (B, D, H, W)

    return reshape


# ------------------------------------------------------------------------------------- targets
class ClsNorm(nn.Module):
    """Wraps a model so its output is the L2 norm of the CLS feature the head reads, (B, 1)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, 1)
        feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)  # (B, D)
        return feats.norm(dim=-1, keepdim=True)


def resolve_targets(model: nn.Module, images: Tensor, target: Target) -> tuple[nn.Module, Tensor | None]:
    """The scoring module and (B,) output indices to explain.

    Returns:
        (model, classes) for class targets; (model, None) for the predicted class — each method then
        takes the arg-max of the forward pass it runs anyway, so no extra forward is spent;
        (ClsNorm(model), zeros) for "cls".
    """
    b = images.shape[0]
    if isinstance(target, str):
        if target != "cls":
            raise FerlensError(f"Unknown target '{target}'; pass a class index, None (predicted class) or 'cls'.")
        return ClsNorm(model), torch.zeros(b, dtype=torch.long, device=images.device)
    if target is None:
        return model, None
    t = torch.as_tensor(target, dtype=torch.long, device=images.device).flatten()
    if t.numel() == 1:
        t = t.expand(b)
    num_classes = getattr(model, "num_classes", None)
    if t.numel() != b or (num_classes and (t.min() < 0 or t.max() >= num_classes)):
        raise FerlensError(f"Target {target!r} must be one class in [0, {num_classes}) or one per image ({b}).")
    return model, t


def predicted(scorer: nn.Module, images: Tensor) -> Tensor:
    """(B,) arg-max classes of one no-grad forward."""
    with torch.no_grad():
        return scorer(images).argmax(-1)


# ---------------------------------------------------------------------------------------- base
class Attribution(ABC):
    """Base of all methods: ``__call__(images, targets, scorer) -> (B, h, w)`` raw maps (any resolution);
    ``targets`` None means the predicted class of ``scorer``.

    Attributes:
        needs_attention: the method reads ``blocks.{i}.attn`` hook points.
    """

    needs_attention: ClassVar[bool] = False

    def __init__(self, model: nn.Module, layer: str | None = None, **options: Any) -> None:
        self.model = model
        self.layer = layer
        self.options = options
        if self.needs_attention:
            self._check_attention()

    def _check_attention(self) -> None:
        if "blocks.0.attn" not in hook_names(self.model):
            raise FerlensError(f"{type(self).__name__} needs attention hook points (blocks.{{i}}.attn) and "
                               f"{type(self.model).__name__} has none; use gradcam, ig, saliency or occlusion.")

    def attn_names(self) -> list[str]:
        return [f"blocks.{i}.attn" for i in range(len(self.model.blocks))]

    @abstractmethod
    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        """Raw maps (B, h, w) for images (B, 3, H, W), classes (B,) or None, scored by ``scorer``."""


class Rollout(Attribution):
    """Attention rollout (class-agnostic); options ``head_fusion``, ``discard_ratio``."""

    needs_attention = True

    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        from .cache import run_with_cache

        names = self.attn_names()
        cache = run_with_cache(self.model, images, names=names)
        return _rollout.attention_rollout([cache[n] for n in names], grid_size=self.model.grid_size,
                                          num_prefix=self.model.num_prefix_tokens,
                                          head_fusion=self.options.get("head_fusion", "mean"),
                                          discard_ratio=self.options.get("discard_ratio", 0.0),
                                          residual=self.options.get("residual", True))


class GradRollout(Attribution):
    """Chefer et al. (2021) gradient-weighted rollout of the target score."""

    needs_attention = True

    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        from .cache import hooked

        names = self.attn_names()
        with torch.enable_grad(), hooked(self.model, names, requires_grad=True) as cache:
            out = scorer(images)                                          # (B, C)
            targets = out.argmax(-1) if targets is None else targets
            score = out.gather(1, targets[:, None]).sum()
            attns = [cache[n] for n in names]
            grads = torch.autograd.grad(score, attns, allow_unused=True)
        grads = [torch.zeros_like(a) if g is None else g for a, g in zip(attns, grads)]
        return _rollout.grad_rollout(attns, grads, num_prefix=self.model.num_prefix_tokens,
                                     grid_size=self.model.grid_size)


class ClsAttention(Attribution):
    """Raw CLS→patch attention of one block (``layer='blocks.i'``, default the last block that sees
    patches), mean over heads, or one head with ``head=k``."""

    needs_attention = True

    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        from .cache import run_with_cache

        names = self.attn_names()
        if self.layer is not None:
            idx = self.layer.removesuffix(".attn")
            if f"{idx}.attn" not in names:
                raise FerlensError(f"Layer '{self.layer}' has no attention; use one of {', '.join(names)}.")
            names = [f"{idx}.attn"]
        cache = run_with_cache(self.model, images, names=names)
        raw = _rollout.cls_attention([cache[n] for n in names], num_prefix=self.model.num_prefix_tokens)
        if not raw:
            raise FerlensError(f"{self.layer} attends only to the CLS token; pick a block that sees patch tokens.")
        heads = raw[max(raw)]                                            # (B, heads, N)
        head = self.options.get("head")
        a = heads.mean(1) if head is None else heads[:, int(head)]
        return _rollout.to_grid(a, self.model.grid_size)


class CAM(Attribution):
    """pytorch-grad-cam on one layer; subclasses only name the CAM class (``cam_class``)."""

    cam_name: ClassVar[str] = "GradCAM"

    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer = resolve_layer(self.model, self.layer or default_cam_layer(self.model))
        reshape = token_reshape(self.model.grid_size, self.model.num_prefix_tokens)
        # The CAM needs d(score)/d(target activations) only. pytorch-grad-cam calls loss.backward(), which
        # also computes every weight gradient and back-propagates through the layers below the target.
        # So, for the call: weights frozen, and the target's output made a leaf that requires grad (our hook
        # runs before grad-cam's, which then records that leaf) — same maps, backward stops at the target.
        frozen = [p for p in scorer.parameters() if p.requires_grad]
        leaf, cam = layer.register_forward_hook(_grad_leaf), None  # registered first: runs before grad-cam's
        try:
            cam = getattr(pytorch_grad_cam, self.cam_name)(model=scorer, target_layers=[layer],
                                                            reshape_transform=reshape)
            if "batch_size" in self.options:                             # ScoreCAM's forward chunk
                cam.batch_size = int(self.options["batch_size"])
            for p in frozen:
                p.requires_grad_(False)
            with torch.enable_grad():
                maps = cam(input_tensor=images, targets=None if targets is None else
                           [ClassifierOutputTarget(int(t)) for t in targets])   # None: grad-cam's arg-max
        finally:
            if cam is not None:
                cam.activations_and_grads.release()
            leaf.remove()
            for p in frozen:
                p.requires_grad_(True)
        return torch.from_numpy(maps).to(images.device)                  # (B, H, W)


def _grad_leaf(module: nn.Module, inputs, output):
    """Forward hook: the layer's output as a fresh leaf that requires grad (cuts the graph below it)."""
    if isinstance(output, Tensor):
        return output.detach().requires_grad_(True)
    return None


def _cam(name: str) -> type[CAM]:
    return type(name, (CAM,), {"cam_name": name, "__doc__": f"pytorch-grad-cam {name}."})


class Captum(Attribution):
    """captum attribution on the input pixels; ``nt_samples > 0`` wraps it in a NoiseTunnel (SmoothGrad)."""

    captum_name: ClassVar[str] = "Saliency"
    nt_default: ClassVar[int] = 0

    def attribute_pixels(self, images: Tensor, targets: Tensor, scorer: nn.Module) -> Tensor:
        """Raw captum attributions (B, 3, H, W)."""
        import captum.attr

        algo = getattr(captum.attr, self.captum_name)(scorer)
        kwargs = self.captum_kwargs(images)
        nt = int(self.options.get("nt_samples", self.nt_default))
        if nt > 0:
            algo = captum.attr.NoiseTunnel(algo)
            kwargs.update(nt_type="smoothgrad", nt_samples=nt, stdevs=float(self.options.get("stdevs", 0.15)),
                          nt_samples_batch_size=self.options.get("internal_batch_size"))
        targets = predicted(scorer, images) if targets is None else targets
        with torch.enable_grad():
            return algo.attribute(images, target=targets, **kwargs)

    def captum_kwargs(self, images: Tensor) -> dict[str, Any]:
        return {}

    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        return self.attribute_pixels(images, targets, scorer).sum(1)     # (B, H, W)


class IntegratedGradients(Captum):
    """captum IntegratedGradients from a zero (dataset-mean) baseline; options ``n_steps``,
    ``internal_batch_size``, ``baseline``."""

    captum_name = "IntegratedGradients"

    def captum_kwargs(self, images: Tensor) -> dict[str, Any]:
        return {"baselines": self.options.get("baseline", 0.0), "n_steps": int(self.options.get("n_steps", 32)),
                "internal_batch_size": self.options.get("internal_batch_size")}


class Saliency(Captum):
    """captum Saliency: |∂score/∂pixel| summed over channels."""

    captum_name = "Saliency"

    def captum_kwargs(self, images: Tensor) -> dict[str, Any]:
        return {"abs": True}


class SmoothGrad(Saliency):
    """NoiseTunnel(Saliency), ``nt_samples`` (default 8) noisy copies with ``stdevs`` 0.15."""

    nt_default = 8


class Occlusion(Captum):
    """captum Occlusion with windows (and strides) of one token-grid cell, zero baseline."""

    captum_name = "Occlusion"

    def captum_kwargs(self, images: Tensor) -> dict[str, Any]:
        gh, gw = self.model.grid_size
        ph, pw = -(-images.shape[-2] // int(gh)), -(-images.shape[-1] // int(gw))
        return {"sliding_window_shapes": (3, ph, pw), "strides": (3, ph, pw), "baselines": 0.0,
                "perturbations_per_eval": int(self.options.get("internal_batch_size") or 16)}

    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        return self.attribute_pixels(images, targets, scorer).mean(1)    # same value on all channels


METHODS: dict[str, type[Attribution]] = {
    "rollout": Rollout,
    "grad_rollout": GradRollout,
    "cls_attention": ClsAttention,
    "gradcam": _cam("GradCAM"),
    "gradcampp": _cam("GradCAMPlusPlus"),
    "layercam": _cam("LayerCAM"),
    "eigencam": _cam("EigenCAM"),
    "scorecam": _cam("ScoreCAM"),
    "ig": IntegratedGradients,
    "saliency": Saliency,
    "smoothgrad": SmoothGrad,
    "occlusion": Occlusion,
}


# ------------------------------------------------------------------------------------ interface
def normalise_maps(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Upsample (B, h, w) maps bilinearly to ``size`` and min–max normalise the positive part per image.

    Returns:
        (B, H, W) float32 in [0, 1] (all zeros for a constant map).
    """
    maps = maps.detach().float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    maps = maps.clamp_min(0)
    lo = maps.flatten(1).min(1).values[:, None, None]
    hi = maps.flatten(1).max(1).values[:, None, None]
    return ((maps - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)


def get_method(method: str) -> type[Attribution]:
    if method not in METHODS:
        raise FerlensError(f"Unknown attribution method '{method}'; use one of {', '.join(METHODS)}."
                           + close_matches(method, METHODS))
    return METHODS[method]


def explain(model: nn.Module, images: Tensor, method: str = "gradcam", target: Target = None,
            layer: str | None = None, raw: bool = False, **options: Any) -> Tensor:
    """Attribution maps for a batch of images.

    Args:
        model: a ferlens hybrid (or any timm-style model with ``grid_size``/``num_prefix_tokens``).
        images: (B, 3, H, W) preprocessed images of the model's input size.
        method: a key of ``METHODS``.
        target: None (predicted class), a class index, (B,) classes, or ``"cls"`` (CLS feature norm).
        layer: target layer for CAMs (``stem.stage3``, ``blocks.2``, ``tokens``) or block for cls_attention.
        raw: return the method's raw (B, h, w) map instead of the normalised image-size map.
        **options: method options (``n_steps``, ``internal_batch_size``, ``head_fusion``, ``discard_ratio``,
            ``nt_samples``, ``batch_size`` …).

    Returns:
        (B, H, W) float32 maps in [0, 1].
    """
    cls = get_method(method)
    check_images(model, images)
    if layer is not None and cls is not ClsAttention:
        resolve_layer(model, layer)
    model.eval()
    attributor = cls(model, layer=layer, **options)
    scorer, targets = resolve_targets(model, images, target)
    maps = attributor(images, targets, scorer)                          # (B, h, w)
    return maps if raw else normalise_maps(maps, images.shape[-2:])


# ------------------------------------------------------------------------------ data for the CLI
@dataclass
class ExplainBatch:
    """Preprocessed images of a dataset split with their answer key.

    Attributes:
        images: (n, 3, H, W) preprocessed with the run's eval transform.
        labels: (n,) true classes.
        part_masks: (n, h, w) SynthFER part masks, or None for datasets without them.
        indices: the dataset indices used.
        dataset: the dataset split.
    """

    images: Tensor
    labels: Tensor
    part_masks: Tensor | None
    indices: list[int]
    dataset: Any


def load_batch(config: dict[str, Any], spec: str | None = None, split: str = "test", n: int = 64,
               seed: int = 0) -> ExplainBatch:
    """``n`` random samples (fixed by ``seed``) of a split, preprocessed like the run's evaluation.

    Args:
        config: the run's config (``train.load_run``); its ``data.spec`` is the default ``spec``.
        spec: dataset spec string.
        split: ``train``, ``val`` or ``test``.
        n: number of samples (all when the split is smaller).
    """
    import numpy as np

    from train.data import load_dataset
    from train.engine import make_eval_transform

    if n < 1:
        raise FerlensError(f"--n must be at least 1, got {n}.")
    spec = spec or config.get("data", {}).get("spec")
    if not spec:
        raise FerlensError("The run config names no dataset; pass one with --data SPEC.")
    ds = load_dataset(spec, split=split)
    transform = make_eval_transform(config)
    order = np.random.default_rng(seed).permutation(len(ds))[:n]
    indices = sorted(int(i) for i in order)
    images = torch.stack([transform(ds.load_image(i)) for i in indices])
    labels = torch.as_tensor(ds.labels[indices], dtype=torch.long)
    masks = None
    if hasattr(ds, "part_mask"):
        masks = torch.stack([torch.from_numpy(np.asarray(ds.part_mask(i)).astype(np.int64)) for i in indices])
    return ExplainBatch(images, labels, masks, indices, ds)
