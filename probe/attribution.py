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
from train.models.adapters import model_spec, token_grid

from . import rollout as _rollout

Target = int | Sequence[int] | Tensor | str | None


# ------------------------------------------------------------------------------ model geometry
# Geometry (hook points, prefix tokens, token grid, input size) comes only from the model adapter.
def check_images(model: nn.Module, images: Tensor) -> None:
    """Raise one sentence when ``images`` is not a (B, 3, H, W) batch of the model's input size."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise FerlensError(f"Images must be a (B, 3, H, W) tensor, got {shape}; preprocess them with "
                           "train.engine.make_eval_transform(config).")
    model_spec(model).check_input(images)


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The module a CAM targets for hook name (or module path) ``name``, or one sentence naming the valid ones."""
    spec = model_spec(model)
    hook = spec.hooks.get(name)
    if hook is not None and hook.kind in ("tokens", "stem") and hook.error is None:
        if hook.kind == "tokens" and not hook.layout.patches:
            stem = spec.stem_layer or "tokens"
            raise FerlensError(f"Layer '{name}' holds only the CLS token, so it has no patch grid to map; "
                               f"target one of {', '.join(spec.patch_layers)} or '{stem}' instead.")
        return model.get_submodule(hook.module)
    modules = dict(model.named_modules())
    if name and name in modules and name not in spec.hooks:
        return modules[name]
    valid = [n for n in spec.names if spec.hooks[n].kind in ("tokens", "stem")] or [n for n in modules if n]
    what = "is not a CAM target of" if name in spec.hooks else "does not exist in"
    raise FerlensError(f"Layer '{name}' {what} this model; use one of {', '.join(valid)}." + close_matches(name, valid))


def default_cam_layer(model: nn.Module) -> str:
    """Where a CAM looks by default (``ModelSpec.cam_layer``): the token stream whose patch tokens the
    readout still depends on (the one the last block reads for CLS readouts), the CNN stage for clsonly."""
    layer = model_spec(model).cam_layer
    if layer is None:
        raise FerlensError(f"{type(model).__name__} has no token or CNN layer to target; pass --layer MODULE_PATH.")
    return layer


def token_reshape(model: nn.Module, layer: str):
    """A pytorch-grad-cam ``reshape_transform`` for ``layer`` built from the model spec.

    Tokens (B, P+N, D) lose their P prefix tokens and become (B, D, H, W); CNN maps (B, C, H, W)
    pass through, so one transform serves stage and block targets for any grid (7×7, 8×8, 4×6 …).
    """
    return model_spec(model).reshape_transform(layer)


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
        spec = model_spec(self.model)
        if not spec.attention_layers:
            raise FerlensError(f"{type(self).__name__} needs attention hook points (blocks.{{i}}.attn) and "
                               f"{type(self.model).__name__} has none; use gradcam, ig, saliency or occlusion.")
        for name in spec.attention_layers:
            spec.hook(name)  # one sentence naming the fix when an attention cannot be read

    def attn_names(self) -> list[str]:
        return list(model_spec(self.model).attention_layers)

    @abstractmethod
    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        """Raw maps (B, h, w) for images (B, 3, H, W), classes (B,) or None, scored by ``scorer``."""


class Rollout(Attribution):
    """Attention rollout (class-agnostic); options ``head_fusion``, ``discard_ratio``."""

    needs_attention = True

    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        from .cache import run_with_cache

        spec = model_spec(self.model)
        names = self.attn_names()
        cache = run_with_cache(self.model, images, names=names)
        attns = [spec.lift_attention(cache[n], n) for n in names]       # each (B, heads, Nq, T)
        rel = _rollout.attention_rollout(attns, num_prefix=spec.final.num_prefix,
                                          head_fusion=self.options.get("head_fusion", "mean"),
                                          discard_ratio=self.options.get("discard_ratio", 0.0),
                                          residual=self.options.get("residual", True))
        return _rollout.to_grid(rel, spec.grid(rel.shape[-1]))


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
        spec = model_spec(self.model)
        attns = [spec.lift_attention(a.detach(), n) for n, a in zip(names, attns)]
        grads = [spec.lift_attention(g, n, fill=0.0) for n, g in zip(names, grads)]
        rel = _rollout.grad_rollout(attns, grads, num_prefix=spec.final.num_prefix)
        return _rollout.to_grid(rel, spec.grid(rel.shape[-1]))


