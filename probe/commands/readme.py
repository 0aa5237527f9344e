"""`probe readme --facts artifacts/reports/demo/facts.json [--readme README.md] [--timings FILE] [--check]`:
rewrite README.md's generated blocks (``<!-- BEGIN generated:NAME -->`` … ``<!-- END generated:NAME -->``)
from the demo's facts, so every number in them comes from the artifacts."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--facts", default=None,
                        help="facts.json written by probe report (default: artifacts/reports/demo/facts.json)")
    parser.add_argument("--readme", default="README.md", help="the README to rewrite (default: README.md)")
    parser.add_argument("--timings", default=None,
                        help="demo timings (default: artifacts/demo_timings.json when it exists)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a block is out of date (blocks must be well-formed)")


def run(args: argparse.Namespace) -> int:
    from probe.readme import rewrite
    from train.errors import FerlensError
    from train.io import atomic_write_text, read_json
    from train.runs import artifacts_root

    facts_path = Path(args.facts) if args.facts else artifacts_root() / "reports" / "demo" / "facts.json"
    if not facts_path.is_file():
        raise FerlensError(f"{facts_path} is missing; run 'make demo' (or 'probe report --runs A,B --out DIR') first.")
    readme = Path(args.readme)
    if not readme.is_file():
        raise FerlensError(f"{readme} does not exist; pass the README with --readme PATH.")
    timings_path = Path(args.timings) if args.timings else artifacts_root() / "demo_timings.json"
    timings = read_json(timings_path) if timings_path.is_file() else None
    text = readme.read_text(encoding="utf-8")
    new = rewrite(text, read_json(facts_path), timings)
    if args.check:
        if new != text:
            print(f"{readme} is out of date with {facts_path}; run 'probe readme --facts {facts_path}'.")
            return 1
        print(f"{readme} is up to date with {facts_path}.")
        return 0
    atomic_write_text(readme, new)
    print(f"rewrote the generated blocks of {readme} from {facts_path}")
    return 0
