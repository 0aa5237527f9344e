"""Block-type benchmark: training and inference throughput of each token-block type vs ``vit``.

Equal backbone, token stage, depth and dim; one process; repeats interleaved across variants (so load
drifts hit every variant alike); medians reported with ratios ``variant / vit`` (higher = faster) and the
MAC ratio ``vit / variant``. The seed study saw 1.30x training throughput for class attention on a GPU.

    python -m bench.bench_variants                    # tiny stem, stage-3 tokens, 64 px, batch 16
    python -m bench.bench_variants --backbone ir50 --stage 4 --batch-size 4   # the study's IR-50 pair
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from train.models import create_model
from train.profile import count_flops, count_params

BLOCKS = ("vit", "cataftermlp", "catbeforemlp", "addpatches", "clsonly")


def _name(backbone: str, block: str, stage: int) -> str:
    return f"ferlens_ir50_{block}_s{stage}_d8" if backbone == "ir50" else f"ferlens_tiny_{block}_s3"


# wall: elapsed time (the default); cpu: this process's CPU time — with --threads 1 it measures the work
# itself and stays fair on a machine shared with other jobs, where wall time mostly measures waiting.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _train_time(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                clock=time.perf_counter) -> float:
    """Seconds for one forward + backward + AdamW step."""
    t0 = clock()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return clock() - t0


@torch.no_grad()
def _infer_time(model: torch.nn.Module, x: torch.Tensor, clock=time.perf_counter) -> float:
    """Seconds for one inference forward."""
    t0 = clock()
    model(x)
    return clock() - t0


def bench(backbone: str = "tiny", stage: int = 3, depth: int | None = None, img_size: int | None = None,
          batch_size: int = 16, repeats: int = 8, steps: int = 1, blocks: Sequence[str] = BLOCKS,
          clock: str = "wall") -> dict[str, Any]:
    """Measure every block type in ``blocks`` (``vit`` is always included as the reference).

    Throughputs are ``batch_size / median step time`` over all interleaved steps.

    Returns:
        ``{"config", "results": {block: {train_img_s, infer_img_s, macs, params}},
        "ratios": {block: {train, infer, macs}}}``.
    """
    from tqdm.auto import tqdm

    tick = CLOCKS[clock]
    blocks = ["vit"] + [b for b in blocks if b != "vit"]
    kw = {k: v for k, v in dict(depth=depth, img_size=img_size, stem_stage=stage).items() if v is not None}
    models, opts = {}, {}
    for b in blocks:
        torch.manual_seed(0)
        models[b] = create_model(_name(backbone, b, stage), **kw)
        opts[b] = torch.optim.AdamW(models[b].parameters(), lr=1e-4)
    size = models["vit"].img_size
    x, y = torch.randn(batch_size, 3, *size), torch.randint(0, 7, (batch_size,))
    macs = {b: count_flops(m.eval(), size) // 2 for b, m in models.items()}
    train_s = {b: [] for b in blocks}
    infer_s = {b: [] for b in blocks}
    for b in blocks:  # warm-up: one step each
        _train_time(models[b].train(), opts[b], x, y)
        _infer_time(models[b].eval(), x)
    for r in tqdm(range(repeats), desc="bench variants (interleaved repeats)"):
        order = blocks[r % len(blocks):] + blocks[:r % len(blocks)]  # rotate who goes first
        for b in order:  # one step per variant per repeat: load drifts hit every variant alike
            for _ in range(steps):
                train_s[b].append(_train_time(models[b].train(), opts[b], x, y, tick))
                infer_s[b].append(_infer_time(models[b].eval(), x, tick))
    results = {b: {"train_img_s": batch_size / statistics.median(train_s[b]),
                   "infer_img_s": batch_size / statistics.median(infer_s[b]),
                   "macs": macs[b], "params": count_params(models[b])} for b in blocks}
    ref = results["vit"]
    ratios = {b: {"train": r["train_img_s"] / ref["train_img_s"], "infer": r["infer_img_s"] / ref["infer_img_s"],
                  "macs": ref["macs"] / r["macs"]} for b, r in results.items()}
    config = {"backbone": backbone, "stage": stage, "img_size": size[0], "batch_size": batch_size,
              "depth": models["vit"].depth, "dim": models["vit"].embed_dim, "repeats": repeats, "steps": steps,
              "threads": torch.get_num_threads(), "clock": clock}
    return {"config": config, "results": results, "ratios": ratios}


def format_report(out: dict[str, Any]) -> str:
    c = out["config"]
    lines = [f"backbone={c['backbone']} stage={c['stage']} img={c['img_size']} batch={c['batch_size']} "
             f"depth={c['depth']} dim={c['dim']} threads={c['threads']} clock={c['clock']} rounds={c['repeats']}x{c['steps']} steps (interleaved)",
             f"{'block':13s} {'GMACs':>7s} {'train img/s':>11s} {'infer img/s':>11s} {'train x':>8s} {'infer x':>8s} {'MACs x':>7s}"]
    for b, r in out["results"].items():
        q = out["ratios"][b]
        lines.append(f"{b:13s} {r['macs'] / 1e9:7.3f} {r['train_img_s']:11.1f} {r['infer_img_s']:11.1f} "
                     f"{q['train']:8.2f} {q['infer']:8.2f} {q['macs']:7.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tiny", choices=["tiny", "ir50"])
    p.add_argument("--stage", type=int, default=3, choices=[3, 4])
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=8, help="interleaved rounds over all variants")
    p.add_argument("--steps", type=int, default=1, help="steps per variant per round")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--clock", default="wall", choices=sorted(CLOCKS), help="wall time or process CPU time")
    p.add_argument("--blocks", default=",".join(BLOCKS))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = bench(a.backbone, a.stage, a.depth, a.img_size, a.batch_size, a.repeats, a.steps, a.blocks.split(","), a.clock)
    print(format_report(out))
    return out


if __name__ == "__main__":
    main()
