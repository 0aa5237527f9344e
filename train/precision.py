"""Training precision by capability: ``--amp auto`` picks bf16 only where it pays.

On CPU, bf16 autocast is fast only on CPUs with bf16 units (AVX512-BF16 or AMX); elsewhere oneDNN and
ATen emulate it and a training step of the demo's tiny hybrid is 7-13x slower than fp32 (measured on an
AVX2 AMD EPYC and under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``). ``auto`` therefore

- on CUDA: bf16 where the GPU supports it, else fp16 (with the GradScaler);
- on CPU: bf16 only when the CPU has bf16 units *and* a short probe (3 timed training steps of the
  model in each precision, on a copy, random data of the training shape) shows bf16 faster than fp32;
  otherwise fp32.

``--amp bf16`` on a CPU without bf16 units is kept (the user asked) but warns in one sentence with the
slowdown the same probe measured. The choice and its reason go to ``config.json["precision"]``.
"""
from __future__ import annotations

import contextlib
import copy
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

PROBE_STEPS = 3        # timed steps per precision
PROBE_MARGIN = 1.05    # bf16 must be at least 5 % faster than fp32 to be chosen (timing noise)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of x86 bf16 units
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include bf16 instructions
ONEDNN_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
                    "AVX10_2_512_AMX_2", "ALL", "DEFAULT"}


@dataclass
class Precision:
    """What ``--amp`` resolved to and why (``config.json["precision"]``)."""

    requested: str              # auto | none | bf16 | fp16
    amp: str                    # none | bf16 | fp16: what the engine uses
    reason: str                 # one sentence
    cpu_capability: str         # torch.backends.cpu.get_cpu_capability()
    bf16_units: bool            # CPU: AVX512-BF16/AMX present and not capped; CUDA: bf16 supported
    fp32_img_s: float | None = None   # probe throughputs (CPU probe only)
    bf16_img_s: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        return {"none": "fp32"}.get(self.amp, self.amp)


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (empty when unreadable)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_capability() -> str:
    """ATen's vector capability (``AVX512``, ``AVX2``, ``DEFAULT`` ...), honouring ``ATEN_CPU_CAPABILITY``."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_bf16_units(flags: set[str] | None = None, capability: str | None = None,
                   env: dict[str, str] | None = None) -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively, with the reason in a few words.

    Needs all three: a bf16 flag in ``/proc/cpuinfo`` (``avx512_bf16`` / ``amx_bf16``), ATen at the
    ``AVX512`` capability (``ATEN_CPU_CAPABILITY=avx2`` caps it), and oneDNN allowed a bf16 ISA
    (``ONEDNN_MAX_CPU_ISA``). Arguments default to this machine and process (tests pass fakes).
    """
    flags = cpu_flags() if flags is None else flags
    capability = cpu_capability() if capability is None else capability
    env = os.environ if env is None else env
    isa = env.get("ONEDNN_MAX_CPU_ISA", env.get("DNNL_MAX_CPU_ISA", "")).strip().upper()
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64") and "bf16" in flags:
        return True, "ARM CPU with bf16 instructions"
    units = sorted(f for f in BF16_FLAGS if f in flags)
    if not units:
        return False, f"no AVX512-BF16/AMX units (ATen capability {capability})"
    if capability != "AVX512":
        return False, f"ATen capped at {capability} (ATEN_CPU_CAPABILITY) although the CPU has {'/'.join(units)}"
    if isa and isa not in ONEDNN_BF16_ISAS:
        return False, f"oneDNN capped at {isa} (ONEDNN_MAX_CPU_ISA) although the CPU has {'/'.join(units)}"
    return True, f"CPU has {'/'.join(units)}"


def _step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: str, steps: int) -> float:
    """Median seconds of one forward + backward of ``model`` on (x, y) in ``amp`` (after one warm-up)."""
    ctx: Callable = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp == "bf16"
                     else contextlib.nullcontext)
    times = []
    for k in range(steps + 1):
        t = time.perf_counter()
        with ctx():
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if k:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def probe_cpu_speed(model: nn.Module, batch: int, img_size: int, num_classes: int, channels_last: bool = True,
                    steps: int = PROBE_STEPS) -> tuple[float, float]:
    """Training throughput (img/s) of copies of ``model`` in fp32 and in bf16 autocast on random data.

    The copies are trained-mode forward + backward only (no optimizer step), so the model, its BatchNorm
    statistics and the RNG streams of the run are untouched. The bf16 copy uses timm's explicit
    attention path, as training under CPU bf16 does (``engine.tune_for_device``).

    Returns:
        (fp32 img/s, bf16 img/s).
    """
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(0)
        x = torch.randn(batch, 3, img_size, img_size)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (batch,))
        fp32 = copy.deepcopy(model).train()
        bf16 = copy.deepcopy(model).train()
        for module in bf16.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
        t32 = _step_seconds(fp32, x, y, "none", steps)
        t16 = _step_seconds(bf16, x, y, "bf16", steps)
    return batch / t32, batch / t16


