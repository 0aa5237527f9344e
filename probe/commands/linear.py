"""`probe linear --run RUN[,RUN] --tokens cls,patch[,patch_max,stem,patch@r,c] [--targets expression,identity|all]
[--layers all|0,3,-1] [--cv 5] [--seeds 3] [--data SPEC] [--split test] [--engine torch|sklearn]
[--baseline random-init] [--group auto|identity|subject|none] [--control auto|identity|subject|kmeans|permutation]
[--probe linear|mlp] [--mdl]`: probes for every (run, target, layer, readout), written to
``<run>/probes/linear.json`` + ``linear.csv`` (rows of another ``--probe`` family already there are kept);
prints one table per target (rows = layers, columns = readouts).

Folds are grouped by the dataset's identity/subject attribute by default (``--group auto``): no identity is
in a training and a test fold at once, in the outer and in the inner (penalty-choosing) splits. Probing
that attribute itself (``--targets identity``) needs the same identities on both sides, so it uses a
within-identity split (stratified folds); its rows say ``cv_scheme: within-group``.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from probe.linear import CONTROL_KINDS, DEFAULT_ENGINE, ENGINES, PROBES

    parser.add_argument("--run", required=True, help="run name(s) under artifacts/runs, comma-separated")
    parser.add_argument("--tokens", default="cls,patch", help="readouts: cls, patch, patch_max, stem, patch@r,c")
    parser.add_argument("--targets", default="expression", help="expression, attr names, or 'all'")
    parser.add_argument("--layers", default="all", help="'all', indices (0 = tokens, -1 = last block) or hook names")
    parser.add_argument("--cv", type=int, default=5, help="outer CV folds (default: 5)")
    parser.add_argument("--seeds", type=int, default=3, help="CV seeds (default: 3)")
    parser.add_argument("--data", default=None, help="dataset spec (default: each run's data.spec)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=list(ENGINES), help=f"default: {DEFAULT_ENGINE}")
    parser.add_argument("--baseline", default=None, choices=["random-init"],
                        help="also probe an untrained (seed-initialised) copy of each architecture")
    parser.add_argument("--group", default="auto",
                        help="attribute the folds are grouped by: auto (identity/subject when present), an attr, none")
    parser.add_argument("--control", default="auto", choices=list(CONTROL_KINDS),
                        help="control task types (default auto: identity where it recurs across folds, else k-means "
                             "clusters of the stem features)")
    parser.add_argument("--probe", default="linear", choices=list(PROBES), help="probe family (default: linear)")
    parser.add_argument("--mdl", action="store_true", help="also the online code length (Voita & Titov 2020)")
    parser.add_argument("--batch-size", type=int, default=64, help="extraction batch size (default: 64)")
    parser.add_argument("--patch-tokens", action="store_true", help="extract all patch tokens (needed for patch@r,c)")


def run(args: argparse.Namespace) -> int:
    from probe.features import ensure_features, random_init_run, split_readouts
    from probe.linear import CSV_COLUMNS, add_baseline, flatten_row, merge_rows, sweep
    from train.errors import FerlensError
    from train.io import atomic_write_csv, atomic_write_json, read_json
    from train.runs import resolve_run

    runs = [r for r in args.run.split(",") if r]
    readouts = split_readouts(args.tokens)
    patch_tokens = args.patch_tokens or any(r.startswith("patch@") for r in readouts)
    if args.seeds < 1:
        raise FerlensError(f"--seeds {args.seeds} must be at least 1.")
    run_dirs = [resolve_run(name) for name in runs]   # every run is checked before anything is written
    results = []
    for run_dir in run_dirs:
        extract = dict(batch_size=args.batch_size, patch_tokens=patch_tokens)
        fs = ensure_features(run_dir, args.data, args.split, **extract)
        opts = dict(targets=args.targets, readouts=readouts, layers=args.layers, cv=args.cv, seeds=args.seeds,
                    engine=args.engine, group=args.group, control=args.control, probe=args.probe, mdl=args.mdl,
                    on_skip=lambda note: print(f"probe linear: {note}", file=sys.stderr))
        rows = sweep(featureset=fs, run=run_dir.name, **opts)
        if args.baseline == "random-init":
            base = ensure_features(random_init_run(run_dir), args.data or fs.meta.get("data_spec"), args.split,
                                   **extract)
            rows = add_baseline(rows, sweep(featureset=base, run=run_dir.name, progress=False, **opts))
        results.append((run_dir, rows))
    for run_dir, rows in results:  # write only once every run's probes are done
        out = run_dir / "probes"
        old = read_json(out / "linear.json") if (out / "linear.json").is_file() else []
        merged = merge_rows(old if isinstance(old, list) else old.get("rows", []), rows)
        atomic_write_json(out / "linear.json", merged)
        atomic_write_csv(out / "linear.csv", [flatten_row(r) for r in merged], CSV_COLUMNS)
        print(f"{run_dir.name}: {len(rows)} probes → {out / 'linear.json'}")
        print(format_tables(rows))
    return 0


def format_tables(rows: list[dict]) -> str:
    """One compact table per target: rows = layers, columns = readouts, cells = score [selectivity]."""
    lines = []
    for target in dict.fromkeys(r["target"] for r in rows):
        sub = [r for r in rows if r["target"] == target]
        metric = "r2" if sub[0]["kind"] == "continuous" else "accuracy"
        cols = list(dict.fromkeys(r["tokens"] for r in sub))
        layers = list(dict.fromkeys(r["layer"] for r in sorted(sub, key=lambda r: r["layer_index"])))
        cell = {(r["layer"], r["tokens"]): r for r in sub}
        extra = f", chance {sub[0]['chance']:.3f}" if metric == "accuracy" else ""
        how = f"{sub[0].get('probe', 'linear')} probe, folds {sub[0].get('cv_scheme', 'stratified')}" + (
            f" by {sub[0]['cv_groups']}" if sub[0].get("cv_groups") else "") + f", control {sub[0].get('control_kind')}"
        lines.append(f"\n{target} ({metric} [selectivity]{extra}; {how})")
        lines.append(f"{'layer':<14}" + "".join(f"{c:>20}" for c in cols))
        for layer in layers:
            vals = []
            for c in cols:
                r = cell.get((layer, c))
                code = f" C{r['compression']:.2f}" if r and r.get("compression") is not None else ""
                vals.append(f"{r['metric'][metric]:.3f} [{r['selectivity']:+.3f}]{code}" if r else "-")
            lines.append(f"{layer:<14}" + "".join(f"{v:>20}" for v in vals))
    return "\n".join(lines)
