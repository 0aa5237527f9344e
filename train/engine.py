"""The training engine: small functions around timm's parts, ``fit(cfg) -> run_dir`` on top.

    cfg = resolve_config("demo", ["--model", "ferlens_tiny_vit_s3"])
    run_dir = fit(cfg)          # artifacts/runs/<model>-<dataslug>-s<seed>

Parts used, not re-written: timm ``resolve_data_config``/``create_transform`` (preprocessing and
augmentation), ``create_scheduler_v2`` (LR schedules), ``Mixup``/``SoftTargetCrossEntropy``,
``ModelEmaV3``; torch AdamW, autocast/GradScaler, DistributedDataParallel; sklearn metrics.
A run checkpoints at every epoch end (atomic writes); ``--resume`` continues bit-exactly on CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import copy
import io
import math
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from .config import TrainConfig
from .distributed import DistInfo, all_true, barrier, broadcast_object, cleanup, init_distributed
from .errors import FerlensError
from .io import atomic_write_bytes, atomic_write_csv, atomic_write_json
from .nanguard import NanGuard, first_nonfinite_grad, first_nonfinite_output, first_nonfinite_tensor, grad_norm

# Test-only hooks, read from the environment so a subprocess can be steered:
#   FERLENS_DEBUG_KILL_AT_STEP=N[:SIGNAL]   send SIGNAL (default SIGKILL) to this process right after optimizer
#                                  update N (resume test; SIGUSR2 = a Slurm preemption for train/cluster.py)
#   FERLENS_DEBUG_DUMP_DIR=DIR     each rank writes DIR/rank<r>.json with its final weights' hash (DDP test)
DEBUG_KILL_ENV = "FERLENS_DEBUG_KILL_AT_STEP"
DEBUG_DUMP_ENV = "FERLENS_DEBUG_DUMP_DIR"

HISTORY_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_loss", "val_acc", "val_macro_f1", "seconds"]
STATE_FORMAT = 1

# name -> (timm scheduler, extra create_scheduler_v2 arguments, step per update (True) or per epoch)
SCHEDULERS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "cosine": ("cosine", {}, True),
    "constant": ("constant", {}, True),
    "step": ("step", {}, False),
    "exponential": ("step", {"decay_epochs": 1}, False),   # lr = lr0 * decay_rate ** epoch
    "plateau": ("plateau", {"plateau_mode": "max"}, False),  # on validation accuracy
}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ============================================================================ run folder
def default_run_name(cfg: TrainConfig) -> str:
    """``<model>-<dataslug>-s<seed>``, e.g. ``ferlens_tiny_vit_s3-synthfer-n2000-size64-s0``
    (``my_code.models:ir50_vit`` reads ``my_code.models-ir50_vit``)."""
    from .data import parse_spec

    return f"{cfg.model.replace(':', '-')}-{parse_spec(cfg.data).slug}-s{cfg.seed}"


def run_dir_for(cfg: TrainConfig) -> Path:
    """The run folder ``fit`` writes: the resumed run, or ``<out or artifacts/runs>/<run_name>``."""
    from .runs import runs_root

    if cfg.resume:
        return Path(cfg.resume)
    return (Path(cfg.out) if cfg.out else runs_root()) / (cfg.run_name or default_run_name(cfg))


def check_run_dir(cfg: TrainConfig, run_dir: Path) -> None:
    """Raise before anything is written when the folder exists without --resume/--overwrite, or
    the run to resume has no checkpoint."""
    if cfg.resume:
        if not (run_dir / "state.pt").is_file() and not _has_model_config(run_dir):
            raise FerlensError(f"Run {run_dir} has no state.pt to resume from (it never finished an epoch); "
                               "start it again with --overwrite.")
    elif run_dir.exists() and any(run_dir.iterdir()) and not cfg.overwrite:
        raise FerlensError(f"The run folder {run_dir} already exists; pass --resume {run_dir.name} to continue it, "
                           "--overwrite to replace it, or --run_name NAME for a new one.")


def _has_model_config(run_dir: Path) -> bool:
    """A published run without a checkpoint yet (killed during epoch 1): --resume starts it at epoch 0."""
    import json

    try:
        return isinstance(json.loads((run_dir / "config.json").read_text()).get("model"), dict)
    except (OSError, ValueError, AttributeError):
        return False


# ============================================================================ reproducibility
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(device: torch.device) -> None:
    """Deterministic kernels on CUDA (cuDNN autotuning off, cuBLAS workspace fixed).

    The CPU kernels used here are deterministic already; ``use_deterministic_algorithms`` is only
    switched on for CUDA because it imports torch's compiler stack (seconds of start-up on CPU).
    """
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """All RNG states a training step consumes, as tensors/lists (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
            "python": [py_state[0], list(py_state[1]), py_state[2]],
            "loader": generator.get_state()}


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    generator.set_state(state["loader"])


