"""Grid × seeds sweeps of ``fit`` with a mean ± 95% t-interval summary per configuration.

    grid = parse_grid(["lr=1e-4,3e-4", "depth=2,4"])
    rows = run_sweep("ferlens_tiny_vit_s3", "synthfer:size=64,n=2000", grid, seeds=3)

Grid keys are TrainConfig fields (lr, weight_decay, ...) or model options (depth, embed_dim, ...).
Runs are ordinary run folders named ``<sweep>--<point>-s<seed>``; a point whose folder holds metrics.json of
the same config (``config_hash``) is reused, one with a state.pt is resumed, so an interrupted sweep picks up
where it stopped (keys left ``auto`` in the sweep's config, resolved by the engine, do not count). ``run_sweep`` fits in this process; ``launch_sweep`` submits one submitit job per missing
point (train/cluster.py: local executor or Slurm) and gathers the same rows from the run folders.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import field_types
from .errors import FerlensError

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "ece")


def parse_grid(tokens: list[str]) -> dict[str, list[Any]]:
    """``["lr=1e-4,3e-4", "depth=2,4"]`` (or ``["lr=1e-4,3e-4,depth=2,4"]``) → ``{"lr": [...], "depth": [...]}``."""
    grid: dict[str, list[Any]] = {}
    key = None
    for piece in ",".join(tokens).split(","):
        piece = piece.strip()
        if not piece:
            continue
        if "=" in piece:
            key, _, piece = piece.partition("=")
            key = key.strip().replace("-", "_")
            if key in grid:
                raise FerlensError(f"The grid names '{key}' twice; give each key once, e.g. --grid lr=1e-4,3e-4 depth=2,4.")
            grid[key] = []
        if key is None:
            raise FerlensError(f"Cannot read '{piece}' in --grid; write key=v1,v2 (e.g. --grid lr=1e-4,3e-4 depth=2,4).")
        grid[key].append(_scalar(piece))
    if not grid:
        raise FerlensError("--grid is empty; pass e.g. --grid lr=1e-4,3e-4 depth=2,4.")
    return grid


def _scalar(text: str) -> Any:
    """int, float (``1e-4`` too, which YAML 1.1 reads as a string), else a YAML scalar."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the grid, in key order."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def point_overrides(point: dict[str, Any]) -> list[str]:
    """CLI overrides for one grid point: config fields as ``--key v``, others as ``--model_kwargs.key v``."""
    fields = field_types()
    out: list[str] = []
    for key, value in point.items():
        out += [f"--{key}" if key in fields else f"--model_kwargs.{key}", str(value)]
    return out


def point_slug(point: dict[str, Any]) -> str:
    return "-".join(f"{k}{v}" for k, v in point.items())


def sweep_name(model: str, data: str, grid: dict[str, list[Any]]) -> str:
    from .data import parse_spec

    return f"{model}-{parse_spec(data).slug}-{'-'.join(grid)}"


@dataclass
class PointPlan:
    """One (grid point, seed) of a sweep: its fit tokens, run folder and config hash (picklable for submitit)."""
    point: dict[str, Any]
    seed: int
    tokens: list[str]             # fit overrides, --run_name included
    config_path: str | None
    run_dir: Path
    train: dict[str, Any]         # the resolved TrainConfig dict
    epochs: int

    @property
    def config_hash(self) -> str:
        return config_hash(self.train)

    @property
    def run(self) -> str:
        return self.run_dir.name

    @property
    def label(self) -> str:
        return f"{point_slug(self.point)} seed {self.seed}"

    def progress(self) -> str:
        """``epoch k/E`` from the run folder's history.csv (the sweep reads it while the job runs)."""
        history = self.run_dir / "history.csv"
        try:
            done = max(0, len(history.read_text().strip().splitlines()) - 1)
        except OSError:
            done = 0
        return f"epoch {done}/{self.epochs}"


