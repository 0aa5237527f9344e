"""Grid × seeds sweeps of ``fit`` with a mean ± 95% t-interval summary per configuration.

    grid = parse_grid(["lr=1e-4,3e-4", "depth=2,4"])
    rows = run_sweep("ferlens_tiny_vit_s3", "synthfer:size=64,n=2000", grid, seeds=3)

Grid keys are TrainConfig fields (lr, weight_decay, ...) or model options (depth, embed_dim, ...).
Runs are ordinary run folders named ``<sweep>--<point>-s<seed>``; finished ones are reused, so an
interrupted sweep picks up where it stopped.
"""
from __future__ import annotations

import itertools
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


def run_sweep(model: str, data: str, grid: dict[str, list[Any]], seeds: int = 3, overrides: list[str] | None = None,
              config_path: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
    """Fit every grid point with seeds 0..seeds-1 (sequentially); returns one row per run.

    Args:
        model: model name.
        data: data spec.
        grid: ``{key: [values]}`` from ``parse_grid``.
        seeds: repeats per grid point.
        overrides: extra ``--key value`` tokens for every fit.
        config_path: YAML config / preset for every fit.
        name: sweep name (default ``<model>-<dataslug>-<keys>``).
    """
    from .config import resolve_config
    from .engine import fit, run_dir_for
    from .io import read_json

    if seeds < 1:
        raise FerlensError(f"--seeds must be at least 1, got {seeds}.")
    name = name or sweep_name(model, data, grid)
    points = grid_points(grid)
    base = list(overrides or []) + ["--model", model, "--data", data]
    # resolve every config first, so a bad key fails before the first fit
    plans = []
    for point in points:
        for seed in range(seeds):
            tokens = base + point_overrides(point) + ["--seed", str(seed),
                                                      "--run_name", f"{name}--{point_slug(point)}-s{seed}"]
            plans.append((point, seed, tokens, resolve_config(config_path, tokens)))
    rows = []
    for i, (point, seed, tokens, cfg) in enumerate(plans, 1):
        run_dir = run_dir_for(cfg)
        if not (run_dir / "metrics.json").is_file():
            if (run_dir / "state.pt").is_file():
                cfg = resolve_config(None, ["--resume", str(run_dir)])
            elif run_dir.exists():
                cfg = resolve_config(config_path, tokens + ["--overwrite"])
            print(f"sweep {name}: run {i}/{len(plans)} {point_slug(point)} seed {seed}")
            run_dir = fit(cfg)
        m = read_json(run_dir / "metrics.json")
        rows.append({**point, "seed": seed, "run": run_dir.name, **{k: m[k] for k in METRICS}})
    return rows


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