# ============================================================================ model
def model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The kwargs ``create_model`` gets (saved as config.json ``model.kwargs``)."""
    from .models import takes_img_size

    kwargs = dict(cfg.model_kwargs)
    if cfg.drop_path:
        kwargs["drop_path_rate"] = cfg.drop_path
    if cfg.attn_drop:
        kwargs["attn_drop_rate"] = cfg.attn_drop
    if cfg.img_size and takes_img_size(cfg.model):  # ferlens hybrids, timm ViT/DeiT/CaiT/hybrids: the token grid
        kwargs["img_size"] = cfg.img_size
    return kwargs


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """Create the model, load backbone weights and freeze parts as the config says."""
    from .models import create_model, set_input_config

    model = create_model(cfg.model, num_classes=num_classes, **model_kwargs(cfg))
    if cfg.img_size:
        set_input_config(model, cfg.img_size)
    if cfg.hook_map:
        from .models.external import set_hook_map

        set_hook_map(model, cfg.hook_map)
    if cfg.backbone_weights:
        from .models import load_backbone_weights

        print(load_backbone_weights(model, cfg.backbone_weights))
    apply_freeze(model, cfg.freeze)
    return model


def tune_for_device(model: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
    """Speed settings that leave the numbers' meaning alone.

    - ``channels_last``: NHWC memory for the CNN stem (1.35x training throughput for the tiny stem on CPU).
    - bf16 on CPU: timm's attention modules use the explicit softmax(QK^T)V path instead of fused SDPA —
      on short token sequences (65 tokens) the CPU flash-attention backward in bf16 took a third of a
      training step; the explicit path trains the tiny vit 1.2x and cataftermlp 1.3x faster (measured,
      batch 64, one thread). Same maths, so weights stay interchangeable.
    """
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.amp == "bf16" and device.type == "cpu":
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False


@torch.no_grad()
def check_forward(model: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
    """One forward pass of a (1, 3, S, S) zero batch before anything trains, so a model that cannot take
    the configured input (timm ViTs assert their fixed image size) fails in one sentence, not mid-step."""
    size = input_config(model, cfg)["img_size"]
    was_training = model.training
    model.eval()
    try:
        model(_images_to(torch.zeros(1, 3, size, size), device, cfg.channels_last))
    except FerlensError:
        raise
    except (AssertionError, RuntimeError, ValueError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        default = getattr(model, "default_cfg", {}).get("input_size", (3, "its default"))[-1]
        raise FerlensError(f"The model {cfg.model} cannot take {size}x{size} images ({type(e).__name__}: {first}); "
                           f"pass --img_size {default} (its default) or another size the model is built for.") from None
    finally:
        model.train(was_training)


def backbone_module(model: nn.Module) -> nn.Module | None:
    """The CNN part: ``model.stem`` for ferlens hybrids (None for other models)."""
    return getattr(model, "stem", None)


def frozen_modules(model: nn.Module, spec: str) -> list[str]:
    """Module names a ``--freeze`` spec selects: ``none``, ``backbone`` or ``stages:A-B`` (IR stems).

    Args:
        model: a ferlens hybrid.
        spec: the freeze spec.
    """
    if spec in ("", "none"):
        return []
    stem = backbone_module(model)
    if stem is None:
        raise FerlensError(f"--freeze {spec} needs a model with a CNN stem (a ferlens hybrid); "
                           f"'{type(model).__name__}' has none — use --freeze none.")
    if spec == "backbone":
        return ["stem"]
    if spec.startswith("stages:"):
        lo, _, hi = spec[7:].partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            first = last = -1
        ends = getattr(stem, "stage_ends", None)
        if ends is None or not 1 <= first <= last <= len(ends):
            n = len(ends) if ends is not None else 0
            raise FerlensError(f"--freeze {spec} is not valid for this stem (IR stems with {n} stages); "
                               f"write stages:A-B with 1 <= A <= B <= {n}, or use --freeze backbone.")
        names = ["stem.input_layer"] if first == 1 else []
        starts = [0] + list(ends[:-1])
        names += [f"stem.body.{i}" for k in range(first, last + 1) for i in range(starts[k - 1], ends[k - 1])]
        return names
    raise FerlensError(f"Unknown --freeze '{spec}'; use none, backbone or stages:1-2.")


def apply_freeze(model: nn.Module, spec: str) -> list[str]:
    """Freeze the parameters of the selected modules (timm ``freeze``; BN stats are held in ``train_mode``)."""
    from timm.utils.model import freeze

    names = frozen_modules(model, spec)
    if names:
        # BatchNorm stays BatchNorm2d (state-dict keys unchanged); its statistics are frozen by
        # keeping these modules in eval mode during training (see ``train_mode``).
        freeze(model, names, include_bn_running_stats=False)
    model.ferlens_frozen = names
    return names


def train_mode(model: nn.Module) -> None:
    """``model.train()`` with frozen modules (and their BatchNorm statistics) kept in eval mode."""
    model.train()
    modules = dict(model.named_modules())
    for name in getattr(model, "ferlens_frozen", []):
        modules[name].eval()


# ============================================================================ data
def data_config(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """timm data config (input_size, mean, std, interpolation) of the model, with ``img_size`` applied."""
    from timm.data import resolve_data_config

    args = {"input_size": (3, cfg.img_size, cfg.img_size)} if cfg.img_size else {}
    return resolve_data_config(args=args, model=model)


def input_config(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """config.json ``input`` section: ``{"img_size", "mean", "std"}``."""
    dc = data_config(model, cfg)
    return {"img_size": int(dc["input_size"][-1]), "mean": [float(m) for m in dc["mean"]],
            "std": [float(s) for s in dc["std"]]}


def make_eval_transform(config: dict[str, Any]) -> Callable:
    """The one evaluation preprocessing (probes, explain, app): resize to ``input.img_size`` (squash),
    to tensor, normalize with ``input.mean``/``input.std``.

    Args:
        config: a run's config.json dict (only ``config["input"]`` is read).

    Returns:
        callable PIL image → (3, H, W) float tensor.
    """
    from timm.data import create_transform

    inp = config["input"]
    size = int(inp["img_size"])
    return create_transform((3, size, size), is_training=False, crop_pct=1.0, crop_mode="squash",
                            interpolation="bilinear", mean=tuple(inp["mean"]), std=tuple(inp["std"]))


def build_transforms(model: nn.Module, cfg: TrainConfig, train: bool) -> Callable:
    """Training augmentation (random resized crop, flip, colour jitter, random erasing) or the eval transform.

    Args:
        model: the model (its timm data config gives size, mean, std).
        cfg: the training config (augmentation options).
        train: training transform when True, else ``make_eval_transform``.
    """
    from timm.data import create_transform

    if not train:
        return make_eval_transform({"input": input_config(model, cfg)})
    dc = data_config(model, cfg)
    return create_transform(dc["input_size"], is_training=True, scale=tuple(cfg.rrc_scale), hflip=cfg.hflip,
                            color_jitter=cfg.color_jitter or None, re_prob=cfg.re_prob, re_mode="pixel",
                            interpolation="bilinear", mean=dc["mean"], std=dc["std"])


def load_splits(spec: str) -> dict[str, Any]:
    """train / val / test datasets of a data spec (transforms are set once the model exists)."""
    from .data import load_dataset

    return {split: load_dataset(spec, split) for split in ("train", "val", "test")}


def set_transforms(splits: dict[str, Any], model: nn.Module, cfg: TrainConfig) -> None:
    """Training augmentation on the train split, the eval transform on the others."""
    for split, ds in splits.items():
        ds.transform = build_transforms(model, cfg, train=split == "train")


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """sklearn's 'balanced' weights n / (C * count_c); classes absent from ``labels`` get 0."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    w = np.zeros(num_classes, dtype=np.float32)
    w[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.from_numpy(w)


def train_loader(ds, cfg: TrainConfig, info: DistInfo, generator: torch.Generator) -> DataLoader:
    """Shuffling (or class-balanced, or distributed) training loader; the generator drives the order."""
    from torch.utils.data.distributed import DistributedSampler

    from .data import collate

    if info.enabled:
        if cfg.balanced_sampler:
            raise FerlensError("--balanced_sampler cannot be combined with torchrun (DDP) yet; use "
                               "--class_weights balanced instead.")
        sampler = DistributedSampler(ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed)
    elif cfg.balanced_sampler:
        counts = np.bincount(ds.labels, minlength=ds.num_classes).astype(float)
        weights = torch.as_tensor(1.0 / counts[ds.labels], dtype=torch.double)  # (N,) uniform over classes
        sampler = WeightedRandomSampler(weights, num_samples=len(ds), replacement=True, generator=generator)
    else:
        sampler = RandomSampler(ds, generator=generator)
    per_rank = len(ds) // info.world_size
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      collate_fn=collate, drop_last=per_rank >= cfg.batch_size, generator=generator,
                      persistent_workers=False)


