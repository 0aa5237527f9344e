"""CNN backbones: the face.evoLVe / POSTER IR family, and any timm CNN through ``features_only``.

The IR modules keep face.evoLVe's state-dict key names (``input_layer.*``, ``body.{i}.shortcut_layer.*``,
``body.{i}.res_layer.*``) so a POSTER ``ir50.pth`` loads directly (see ``load_backbone_weights``).
timm has no IR-ResNet, so ``BottleneckIR`` is written here, line for line after face.evoLVe's
``bottleneck_IR``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import FerlensError, close_matches
from .hooks import HookPoint


@dataclass(frozen=True)
class IRSpec:
    """Units per stage and stage widths of a backbone on the IR skeleton.

    ``unit="ir"``: face.evoLVe input layer (width = widths[0]) + ``BottleneckIR`` units.
    ``unit="conv"``: no input layer; ``ConvPoolUnit`` units (conv3×3-BN-ReLU, then a 2×2 max-pool on a
    stage's first unit) — a VGG-style CPU stem with the same stage hooks, ``body.{i}`` keys and freezing.
    """

    units: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    unit: str = "ir"


IR_SPECS: dict[str, IRSpec] = {
    "ir50": IRSpec(units=(3, 4, 14, 3), widths=(64, 128, 256, 512)),   # face.evoLVe IR-50
    # CPU work. Measured on SynthFER 64 px (batch 64, one thread): a tiny *IR* stem (same units/widths) sat on
    # a loss plateau for ~200 updates and, under a CLS readout, for >1,000; this conv/max-pool stem leaves
    # it within 100 updates and trains 2x faster per image (max-pooling keeps the small, local expression parts).
    "tiny": IRSpec(units=(1, 1, 2, 1), widths=(16, 32, 64, 128), unit="conv"),  # ~0.1 M params to stage 3
}


class BottleneckIR(nn.Module):
    """face.evoLVe ``bottleneck_IR``: BN-conv3x3-PReLU-conv3x3(stride)-BN plus a shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if in_chs == out_chs:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, (1, 1), stride, bias=False), nn.BatchNorm2d(out_chs))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_chs),
            nn.Conv2d(in_chs, out_chs, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(out_chs),
            nn.Conv2d(out_chs, out_chs, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        return self.res_layer(x) + self.shortcut_layer(x)


class ConvPoolUnit(nn.Module):
    """conv3×3-BN-ReLU, followed by a 2×2 max-pool (ceil mode) when ``stride == 2``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        return self.pool(self.act(self.bn(self.conv(x))))


class IRBackbone(nn.Module):
    """IR backbone up to ``last_stage``; ``stage{k}`` hook points mark each stage's output.

    Args:
        spec: units and widths per stage.
        last_stage: the stage whose feature map becomes the tokens (3 or 4); later stages are not built.
        cut_last_stage: keep only the first (downsampling) unit of ``last_stage`` — the study's
            "stage 4 cut to one unit".
    """

    def __init__(self, spec: IRSpec, last_stage: int = 4, cut_last_stage: bool = False) -> None:
        super().__init__()
        if spec.unit == "ir":
            self.input_layer = nn.Sequential(
                nn.Conv2d(3, spec.widths[0], (3, 3), 1, 1, bias=False), nn.BatchNorm2d(spec.widths[0]),
                nn.PReLU(spec.widths[0]))
            unit, in_chs = BottleneckIR, spec.widths[0]
        else:
            self.input_layer = nn.Identity()
            unit, in_chs = ConvPoolUnit, 3
        units, ends = [], []
        for k in range(last_stage):
            n = 1 if (cut_last_stage and k == last_stage - 1) else spec.units[k]
            for j in range(n):
                units.append(unit(in_chs, spec.widths[k], 2 if j == 0 else 1))
                in_chs = spec.widths[k]
            ends.append(len(units))
        self.body = nn.Sequential(*units)  # flat, as in face.evoLVe: keys body.{i}.*
        self.stage_ends = ends
        for k in range(1, last_stage + 1):
            self.add_module(f"stage{k}", HookPoint())
        self.num_stages = last_stage
        self.out_chs = in_chs

    def feature_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of the last stage for an input of ``img_size``: each stage halves (ceil)."""
        h, w = img_size
        for _ in range(self.num_stages):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, H/2^s, W/2^s)
        x = self.input_layer(x)
        start = 0
        for k, end in enumerate(self.stage_ends, start=1):
            for i in range(start, end):
                x = self.body[i](x)
            x = getattr(self, f"stage{k}")(x)  # (B, C_k, H_k, W_k)
            start = end
        return x


class TimmBackbone(nn.Module):
    """Any timm CNN as a stem: ``features_only`` up to the chosen stage (the last 4 feature levels
    are stages 1–4), with ``stage{k}`` hook points."""

    def __init__(self, name: str, last_stage: int = 4, pretrained: bool = False) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise FerlensError(f"timm has no model '{name}'; pass backbone='timm:<name>' with a timm CNN name."
                               + close_matches(name, timm.list_models()))
        probe = timm.create_model(name, pretrained=False, features_only=True)
        n_levels = len(probe.feature_info)
        if n_levels < 4:
            raise FerlensError(f"timm model '{name}' exposes {n_levels} feature levels, fewer than the 4 "
                               "stages a ferlens stem needs; choose a hierarchical CNN such as resnet18.")
        first = n_levels - 4
        indices = tuple(range(first, first + last_stage))
        self.model = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=indices)
        for k in range(1, last_stage + 1):
            self.add_module(f"stage{k}", HookPoint())
        self.num_stages = last_stage
        self.out_chs = self.model.feature_info.channels()[-1]

    @torch.no_grad()
    def feature_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of the last stage, read from a dummy forward in eval mode."""
        was_training = self.training
        self.eval()
        out = self.forward(torch.zeros(1, 3, *img_size))
        self.train(was_training)
        return tuple(out.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, h, w)
        feats = self.model(x)
        for k, f in enumerate(feats, start=1):
            feats[k - 1] = getattr(self, f"stage{k}")(f)  # (B, C_k, H_k, W_k)
        return feats[-1]


def build_backbone(name: str, last_stage: int, cut_last_stage: bool = False) -> nn.Module:
    """``ir50`` / ``tiny`` / ``timm:<name>`` → a module with ``stage{k}`` hooks, ``out_chs``, ``feature_size``."""
    if name.startswith("timm:"):
        if cut_last_stage:
            raise FerlensError("cut_last_stage works only with IR backbones (ir50, tiny); drop it for timm CNNs.")
        return TimmBackbone(name[5:], last_stage)
    if name not in IR_SPECS:
        raise FerlensError(f"Unknown backbone '{name}'; use one of {', '.join(IR_SPECS)} or 'timm:<cnn name>'."
                           + close_matches(name, IR_SPECS))
    return IRBackbone(IR_SPECS[name], last_stage, cut_last_stage)


# --------------------------------------------------------------------------------------------------
# Loading POSTER / face.evoLVe weights

_PREFIXES = ("module.", "backbone.", "stem.", "model.")
_SKIP = re.compile(r"^(output_layer|fc|head|classifier)\.")


@dataclass
class LoadReport:
    """What ``load_backbone_weights`` did: loaded keys count and the keys it skipped, with why."""

    path: str
    loaded: int
    skipped: dict[str, list[str]]

    def __str__(self) -> str:
        notes = "; ".join(f"skipped {len(v)} {why} keys" for why, v in self.skipped.items() if v)
        return f"loaded {self.loaded} backbone tensors from {self.path}" + (f" ({notes})" if notes else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .pth/.pt (``torch.load(weights_only=True)``) or .safetensors state dict."""
    path = Path(path)
    if not path.is_file():
        raise FerlensError(f"Backbone weights {path} do not exist; pass the path of an ir50.pth or .safetensors file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file or a pickle that is not a plain state dict
        raise FerlensError(f"Cannot read backbone weights {path} ({type(e).__name__}); pass a plain state dict "
                           "saved with torch.save(model.state_dict()) or safetensors.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FerlensError(f"{path} does not hold a state dict of tensors; save the backbone with "
                           "torch.save(model.state_dict(), path).")
    return state


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def load_backbone_weights(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load CNN backbone weights (e.g. POSTER's ``ir50.pth``) into ``model.stem``.

    Strips ``module.``/``backbone.`` prefixes; skips the face-recognition head (``output_layer.*``) and
    units a truncated backbone does not build (stage 4 when tokens come from stage 3), with a note.

    Args:
        model: a ferlens hybrid (weights go to ``model.stem``) or a bare backbone.
        path: .pth/.pt or .safetensors file.
        strict: raise when backbone keys are missing or unexpected (shape mismatches always raise).

    Returns:
        a ``LoadReport``; ``str(report)`` is a one-line note for the console.
    """
    from ..runs import _few

    target = getattr(model, "stem", model)
    target = getattr(target, "model", target)  # TimmBackbone: the features_only timm model
    own = target.state_dict()
    n_units = len(getattr(target, "body", []))
    tops = {k.split(".")[0] for k in own}
    raw = read_state_dict(path)
    state, skipped = {}, {"output_layer (face-recognition head)": [], "unbuilt later-stage": [],
                          "non-backbone (token part of a ferlens run)": []}
    from_run = any(k.startswith("stem.") for k in raw)  # a ferlens model.safetensors: keep only its stem
    for key, value in raw.items():
        if from_run and not key.startswith("stem."):
            skipped["non-backbone (token part of a ferlens run)"].append(key)
            continue
        key = _strip(key)
        m = re.match(r"^body\.(\d+)\.", key)
        if _SKIP.match(key):
            skipped["output_layer (face-recognition head)"].append(key)
        elif key not in own and ((m and n_units and int(m.group(1)) >= n_units)
                                 or (not n_units and key.split(".")[0] not in tops)):
            skipped["unbuilt later-stage"].append(key)  # stages after the token stage are not built
        else:
            state[key] = value
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if shape or (strict and (missing or unexpected)):
        parts = ([f"missing {_few(missing)}"] if missing else []) + \
                ([f"unexpected {_few(unexpected)}"] if unexpected else []) + \
                ([f"shape mismatch in {_few(shape)}"] if shape else [])
        raise FerlensError(f"Backbone weights {path} do not fit this model's backbone ({'; '.join(parts)}); "
                           "pass weights of the same backbone (e.g. POSTER's ir50.pth for ir50 models).")
    target.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return LoadReport(str(path), loaded=sum(k in own for k in state), skipped=skipped)
