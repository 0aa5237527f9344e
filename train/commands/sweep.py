"""``train sweep --model NAME --data SPEC --grid lr=1e-4,3e-4 depth=2,4 --seeds 3 [--launcher local|slurm|serial]
[--slurm.partition P --slurm.gpus_per_task 1 --slurm.timeout_min 240 ...] [--key value ...]``
→ one run folder per (point, seed), then artifacts/sweeps/<name>/summary.{csv,json} (mean ± 95% CI per config),
accuracy_vs_lr.png, jobs.json and jobs/<job id>/ (submitit logs)."""
from __future__ import annotations

import argparse

from ..cluster import add_launcher_arguments, options_from_args
from .fit import accept_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name (e.g. ferlens_tiny_vit_s3)")
    parser.add_argument("--data", required=True, help="data spec (e.g. synthfer:size=64,n=2000)")
    parser.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                        help="grid keys: TrainConfig fields (lr, weight_decay ...) or model options (depth ...)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..K-1 per grid point")
    parser.add_argument("-c", "--config", default=None, help="YAML config or preset for every fit")
    parser.add_argument("--name", default=None, help="sweep name (default <model>-<data>-<keys>)")
    add_launcher_arguments(parser, default="local")
    parser.epilog = ("Any other --key value is passed to every fit (e.g. --epochs 5). --launcher local runs the jobs "
                     "through submitit on this machine, slurm submits a job array; an interrupted sweep started "
                     "again submits only the missing points.")
    accept_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from ..runs import artifacts_root
    from ..sweep import launch_sweep, parse_grid, run_sweep, sweep_name, write_summary

    grid = parse_grid(args.grid)
    name = args.name or sweep_name(args.model, args.data, grid)
    out_dir = artifacts_root() / "sweeps" / name
    opts = options_from_args(args)
    if opts.launcher == "serial":
        rows = run_sweep(args.model, args.data, grid, args.seeds, args.overrides, args.config, name)
    else:
        from ..sweep import plan_sweep

        plans = plan_sweep(args.model, args.data, grid, args.seeds, args.overrides, args.config, name)
        rows = launch_sweep(plans, opts, out_dir, name)
    result = write_summary(out_dir, rows, list(grid))
    keys = list(grid)
    print(f"{'  '.join(keys)}  seeds  accuracy mean [95% CI]       macro-F1 mean [95% CI]")
    for r in result["rows"]:
        print("  ".join(str(r[k]) for k in keys) +
              f"  {r['n_seeds']}  {r['accuracy_mean']:.4f} [{r['accuracy_lo']:.4f}, {r['accuracy_hi']:.4f}]"
              f"  {r['macro_f1_mean']:.4f} [{r['macro_f1_lo']:.4f}, {r['macro_f1_hi']:.4f}]")
    best = result["best"]
    print("best: " + ", ".join(f"{k}={best[k]}" for k in keys) + f" (accuracy {best['accuracy_mean']:.4f})")
    print(f"wrote {out_dir}")
    return 0
