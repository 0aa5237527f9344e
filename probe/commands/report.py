"""`probe report --runs A,B --out artifacts/reports/<name>`: findings as Markdown + HTML, numbers from artifacts."""
from __future__ import annotations

import argparse

from train.runs import artifacts_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", required=True, help="comma-separated run names or folders")
    parser.add_argument("--out", default=None, help="report folder (default: <artifacts>/reports/<runs joined by _>)")
    parser.add_argument("--figures", default=None,
                        help="folder with 'probe figures' output to embed (default: <artifacts>/figures)")
    parser.add_argument("--render", action="store_true",
                        help="render the figures into <out>/figures first (runs 'probe figures')")
    parser.add_argument("--title", default="What CLS and patch tokens encode: findings")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probe.figures import render_figures, split_runs
    from probe.report import build_report, write_report

    runs = split_runs(args.runs)
    out = Path(args.out) if args.out else artifacts_root() / "reports" / "_".join(Path(r).name for r in runs)
    figures = Path(args.figures) if args.figures else None
    if args.render:
        figures = out / "figures"
        for r in render_figures(runs, figures):
            if r.skipped:
                print(f"  skip  {r.name}: {r.note}")
    report = build_report(runs, out, figures_dir=figures, title=args.title)
    paths = write_report(report, out)
    for kind, path in paths.items():
        print(f"  wrote {path}")
    for notes in report.facts["missing"].values():
        for note in notes:
            print(f"  note  {note}")
    return 0