class ClsAttention(Attribution):
    """Raw CLS→patch attention of one block (``layer='blocks.i'``, default the last block that sees
    patches), mean over heads, or one head with ``head=k``."""

    needs_attention = True

    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        from .cache import run_with_cache

        spec = model_spec(self.model)
        names = spec.cls_attention_layers()
        if self.layer is not None:
            name = self.layer if self.layer.endswith(".attn") else f"{self.layer}.attn"
            if name not in names:
                raise FerlensError(f"Layer '{self.layer}' has no CLS attention over patch tokens; use one of "
                                   f"{', '.join(spec.block_of(n) for n in names) or '(none)'}.")
            names = [name]
        if not names:
            raise FerlensError(f"No block of {type(self.model).__name__} has a CLS query over patch tokens; "
                               "use rollout, gradcam or ig.")
        name = names[-1]
        cache = run_with_cache(self.model, images, names=[name])
        heads = spec.cls_to_patches(cache[name], name)                   # (B, heads, N)
        head = self.options.get("head")
        a = heads.mean(1) if head is None else heads[:, int(head)]
        return _rollout.to_grid(a, spec.grid(a.shape[-1]))


class CAM(Attribution):
    """pytorch-grad-cam on one layer; subclasses only name the CAM class (``cam_class``)."""

    cam_name: ClassVar[str] = "GradCAM"

    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        name = self.layer or default_cam_layer(self.model)
        layer = resolve_layer(self.model, name)
        reshape = token_reshape(self.model, name)
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
        # channels-last pixels: the CNN stem's convolutions and pooling run faster forwards and backwards on
        # CPU (demo_vit IG on 32 images, one AVX2 thread: 5.9 s vs 6.6 s) for attributions within 1e-4 of 1.9
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.enable_grad():
            return algo.attribute(images, target=targets, **kwargs)

    def captum_kwargs(self, images: Tensor) -> dict[str, Any]:
        return {}

    def __call__(self, images: Tensor, targets: Tensor | None, scorer: nn.Module) -> Tensor:
        return self.attribute_pixels(images, targets, scorer).sum(1)     # (B, H, W)


class IntegratedGradients(Captum):
    """captum IntegratedGradients from a zero (dataset-mean) baseline; options ``n_steps`` (32),
    ``internal_batch_size`` (64), ``baseline``."""

    captum_name = "IntegratedGradients"

    def captum_kwargs(self, images: Tensor) -> dict[str, Any]:
        # internal_batch_size 64: captum then runs the 32 interpolation steps of 16 images as 8 forward/backward
        # passes of 64 instead of one of 512, 1.28x less CPU (demo_vit, one AVX2 thread: 6.9 s vs 8.8 s for
        # 32 images) with the same attributions (max |diff| 2.4e-7 on maps of scale 1.9).
        return {"baselines": self.options.get("baseline", 0.0), "n_steps": int(self.options.get("n_steps", 32)),
                "internal_batch_size": self.options.get("internal_batch_size") or 64}


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
        gh, gw = token_grid(self.model, images)
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
        maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)
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
        model: any model ``train.models.adapters.model_spec`` understands (ferlens, timm ViT/DeiT/hybrid, CaiT,
            hook-mapped).
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
        part_masks: (n, h, w) part masks (SynthFER's, or drawn from a dataset's landmarks), or None.
        indices: the dataset indices used.
        dataset: the dataset split.
    """

    images: Tensor
    labels: Tensor
    part_masks: Tensor | None
    indices: list[int]
    dataset: Any


def load_batch(config: dict[str, Any], spec: str | None = None, split: str = "test", n: int = 64,
               seed: int = 0, masks: bool = True) -> ExplainBatch:
    """``n`` random samples (fixed by ``seed``) of a split, preprocessed like the run's evaluation.

    Args:
        config: the run's config (``train.load_run``); its ``data.spec`` is the default ``spec``.
        spec: dataset spec string.
        split: ``train``, ``val`` or ``test``.
        n: number of samples (all when the split is smaller).
        masks: also read the part masks (SynthFER's answer key, or drawn from a real dataset's landmarks).
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
    part_masks = None
    if masks and getattr(ds, "has_part_masks", hasattr(ds, "part_mask")):
        from PIL import Image

        h, w = images.shape[-2:]                      # masks are squashed to the input like the images are
        part_masks = torch.stack([torch.from_numpy(np.asarray(
            Image.fromarray(np.asarray(ds.part_mask(i), dtype=np.uint8)).resize((w, h), Image.NEAREST),
            dtype=np.int64)) for i in indices])
    return ExplainBatch(images, labels, part_masks, indices, ds)
