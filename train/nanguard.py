"""NaN guard: skip non-finite steps, roll back after K in a row with a lower LR, or stop clearly.

The study's long runs turned NaN after several epochs at larger learning rates. The guard:
  1. a step whose loss or gradient is non-finite is skipped (no optimizer update) and logged with
     epoch/step and the first tensor that went non-finite (parameter gradient or module output);
  2. after ``max_consecutive`` skipped steps in a row the engine restores the last good epoch-end
     state (kept in memory) and multiplies the LR by ``lr_factor``;
  3. after ``max_rollbacks`` rollbacks it stops with one sentence (``FerlensError``);
  4. weights are checked before every save, so no checkpoint ever holds a NaN.

Nothing in timm/torch does this bookkeeping, so it is written here; the checks themselves use
torch's ``clip_grad_norm_`` / ``get_total_norm``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn

from .errors import FerlensError


@dataclass
class NanEvent:
    """One guard action, written to ``nan_events.csv`` in the run folder."""

    epoch: int
    step: int
    attempt: int
    tensor: str     # "loss", "grad:<param>", "output:<module>", "weights:<param>"
    action: str     # skip | rollback | stop
    lr: float

    def as_row(self) -> dict:
        return asdict(self)


class NanGuard:
    """Counts non-finite steps and decides skip / rollback / stop.

    Args:
        max_consecutive: K non-finite steps in a row trigger a rollback.
        lr_factor: LR multiplier per rollback (0.5 halves it).
        max_rollbacks: rollbacks allowed before training stops.
        inject_steps: test hook — step attempts (0-based, counted across rollbacks) whose loss is
            replaced by NaN.
    """

    def __init__(self, max_consecutive: int = 3, lr_factor: float = 0.5, max_rollbacks: int = 3,
                 inject_steps: Iterable[int] = ()):
        self.max_consecutive = max(1, int(max_consecutive))
        self.lr_factor = float(lr_factor)
        self.max_rollbacks = int(max_rollbacks)
        self.inject_steps = set(int(s) for s in inject_steps)
        self.consecutive = 0
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.attempts = 0
        self.events: list[NanEvent] = []

    def inject(self, loss: torch.Tensor) -> torch.Tensor:
        """Count one step attempt; return NaN instead of ``loss`` on an injected attempt."""
        attempt = self.attempts
        self.attempts += 1
        if attempt in self.inject_steps:
            return loss * float("nan")
        return loss

    def skip(self, epoch: int, step: int, tensor: str, lr: float) -> bool:
        """Log a skipped step; True when K in a row were skipped (the caller must roll back)."""
        self.consecutive += 1
        self.events.append(NanEvent(epoch, step, self.attempts - 1, tensor, "skip", lr))
        return self.consecutive >= self.max_consecutive

    def ok(self) -> None:
        """A finite step resets the run of skipped steps."""
        self.consecutive = 0

    def rollback(self, epoch: int, step: int, tensor: str, lr: float) -> float:
        """Register a rollback and return the LR factor to apply; raise when none is left."""
        self.consecutive = 0
        if self.rollbacks >= self.max_rollbacks:
            self.events.append(NanEvent(epoch, step, self.attempts - 1, tensor, "stop", lr))
            raise FerlensError(
                f"Training diverged: {tensor} was non-finite at epoch {epoch} step {step} again after "
                f"{self.rollbacks} rollback(s) with the LR multiplied by {self.lr_factor} each time; "
                "lower --lr (or set --grad_clip 1.0) and start again — the run folder keeps the last good epoch.")
        self.rollbacks += 1
        self.lr_scale *= self.lr_factor
        self.events.append(NanEvent(epoch, step, self.attempts - 1, tensor, "rollback", lr * self.lr_factor))
        return self.lr_factor

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale,
                "attempts": self.attempts, "events": [e.as_row() for e in self.events]}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = int(state["consecutive"])
        self.rollbacks = int(state["rollbacks"])
        self.lr_scale = float(state["lr_scale"])
        self.attempts = int(state["attempts"])
        self.events = [NanEvent(**e) for e in state.get("events", [])]


def grad_norm(params: list[nn.Parameter], clip: float = 0.0) -> float:
    """Global L2 gradient norm (clipping to ``clip`` when > 0); non-finite when any grad is."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, clip, error_if_nonfinite=False))
    return float(torch.nn.utils.get_total_norm(grads))


def first_nonfinite_grad(model: nn.Module) -> str | None:
    """Name of the first parameter (in registration order) whose gradient is non-finite."""
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None


def first_nonfinite_tensor(state: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating tensor in a state dict holding NaN/Inf."""
    for name, t in state.items():
        if torch.is_floating_point(t) and not torch.isfinite(t).all():
            return name
    return None


@torch.no_grad()
def first_nonfinite_output(model: nn.Module, images: torch.Tensor) -> str | None:
    """Re-run ``model`` on ``images`` and name the first module (in call order) whose output is non-finite.

    Args:
        model: the (unwrapped) model.
        images: (B, 3, H, W) the batch that produced a non-finite loss.
    """
    found: list[str] = []

    def hook(name):
        def fn(_module, _inputs, output):
            if not found and isinstance(output, torch.Tensor) and output.is_floating_point() \
                    and not torch.isfinite(output).all():
                found.append(name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        was_training = model.training
        model.eval()
        model(images)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def is_finite(x: float) -> bool:
    return math.isfinite(x)