def eval_loader(ds, cfg: TrainConfig) -> DataLoader:
    from .data import collate

    return DataLoader(ds, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=cfg.workers,
                      collate_fn=collate)


# ============================================================================ optimisation
def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on norms/biases/tokens; backbone LR scaled by ``backbone_lr_mult``.

    ``lr_scale`` is read by timm's schedulers, so the multiplier survives every schedule.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    stem = backbone_module(model)
    in_backbone = {id(p) for p in stem.parameters()} if stem is not None else set()
    groups: dict[tuple[bool, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip
        is_bb = id(p) in in_backbone
        g = groups.setdefault((is_bb, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            "lr_scale": cfg.backbone_lr_mult if is_bb else 1.0})
        g["params"].append(p)
    if not groups:
        raise FerlensError(f"--freeze {cfg.freeze} leaves no trainable parameters; freeze less.")
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, updates_per_epoch: int):
    """A timm scheduler; per-update for cosine/constant, per-epoch for step/exponential/plateau."""
    from timm.scheduler import create_scheduler_v2

    name, extra, per_update = SCHEDULERS[cfg.scheduler]
    args = dict(decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate, patience_epochs=cfg.patience_epochs)
    args.update(extra)
    with warnings.catch_warnings():  # timm marks its plateau scheduler deprecated; its state is saved here
        warnings.simplefilter("ignore", FutureWarning)
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=name, num_epochs=cfg.epochs, min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr,
            warmup_epochs=cfg.warmup_epochs, step_on_epochs=not per_update,
            updates_per_epoch=updates_per_epoch, **args)
    return scheduler