def comparable(train: dict[str, Any], planned: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of a TrainConfig dict that decides a run's numbers: runtime-only keys (threads, device, resume ...)
    left out, and keys ``planned`` leaves to the engine (``"auto"``, e.g. amp, resolved at run time) too."""
    from .config import RUNTIME_FIELDS

    auto = {k for k, v in (planned or train).items() if v == "auto"}
    return {k: v for k, v in train.items() if k not in RUNTIME_FIELDS and k not in auto}


def config_hash(train: dict[str, Any], planned: dict[str, Any] | None = None) -> str:
    """12 hex digits over ``comparable(train, planned)``: the identity of a sweep point's config."""
    import hashlib
    import json

    kept = comparable(train, planned)
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def plan_sweep(model: str, data: str, grid: dict[str, list[Any]], seeds: int = 3, overrides: list[str] | None = None,
               config_path: str | None = None, name: str | None = None) -> list[PointPlan]:
    """Resolve every (point, seed) config first, so a bad key fails before anything runs. Order: points, then seeds."""
    from .config import resolve_config
    from .engine import run_dir_for

    if seeds < 1:
        raise FerlensError(f"--seeds must be at least 1, got {seeds}.")
    name = name or sweep_name(model, data, grid)
    base = list(overrides or []) + ["--model", model, "--data", data]
    plans = []
    for point in grid_points(grid):
        for seed in range(seeds):
            tokens = base + point_overrides(point) + ["--seed", str(seed),
                                                      "--run_name", f"{name}--{point_slug(point)}-s{seed}"]
            cfg = resolve_config(config_path, tokens)
            plans.append(PointPlan(point, seed, tokens, config_path, run_dir_for(cfg).absolute(), cfg.to_dict(),
                                   cfg.epochs))
    return plans


def point_state(plan: PointPlan) -> str:
    """``done`` (metrics.json, same config), ``resume`` (state.pt), ``restart`` (folder without a checkpoint)
    or ``new``; raises when the folder holds a run of a different config."""
    from .io import read_json

    run_dir = plan.run_dir
    if (run_dir / "config.json").is_file():
        saved = config_hash(read_json(run_dir / "config.json").get("train", {}), plan.train)
        if saved != plan.config_hash and ((run_dir / "metrics.json").is_file() or (run_dir / "state.pt").is_file()):
            raise FerlensError(f"The run folder {run_dir} holds a run of another config (hash {saved}, this sweep "
                               f"wants {plan.config_hash}); give the sweep a new --name, or delete that folder.")
    if (run_dir / "metrics.json").is_file():
        return "done"
    if (run_dir / "state.pt").is_file():
        return "resume"
    return "restart" if run_dir.exists() else "new"


def fit_point(plan: PointPlan) -> Path:
    """Fit one sweep point, resume it from its last checkpoint, or return it when finished."""
    from .config import resolve_config
    from .engine import fit

    state = point_state(plan)
    if state == "done":
        return plan.run_dir
    if state == "resume":
        cfg = resolve_config(None, ["--resume", str(plan.run_dir)])
    else:
        cfg = resolve_config(plan.config_path, plan.tokens + (["--overwrite"] if state == "restart" else []))
    return fit(cfg)


def point_row(plan: PointPlan) -> dict[str, Any]:
    """One runs.csv row, read from the finished run folder."""
    from .io import read_json

    m = read_json(plan.run_dir / "metrics.json")
    return {**plan.point, "seed": plan.seed, "run": plan.run, **{k: m[k] for k in METRICS}}


def run_sweep(model: str, data: str, grid: dict[str, list[Any]], seeds: int = 3, overrides: list[str] | None = None,
              config_path: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
    """Fit every grid point with seeds 0..seeds-1 in this process, one after another; one row per run.

    Args:
        model: model name.
        data: data spec.
        grid: ``{key: [values]}`` from ``parse_grid``.
        seeds: repeats per grid point.
        overrides: extra ``--key value`` tokens for every fit.
        config_path: YAML config / preset for every fit.
        name: sweep name (default ``<model>-<dataslug>-<keys>``).
    """
    plans = plan_sweep(model, data, grid, seeds, overrides, config_path, name)
    name = name or sweep_name(model, data, grid)
    for i, plan in enumerate(plans, 1):
        if point_state(plan) != "done":
            print(f"sweep {name}: run {i}/{len(plans)} {plan.label}")
            fit_point(plan)
    return [point_row(p) for p in plans]


def launch_sweep(plans: list[PointPlan], opts, sweep_dir: Path, name: str) -> list[dict[str, Any]]:
    """Submit the unfinished points as submitit jobs (``opts``: train.cluster.LaunchOptions), wait, and gather
    the rows from the run folders. Job folders (pickles, logs) go to ``sweep_dir/jobs/<job id>``;
    ``sweep_dir/jobs.json`` records which points were submitted as which jobs."""
    from .cluster import FitPoint, default_parallel, make_executor, run_jobs
    from .io import atomic_write_json, read_json
    from .runs import artifacts_root

    todo = [p for p in plans if point_state(p) != "done"]
    print(f"sweep {name}: {len(plans) - len(todo)}/{len(plans)} points finished, submitting {len(todo)} "
          f"through the {opts.launcher} launcher (logs in {sweep_dir / 'jobs'})", flush=True)
    if todo:
        from .config import resolve_config

        threads = resolve_config(todo[0].config_path, todo[0].tokens).threads
        executor = make_executor(opts, sweep_dir / "jobs", name)
        root = str(artifacts_root().absolute())
        outcomes = run_jobs(executor, [FitPoint(p, root) for p in todo], opts, default_parallel(opts, threads))
        record = read_json(sweep_dir / "jobs.json") if (sweep_dir / "jobs.json").is_file() else {"submissions": []}
        record["submissions"].append({"launcher": opts.launcher, "jobs": [
            {"run": o.task.plan.run, "config_hash": o.task.plan.config_hash, "job_id": o.job_id, "ok": o.ok,
             "error": o.error, "log": o.log} for o in outcomes]})
        atomic_write_json(sweep_dir / "jobs.json", record)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            first = failed[0]
            raise FerlensError(f"{len(failed)} of {len(todo)} sweep jobs failed (first: {first.task.label}, "
                               f"{first.error}; log {first.log}); fix the cause and run the same command again: "
                               "finished points are kept and only the missing ones are submitted.")
    return [point_row(p) for p in plans]


def summarize(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Mean and 95% t-interval across seeds for every grid point, best (highest mean accuracy) first."""
    from .metrics import t_interval

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for values, runs in groups.items():
        row: dict[str, Any] = dict(zip(keys, values))
        row["n_seeds"] = len(runs)
        for metric in METRICS:
            mean, lo, hi = t_interval([r[metric] for r in runs])
            row.update({f"{metric}_mean": mean, f"{metric}_lo": lo, f"{metric}_hi": hi})
        row["runs"] = [r["run"] for r in runs]
        out.append(row)
    return sorted(out, key=lambda r: -r["accuracy_mean"])


def accuracy_chart(summary: list[dict[str, Any]], keys: list[str]):
    """Altair chart: mean test accuracy (± 95% CI) vs lr, one line per value of the other grid key."""
    import altair as alt
    import pandas as pd

    df = pd.DataFrame([{k: v for k, v in r.items() if k != "runs"} for r in summary])
    others = [k for k in keys if k != "lr"]
    color = others[0] if others else None
    if color:
        df[color] = df[color].astype(str)
    x = alt.X("lr:Q", scale=alt.Scale(type="log"), title="learning rate")
    enc = {"color": alt.Color(f"{color}:N", title=color)} if color else {}
    line = alt.Chart(df).mark_line(point=True).encode(x=x, y=alt.Y("accuracy_mean:Q", title="test accuracy",
                                                                   scale=alt.Scale(zero=False)), **enc)
    band = alt.Chart(df).mark_errorbar().encode(x=x, y="accuracy_lo:Q", y2="accuracy_hi:Q", **enc)
    return (band + line).properties(title="accuracy vs lr (mean ± 95% CI over seeds)", width=360, height=240)


def write_summary(out_dir: Path, rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Write runs.csv, summary.csv, summary.json and (when lr is a grid key) accuracy_vs_lr.png."""
    import vl_convert as vlc

    from .io import atomic_write_bytes, atomic_write_csv, atomic_write_json

    summary = summarize(rows, keys)
    atomic_write_csv(out_dir / "runs.csv", rows)
    columns = keys + ["n_seeds"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "lo", "hi")] + ["runs"]
    atomic_write_csv(out_dir / "summary.csv", summary, columns)
    result = {"keys": keys, "rows": summary, "best": summary[0], "runs": rows}
    atomic_write_json(out_dir / "summary.json", result)
    if "lr" in keys:
        spec = accuracy_chart(summary, keys).to_json()
        atomic_write_bytes(out_dir / "accuracy_vs_lr.png", vlc.vegalite_to_png(spec, scale=2))
    return result
