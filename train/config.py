"""Training configuration: one flat dataclass, layered as defaults → YAML file → ``--key value``.

    cfg = resolve_config("train/configs/demo.yaml", ["--lr", "3e-4", "--model_kwargs.depth", "2"])

The resolved config is written into the run folder (``config.json["train"]``), so a run can be
resumed or re-created from its folder alone.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import FerlensError, close_matches

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class TrainConfig:
    """Everything ``train fit`` needs. Defaults are small and CPU-friendly."""

    # --- what to train on
    model: str = "ferlens_tiny_vit_s3"          # timm / ferlens registry name
    data: str = "synthfer:size=64,n=2000"       # dataset spec (DESIGN.md "Datasets")
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # depth, embed_dim, ... for create_model
    img_size: int = 0                           # input side in px; 0 = the model's default input size
    hook_map: dict[str, str] = field(default_factory=dict)  # hook name -> module path for models ferlens does not
                                                # know (--hook-map blocks=layers tokens=embed stem.stage3=cnn.layer3)
    # --- optimisation (AdamW)
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.05                  # not applied to norms, biases, tokens, pos-embeddings
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 0.0                      # max global grad norm; 0 = off
    # --- learning-rate schedule (timm schedulers)
    scheduler: str = "cosine"                   # cosine | plateau | exponential | step | constant
    warmup_epochs: int = 1
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    decay_epochs: int = 10                      # step: decay every N epochs
    decay_rate: float = 0.1                     # step / plateau factor; exponential: per-epoch gamma
    patience_epochs: int = 3                    # plateau
    # --- regularisation and losses
    mixup: float = 0.0                          # mixup alpha (0 = off), timm Mixup
    cutmix: float = 0.0                         # cutmix alpha (0 = off)
    mixup_prob: float = 1.0
    label_smoothing: float = 0.0
    class_weights: str = "none"                 # none | balanced (inverse class frequency)
    balanced_sampler: bool = False              # sample classes uniformly (WeightedRandomSampler)
    drop_path: float = 0.0                      # stochastic depth rate in the token blocks
    attn_drop: float = 0.0
    ema_decay: float = 0.0                      # 0 = off; e.g. 0.999 keeps a timm ModelEmaV3
    # --- augmentation (timm create_transform)
    hflip: float = 0.5
    rrc_scale: tuple[float, float] = (0.8, 1.0)  # random-resized-crop area range; (1, 1) = no crop
    color_jitter: float = 0.2
    re_prob: float = 0.0                        # random erasing probability
    # --- numerics and reproducibility
    amp: str = "auto"                           # auto (bf16 where it pays, train/precision.py) | none | bf16 | fp16
    channels_last: bool = True                  # NHWC convolutions (1.35x faster CNN stems on CPU, measured)
    seed: int = 0
    deterministic: bool = True
    workers: int = 0
    threads: int = 0                            # torch CPU threads; 0 = leave torch's default
    device: str = "auto"                        # auto | cpu | cuda | cuda:1
    # --- NaN guard
    nan_max_consecutive: int = 3                # K non-finite steps in a row → roll back
    nan_lr_factor: float = 0.5                  # LR multiplier applied on each rollback
    nan_max_rollbacks: int = 3                  # then stop with a clear message
    debug_nan_steps: list[int] = field(default_factory=list)  # test hook: step attempts whose loss is NaN
    # --- transfer learning
    backbone_weights: str = ""                  # IR-50 / timm CNN state dict for the CNN stem
    freeze: str = "none"                        # none | backbone | stages:1-2
    backbone_lr_mult: float = 1.0
    # --- run folder and logging
    out: str = ""                               # runs root; "" = artifacts/runs
    run_name: str = ""                          # "" = <model>-<dataslug>-s<seed>
    overwrite: bool = False
    resume: str = ""                            # run name or folder to continue
    tensorboard: bool = False
    bootstrap: int = 1000                       # resamples for the 95% CIs in metrics.json

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# Fields a resumed run may change: they do not alter the numbers it computes.
RUNTIME_FIELDS = {"resume", "workers", "threads", "device", "tensorboard", "out", "overwrite", "channels_last"}
CHOICES: dict[str, tuple[str, ...]] = {
    "scheduler": ("cosine", "plateau", "exponential", "step", "constant"),
    "class_weights": ("none", "balanced"),
    "amp": ("auto", "none", "bf16", "fp16"),
}
# field -> (lowest allowed, highest allowed or None, what the value means): checked by ``check_ranges``
RANGES: dict[str, tuple[float, float | None, str]] = {
    "epochs": (1, None, "epochs to train"), "batch_size": (1, None, "images per training step"),
    "eval_batch_size": (1, None, "images per evaluation step"), "workers": (0, None, "data-loader processes"),
    "threads": (0, None, "CPU threads (0 = torch's default)"), "bootstrap": (0, None, "bootstrap resamples"),
    "lr": (0, None, "learning rate"), "weight_decay": (0, None, "weight decay"),
    "warmup_epochs": (0, None, "warm-up epochs"), "grad_clip": (0, None, "max grad norm (0 = off)"),
    "mixup": (0, None, "mixup alpha"), "cutmix": (0, None, "cutmix alpha"), "mixup_prob": (0, 1, "probability"),
    "label_smoothing": (0, 0.999, "label smoothing"), "hflip": (0, 1, "probability"),
    "re_prob": (0, 1, "probability"), "color_jitter": (0, None, "jitter strength"),
    "drop_path": (0, 0.999, "drop rate"), "attn_drop": (0, 0.999, "drop rate"), "ema_decay": (0, 0.99999, "decay"),
    "nan_max_consecutive": (1, None, "steps"), "nan_lr_factor": (1e-6, 1, "LR factor"),
    "nan_max_rollbacks": (0, None, "rollbacks"), "backbone_lr_mult": (0, None, "LR multiplier"),
}
MIN_IMG_SIZE = 16  # px; smaller inputs leave no spatial grid in any ferlens stem


def check_ranges(values: dict[str, Any], source: str = "the command line") -> None:
    """Raise one sentence for the first value outside its range (``RANGES``, ``img_size``).

    Args:
        values: field values (a partial dict; absent fields keep their valid defaults).
        source: where they came from, for the message.
    """
    for key, (lo, hi, what) in RANGES.items():
        if key not in values:
            continue
        v = values[key]
        if v < lo or (hi is not None and v > hi):
            span = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
            raise FerlensError(f"'{key}' ({what}) must be {span}, got {v} in {source}; pass e.g. --{key} "
                               f"{TrainConfig.__dataclass_fields__[key].default}.")
    size = values.get("img_size", 0)
    if size and size < MIN_IMG_SIZE:
        raise FerlensError(f"'img_size' {size} is too small (at least {MIN_IMG_SIZE} px) in {source}; pass "
                           "--img_size 0 for the model's default size or a size such as 64 or 112.")
    if size < 0:
        raise FerlensError(f"'img_size' must be 0 (the model's default) or a size in px, got {size} in {source}.")
    lo, hi = values.get("rrc_scale", (0.8, 1.0))
    if not 0 < lo <= hi <= 1:
        raise FerlensError(f"'rrc_scale' must be two areas 0 < a <= b <= 1, got {lo},{hi} in {source}; "
                           "pass e.g. --rrc_scale 0.8,1.0.")


_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def field_types() -> dict[str, Any]:
    """``{field name: resolved type}`` of TrainConfig."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def coerce(key: str, value: Any, kind: Any) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise one sentence naming the key.

    Args:
        key: field name (for the message).
        value: raw value (a CLI string or a YAML scalar/list/dict).
        kind: the dataclass field's type.
    """
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError
        if kind in (int, float):
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) else value
            if kind is int:
                if float(number) != int(float(number)):
                    raise ValueError
                return int(float(number))
            return float(number)
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return "" if value is None else str(value)
        if origin in (tuple, list):
            items = _as_list(value)
            inner = typing.get_args(kind)[0]
            out = [coerce(key, v, inner) for v in items]
            if origin is tuple:
                if len(out) != len(typing.get_args(kind)):
                    raise ValueError
                return tuple(out)
            return out
        if origin is dict:
            parsed = yaml.safe_load(value) if isinstance(value, str) else value
            if parsed is None:
                return {}
            if not isinstance(parsed, dict):
                raise ValueError
            return dict(parsed)
    except (ValueError, TypeError, yaml.YAMLError):
        pass
    raise FerlensError(f"The value {value!r} for '{key}' is not a valid {_type_name(kind)}; "
                       f"pass e.g. --{key} {_example(kind)}.")


def _as_list(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        return [v.strip() for v in text.split(",") if v.strip()]
    return [value]


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is tuple:
        return f"pair of {typing.get_args(kind)[0].__name__}s"
    if origin is list:
        return f"comma-separated list of {typing.get_args(kind)[0].__name__}s"
    if origin is dict:
        return "YAML mapping"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(kind, str(kind))


def _example(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is tuple:
        return "0.9,0.999"
    if origin is list:
        return "1,2,3"
    if origin is dict:
        return "'{depth: 2}'"
    return {bool: "true", int: "10", float: "3e-4", str: "NAME"}.get(kind, "VALUE")


def set_value(values: dict[str, Any], key: str, raw: Any, source: str) -> None:
    """Set one (possibly dotted ``model_kwargs.depth``) key in ``values`` with type checks.

    Args:
        values: the dict of field values being built (modified in place).
        key: field name; dashes are read as underscores; ``model_kwargs.NAME`` sets one model kwarg.
        raw: the value as read from YAML or the command line.
        source: where it came from, for the error message ("the command line", "demo.yaml").
    """
    key = key.replace("-", "_")
    types = field_types()
    if key.startswith("model_kwargs."):
        name = key.split(".", 1)[1]
        values.setdefault("model_kwargs", {})
        values["model_kwargs"] = {**values["model_kwargs"],
                                  name: yaml.safe_load(raw) if isinstance(raw, str) else raw}
        return
    if key not in types:
        raise FerlensError(f"Unknown config key '{key}' in {source}; see 'train fit --help' for the keys."
                           + close_matches(key, types))
    try:
        value = coerce(key, raw, types[key])
    except FerlensError as e:
        if source == "the command line":
            raise
        raise FerlensError(f"In {source}: {e}") from None
    if key in CHOICES and value not in CHOICES[key]:
        raise FerlensError(f"'{key}' must be one of {', '.join(CHOICES[key])}, got '{value}'."
                           + close_matches(str(value), CHOICES[key]))
    values[key] = value


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; a bare preset name (``demo``) means train/configs/demo.yaml."""
    p = Path(path)
    if not p.exists() and (CONFIGS_DIR / f"{path}.yaml").is_file():
        p = CONFIGS_DIR / f"{path}.yaml"
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        presets = ", ".join(sorted(q.stem for q in CONFIGS_DIR.glob("*.yaml")))
        raise FerlensError(f"Cannot read the config file {p} ({type(e).__name__}); pass an existing YAML "
                           f"file or a preset name ({presets}).") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise FerlensError(f"The config file {p} is not valid YAML{where}; fix the syntax "
                           "(a mapping of key: value lines).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FerlensError(f"The config file {p} must hold a mapping of key: value lines, not a "
                           f"{type(data).__name__}.")
    return data


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Split ``["--lr", "3e-4", "--overwrite", "--depth=2"]`` into ``[(key, raw value), ...]``.

    A flag followed by another flag (or by nothing) is read as ``true``.
    """
    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(overrides):
        token = overrides[i]
        if not token.startswith("--") or len(token) < 3:
            raise FerlensError(f"Cannot read '{token}' on the command line; overrides are written "
                               "'--key value' (e.g. --lr 3e-4).")
        key, eq, value = token[2:].partition("=")
        if eq:
            pairs.append((key, value))
            i += 1
        elif i + 1 < len(overrides) and not _is_flag(overrides[i + 1]):
            pairs.append((key, overrides[i + 1]))
            i += 2
        else:
            pairs.append((key, "true"))
            i += 1
    return pairs


def _is_flag(token: str) -> bool:
    if not token.startswith("--"):
        return False
    try:
        float(token)
        return False
    except ValueError:
        return True


def resolve_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None,
                   base: dict[str, Any] | None = None) -> TrainConfig:
    """Build a TrainConfig: defaults, then ``base``, then the YAML file, then ``--key value`` overrides.

    With ``--resume RUN`` the saved config of that run is the starting point and only runtime keys
    (workers, device, tensorboard ...) may change, so the run continues exactly.

    Args:
        yaml_path: YAML file (or preset name under train/configs) or None.
        overrides: command-line tokens such as ``["--lr", "3e-4", "--model_kwargs.depth", "2"]``.
        base: extra values applied before the YAML file (e.g. a sweep's grid point).
    """
    values: dict[str, Any] = {}
    for key, raw in (base or {}).items():
        set_value(values, key, raw, "the base config")
    if yaml_path:
        for key, raw in read_yaml_config(yaml_path).items():
            if key == "model_kwargs" and isinstance(raw, dict):
                for k, v in raw.items():
                    set_value(values, f"model_kwargs.{k}", v, str(yaml_path))
            else:
                set_value(values, str(key), raw, str(yaml_path))
    pairs = parse_overrides(list(overrides or []))
    for key, raw in pairs:
        set_value(values, key, raw, "the command line")
    if values.get("resume"):
        return _resume_config(values["resume"], [(k.replace("-", "_"), r) for k, r in pairs])
    check_ranges(values)
    return TrainConfig(**values)


def _resume_config(run: str, pairs: list[tuple[str, Any]]) -> TrainConfig:
    """The saved config of ``run`` with only runtime keys overridden."""
    from .io import read_json
    from .runs import resolve_run

    run_dir = resolve_run(run)
    saved = read_json(run_dir / "config.json").get("train", {})
    values: dict[str, Any] = {}
    for key, raw in saved.items():
        if key in field_types():
            set_value(values, key, raw, f"{run_dir}/config.json")
    for key, raw in pairs:
        if key in RUNTIME_FIELDS:
            set_value(values, key, raw, "the command line")
        elif key not in ("model", "data") or str(raw) != str(values.get(key)):
            raise FerlensError(f"'--{key}' cannot change when resuming {run_dir.name} (it would not continue "
                               "the same run); drop it, or start a new run with --run_name.")
    values["resume"] = str(run_dir)
    check_ranges(values, f"{run_dir}/config.json or the command line")
    return TrainConfig(**values)