def scheduler_state(scheduler) -> dict[str, Any]:
    state = {"timm": copy.deepcopy(scheduler.state_dict())}
    if hasattr(scheduler, "lr_scheduler"):  # plateau: torch's ReduceLROnPlateau holds the counters
        state["plateau"] = copy.deepcopy(scheduler.lr_scheduler.state_dict())
    return state


def load_scheduler_state(scheduler, state: dict[str, Any]) -> None:
    scheduler.load_state_dict(copy.deepcopy(state["timm"]))
    if "plateau" in state:
        scheduler.lr_scheduler.load_state_dict(copy.deepcopy(state["plateau"]))


def scale_lr(optimizer: torch.optim.Optimizer, scheduler, factor: float) -> None:
    """Multiply the current and scheduled LR by ``factor`` (NaN-guard rollbacks)."""
    for g in optimizer.param_groups:
        g["lr"] *= factor
        if "initial_lr" in g:
            g["initial_lr"] *= factor
    scheduler.base_values = [v * factor for v in scheduler.base_values]
    if getattr(scheduler, "warmup_t", 0) and hasattr(scheduler, "warmup_steps"):
        scheduler.warmup_steps = [(v - scheduler.warmup_lr_init) / scheduler.warmup_t
                                  for v in scheduler.base_values]


def build_loss(cfg: TrainConfig, train_ds, device: torch.device) -> tuple[nn.Module, Callable | None]:
    """(loss, mixup_fn). Mixup/CutMix → timm Mixup + SoftTargetCrossEntropy (label smoothing inside the
    soft targets); otherwise torch CE, which takes class weights and label smoothing together (timm's
    LabelSmoothingCrossEntropy has no class weights)."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    if cfg.mixup > 0 or cfg.cutmix > 0:
        if cfg.class_weights != "none":
            raise FerlensError("--class_weights balanced cannot be combined with mixup/cutmix (soft targets); "
                               "use --balanced_sampler true instead.")
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      label_smoothing=cfg.label_smoothing, num_classes=train_ds.num_classes)
        return SoftTargetCrossEntropy(), mixup
    weight = class_weights(train_ds.labels, train_ds.num_classes).to(device) if cfg.class_weights == "balanced" \
        else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing), None


def autocast(amp: str, device: torch.device):
    """bf16 autocast (CPU or CUDA) / fp16 autocast (CUDA) / nothing."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise FerlensError(f"amp '{amp}' is not resolved for this device; pass the config through "
                           "train.engine.resolve_precision first, or use --amp none|bf16|fp16.")
    if amp == "fp16" and device.type != "cuda":
        raise FerlensError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU or --amp none.")
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


# ============================================================================ training state
@dataclass
class Trainer:
    """Everything that changes while training; ``state_dict`` is what state.pt holds."""

    model: nn.Module                  # unwrapped model
    net: nn.Module                    # what forward runs (DDP wrapper or the model)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    guard: NanGuard
    generator: torch.Generator
    device: torch.device
    info: DistInfo
    mixup_fn: Callable | None = None
    ema: Any = None
    scaler: Any = None
    on_step: Callable[[], Any] | None = None   # called after every optimizer update (publishes the run folder)
    epoch: int = 0                    # next epoch to run (0-based)
    step: int = 0                     # optimizer updates so far
    best: dict[str, float] = field(default_factory=lambda: {"val_acc": -1.0, "epoch": -1})
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def eval_model(self) -> nn.Module:
        """EMA weights when EMA is on, else the model."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[-1]["lr"])

    def state_dict(self, with_guard: bool = True) -> dict[str, Any]:
        """A detached copy of the training state (tensors and plain Python values only)."""
        state = {"format": STATE_FORMAT, "epoch": self.epoch, "step": self.step,
                 "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                 "ema": ({k: v.detach().clone() for k, v in self.ema.state_dict().items()}
                         if self.ema is not None else None),
                 "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                 "scheduler": scheduler_state(self.scheduler),
                 "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                 "rng": rng_state(self.generator), "best": dict(self.best),
                 "history": [dict(r) for r in self.history]}
        if with_guard:
            state["guard"] = self.guard.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` (the guard only when the state holds one)."""
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        load_scheduler_state(self.scheduler, state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.generator)
        self.best = dict(state["best"])
        self.history = [dict(r) for r in state["history"]]
        if "guard" in state:
            self.guard.load_state_dict(state["guard"])


