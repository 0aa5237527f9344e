"""The one model adapter: ``model_spec(model) -> ModelSpec`` says where a model's hook points and tokens live.

Every consumer (feature store, probes, rollout, attributions, interventions, figures, app) asks the spec
instead of reading ``grid_size``, ``num_prefix_tokens`` or ``[:, 0]`` / ``[:, 1:]`` from a model. Families are
detected from the module tree, not from a list of names:

=================  ========================================================================================
ferlens hybrid     ``HybridFER``: its own hook points (``stem.stage{k}``, ``tokens``, ``blocks.{i}[.attn]``,
                   ``pre_logits``); ``clsonly`` blocks hold only the CLS token
timm ViT / DeiT    a ``patch_embed`` + ``blocks`` + ``norm_pre`` tree (timm ``VisionTransformer``): prefix
                   tokens = CLS + registers (+ the distillation token of a distilled DeiT, never a patch);
                   ``tokens`` = the sequence block 0 reads (after pos-embed); ``pre_logits`` = the head's input
timm hybrids       the same, plus ``stem.stage{k}`` -> ``patch_embed.backbone.stages.{k-1}`` of a ResNetV2
                   backbone (``stem.stage0`` -> its stem when it has no stages)
CaiT               ``blocks`` + ``blocks_token_only``: ``blocks.{i}`` carry only patches (no CLS),
                   ``blocks_token_only.{j}`` only the CLS token (class attention over [CLS; patches])
hook map           ``model.ferlens_hook_map = {NAME: MODULE_PATH}`` (from the run config's
                   ``model.hook_map``); ``"blocks": "layers"`` expands to ``blocks.{i}`` -> ``layers.{i}``
=================  ========================================================================================

Attention hooks (``<block>.attn``) always hold post-softmax probabilities (B, heads, Nq, K): timm
``Attention`` / ``ClassAttn`` are read at the input of their ``attn_drop`` with fused attention switched off
while requested; timm's ``TalkingHeadAttn`` (CaiT) at the input of ``proj_w`` — the softmax of the
pre-softmax talking-head mix (``proj_l``), whose rows are probabilities (``proj_w``'s post-softmax mix is
a linear map over heads whose rows do not sum to 1). A module whose probabilities cannot be read is never
recorded under an ``.attn`` name: asking for it raises one sentence naming the fix.
"""
from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import FerlensError, close_matches