def choose_precision(requested: str, device: torch.device, model: nn.Module | None = None, batch: int = 64,
                     img_size: int = 64, num_classes: int = 7, channels_last: bool = True,
                     probe: Callable[..., tuple[float, float]] | None = None) -> Precision:
    """Resolve ``--amp`` (auto | none | bf16 | fp16) for ``device``; probes CPU speed when it must.

    Args:
        requested: the config's ``amp``.
        device: the training device.
        model: the model to probe (CPU ``auto`` with bf16 units, and CPU ``bf16`` without them).
        batch, img_size, num_classes, channels_last: the probe's input shape and layout.
        probe: replaces ``probe_cpu_speed`` (tests).
    """
    probe = probe or probe_cpu_speed
    cap = cpu_capability()
    if device.type == "cuda":
        bf16_ok = bool(torch.cuda.is_bf16_supported())
        if requested == "auto":
            amp = "bf16" if bf16_ok else "fp16"
            return Precision(requested, amp, f"CUDA device: {amp} autocast"
                             + ("" if bf16_ok else " (this GPU has no bf16)"), cap, bf16_ok)
        return Precision(requested, requested, f"--amp {requested} as asked", cap, bf16_ok)
    if device.type != "cpu":
        amp = "none" if requested == "auto" else requested
        return Precision(requested, amp, f"{device.type} device: fp32" if requested == "auto"
                         else f"--amp {requested} as asked", cap, False)
    units, why = cpu_bf16_units(capability=cap)
    if requested in ("none", "fp16"):
        return Precision(requested, requested, f"--amp {requested} as asked", cap, units)
    if requested == "bf16":
        if units or model is None:
            return Precision(requested, "bf16", f"--amp bf16 as asked ({why})", cap, units)
        f32, b16 = (round(v, 1) for v in probe(model, batch, img_size, num_classes, channels_last))
        return Precision(requested, "bf16", f"--amp bf16 as asked, but {why}: bf16 is emulated, "
                         f"{f32 / b16:.1f}x slower than fp32", cap, units, f32, b16)
    if not units:
        return Precision(requested, "none", f"fp32: {why}, so bf16 would be emulated", cap, units)
    if model is None:
        return Precision(requested, "bf16", f"bf16: {why}", cap, units)
    f32, b16 = probe(model, batch, img_size, num_classes, channels_last)
    if b16 >= PROBE_MARGIN * f32:
        return Precision(requested, "bf16", f"bf16: {why} and a {PROBE_STEPS}-step probe trained "
                         f"{b16 / f32:.2f}x faster than fp32 ({b16:.0f} vs {f32:.0f} img/s)", cap, units,
                         round(f32, 1), round(b16, 1))
    return Precision(requested, "none", f"fp32: {why}, but a {PROBE_STEPS}-step probe trained bf16 at "
                     f"{b16 / f32:.2f}x the fp32 speed ({b16:.0f} vs {f32:.0f} img/s)", cap, units,
                     round(f32, 1), round(b16, 1))


def announce(p: Precision) -> str:
    """The line printed once at the start of training (a warning for emulated bf16)."""
    if p.requested == "bf16" and p.amp == "bf16" and not p.bf16_units and p.fp32_img_s:
        return (f"warning: --amp bf16 on a CPU without bf16 units is emulated and trains "
                f"{p.fp32_img_s / p.bf16_img_s:.1f}x slower than fp32 here ({p.bf16_img_s:.0f} vs "
                f"{p.fp32_img_s:.0f} img/s); use --amp auto or --amp none.")
    return f"precision: {p.reason}."


def cpu_summary() -> dict[str, object]:
    """What benchmarks and the demo record about the CPU's numerics: ATen capability, bf16 units, a label
    such as ``AMX/AVX-512 BF16`` or ``AVX2``, and the caps set in the environment."""
    units, why = cpu_bf16_units()
    flags = cpu_flags()
    if units:
        label = "AMX/AVX-512 BF16" if "amx_bf16" in flags else "AVX-512 BF16"
    else:
        label = cpu_capability()
    caps = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k)}
    return {"cpu_capability": cpu_capability(), "bf16_units": units, "isa_label": label, "isa_reason": why,
            "isa_caps": caps}
