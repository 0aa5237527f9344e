"""``train eval --run RUN [--data SPEC] [--split test]`` → metrics.json (or metrics-<data>-<split>.json)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder or run name under artifacts/runs")
    parser.add_argument("--data", default=None, help="data spec (default: the run's own data)")
    parser.add_argument("--split", default="test", help="train, val or test (default test)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% CIs")


def run(args: argparse.Namespace) -> int:
    from ..engine import evaluate_run
    from ..io import atomic_write_json

    metrics, path = evaluate_run(args.run, args.data, args.split, args.batch_size, args.workers, args.bootstrap)
    atomic_write_json(path, metrics)
    print(summary(metrics))
    print(f"wrote {path}")
    return 0


def summary(m: dict) -> str:
    """A short printable table of one metrics dict."""
    lo, hi = m["ci95"]["accuracy"]
    flo, fhi = m["ci95"]["macro_f1"]
    auroc = "n/a" if m["auroc"] is None else f"{m['auroc']:.4f}"
    lines = [f"{m['data']} [{m['split']}] n={m['n']}",
             f"  accuracy          {m['accuracy']:.4f}  (95% CI {lo:.4f}–{hi:.4f})",
             f"  balanced accuracy {m['balanced_accuracy']:.4f}",
             f"  macro-F1          {m['macro_f1']:.4f}  (95% CI {flo:.4f}–{fhi:.4f})",
             f"  AUROC (OvR)       {auroc}",
             f"  ECE               {m['ece']:.4f}",
             "  class        precision  recall  f1     support"]
    for name, c in m["per_class"].items():
        lines.append(f"  {name:<12} {c['precision']:.3f}      {c['recall']:.3f}   {c['f1']:.3f}  {c['support']}")
    return "\n".join(lines)