READS = ("output", "input")  # what a hook records of its module
KINDS = ("stem", "tokens", "attn", "pre_logits", "other")


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of one sequence tensor (B, T, D) live.

    Attributes:
        num_prefix: tokens before the patches (CLS, registers, distillation token).
        cls_index: position of the CLS token, None when the sequence has none (CaiT patch blocks).
        patches: the sequence holds the patch tokens after the prefix (False: only prefix tokens remain).
    """

    num_prefix: int
    cls_index: int | None
    patches: bool = True

    def cls(self, t: Tensor) -> Tensor:
        """(B, T, D) -> (B, D) CLS token."""
        if self.cls_index is None:
            raise FerlensError("This layer has no CLS token; read the CLS from a layer that has one "
                               "(ModelSpec.cls_layers).")
        return t[:, self.cls_index]

    def patch_tokens(self, t: Tensor) -> Tensor:
        """(B, T, D) -> (B, N, D) patch tokens (every prefix token excluded)."""
        if not self.patches:
            raise FerlensError("This layer holds no patch tokens (only the CLS token is left); read patches "
                               "from a layer that has them (ModelSpec.patch_layers).")
        return t[:, self.num_prefix:]


@dataclass(frozen=True)
class Hook:
    """One named hook point.

    Attributes:
        name: the hook name (``blocks.3``, ``blocks.3.attn``, ``tokens`` ...).
        module: path of the module whose output (or input) is recorded.
        read: ``output`` or ``input`` (the first positional input, e.g. the head's input for ``pre_logits``).
        kind: ``stem`` (B, C, H, W), ``tokens`` (B, T, D), ``attn`` (B, heads, Nq, K), ``pre_logits`` (B, D).
        layout: token layout of a ``tokens`` hook; for ``attn`` the layout of the keys.
        query_layout: for ``attn``, the layout of the queries (class attention: the CLS token only).
        unfuse: for ``attn``, the attention module whose ``fused_attn`` is switched off while recorded.
        heads_last: for ``attn``, the recorded input is (B, Nq, K, heads) (TalkingHeadAttn's ``proj_w``).
        error: set when the hook cannot be recorded; the sentence names the fix.
    """

    name: str
    module: str
    read: str = "output"
    kind: str = "other"
    layout: TokenLayout | None = None
    query_layout: TokenLayout | None = None
    unfuse: str | None = None
    heads_last: bool = False
    error: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything consumers need to know about a model's geometry and hook points.

    Attributes:
        family: ``ferlens``, ``timm-vit``, ``timm-hybrid``, ``cait`` or ``hook-map``.
        hooks: hook name -> Hook, in forward order.
        num_prefix_tokens: prefix tokens of the final sequence (what the head reads).
        cls_index: position of the CLS token in the final sequence, None without one.
        grid_size: token grid (H, W), None when only a forward can tell (hook-map models).
        input_size: image (H, W) the model was built for, None when it takes any size.
        token_layers: residual-stream hooks in forward order (``tokens``, ``blocks.{i}`` ...).
        attention_layers: attention hooks in forward order (``blocks.{i}.attn`` ...).
        class_attention: block names whose attention has only the CLS token as query.
        stem_layer: the CNN stage hook that feeds the tokens, if any.
        cam_layer: the default Grad-CAM target (a token layer whose patches the readout still depends on).
        cascade: module paths re-initialised top-down by the randomisation sanity check.
        num_heads: attention heads of the first attention hook (None without attention).
    """

    family: str
    hooks: Mapping[str, Hook]
    num_prefix_tokens: int
    cls_index: int | None
    grid_size: tuple[int, int] | None
    input_size: tuple[int, int] | None
    token_layers: tuple[str, ...]
    attention_layers: tuple[str, ...]
    class_attention: frozenset[str] = frozenset()
    stem_layer: str | None = None
    cam_layer: str | None = None
    cascade: tuple[str, ...] = ()
    num_heads: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ names
    @property
    def names(self) -> list[str]:
        """Every hook name that can be recorded, in forward order."""
        return [n for n, h in self.hooks.items() if h.error is None]

    @property
    def cls_layers(self) -> list[str]:
        """Token layers that hold a CLS token."""
        return [n for n in self.token_layers if self.hooks[n].layout.cls_index is not None]

    @property
    def patch_layers(self) -> list[str]:
        """Token layers that hold patch tokens."""
        return [n for n in self.token_layers if self.hooks[n].layout.patches]

    def hook(self, name: str) -> Hook:
        """The Hook ``name``, or one sentence listing the valid names (or why it cannot be recorded)."""
        h = self.hooks.get(name)
        if h is None:
            valid = self.names
            raise FerlensError(f"Unknown hook point '{name}'; valid names are {summarise(valid)}."
                               + close_matches(name, valid))
        if h.error is not None:
            raise FerlensError(h.error)
        return h

    def layout(self, name: str) -> TokenLayout:
        """Token layout of the token hook ``name``."""
        h = self.hook(name)
        if h.layout is None or h.kind != "tokens":
            raise FerlensError(f"Hook point '{name}' is not a token sequence; use one of {', '.join(self.token_layers)}.")
        return h.layout

    def block_of(self, attn_name: str) -> str:
        """``blocks.3.attn`` -> ``blocks.3``."""
        return attn_name.removesuffix(".attn")

    @property
    def final(self) -> TokenLayout:
        """Layout of the final sequence (the one the head reads, and the one rollout runs over)."""
        return TokenLayout(self.num_prefix_tokens, self.cls_index, True)

    def lift_attention(self, attn: Tensor, name: str, fill: float = 1.0) -> Tensor:
        """Attention (B, heads, Nq, K) of hook ``name`` in the final sequence's layout (B, heads, Nq', T).

        A block that runs before the prefix tokens exist (CaiT's patch blocks: keys = patches only) gets
        the missing prefix rows/columns added: ``fill`` on their diagonal (1 for probabilities: the prefix
        token passes unchanged, rows still sum to 1; 0 for gradients), zeros elsewhere. Other blocks pass.
        """
        have, want = self.hook(name).layout.num_prefix, self.num_prefix_tokens
        if have >= want:
            return attn
        b, h, nq, k = attn.shape
        pad = want - have
        out = attn.new_zeros(b, h, nq + pad if nq == k else nq, k + pad)
        out[..., -nq:, pad:] = attn
        if nq == k:
            idx = torch.arange(pad, device=attn.device)
            out[..., idx, idx] = fill
        return out

    # ------------------------------------------------------------------ readouts
    def cls(self, t: Tensor, name: str) -> Tensor:
        """CLS token (B, D) of the token hook ``name``'s tensor (B, T, D)."""
        return self.layout(name).cls(t)

    def patches(self, t: Tensor, name: str) -> Tensor:
        """Patch tokens (B, N, D) of the token hook ``name``'s tensor (B, T, D), every prefix token excluded."""
        return self.layout(name).patch_tokens(t)

    def grid(self, num_patches: int) -> tuple[int, int]:
        """The (H, W) grid of ``num_patches`` tokens: the model's grid, else a square one."""
        if self.grid_size is not None:
            h, w = self.grid_size
            if h * w != num_patches:
                raise FerlensError(f"{num_patches} patch tokens do not fill the model's {h}x{w} token grid; "
                                   "feed images of the size the run was trained on (its input.img_size).")
            return int(h), int(w)
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise FerlensError(f"{num_patches} patch tokens do not form a square grid and the model names no "
                               "grid_size; give the model a grid_size attribute (H, W), or a num_prefix_tokens "
                               "attribute if its sequence starts with tokens that are not patches.")
        return side, side

    def patch_grid(self, t: Tensor, name: str) -> Tensor:
        """Patch tokens of (B, T, D) as a map (B, D, H, W)."""
        p = self.patches(t, name)                                     # (B, N, D)
        h, w = self.grid(p.shape[1])
        return p.reshape(p.shape[0], h, w, p.shape[-1]).permute(0, 3, 1, 2)

    def reshape_transform(self, name: str):
        """A pytorch-grad-cam ``reshape_transform`` for the target hook/module ``name``: token sequences
        lose their prefix tokens and become (B, D, H, W); CNN maps (B, C, H, W) pass through."""
        layout = self.hooks[name].layout if name in self.hooks and self.hooks[name].kind == "tokens" else None
        prefix = layout.num_prefix if layout is not None else self.num_prefix_tokens

        def reshape(x: Tensor) -> Tensor:
            if x.dim() == 4:
                return x
            p = x[:, prefix:]                                          # (B, N, D)
            try:
                h, w = self.grid(p.shape[1])
            except FerlensError:
                raise FerlensError(f"The target layer has {x.shape[1]} tokens, not {prefix} prefix tokens + a "
                                   "patch grid; choose a layer that keeps the patch tokens (e.g. 'tokens').") from None
            return p.reshape(p.shape[0], h, w, p.shape[-1]).permute(0, 3, 1, 2)

        return reshape

    def attention_queries(self, name: str) -> TokenLayout:
        """Layout of the queries of attention hook ``name``."""
        return self.hook(name).query_layout

    def cls_attention_layers(self) -> list[str]:
        """Attention hooks whose queries include the CLS token and whose keys include patches."""
        return [n for n in self.attention_layers if self.hooks[n].error is None
                and self.hooks[n].query_layout.cls_index is not None and self.hooks[n].layout.patches]

    def cls_to_patches(self, attn: Tensor, name: str) -> Tensor:
        """CLS-query attention over the patch keys (B, heads, N) of attention hook ``name``."""
        q, k = self.attention_queries(name), self.hook(name).layout
        if q.cls_index is None or not k.patches:
            raise FerlensError(f"'{name}' has no CLS query over patch tokens; use one of "
                               f"{', '.join(self.cls_attention_layers()) or '(none)'}.")
        return attn[:, :, q.cls_index, k.num_prefix:]

    def check_input(self, images: Tensor) -> None:
        """One sentence when ``images`` (B, 3, H, W) are not of the model's input size."""
        if self.input_size is not None and tuple(images.shape[-2:]) != tuple(self.input_size):
            h, w = self.input_size
            raise FerlensError(f"Images are {images.shape[-2]}x{images.shape[-1]} but the model expects {h}x{w}; "
                               "resize them with train.engine.make_eval_transform(config).")


def token_grid(model: nn.Module, images: Tensor) -> tuple[int, int]:
    """The (H, W) token grid of ``model``: the spec's, else counted from one forward of ``images[:1]``."""
    spec = model_spec(model)
    if spec.grid_size is not None:
        return tuple(spec.grid_size)
    layers = spec.patch_layers
    if not layers:
        raise FerlensError(f"{type(model).__name__} has no layer with patch tokens; map one with --hook-map tokens=MODULE.")
    with torch.no_grad():
        t = _record(model, spec.hooks[layers[0]], images[:1])
    return spec.grid(spec.patches(t, layers[0]).shape[1])


def _record(model: nn.Module, hook: Hook, images: Tensor) -> Tensor:
    """One forward recording the output of ``hook``'s module (for geometry only)."""
    seen: list[Tensor] = []
    handle = model.get_submodule(hook.module).register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        model(images)
    finally:
        handle.remove()
    return seen[-1]


def summarise(valid: list[str]) -> str:
    """Hook names with ``<block>.{i}[.attn]`` runs compressed, so the sentence stays readable."""
    groups: dict[tuple[str, str], list[int]] = {}
    out: list[str | tuple[str, str]] = []
    for v in valid:
        m = re.fullmatch(r"(.+?)\.(\d+)(\.attn)?", v)
        if m and not v.startswith("stem."):
            key = (m.group(1), m.group(3) or "")
            if key not in groups:
                groups[key] = []
                out.append(key)
            groups[key].append(int(m.group(2)))
        else:
            out.append(v)
    return ", ".join(x if isinstance(x, str) else f"{x[0]}.{{{min(groups[x])}..{max(groups[x])}}}{x[1]}" for x in out)


# ---------------------------------------------------------------------------------------- helpers
def _attention_hook(model: nn.Module, name: str, path: str, keys: TokenLayout, queries: TokenLayout) -> Hook:
    """How to record the probabilities of the attention module at ``path`` (or the sentence why not)."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return Hook(name, path, kind="attn", error=f"Hook point '{name}' maps to '{path}', which is not a module "
                    "of this model; fix the hook map (model.hook_map in the run config).")
    if hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module):
        return Hook(name, f"{path}.attn_drop", "input", "attn", keys, queries, unfuse=path)
    if all(isinstance(getattr(module, a, None), nn.Module) for a in ("proj_l", "proj_w", "attn_drop")):
        return Hook(name, f"{path}.proj_w", "input", "attn", keys, queries, heads_last=True)  # TalkingHeadAttn
    return Hook(name, path, kind="attn", error=(
        f"ferlens cannot read attention probabilities from '{path}' ({type(module).__name__}): only timm-style "
        "attention (fused_attn + attn_drop, ClassAttn, TalkingHeadAttn) exposes them; map "
        f"'{name}' to such a module with --hook-map {name}=PATH, or use gradcam / ig / occlusion, which need no attention."))


def _attn_child(block: nn.Module) -> str | None:
    """Name of the attention submodule of a transformer block (``attn`` in timm), if it has one."""
    if isinstance(getattr(block, "attn", None), nn.Module):
        return "attn"
    for n, m in block.named_children():
        if hasattr(m, "attn_drop") or hasattr(m, "fused_attn"):
            return n
    return None


def _size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    try:
        return (int(value[0]), int(value[1]))
    except (TypeError, IndexError, ValueError):
        return None


def _heads(model: nn.Module, hooks: dict[str, Hook]) -> int | None:
    for h in hooks.values():
        if h.kind == "attn" and h.error is None:
            path = h.unfuse or h.module.rsplit(".", 1)[0]
            n = getattr(model.get_submodule(path), "num_heads", None)
            if n is not None:
                return int(n)
    return None


def _resnet_stages(model: nn.Module, backbone_path: str) -> dict[str, Hook]:
    """``stem.stage{k}`` hooks of a ResNetV2-style backbone (``stages.{k-1}``; ``stem.stage0`` = its stem)."""
    backbone = model.get_submodule(backbone_path)
    stages = getattr(backbone, "stages", None)
    if isinstance(stages, nn.Sequential) and len(stages):
        return {f"stem.stage{k + 1}": Hook(f"stem.stage{k + 1}", f"{backbone_path}.stages.{k}", kind="stem")
                for k in range(len(stages))}
    if isinstance(getattr(backbone, "stem", None), nn.Module):
        return {"stem.stage0": Hook("stem.stage0", f"{backbone_path}.stem", kind="stem")}
    if not hasattr(backbone, "feature_info"):  # a bare CNN stem (timm's R+ViT-Ti has no stages): its output map
        return {"stem.stage0": Hook("stem.stage0", backbone_path, kind="stem")}
    return {}


def _prefix_parameters(model: nn.Module) -> int:
    """Prefix tokens counted from token parameters anywhere in the tree (``cls_token``,
    ``dist_token``: one each; ``reg_token``: its length), e.g. ``embed.cls_token`` of a researcher's own code."""
    count = 0
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("cls_token", "dist_token"):
            count += 1
        elif leaf == "reg_token" and p.dim() == 3:
            count += int(p.shape[1])
    return count


def _head_input(model: nn.Module) -> dict[str, Hook]:
    head = getattr(model, "head", None)
    return {"pre_logits": Hook("pre_logits", "head", "input", "pre_logits")} if isinstance(head, nn.Module) else {}


# ---------------------------------------------------------------------------------------- families
def _ferlens(model: nn.Module) -> ModelSpec:
    """A ferlens ``HybridFER``: hook points are its own module paths."""
    full = TokenLayout(1, 0, True)
    clsonly = model.block_type == "clsonly"
    hooks: dict[str, Hook] = {f"stem.stage{k}": Hook(f"stem.stage{k}", f"stem.stage{k}", kind="stem")
                              for k in range(1, model.stem.num_stages + 1)}
    hooks["tokens"] = Hook("tokens", "tokens", kind="tokens", layout=full)
    keys = full
    blocks = []
    for i in range(len(model.blocks)):
        out = TokenLayout(1, 0, not clsonly)
        queries = TokenLayout(1, 0, False) if model.class_attention else keys
        hooks[f"blocks.{i}.attn"] = _attention_hook(model, f"blocks.{i}.attn", f"blocks.{i}.attn", keys, queries)
        hooks[f"blocks.{i}"] = Hook(f"blocks.{i}", f"blocks.{i}", kind="tokens", layout=out)
        blocks.append(f"blocks.{i}")
        keys = out
    hooks["pre_logits"] = Hook("pre_logits", "pre_logits", kind="pre_logits")
    depth = len(blocks)
    if clsonly:
        cam = f"stem.stage{model.stem_stage}"
    elif model.readout != "cls":
        cam = blocks[-1]
    else:
        cam = blocks[-2] if depth >= 2 else "tokens"
    return _finish(model, "ferlens", hooks, 1, 0, tuple(model.grid_size), _size(model.img_size),
                   class_attention=frozenset(blocks) if model.class_attention else frozenset(),
                   stem_layer=f"stem.stage{model.stem_stage}", cam_layer=cam,
                   cascade=("head", *reversed(blocks), "stem"))


def _timm_vit(model: nn.Module) -> ModelSpec:
    """timm ``VisionTransformer`` (incl. DeiT, distilled DeiT, registers, ResNetV2 hybrids)."""
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    cls_index = 0 if getattr(model, "cls_token", None) is not None else None
    full = TokenLayout(prefix, cls_index, True)
    pe = model.patch_embed
    hooks: dict[str, Hook] = {}
    family = "timm-vit"
    if isinstance(getattr(pe, "backbone", None), nn.Module):
        family = "timm-hybrid"
        hooks.update(_resnet_stages(model, "patch_embed.backbone"))
    hooks["tokens"] = Hook("tokens", "norm_pre", kind="tokens", layout=full)
    blocks = []
    for i, blk in enumerate(model.blocks):
        child = _attn_child(blk)
        name = f"blocks.{i}.attn"
        if child is None:
            hooks[name] = Hook(name, f"blocks.{i}", kind="attn", error=f"Block blocks.{i} ({type(blk).__name__}) has "
                               "no attention submodule; use gradcam / ig / occlusion, which need no attention.")
        else:
            hooks[name] = _attention_hook(model, name, f"blocks.{i}.{child}", full, full)
        hooks[f"blocks.{i}"] = Hook(f"blocks.{i}", f"blocks.{i}", kind="tokens", layout=full)
        blocks.append(f"blocks.{i}")
    hooks.update(_head_input(model))
    pool = getattr(model, "global_pool", "token")
    reads_cls = pool == "token" and getattr(model, "attn_pool", None) is None
    cam = (blocks[-2] if len(blocks) >= 2 else "tokens") if reads_cls else blocks[-1]
    stems = [n for n, h in hooks.items() if h.kind == "stem"]
    dynamic = bool(getattr(model, "dynamic_img_size", False)) or not getattr(pe, "strict_img_size", True)
    return _finish(model, family, hooks, prefix, cls_index, _size(getattr(pe, "grid_size", None)),
                   None if dynamic else _size(getattr(pe, "img_size", None)), stem_layer=stems[-1] if stems else None,
                   cam_layer=cam, cascade=("head", *reversed(blocks), "patch_embed"))


def _cait(model: nn.Module) -> ModelSpec:
    """timm ``Cait``: ``blocks.{i}`` are patches only (no CLS); ``blocks_token_only.{j}`` the CLS only."""
    patches_only, cls_only, seq = TokenLayout(0, None, True), TokenLayout(1, 0, False), TokenLayout(1, 0, True)
    hooks: dict[str, Hook] = {"tokens": Hook("tokens", "pos_drop", kind="tokens", layout=patches_only)}
    blocks, klass = [], []
    for i in range(len(model.blocks)):
        name = f"blocks.{i}"
        hooks[f"{name}.attn"] = _attention_hook(model, f"{name}.attn", f"{name}.attn", patches_only, patches_only)
        hooks[name] = Hook(name, name, kind="tokens", layout=patches_only)
        blocks.append(name)
    for j in range(len(model.blocks_token_only)):
        name = f"blocks_token_only.{j}"
        # keys: [CLS; patches of the last patch block], query: the CLS token
        hooks[f"{name}.attn"] = _attention_hook(model, f"{name}.attn", f"{name}.attn", seq, cls_only)
        hooks[name] = Hook(name, name, kind="tokens", layout=cls_only)
        klass.append(name)
    hooks.update(_head_input(model))
    pe = model.patch_embed
    dynamic = not getattr(pe, "strict_img_size", True)
    return _finish(model, "cait", hooks, 1, 0, _size(getattr(pe, "grid_size", None)),
                   None if dynamic else _size(getattr(pe, "img_size", None)), class_attention=frozenset(klass),
                   cam_layer=blocks[-1] if blocks else "tokens",
                   cascade=("head", *reversed(klass), *reversed(blocks), "patch_embed"))


def _prefix_tokens(model: nn.Module, embed: nn.Module) -> int:
    """Prefix tokens of a hook-mapped model: its ``num_prefix_tokens``, else the timm-style token parameters
    (``cls_token``, ``dist_token``: one each; ``reg_token``: (1, R, D)) on the model or on the module that
    makes the token sequence (the ``tokens`` entry, e.g. an ``embed`` that prepends the CLS)."""
    for owner in (model, embed):
        n = getattr(owner, "num_prefix_tokens", None)
        if isinstance(n, int):
            return n
    for owner in (model, embed):
        found = {a: getattr(owner, a) for a in ("cls_token", "dist_token", "reg_token")
                 if isinstance(getattr(owner, a, None), torch.Tensor)}
        if found:
            return sum(t.shape[-2] if t.dim() == 3 else 1 for t in found.values())
    return _prefix_parameters(model)  # token parameters deeper in the tree


def _hook_map(model: nn.Module, mapping: Mapping[str, str]) -> ModelSpec:
    """Any model: ``{NAME: MODULE_PATH}``; ``blocks`` -> a module list expands to ``blocks.{i}`` (+ ``.attn``)."""
    if not isinstance(mapping, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise FerlensError("The hook map must be NAME=MODULE_PATH pairs (e.g. blocks=layers tokens=embed); "
                           "fix model.hook_map in the run config.")
    modules = dict(model.named_modules())
    for name, path in mapping.items():
        if path not in modules:
            raise FerlensError(f"Hook map entry {name}={path}: '{path}' is not a module of "
                               f"{type(model).__name__}; use one of its module paths." + close_matches(path, list(modules)))
    prefix = _prefix_tokens(model, modules.get(mapping.get("tokens", ""), model))
    cls_index = 0 if prefix >= 1 else None
    full = TokenLayout(prefix, cls_index, True)
    hooks: dict[str, Hook] = {}
    for name, path in mapping.items():
        if name.startswith("stem."):
            hooks[name] = Hook(name, path, kind="stem")
    if "tokens" in mapping:
        hooks["tokens"] = Hook("tokens", mapping["tokens"], kind="tokens", layout=full)
    blocks = []
    if "blocks" in mapping:
        container = modules[mapping["blocks"]]
        for i, (child_name, blk) in enumerate(container.named_children()):
            path = f"{mapping['blocks']}.{child_name}"
            attn = _attn_child(blk)
            name = f"blocks.{i}.attn"
            if name in mapping:
                hooks[name] = _attention_hook(model, name, mapping[name], full, full)
            elif attn is None:
                hooks[name] = Hook(name, path, kind="attn", error=(
                    f"Block '{path}' ({type(blk).__name__}) has no attention submodule ferlens recognises; "
                    f"add --hook-map {name}=PATH naming its timm-style attention module, or use gradcam / ig."))
            else:
                hooks[name] = _attention_hook(model, name, f"{path}.{attn}", full, full)
            hooks[f"blocks.{i}"] = Hook(f"blocks.{i}", path, kind="tokens", layout=full)
            blocks.append(f"blocks.{i}")
    for name, path in mapping.items():
        if name in hooks or name == "blocks" or name.startswith("stem."):
            continue
        if name.endswith(".attn"):
            hooks[name] = _attention_hook(model, name, path, full, full)
        elif re.fullmatch(r"blocks\.\d+", name):
            hooks[name] = Hook(name, path, kind="tokens", layout=full)
            blocks.append(name)
        elif name == "pre_logits":
            hooks[name] = Hook(name, path, kind="pre_logits")
        else:
            hooks[name] = Hook(name, path)
    if "pre_logits" not in hooks:
        hooks.update(_head_input(model))
    grid = _size(getattr(model, "grid_size", None) or getattr(getattr(model, "patch_embed", None), "grid_size", None))
    img = _size(getattr(model, "img_size", None) or getattr(getattr(model, "patch_embed", None), "img_size", None))
    stems = [n for n, h in hooks.items() if h.kind == "stem"]
    layers = [b for b in blocks]
    cam = layers[-2] if len(layers) >= 2 else ("tokens" if "tokens" in hooks else (stems[-1] if stems else None))
    cascade = tuple(p for p in ("head",) if p in modules) + tuple(hooks[b].module for b in reversed(blocks))
    return _finish(model, "hook-map", hooks, prefix, cls_index, grid, img,
                   stem_layer=stems[-1] if stems else None, cam_layer=cam, cascade=cascade)


def _finish(model: nn.Module, family: str, hooks: dict[str, Hook], prefix: int, cls_index: int | None,
            grid: tuple[int, int] | None, img: tuple[int, int] | None, **kw: Any) -> ModelSpec:
    token_layers = tuple(n for n, h in hooks.items() if h.kind == "tokens")
    attention = tuple(n for n, h in hooks.items() if h.kind == "attn")
    return ModelSpec(family=family, hooks=dict(hooks), num_prefix_tokens=prefix, cls_index=cls_index,
                     grid_size=grid, input_size=img, token_layers=token_layers, attention_layers=attention,
                     num_heads=_heads(model, hooks), **kw)


def _detect(model: nn.Module) -> ModelSpec:
    from .hybrid import HybridFER

    mapping = getattr(model, "ferlens_hook_map", None)
    if mapping:
        return _hook_map(model, mapping)
    if isinstance(model, HybridFER):
        return _ferlens(model)
    has = lambda a: isinstance(getattr(model, a, None), nn.Module)  # noqa: E731
    if has("patch_embed") and has("blocks") and has("blocks_token_only"):
        return _cait(model)
    if has("patch_embed") and has("blocks") and has("norm_pre"):
        return _timm_vit(model)
    return _plain(model)


def _plain(model: nn.Module) -> ModelSpec:
    """A model without known token layers (e.g. a plain CNN): only gradient methods on its own modules and
    ``pre_logits`` (the head's input) work; token readouts ask for a hook map."""
    return _finish(model, "plain", _head_input(model), 0, None, None, _size(getattr(model, "img_size", None)),
                   notes={"hint": "describe the tokens with --hook-map NAME=MODULE_PATH "
                                  "(e.g. blocks=layers tokens=embed stem.stage3=cnn.layer3)"})


_SPECS: "weakref.WeakKeyDictionary[nn.Module, tuple[Any, ModelSpec]]" = weakref.WeakKeyDictionary()


def model_spec(model: nn.Module) -> ModelSpec:
    """The ``ModelSpec`` of ``model`` (cached per model object; rebuilt when its hook map changes)."""
    key = repr(getattr(model, "ferlens_hook_map", None))
    cached = _SPECS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    spec = _detect(model)
    _SPECS[model] = (key, spec)
    return spec
