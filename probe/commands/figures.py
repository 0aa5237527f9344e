"""`probe figures --runs A,B --out artifacts/figures [--only 1,3]`: the paper figures (PDF/SVG/PNG + CSV)."""
from __future__ import annotations

import argparse

from train.runs import artifacts_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", required=True, help="comma-separated run names or folders, e.g. vit_run,cat_run")
    parser.add_argument("--out", default=None, help="output folder (default: <artifacts>/figures)")
    parser.add_argument("--only", default=None, help="figure numbers to render, e.g. 1,3 (default: all 8)")
    parser.add_argument("--formats", default="png,svg,pdf", help="subset of png,svg,pdf (default: all three)")


def run(args: argparse.Namespace) -> int:
    from probe.figures import FIGURES, parse_only, render_figures, split_runs

    out = args.out or str(artifacts_root() / "figures")
    only = parse_only(args.only)
    results = render_figures(split_runs(args.runs), out, only=only, formats=split_runs(args.formats))
    for r in results:
        if r.skipped:
            print(f"  skip  {r.name:24s} {r.note}")
        else:
            print(f"  wrote {r.name:24s} {', '.join(sorted(r.files))}  ({FIGURES[r.number].title})")
    done = sum(not r.skipped for r in results)
    print(f"{done}/{len(results)} figures in {out}")
    return 0
