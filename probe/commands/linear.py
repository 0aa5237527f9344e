"""`probe linear --run RUN[,RUN] --tokens cls,patch[,patch_max,stem,patch@r,c] [--targets expression,identity|all]
[--layers all|0,3,-1] [--cv 5] [--seeds 3] [--data SPEC] [--split test] [--engine torch|sklearn]
[--baseline random-init] [--group auto|identity|subject|none] [--control auto|identity|subject|kmeans|permutation]
[--probe linear|mlp] [--mdl] [--launcher serial|local|slurm --slurm.partition P ...]`: probes for every
(run, target, layer, readout), written to ``<run>/probes/linear.json`` + ``linear.csv`` (rows of another ``--probe`` family already there are kept);
prints one table per target (rows = layers, columns = readouts).

Folds are grouped by the dataset's identity/subject attribute by default (``--group auto``): no identity is
in a training and a test fold at once, in the outer and in the inner (penalty-choosing) splits. Probing
that attribute itself (``--targets identity``) needs the same identities on both sides, so it uses a
within-identity split (stratified folds); its rows say ``cv_scheme: within-group``.

With ``--launcher local|slurm`` every run is one submitit job (train/cluster.py); runs already probed with the
same options (``probes/linear.request.json``, per probe family) are skipped, so a re-run submits only the rest.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the options that decide a run's probe results (linear.request.json; a matching one is skipped by launchers)
REQUEST_KEYS = ("tokens", "targets", "layers", "cv", "seeds", "data", "split", "engine", "baseline", "group", "control",
                "probe", "mdl", "patch_tokens", "tol", "max_iter")


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
    from train.cluster import add_launcher_arguments

    add_launcher_arguments(parser, default="serial")


def run(args: argparse.Namespace) -> int:
    from probe.features import split_readouts
    from probe.linear import MAX_ITER, TOL
    from train.cluster import options_from_args
    from train.errors import FerlensError
    from train.runs import resolve_run

    readouts = split_readouts(args.tokens)
    if args.seeds < 1:
        raise FerlensError(f"--seeds {args.seeds} must be at least 1.")
    run_dirs = [resolve_run(r) for r in args.run.split(",") if r]   # every run is checked before anything is written
    request = {"tokens": readouts, "targets": args.targets, "layers": args.layers, "cv": args.cv,
               "seeds": args.seeds, "data": args.data, "split": args.split, "engine": args.engine,
               "baseline": args.baseline, "group": args.group, "control": args.control, "probe": args.probe,
               "mdl": args.mdl, "batch_size": args.batch_size,
               "patch_tokens": args.patch_tokens or any(r.startswith("patch@") for r in readouts),
               "tol": TOL, "max_iter": MAX_ITER}  # the solver's stopping rule: probes fitted to another are redone
    opts = options_from_args(args)
    if opts.launcher != "serial":
        return _launch(run_dirs, request, opts)
    results = [(run_dir, compute_probes(run_dir, request)) for run_dir in run_dirs]
    for run_dir, rows in results:  # write only once every run's probes are done
        write_probes(run_dir, rows, request)
        print(f"{run_dir.name}: {len(rows)} probes → {run_dir / 'probes' / 'linear.json'}")
        print(format_tables(rows))
    return 0


def _launch(runs: list[Path], request: dict[str, Any], opts) -> int:
    """One submitit job per run not yet probed with ``request``; then the tables, read from the run folders."""
    from train.cluster import default_parallel, make_executor, run_jobs
    from train.errors import FerlensError
    from train.io import read_json
    from train.runs import artifacts_root

    todo = [r for r in runs if not _probed(r, request)]
    folder = artifacts_root().absolute() / "probe-jobs"
    print(f"probe linear: {len(runs) - len(todo)}/{len(runs)} runs already probed with these options, submitting "
          f"{len(todo)} through the {opts.launcher} launcher (logs in {folder})", flush=True)
    if todo:
        executor = make_executor(opts, folder, "probe-linear")
        outcomes = run_jobs(executor, [ProbeRunJob(r.absolute(), request) for r in todo], opts,
                            default_parallel(opts, 1))
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise FerlensError(f"{len(failed)} of {len(todo)} probe jobs failed (first: {failed[0].task.label}, "
                               f"{failed[0].error}; log {failed[0].log}); fix the cause and run the same command "
                               "again: finished runs are skipped.")
    for run_dir in runs:
        rows = [r for r in read_json(run_dir / "probes" / "linear.json")
                if r.get("probe", "linear") == request["probe"]]
        print(f"{run_dir.name}: {len(rows)} probes → {run_dir / 'probes' / 'linear.json'}")
        print(format_tables(rows))
    return 0


def _request_key(request: dict[str, Any]) -> dict[str, Any]:
    return {k: request[k] for k in REQUEST_KEYS}


def _probed(run_dir: Path, request: dict[str, Any]) -> bool:
    from train.io import read_json

    done = run_dir / "probes" / "linear.request.json"
    return (run_dir / "probes" / "linear.json").is_file() and done.is_file() and \
        read_json(done).get(request["probe"]) == _request_key(request)


def compute_probes(run_dir: Path, request: dict[str, Any]) -> list[dict]:
    """Extract (or reuse) the run's features and fit every probe ``request`` asks for; returns the rows."""
    from probe.features import ensure_features, random_init_run
    from probe.linear import add_baseline, sweep

    extract = dict(batch_size=request["batch_size"], patch_tokens=request["patch_tokens"])
    fs = ensure_features(run_dir, request["data"], request["split"], **extract)
    opts = dict(targets=request["targets"], readouts=request["tokens"], layers=request["layers"], cv=request["cv"],
                seeds=request["seeds"], engine=request["engine"], group=request["group"], control=request["control"],
                probe=request["probe"], mdl=request["mdl"], tol=request["tol"], max_iter=request["max_iter"],
                on_skip=lambda note: print(f"probe linear: {note}", file=sys.stderr))
    rows = sweep(featureset=fs, run=run_dir.name, **opts)
    if request["baseline"] == "random-init":
        base = ensure_features(random_init_run(run_dir), request["data"] or fs.meta.get("data_spec"),
                               request["split"], **extract)
        rows = add_baseline(rows, sweep(featureset=base, run=run_dir.name, progress=False, **opts))
    return rows