@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int
    seconds: float
    diverged: str | None = None   # the non-finite tensor when the guard asks for a rollback


# ============================================================================ loops
def train_one_epoch(t: Trainer, loader: DataLoader, cfg: TrainConfig) -> EpochResult:
    """One pass over ``loader``; stops early (``diverged``) after K non-finite steps in a row.

    Args:
        t: the trainer state (model, optimizer, scheduler, guard, ...), updated in place.
        loader: training loader yielding ``(images (B,3,H,W), labels (B,), attrs, ids)``.
        cfg: the training config (grad_clip, amp).
    """
    train_mode(t.model)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(t.epoch)
    params = [p for p in t.model.parameters() if p.requires_grad]
    loss_sum = correct = seen = 0.0
    start = time.perf_counter()
    quiet = {} if t.info.is_main else {"disable": True}   # TQDM_DISABLE still applies on rank 0
    bar = tqdm(loader, desc=f"epoch {t.epoch + 1}/{cfg.epochs}", leave=False, **quiet)
    for i, (images, labels, _attrs, _ids) in enumerate(bar):
        images, labels = _images_to(images, t.device, cfg.channels_last), labels.to(t.device)  # (B,3,H,W), (B,)
        targets = labels
        if t.mixup_fn is not None:
            images, targets = t.mixup_fn(images, labels)              # targets (B, C) soft
        with autocast(cfg.amp, t.device):
            logits = t.net(images)                                    # (B, C)
            loss = t.loss_fn(logits, targets)
        loss = t.guard.inject(loss)
        if not all_true(bool(torch.isfinite(loss)), t.info):
            what = "loss"
            if not bool(torch.isfinite(logits).all()):  # name the first module whose output broke
                where = first_nonfinite_output(t.model, images)
                what = f"output:{where}" if where else what
            if _skip(t, what, i):
                return EpochResult(loss_sum / max(seen, 1), correct / max(seen, 1), int(seen),
                                   time.perf_counter() - start, diverged=what)
            continue
        t.optimizer.zero_grad(set_to_none=True)
        if t.scaler is not None:
            t.scaler.scale(loss).backward()
            t.scaler.unscale_(t.optimizer)
            grad_norm(params, cfg.grad_clip)
            t.scaler.step(t.optimizer)        # GradScaler skips inf/NaN fp16 steps itself
            t.scaler.update()
        else:
            loss.backward()
            norm = grad_norm(params, cfg.grad_clip)
            if not all_true(math.isfinite(norm), t.info):
                name = first_nonfinite_grad(t.model)
                t.optimizer.zero_grad(set_to_none=True)
                if _skip(t, f"grad:{name}", i):
                    return EpochResult(loss_sum / max(seen, 1), correct / max(seen, 1), int(seen),
                                       time.perf_counter() - start, diverged=f"grad:{name}")
                continue
            t.optimizer.step()
        t.guard.ok()
        t.step += 1
        if os.environ.get(DEBUG_KILL_ENV, "").partition(":")[0] == str(t.step):
            os.kill(os.getpid(), signal.Signals[os.environ[DEBUG_KILL_ENV].partition(":")[2] or "SIGKILL"])
        if t.on_step is not None:
            t.on_step()
        t.scheduler.step_update(num_updates=t.step)
        if t.ema is not None:
            t.ema.update(t.model, step=t.step)
        n = labels.shape[0]
        loss_sum += float(loss.detach()) * n
        correct += float((logits.detach().argmax(1) == labels).sum())
        seen += n
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                        img_s=f"{seen * t.info.world_size / max(elapsed, 1e-9):.0f}", lr=f"{t.lr:.2e}")
    return EpochResult(loss_sum / max(seen, 1), correct / max(seen, 1), int(seen), time.perf_counter() - start)


def _skip(t: Trainer, what: str, batch: int) -> bool:
    """Log a skipped step; True when the guard wants a rollback."""
    t.optimizer.zero_grad(set_to_none=True)
    rollback = t.guard.skip(t.epoch + 1, t.step, what, t.lr)
    if t.info.is_main:
        tqdm.write(f"NaN guard: epoch {t.epoch + 1} batch {batch} (update {t.step}): non-finite {what}; "
                   f"step skipped ({t.guard.consecutive}/{t.guard.max_consecutive} in a row).")
    return rollback


