"""Model cost: parameters, MACs/FLOPs, inference throughput and latency per batch size, peak memory.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls and the SDPA /
attention matmuls; normalisations, activations and softmax are not counted). It reports FLOPs with a
multiply-add counted as 2, so ``macs = flops / 2``. The seed study's "FLOPs(G)" column is MACs
(thop / fvcore convention).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .errors import FerlensError
from .io import atomic_write_bytes, atomic_write_csv, atomic_write_json

FLOPS_NOTE = ("flops = 2 x macs (FlopCounterMode: conv, matmul and SDPA attention; norms/activations/softmax "
              "not counted); the seed study's 'FLOPs(G)' column is MACs")
CSV_COLUMNS = ["model", "img_size", "device", "params", "macs", "flops", "batch_size", "throughput",
               "latency_ms", "peak_mem_mb"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, img_size: tuple[int, int], device: str = "cpu") -> int:
    """FLOPs of one eval forward of a single (1, 3, H, W) image (multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    # torch's table lacks the CPU flash-attention op that SDPA dispatches to on CPU: count it like the
    # other SDPA kernels (q @ k^T and attn @ v), so attention matmuls are included on every device.
    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    extra = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    x = torch.zeros(1, 3, *img_size, device=device)
    # FlopCounterMode's ModuleTracker hooks every module input that requires grad; under no_grad a
    # parameter handed to a module as input (CaiT's cls_token reaches blocks_token_only) has no grad
    # function and the tracker asserts. Parameters are frozen for the count and restored after.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with FlopCounterMode(display=False, custom_mapping=extra) as counter:
            model(x)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return int(counter.get_total_flops())


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc/self/status."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) for this process; False when not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def measure_batch(model: nn.Module, img_size: tuple[int, int], batch_size: int, device: str = "cpu",
                  repeats: int = 5, warmup: int = 2) -> dict[str, Any]:
    """Inference throughput (img/s), median latency (ms) and peak memory (MB) at one batch size.

    Peak memory: CUDA allocator peak on GPU; on CPU the growth of the process's peak RSS during the
    measurement (the forward's working set above what was resident before).
    """
    x = torch.randn(batch_size, 3, *img_size, device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        rss0, _ = _rss_mb()
        reset = _reset_peak_rss()
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        model(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    if cuda:
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = max(_rss_mb()[1] - rss0, 0.0) if reset else float("nan")
    return {"batch_size": batch_size, "throughput": batch_size / med, "latency_ms": med * 1000.0,
            "peak_mem_mb": peak}


def _resolve(model_or_name: nn.Module | str, img_size: int | None, num_classes: int) -> tuple[nn.Module, str, tuple[int, int]]:
    if isinstance(model_or_name, str):
        from .models import create_model

        kwargs = {"img_size": img_size} if img_size else {}
        model, name = create_model(model_or_name, num_classes=num_classes, **kwargs), model_or_name
    else:
        model = model_or_name
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    if img_size:
        size = (img_size, img_size)
    else:
        size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[1:])
    return model, name, size


def profile_model(model_or_name: nn.Module | str, img_size: int | None = None,
                  batch_sizes: Sequence[int] = (1, 8, 64), device: str = "cpu", repeats: int = 5,
                  warmup: int = 2, num_classes: int = 7) -> dict[str, Any]:
    """Profile one model (profile.json schema of docs/contracts.md, plus a ``flops_note``).

    Args:
        model_or_name: a model, or a registry name built with ``num_classes`` and ``img_size``.
        img_size: input side; default: the model's ``pretrained_cfg["input_size"]``.
        batch_sizes: batch sizes to time.
        device: ``cpu`` or ``cuda[:i]``.
        repeats: timed forwards per batch size (the median is reported).
        warmup: untimed forwards before timing.
        num_classes: classifier size when building from a name.

    Returns:
        ``{"model", "img_size", "device", "params", "macs", "flops", "flops_note", "threads", "rows": [...]}``.
    """
    from tqdm.auto import tqdm

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FerlensError(f"Device '{device}' was requested but CUDA is not available; use --device cpu.")
    model, name, size = _resolve(model_or_name, img_size, num_classes)
    model = model.to(device).eval()
    flops = count_flops(model, size, device)
    rows = []
    for bs in tqdm(list(batch_sizes), desc=f"profile {name}", unit="batch size"):
        try:
            rows.append(measure_batch(model, size, int(bs), device, repeats, warmup))
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch_size": int(bs), "throughput": None, "latency_ms": None, "peak_mem_mb": None,
                         "oom": True})
            torch.cuda.empty_cache()
    return {"model": name, "img_size": size[0] if size[0] == size[1] else list(size), "device": device,
            "params": count_params(model), "macs": flops // 2, "flops": flops, "flops_note": FLOPS_NOTE,
            "threads": torch.get_num_threads(), "rows": rows}


def tidy_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per (model, batch size) for CSV and charts."""
    out = []
    for r in results:
        for row in r["rows"]:
            out.append({k: r[k] for k in CSV_COLUMNS[:6]} | {k: row.get(k) for k in CSV_COLUMNS[6:]})
    return out


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """Plain-text table for the console: one line per (model, batch size)."""
    head = f"{'model':34s} {'params(M)':>9s} {'GMACs':>7s} {'GFLOPs':>7s} {'batch':>5s} {'img/s':>9s} {'ms':>9s} {'peak MB':>8s}"
    lines = [head, "-" * len(head)]
    for r in tidy_rows(results):
        fmt = lambda v, spec: "oom" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"{r['model']:34s} {r['params'] / 1e6:9.3f} {r['macs'] / 1e9:7.3f} {r['flops'] / 1e9:7.3f} "
                     f"{r['batch_size']:5d} {fmt(r['throughput'], '9.1f')} {fmt(r['latency_ms'], '9.2f')} "
                     f"{fmt(r['peak_mem_mb'], '8.1f')}")
    return "\n".join(lines + [f"({FLOPS_NOTE})"])


def throughput_chart(results: Sequence[dict[str, Any]]):
    """Altair line chart: throughput (img/s) vs batch size (log2 axis), one line per model."""
    import altair as alt
    import pandas as pd

    df = pd.DataFrame([r for r in tidy_rows(results) if r["throughput"] is not None])
    ticks = sorted(df["batch_size"].unique().tolist())
    return (alt.Chart(df, title="Inference throughput").mark_line(point=True).encode(
        x=alt.X("batch_size:Q", scale=alt.Scale(type="log", base=2), axis=alt.Axis(values=ticks, format="d"),
                title="batch size"),
        y=alt.Y("throughput:Q", title="images / s"),
        color=alt.Color("model:N", title="model"),
        tooltip=["model", "batch_size", "throughput", "latency_ms", "peak_mem_mb"],
    ).properties(width=360, height=220))


def write_profiles(results: Sequence[dict[str, Any]], json_path: str | Path, chart: bool = True) -> list[Path]:
    """Write results as JSON (one dict, or a list for several models), tidy CSV and a PNG chart.

    Returns the written paths.
    """
    json_path = Path(json_path)
    paths = [atomic_write_json(json_path, results[0] if len(results) == 1 else list(results)),
             atomic_write_csv(json_path.with_suffix(".csv"), tidy_rows(results), CSV_COLUMNS)]
    if chart and any(r["throughput"] is not None for r in tidy_rows(results)):
        import vl_convert as vlc

        png = vlc.vegalite_to_png(throughput_chart(results).to_json(), scale=2)
        paths.append(atomic_write_bytes(json_path.with_suffix(".png"), png))
    return paths