def write_probes(run_dir: Path, rows: list[dict], request: dict[str, Any]) -> None:
    """Merge ``rows`` into probes/linear.{json,csv} (other probe families kept), then record ``request`` in
    linear.request.json (last, so it marks a complete result)."""
    from probe.linear import CSV_COLUMNS, flatten_row, merge_rows
    from train.io import atomic_write_csv, atomic_write_json, read_json

    out = run_dir / "probes"
    old = read_json(out / "linear.json") if (out / "linear.json").is_file() else []
    merged = merge_rows(old if isinstance(old, list) else old.get("rows", []), rows)
    atomic_write_json(out / "linear.json", merged)
    atomic_write_csv(out / "linear.csv", [flatten_row(r) for r in merged], CSV_COLUMNS)
    done = read_json(out / "linear.request.json") if (out / "linear.request.json").is_file() else {}
    atomic_write_json(out / "linear.request.json", {**done, request["probe"]: _request_key(request)})


@dataclass
class ProbeRunJob:
    """``compute_probes`` + ``write_probes`` for one run as a submitit job; requeued from the start on preemption
    (the extracted features stay cached in the run folder)."""
    run_dir: Path
    request: dict[str, Any]

    @property
    def label(self) -> str:
        return self.run_dir.name

    def __call__(self) -> int:
        rows = compute_probes(self.run_dir, self.request)
        write_probes(self.run_dir, rows, self.request)
        return len(rows)

    def checkpoint(self):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(ProbeRunJob(self.run_dir, self.request))

    def progress(self) -> str:
        return ""


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