def _images_to(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last and images.ndim == 4 else torch.contiguous_format
    return images.to(device, memory_format=fmt)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: str = "none",
             desc: str = "eval", channels_last: bool = False) -> dict[str, Any]:
    """Predict a whole split.

    Returns:
        ``{"loss": mean CE, "labels": (N,) int64, "probs": (N, C) float32}`` as numpy arrays.
    """
    model.eval()
    labels_all, probs_all, loss_sum = [], [], 0.0
    for images, labels, _attrs, _ids in tqdm(loader, desc=desc, leave=False):
        images, labels = _images_to(images, device, channels_last), labels.to(device)
        with autocast(amp, device):
            logits = model(images).float()                            # (B, C)
        loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        probs_all.append(logits.softmax(1).cpu())
        labels_all.append(labels.cpu())
    labels_np = torch.cat(labels_all).numpy()
    return {"loss": loss_sum / max(len(labels_np), 1), "labels": labels_np,
            "probs": torch.cat(probs_all).numpy()}


def quick_scores(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(accuracy, macro-F1) for the per-epoch validation row."""
    from sklearn.metrics import f1_score

    preds = probs.argmax(1)
    return float((preds == labels).mean()), float(f1_score(labels, preds, labels=np.arange(probs.shape[1]),
                                                           average="macro", zero_division=0))


# ============================================================================ checkpoints
def save_checkpoint(run_dir: Path, t: Trainer, config: dict[str, Any]) -> None:
    """Epoch-end writes, each atomic: weights + config, history.csv, nan_events.csv, then state.pt.

    state.pt is written last and is self-contained (it holds the raw weights too), so a kill between
    two writes never mixes epochs on resume.
    """
    from .runs import save_run

    save_run(run_dir, t.eval_model, config)
    atomic_write_csv(run_dir / "history.csv", t.history, HISTORY_COLUMNS)
    if t.guard.events:
        atomic_write_csv(run_dir / "nan_events.csv", [e.as_row() for e in t.guard.events])
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    atomic_write_bytes(run_dir / "state.pt", buf.getvalue())


def load_checkpoint(run_dir: Path, t: Trainer) -> None:
    """Restore a Trainer from ``run_dir/state.pt`` (weights_only)."""
    try:
        state = torch.load(run_dir / "state.pt", map_location=t.device, weights_only=True)
    except Exception as e:  # any unreadable/corrupt file is a user-facing problem with that file
        raise FerlensError(f"{run_dir / 'state.pt'} cannot be read ({type(e).__name__}); "
                           "start the run again with --overwrite.") from None
    if state.get("format") != STATE_FORMAT:
        raise FerlensError(f"{run_dir / 'state.pt'} has an unknown format; start the run again with --overwrite.")
    t.load_state_dict(state)


def run_config(cfg: TrainConfig, model: nn.Module, train_ds) -> dict[str, Any]:
    """config.json content (docs/contracts.md "Run folders")."""
    from .models.external import model_entry

    return {"model": model_entry(cfg.model, model_kwargs(cfg), cfg.hook_map),
            "num_classes": int(train_ds.num_classes), "label_names": list(train_ds.label_names),
            "data": {"spec": cfg.data, "attr_kinds": dict(getattr(train_ds, "attr_kinds", {}))},
            "input": input_config(model, cfg), "train": cfg.to_dict(), "seed": cfg.seed}


# ============================================================================ fit
def fit(cfg: TrainConfig) -> Path:
    """Train ``cfg.model`` on ``cfg.data`` and write the run folder; returns its path.

    Single process, or one rank of a torchrun DDP job (only rank 0 writes).
    """
    info = init_distributed(cfg.device)
    try:
        return _fit(cfg, info)
    finally:
        cleanup(info)


def _fit(cfg: TrainConfig, info: DistInfo) -> Path:
    run_dir, claim = _plan_on_rank0(cfg, info)               # raises before anything is written
    try:
        return _fit_claimed(cfg, info, run_dir, claim)
    finally:
        if claim is not None:   # unpublished (failed before its first step): nothing is left
            try:
                claim.abandon()
            finally:
                claim.release()


def _fit_claimed(cfg: TrainConfig, info: DistInfo, run_dir: Path, claim) -> Path:
    """``_fit`` with the run folder claimed (rank 0): files go to ``claim.path``, a hidden staging
    folder that becomes ``run_dir`` after the first successful optimizer update."""
    from .metrics import classification_report

    def out() -> Path:  # where rank 0 writes right now
        return claim.path if claim is not None else run_dir

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        set_deterministic(info.device)
    seed_everything(cfg.seed)
    splits = load_splits(cfg.data)
    model = build_model(cfg, splits["train"].num_classes).to(info.device)
    check_forward(model, cfg, info.device)                   # a wrong input size: one sentence, nothing trained
    precision = resolve_precision(cfg, model, splits["train"].num_classes, info)
    cfg = dataclasses.replace(cfg, amp=precision.amp)         # config.json keeps the resolved amp (resume)
    tune_for_device(model, cfg, info.device)
    set_transforms(splits, model, cfg)
    config = {**run_config(cfg, model, splits["train"]), "precision": precision.as_dict()}
    seed_everything(cfg.seed + info.rank)                    # per-rank augmentation streams
    generator = torch.Generator().manual_seed(cfg.seed + info.rank)
    loader = train_loader(splits["train"], cfg, info, generator)
    if len(loader) == 0:
        raise FerlensError(f"The train split of '{cfg.data}' has fewer samples than one batch; lower --batch_size.")
    val_loader, test_loader = eval_loader(splits["val"], cfg), eval_loader(splits["test"], cfg)
    t = make_trainer(cfg, model, splits["train"], loader, generator, info)
    if claim is not None:
        t.on_step = claim.publish
    writer = tensorboard_writer(cfg, out(), info)
    if cfg.resume and (run_dir / "state.pt").is_file():
        load_checkpoint(run_dir, t)
    elif cfg.resume:
        tqdm.write(f"{run_dir} has no checkpoint yet (it stopped during epoch 1); training starts at epoch 1.")
    elif info.is_main:
        from .runs import stamp_config

        config = stamp_config(config)
        atomic_write_json(out() / "config.json", config)
    if cfg.resume:
        from .io import read_json

        config = {**read_json(run_dir / "config.json"), "train": cfg.to_dict(), "precision": precision.as_dict()}
    good = t.state_dict(with_guard=False)                    # last good state, in memory
    saves = 0
    while t.epoch < cfg.epochs:
        result = train_one_epoch(t, loader, cfg)
        bad = result.diverged or _nonfinite_weights(t)
        if bad:
            try:
                factor = t.guard.rollback(t.epoch + 1, t.step, bad, t.lr)   # raises when none are left
            except FerlensError:
                if info.is_main and out().is_dir():
                    atomic_write_csv(out() / "nan_events.csv", [e.as_row() for e in t.guard.events])
                raise
            t.load_state_dict(good)
            scale_lr(t.optimizer, t.scheduler, factor)
            if info.is_main:
                tqdm.write(f"NaN guard: rolled back to the end of epoch {t.epoch} with the LR x{factor} "
                           f"(rollback {t.guard.rollbacks}/{t.guard.max_rollbacks}).")
            continue
        if info.enabled:  # BatchNorm statistics are per rank: average them (timm distribute_bn)
            from timm.utils import distribute_bn

            for module in [t.model] + ([t.ema.module] if t.ema is not None else []):
                distribute_bn(module, info.world_size, reduce=True)
        lr = t.lr
        val = evaluate(t.eval_model, val_loader, t.device, cfg.amp, desc="val", channels_last=cfg.channels_last)
        val_acc, val_f1 = quick_scores(val["labels"], val["probs"])
        t.scheduler.step(t.epoch + 1, val_acc)
        t.history.append({"epoch": t.epoch + 1, "step": t.step, "lr": lr, "train_loss": result.loss,
                          "val_loss": val["loss"], "val_acc": val_acc, "val_macro_f1": val_f1,
                          "seconds": result.seconds})
        if val_acc > t.best["val_acc"]:
            t.best = {"val_acc": val_acc, "epoch": t.epoch + 1}
        t.epoch += 1
        good = t.state_dict(with_guard=False)
        if info.is_main:
            save_checkpoint(out(), t, config)
            saves += 1
            tqdm.write(f"epoch {t.epoch}/{cfg.epochs}  train_loss {result.loss:.4f}  train_acc {result.acc:.3f}  "
                       f"val_loss {val['loss']:.4f}  val_acc {val_acc:.3f}  val_f1 {val_f1:.3f}  lr {lr:.2e}  "
                       f"{result.images * info.world_size / max(result.seconds, 1e-9):.0f} img/s")
            if writer is not None:
                for k, v in t.history[-1].items():
                    writer.add_scalar(k, v, t.epoch)
    if info.is_main:
        test = evaluate(t.eval_model, test_loader, t.device, cfg.amp, desc="test", channels_last=cfg.channels_last)
        report = classification_report(test["labels"], test["probs"], config["label_names"], cfg.bootstrap, cfg.seed)
        metrics = {"split": "test", "data": cfg.data, **report, "best_epoch": t.best["epoch"],
                   "best_val_acc": t.best["val_acc"],
                   "train_seconds": float(sum(r["seconds"] for r in t.history))}
        if claim is not None:
            claim.publish()   # a run with zero updates (epochs 0) is published when complete
        atomic_write_json(out() / "metrics.json", metrics)
        if writer is not None:
            writer.close()
    barrier(info)
    if os.environ.get(DEBUG_DUMP_ENV):
        _dump_rank(Path(os.environ[DEBUG_DUMP_ENV]), t, info, saves)
    return run_dir


def _dump_rank(folder: Path, t: Trainer, info: DistInfo, saves: int) -> None:
    """Test hook: this rank's final weight hash and how many checkpoints it wrote."""
    import hashlib

    digest = hashlib.sha256()
    for k, v in sorted(t.model.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    atomic_write_json(folder / f"rank{info.rank}.json", {"rank": info.rank, "world_size": info.world_size,
                                                         "sha256": digest.hexdigest(), "checkpoints_written": saves,
                                                         "step": t.step})


def resolve_precision(cfg: TrainConfig, model: nn.Module, num_classes: int, info: DistInfo):
    """``cfg.amp`` resolved for this device (``train.precision``), chosen on rank 0 and printed once."""
    from .precision import announce, choose_precision

    precision = None
    if info.is_main:
        img_size = int(data_config(model, cfg)["input_size"][-1])
        precision = choose_precision(cfg.amp, info.device, model, batch=cfg.batch_size, img_size=img_size,
                                     num_classes=num_classes, channels_last=cfg.channels_last)
        tqdm.write(announce(precision))
    return broadcast_object(precision, info)


def _plan_on_rank0(cfg: TrainConfig, info: DistInfo):
    """The run folder, checked and claimed (``train.runs.claim``) by rank 0 only; every rank raises
    when the check or the claim fails.

    Returns:
        (run_dir, claim) — claim is None on other ranks.
    """
    from .runs import claim as claim_run_dir

    run_dir = run_dir_for(cfg)
    error, claim = None, None
    if info.is_main:
        try:
            check_run_dir(cfg, run_dir)
            claim = claim_run_dir(run_dir, overwrite=cfg.overwrite, resume=bool(cfg.resume))
        except FerlensError as e:
            error = e
    if not all_true(error is None, info):
        raise error or FerlensError("Rank 0 refused the run folder (see its message); fix that and start again.")
    return run_dir, claim


def make_trainer(cfg: TrainConfig, model: nn.Module, train_ds, loader: DataLoader, generator: torch.Generator,
                 info: DistInfo) -> Trainer:
    """Optimizer, scheduler, loss, EMA, scaler and the DDP wrapper around ``model``."""
    from timm.utils import ModelEmaV3

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    loss_fn, mixup_fn = build_loss(cfg, train_ds, info.device)
    net = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda"
                                                  else None)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    guard = NanGuard(cfg.nan_max_consecutive, cfg.nan_lr_factor, cfg.nan_max_rollbacks, cfg.debug_nan_steps)
    autocast(cfg.amp, info.device)  # validates amp vs device before training starts
    return Trainer(model=model, net=net, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn, guard=guard,
                   generator=generator, device=info.device, info=info, mixup_fn=mixup_fn, ema=ema, scaler=scaler)


def _nonfinite_weights(t: Trainer) -> str | None:
    """'weights:<name>' when the model (or EMA) holds NaN/Inf — such a state is never saved."""
    name = first_nonfinite_tensor(t.model.state_dict())
    if name is None and t.ema is not None:
        name = first_nonfinite_tensor(t.ema.state_dict())
    return f"weights:{name}" if name else None


def tensorboard_writer(cfg: TrainConfig, run_dir: Path, info: DistInfo):
    """A TensorBoard SummaryWriter in ``run_dir/tb`` when asked for (rank 0 only)."""
    if not cfg.tensorboard or not info.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FerlensError("--tensorboard needs the tensorboard package; install it with "
                           "'pip install ferlens[tensorboard]' or drop the flag.") from None
    return SummaryWriter(log_dir=str(run_dir / "tb"))


# ============================================================================ evaluate a run
def evaluate_run(run: str, data: str | None = None, split: str = "test", batch_size: int = 256,
                 workers: int = 0, n_resamples: int = 1000) -> tuple[dict[str, Any], Path]:
    """Evaluate a saved run on a data split; returns (metrics dict, path it should be written to).

    The file is ``metrics.json`` for the run's own data and test split, else
    ``metrics-<dataslug>-<split>.json``.
    """
    from .data import collate, load_dataset, parse_spec
    from .metrics import classification_report
    from .runs import load_run

    model, config = load_run(run)
    spec = data or config["data"]["spec"]
    ds = load_dataset(spec, split, make_eval_transform(config))
    if list(ds.label_names) != list(config["label_names"]):
        raise FerlensError(f"'{spec}' has labels {ds.label_names} but the run was trained on "
                           f"{config['label_names']}; evaluate on a dataset with the same classes.")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    out = evaluate(model, loader, torch.device("cpu"), desc=f"eval {split}")
    report = classification_report(out["labels"], out["probs"], config["label_names"], n_resamples,
                                   int(config.get("seed", 0)))
    run_dir = Path(config["run_dir"])
    same = spec == config["data"]["spec"] and split == "test"
    path = run_dir / ("metrics.json" if same else f"metrics-{parse_spec(spec).slug}-{split}.json")
    metrics = {"split": split, "data": spec, **report}
    if same and path.is_file():  # keep the training-time fields
        from .io import read_json

        old = read_json(path)
        metrics.update({k: old[k] for k in ("best_epoch", "best_val_acc", "train_seconds") if k in old})
    return metrics, path
