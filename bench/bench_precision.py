"""Training precision: a demo training step in the precision ``--amp auto`` picks vs a bare fp32 step.

For each demo variant (tiny vit and cataftermlp, 64 px, batch 64, one thread, channels_last) the bench
resolves ``auto`` exactly as ``train fit`` does (``train.precision.choose_precision``, probe included),
then times full training steps (forward, backward, AdamW) in the chosen precision and in fp32,
interleaved. Target: chosen ≥ 0.9× the fp32 throughput (on a CPU without bf16 units bf16 would be
7-13× slower; ``auto`` must not pick it). Also reports the forced-bf16 speed for reference.

    python -m bench.bench_precision
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m bench.bench_precision   # an AVX2-only CPU
"""
from __future__ import annotations

import contextlib
import time

VARIANTS = ("ferlens_tiny_vit_s3", "ferlens_tiny_cataftermlp_s3")
TARGET = 0.9


def _stepper(name: str, amp: str, batch: int, size: int):
    import torch

    from train.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=7).to(memory_format=torch.channels_last).train()
    if amp == "bf16":
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,))

    def step() -> float:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
        t = time.perf_counter()
        with ctx:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    return model, step


def main(batch: int = 64, size: int = 64, steps: int = 4) -> dict:
    import torch

    from train.demo import machine
    from train.precision import choose_precision

    torch.set_num_threads(1)
    m = machine()
    out: dict = {"cpu": m.get("cpu"), "isa": m.get("isa_label"), "cpu_capability": m.get("cpu_capability"),
                 "variants": {}}
    print(f"training precision on {m.get('cpu')} ({m.get('isa_label')}), batch {batch}, {size} px, one thread")
    for name in VARIANTS:
        model, _ = _stepper(name, "none", batch, size)
        p = choose_precision("auto", torch.device("cpu"), model, batch=batch, img_size=size, num_classes=7)
        steppers = {amp: _stepper(name, amp, batch, size)[1] for amp in ("none", "bf16")}
        times = {amp: [] for amp in steppers}
        for amp, step in steppers.items():  # warm-up
            step()
        for _ in range(steps):  # interleaved
            for amp, step in steppers.items():
                times[amp].append(step())
        rate = {amp: batch / sorted(t)[len(t) // 2] for amp, t in times.items()}
        chosen = rate[p.amp if p.amp in rate else "none"]
        row = {"chosen": p.label, "reason": p.reason, "fp32_img_s": rate["none"], "bf16_img_s": rate["bf16"],
               "chosen_img_s": chosen, "chosen_vs_fp32": chosen / rate["none"],
               "bf16_vs_fp32": rate["bf16"] / rate["none"]}
        out["variants"][name] = row
        print(f"  {name:<30} auto → {p.label:<5} {chosen:6.0f} img/s = {row['chosen_vs_fp32']:.2f}× fp32 "
              f"(target ≥ {TARGET}); bf16 forced {row['bf16_vs_fp32']:.2f}× fp32")
    out["min_chosen_vs_fp32"] = min(r["chosen_vs_fp32"] for r in out["variants"].values())
    return out


if __name__ == "__main__":
    main()
