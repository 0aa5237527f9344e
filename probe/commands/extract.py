"""`probe extract --run RUN [--data SPEC] [--split test] [--batch-size 64] [--patch-tokens] [--force]`:
cache every layer's CLS / patch / stem readouts in ``<run>/features/<data>-<split>/``.

Under ``torchrun --nproc_per_node N -m probe extract --runs RUN ...`` the ranks split the samples and
rank 0 finalizes the folder (spell the option ``--runs`` there: torchrun reads ``--run`` as its own
``--run-path``).
"""
from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # "--runs" is an alias because torchrun's own parser takes "--run" for an abbreviation of its "--run-path"
    parser.add_argument("--run", "--runs", dest="run", required=True,
                        help="run name under artifacts/runs or a run folder (comma list ok); under torchrun use --runs")
    parser.add_argument("--data", default=None, help="dataset spec (default: the run's data.spec)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward (default: 64)")
    parser.add_argument("--patch-tokens", action="store_true", help="also store all patch tokens (float16)")
    parser.add_argument("--force", action="store_true", help="re-extract even when the cache is up to date")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def run(args: argparse.Namespace) -> int:
    from probe.features import extract_to_disk, open_folder
    from train.errors import FerlensError

    if args.batch_size < 1:
        raise FerlensError(f"--batch-size {args.batch_size} must be at least 1.")
    from train.runs import resolve_run

    names = [r for r in args.run.split(",") if r]
    for name in names:   # every run is checked before anything is extracted
        resolve_run(name)
    for name in names:
        folder = extract_to_disk(name, args.data, args.split, batch_size=args.batch_size,
                                 patch_tokens=args.patch_tokens, force=args.force, device=args.device)
        if (folder / "index.json").is_file() and os.environ.get("RANK", "0") == "0":
            fs = open_folder(folder)
            print(f"{name}: {fs.n} samples × {len(fs.layers)} layers ({', '.join(fs.readout_names())}) → {folder}")
    return 0
