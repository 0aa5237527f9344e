"""The paper's nine figures, drawn from run artifacts (docs/contracts.md) in one style.

Each figure is a table entry: a loader that turns run folders into one tidy DataFrame (written next to
the figure as CSV, so every drawn number can be checked) and a chart function over that frame. A
figure whose artifacts are missing is skipped with a note naming the command that produces them.

    results = render_figures(["vit_run", "cat_run"], "artifacts/figures", only=[1, 3])

Figure 5 (the attribution grid) is the one figure computed live: it loads each run's model and one
test face per class and calls ``probe.explain`` for rollout, CLS attention, Grad-CAM and IG; the maps
are saved next to the figure (``fig5_attribution_grid.npz``) with the CSV of per-cell summaries.
"""
from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import altair as alt
import numpy as np
import pandas as pd

from train.errors import FerlensError
from train.labels import CANONICAL8
from train.io import atomic_write_csv, atomic_write_json, read_json
from train.runs import resolve_run

from .plotting import FORMATS, FULL_WIDTH, PNG_SCALE, color_scale, expression_scale, save_chart, token_scale

ATTRIBUTION_METHODS: tuple[str, ...] = ("rollout", "cls_attention", "gradcam", "ig")
METHOD_TITLES = {"rollout": "rollout", "cls_attention": "CLS attn", "gradcam": "Grad-CAM", "ig": "IG",
                 "grad_rollout": "grad. rollout", "saliency": "saliency"}
CLS_INTERVENTIONS: tuple[str, ...] = ("mean", "shuffle", "zero")
# figure 6 panels: the CLS replacements, then the most-read patch token against its random-patch control
INTERVENTION_PANELS: tuple[str, ...] = CLS_INTERVENTIONS + ("top_attended_patch", "random_patch")
PANEL_TITLES = {"mean": "CLS ← train mean", "shuffle": "CLS ← other face", "zero": "CLS ← 0",
                "top_attended_patch": "most-read patch ← mean", "random_patch": "random patch ← mean"}
TOKEN_TITLES = {"cls": "CLS", "patch": "patch (mean)", "patch_max": "patch (max)", "stem": "CNN stem"}


class MissingArtifacts(FerlensError):
    """A figure's inputs are not there; ``command`` is what produces them."""

    def __init__(self, what: str, command: str):
        super().__init__(f"{what} is missing; produce it with '{command}'.")
        self.what = what
        self.command = command


# --------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunInfo:
    """One run folder and the short label its variant gets in legends."""

    name: str
    path: Path
    config: dict[str, Any]
    label: str

    def file(self, rel: str) -> Path:
        return self.path / rel


_MODEL_RE = re.compile(r"^ferlens_(?P<backbone>[a-z0-9]+)_(?P<block>[a-z]+)_s(?P<stage>\d)")


def variant_of(config: dict[str, Any]) -> str:
    """The token-block variant of a run (``vit``, ``cataftermlp``...) or its model name."""
    name = str(config.get("model", {}).get("name", ""))
    match = _MODEL_RE.match(name)
    return match.group("block") if match else (name or "model")


def load_runs(runs: Sequence[str | Path]) -> list[RunInfo]:
    """Resolve run names/paths; labels are variant names, or run names when variants repeat."""
    if not runs:
        raise FerlensError("No runs given; pass --runs A,B with run names under artifacts/runs.")
    paths = [resolve_run(r) for r in runs]
    configs = [read_json(p / "config.json") for p in paths]
    variants = [variant_of(c) for c in configs]
    unique = len(set(variants)) == len(variants)
    return [RunInfo(p.name, p, c, v if unique else p.name) for p, c, v in zip(paths, configs, variants)]


def split_runs(text: str) -> list[str]:
    """``"a,b"`` → ``["a", "b"]`` (blank items dropped)."""
    return [t.strip() for t in str(text).split(",") if t.strip()]


CLASS_BLOCK_OFFSET = 1000


def layer_position(layer: Any) -> int:
    """Depth position of a hook name: ``tokens`` 0, ``blocks.i`` i+1, ``stem.*`` -1; ints pass through.

    CaiT's class-attention blocks ``blocks_token_only.j`` come after every patch block: 1001 + j (an order
    key; the name alone does not tell the patch depth)."""
    if isinstance(layer, (int, np.integer)):
        return int(layer)
    text = str(layer)
    if text.lstrip("-").isdigit():
        return int(text)
    if text == "tokens":
        return 0
    match = re.match(r"^blocks\.(\d+)", text)
    if match:
        return int(match.group(1)) + 1
    match = re.match(r"^blocks_token_only\.(\d+)", text)
    if match:
        return CLASS_BLOCK_OFFSET + int(match.group(1)) + 1
    if text.startswith("stem"):
        return -1
    if text == "pre_logits":
        return 10_000
    raise FerlensError(f"Unknown layer name '{layer}' in an artifact; expected 'tokens', 'blocks.N' or 'stem.stageK'.")


def layer_short(layer: Any) -> str:
    """Compact tick label: ``tokens`` → ``emb``, ``blocks.3`` → ``b3``, ``stem.stage3`` → ``stem``."""
    text = str(layer)
    if text == "tokens":
        return "emb"
    match = re.match(r"^blocks\.(\d+)$", text)
    if match:
        return f"b{match.group(1)}"
    match = re.match(r"^blocks_token_only\.(\d+)$", text)
    if match:
        return f"c{match.group(1)}"
    return "stem" if text.startswith("stem") else text


# --------------------------------------------------------------------------------------- loaders


def _run_order(df: pd.DataFrame, runs: Sequence[RunInfo], *keys: str) -> pd.DataFrame:
    """Sort rows by the order the runs were given, then by ``keys`` (stable)."""
    order = {r.name: i for i, r in enumerate(runs)}
    df = df.assign(_order=df["run"].map(order)).sort_values(["_order", *keys], kind="stable")
    return df.drop(columns="_order").reset_index(drop=True)


def _need(run: RunInfo, rel: str, command: str) -> Path:
    path = run.file(rel)
    if not path.is_file():
        raise MissingArtifacts(f"{run.name}/{rel}", command)
    return path


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise FerlensError(f"{path} is not a readable CSV ({e}); re-run the command that wrote it.") from None


def probe_rows(run: RunInfo, probe: str | None = "linear") -> list[dict[str, Any]]:
    """The rows of ``probes/linear.json`` (a list, or ``{"rows": [...]}``) of one probe family
    (``linear`` by default, rows without a ``probe`` field count as linear; None: every family)."""
    data = read_json(_need(run, "probes/linear.json", f"probe linear --run {run.name} --tokens cls,patch --targets all"))
    rows = data.get("rows", []) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise FerlensError(f"{run.file('probes/linear.json')} holds no list of probe rows; re-run 'probe linear'.")
    return rows if probe is None else [r for r in rows if r.get("probe", "linear") == probe]


def _metric(row: dict[str, Any], name: str) -> tuple[float, float, float]:
    value = row.get("metric", {}).get(name)
    ci = row.get("ci95", {}).get(name) or [np.nan, np.nan]
    return (float(value) if value is not None else np.nan, float(ci[0]), float(ci[1]))


def probe_table(runs: Sequence[RunInfo], probe: str | None = "linear") -> pd.DataFrame:
    """All probe rows of all runs as one frame (accuracy or R² with CI, selectivity, chance), of one probe
    family (``linear`` by default; None: all)."""
    records = []
    for run in runs:
        for row in probe_rows(run, probe):
            metric = "accuracy" if "accuracy" in row.get("metric", {}) else "r2"
            value, lo, hi = _metric(row, metric)
            sel = row.get("selectivity")
            records.append({
                "variant": run.label, "run": run.name, "target": row.get("target"),
                "tokens": row.get("tokens"), "layer": str(row.get("layer")),
                "layer_index": int(row.get("layer_index", layer_position(row.get("layer")))),
                "kind": row.get("kind", "categorical" if metric == "accuracy" else "continuous"),
                "metric": metric, "value": value, "lo": lo, "hi": hi,
                "macro_f1": _metric(row, "macro_f1")[0],
                "control_accuracy": row.get("control_accuracy"),
                "selectivity": float(sel) if sel is not None else np.nan,
                "chance": float(row["chance"]) if row.get("chance") is not None else np.nan,
                "random_init_accuracy": row.get("random_init_accuracy"),
                "n_test": row.get("n_test"), "dim": row.get("dim"),
                "probe": row.get("probe", "linear"), "n_seeds": row.get("n_seeds"),
                "cv_scheme": row.get("cv_scheme", "stratified"), "cv_groups": row.get("cv_groups"),
                "control_kind": row.get("control_kind", "permutation"), "compression": row.get("compression"),
            })
    return pd.DataFrame.from_records(records)


def probe_accuracy_data(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """Figure 1 data: expression accuracy per layer for the CLS and patch readouts."""
    df = probe_table(runs)
    df = df[(df.target == "expression") & df.tokens.isin(["cls", "patch"]) & (df.layer_index >= 0)
            & (df.metric == "accuracy")]
    if df.empty:
        raise MissingArtifacts("expression probes for the cls and patch readouts",
                               f"probe linear --run {','.join(r.name for r in runs)} --tokens cls,patch --targets expression")
    cols = ["variant", "run", "tokens", "layer", "layer_index", "value", "lo", "hi", "chance", "selectivity"]
    df = df[cols].rename(columns={"value": "accuracy", "lo": "accuracy_lo", "hi": "accuracy_hi"})
    return _run_order(df, runs, "tokens", "layer_index")


def selectivity_data(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """Figure 2 data: selectivity (accuracy − control accuracy) per target × layer × readout."""
    df = probe_table(runs)
    df = df[df.tokens.isin(["cls", "patch"]) & (df.layer_index >= 0) & df.selectivity.notna()
            & (df.metric == "accuracy")]  # R² selectivities of continuous targets are in other units
    if df.empty:
        raise MissingArtifacts("probe selectivities (categorical targets)",
                               f"probe linear --run {','.join(r.name for r in runs)} --tokens cls,patch --targets all")
    cols = ["variant", "run", "tokens", "target", "layer", "layer_index", "selectivity", "value", "control_accuracy"]
    return _run_order(df[cols].rename(columns={"value": "accuracy"}), runs, "tokens", "target", "layer_index")


def cka_data(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """Figure 3 data: every CKA matrix of every run as tidy cells (cross-run matrices once)."""
    records, seen = [], set()
    for run in runs:
        data = read_json(_need(run, "probes/cka.json", f"probe cka --run {run.name}"))
        for matrix in data.get("matrices", []):
            name = matrix["name"]
            cross = "_vs_" in name and not name.startswith(("cls_vs", "patch_vs"))
            key = name if cross else (run.name, name)
            if key in seen:
                continue
            seen.add(key)
            values = np.asarray(matrix["values"], dtype=float)  # (len(y_labels), len(x_labels))
            for i, ylab in enumerate(matrix["y_labels"]):
                for j, xlab in enumerate(matrix["x_labels"]):
                    records.append({"variant": "runs" if cross else run.label, "run": run.name,
                                    "matrix": name, "x": str(xlab), "y": str(ylab),
                                    "x_order": j, "y_order": i, "value": float(values[i, j])})
    if not records:
        raise MissingArtifacts("CKA matrices", f"probe cka --run {','.join(r.name for r in runs)}")
    df = pd.DataFrame.from_records(records)
    return df.assign(_cross=df.variant.eq("runs")).sort_values("_cross", kind="stable").drop(columns="_cross")


def umap_data(runs: Sequence[RunInfo], max_points: int = 1500) -> pd.DataFrame:
    """Figure 4 data: 2-D embeddings at the first, middle and last layer, CLS and patch.

    UMAP rows are used when present, PCA otherwise; at most ``max_points`` samples per panel (the
    same sample ids in every panel, chosen deterministically).
    """
    frames = []
    for run in runs:
        df = _read_csv(_need(run, "probes/umap.csv", f"probe umap --run {run.name} --tokens cls,patch"))
        method = "umap" if (df["method"] == "umap").any() else "pca"
        df = df[(df["method"] == method) & df["tokens"].isin(["cls", "patch"])].copy()
        if df.empty:
            continue
        df["layer_index"] = [layer_position(v) for v in df["layer"]]
        layers = sorted(set(df.loc[df.layer_index >= 0, "layer_index"]))
        if not layers:
            continue
        picks = {"early": layers[0], "middle": layers[len(layers) // 2], "last": layers[-1]}
        ids = sorted(set(df["sample_id"].astype(str)))
        keep = set(ids if len(ids) <= max_points else
                   [ids[i] for i in np.linspace(0, len(ids) - 1, max_points).round().astype(int)])
        for stage, index in picks.items():
            part = df[(df.layer_index == index) & df["sample_id"].astype(str).isin(keep)].copy()
            part["stage"] = stage
            part["variant"] = run.label
            part["run"] = run.name
            part["method"] = method
            frames.append(part)
    if not frames:
        raise MissingArtifacts("UMAP/PCA embeddings", f"probe umap --run {','.join(r.name for r in runs)} --tokens cls,patch")
    out = pd.concat(frames, ignore_index=True)
    out["row"] = out["variant"] + " · " + out["tokens"].map(lambda t: TOKEN_TITLES.get(t, t))
    shorts = out.groupby("stage")["layer"].agg(lambda v: "/".join(sorted({layer_short(x) for x in v})))
    out["panel"] = [f"{st} layer ({shorts[st]})" for st in out["stage"]]
    out["expression"] = out["expression"].astype(str)
    cols = ["variant", "run", "tokens", "row", "stage", "panel", "layer", "layer_index", "method",
            "sample_id", "x", "y", "expression"]
    return out[cols].reset_index(drop=True)


def intervention_data(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """Figure 6 data: accuracy after replacing the CLS token (mean/shuffle/zero) at each layer."""
    frames = []
    for run in runs:
        df = _read_csv(_need(run, "explain/interventions.csv", f"probe intervene --run {run.name}"))
        df = df[df["mode"].isin(INTERVENTION_PANELS)].copy()
        df["panel"] = [PANEL_TITLES[m] for m in df["mode"]]
        df["collapsed"] = (df["collapsed"].astype(str).str.lower() == "true") if "collapsed" in df else False
        df["layer_index"] = [layer_position(v) for v in df["layer"]]
        df["baseline_accuracy"] = df["accuracy"] - df["delta_accuracy"]
        df["variant"] = run.label
        df["run"] = run.name
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if out.empty:
        raise MissingArtifacts("CLS interventions", f"probe intervene --run {','.join(r.name for r in runs)}")
    cols = ["variant", "run", "mode", "panel", "layer", "layer_index", "accuracy", "delta_accuracy",
            "baseline_accuracy", "mean_logit_change", "collapsed", "n"]
    return _run_order(out[cols], runs, "mode", "layer_index")


def profile_data(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """Figure 7 data: throughput per batch size with params and MACs of each run."""
    records = []
    for run in runs:
        prof = read_json(_need(run, "profile.json", f"train profile --run {run.name}"))
        for row in prof.get("rows", []):
            records.append({"variant": run.label, "run": run.name, "model": prof.get("model"),
                            "img_size": prof.get("img_size"), "device": prof.get("device"),
                            "params": prof.get("params"), "macs": prof.get("macs"),
                            "flops": prof.get("flops"), "batch_size": int(row["batch_size"]),
                            "throughput": float(row["throughput"]),
                            "latency_ms": row.get("latency_ms"), "peak_mem_mb": row.get("peak_mem_mb")})
    if not records:
        raise MissingArtifacts("profiles", f"train profile --run {','.join(r.name for r in runs)}")
    return _run_order(pd.DataFrame.from_records(records), runs, "batch_size")


def history_data(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """Figure 8 data: per-epoch losses and validation accuracy, long format."""
    frames = []
    for run in runs:
        df = _read_csv(_need(run, "history.csv", f"train fit --model {run.config.get('model', {}).get('name', 'NAME')} "
                                                  f"--data {run.config.get('data', {}).get('spec', 'SPEC')}"))
        # One row per epoch: the last logged step of each epoch.
        df = df.sort_values(["epoch", "step"]).groupby("epoch", as_index=False).last()
        long = df.melt(id_vars=["epoch"], value_vars=["train_loss", "val_loss", "val_acc"],
                       var_name="series", value_name="value").dropna(subset=["value"])
        long["panel"] = np.where(long["series"] == "val_acc", "validation accuracy", "loss")
        long["split"] = long["series"].map({"train_loss": "train", "val_loss": "val", "val_acc": "val"})
        long["variant"] = run.label
        long["run"] = run.name
        frames.append(long)
    out = pd.concat(frames, ignore_index=True)
    return out[["variant", "run", "epoch", "series", "panel", "split", "value"]]


# --------------------------------------------------------------------------------------- charts


def _facet_width(n: int, total: int = FULL_WIDTH, chrome: int = 110, cap: int = 210) -> int:
    return int(max(90, min(cap, (total - chrome) / max(n, 1) - 10)))


def chart_probe_accuracy(df: pd.DataFrame) -> alt.TopLevelMixin:
    """Accuracy vs layer, CLS vs patch, one panel per variant, CI bands and chance line."""
    tokens = [t for t in ("cls", "patch") if t in set(df.tokens)]
    color = alt.Color("tokens:N", scale=token_scale(tokens), title="readout",
                      legend=alt.Legend(labelExpr="datum.label == 'cls' ? 'CLS' : 'patch (mean)'",
                                        symbolType="stroke", symbolOpacity=1, symbolStrokeWidth=2))
    x = alt.X("layer_index:Q", title="layer (0 = token embedding, i = after block i)",
              axis=alt.Axis(tickMinStep=1, format="d"), scale=alt.Scale(nice=False))
    base = alt.Chart(df)
    band = base.mark_area(opacity=0.22).encode(x=x, y=alt.Y("accuracy_lo:Q"), y2="accuracy_hi:Q", color=color)
    line = base.mark_line(point=True).encode(
        x=x, y=alt.Y("accuracy:Q", title="expression probe accuracy", scale=alt.Scale(domain=[0, 1])),
        color=color)
    chance = base.mark_rule(strokeDash=[4, 3], color="#555555", strokeWidth=1).encode(y="mean(chance):Q")
    width = _facet_width(df.variant.nunique())
    return (alt.layer(band, line, chance).properties(width=width, height=int(width * 0.75))
            .facet(column=alt.Column("variant:N", title=None, sort=list(dict.fromkeys(df.variant)),
                                     header=alt.Header(labelFontWeight="bold")))
            .properties(title=alt.TitleParams("Expression probe accuracy by layer",
                                              subtitle="linear probe accuracy, 95% CI; dashed: chance")))


def chart_selectivity(df: pd.DataFrame) -> alt.TopLevelMixin:
    """Target × layer heatmap of selectivity, rows = readout, columns = variant."""
    lim = float(max(0.05, np.nanmax(np.abs(df.selectivity.to_numpy()))))
    n_layers = df.layer_index.nunique()
    n_variants = df.variant.nunique()
    step = int(max(10, min(22, (FULL_WIDTH - 160) / max(1, n_layers * n_variants))))
    base = alt.Chart(df).encode(
        x=alt.X("layer_index:O", title="layer", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("target:N", title=None, sort=alt.EncodingSortField("target")))
    rect = base.mark_rect().encode(
        color=alt.Color("selectivity:Q", title="selectivity",
                        scale=alt.Scale(scheme="blueorange", domain=[-lim, lim], domainMid=0)))
    text = base.mark_text(fontSize=6).encode(
        text=alt.Text("selectivity:Q", format=".2f"),
        color=alt.condition(f"abs(datum.selectivity) > {lim * 0.6:.4f}", alt.value("white"), alt.value("#111111")))
    layers = [rect, text] if step >= 16 else [rect]
    return (alt.layer(*layers).properties(width=alt.Step(step), height=alt.Step(step))
            .facet(row=alt.Row("tokens:N", title=None, header=alt.Header(
                       labelExpr="datum.value == 'cls' ? 'CLS' : 'patch'", labelFontWeight="bold")),
                   column=alt.Column("variant:N", title=None, sort=list(dict.fromkeys(df.variant)),
                                     header=alt.Header(labelFontWeight="bold")))
            .properties(title=alt.TitleParams("What each token type keeps",
                                              subtitle="selectivity = probe accuracy − control-task accuracy")))


def chart_cka(df: pd.DataFrame) -> alt.TopLevelMixin:
    """One CKA heatmap per (variant, matrix), a row per variant."""
    rows = []
    for variant in dict.fromkeys(df.variant):
        panels = []
        for name in dict.fromkeys(df[df.variant == variant].matrix):
            part = df[(df.variant == variant) & (df.matrix == name)].copy()
            part["x_short"] = part["x"].map(layer_short)
            part["y_short"] = part["y"].map(layer_short)
            xs = list(part.sort_values("x_order")["x_short"].drop_duplicates())
            ys = list(part.sort_values("y_order")["y_short"].drop_duplicates())
            step = int(max(8, min(18, 150 / max(len(xs), len(ys)))))
            panels.append(alt.Chart(part).mark_rect().encode(
                x=alt.X("x_short:N", sort=xs, title=None, axis=alt.Axis(labelAngle=-90 if len(xs) > 6 else 0)),
                y=alt.Y("y_short:N", sort=ys, title=None),
                color=alt.Color("value:Q", title="linear CKA", scale=alt.Scale(scheme="viridis", domain=[0, 1])),
            ).properties(width=alt.Step(step), height=alt.Step(step),
                         title=alt.TitleParams(f"{variant}: {name.replace('_', ' ')}", fontSize=8,
                                               fontWeight="normal")))
        rows.append(alt.hconcat(*panels))
    return alt.vconcat(*rows).properties(title="Representational similarity (linear CKA)")


def chart_umap(df: pd.DataFrame) -> alt.TopLevelMixin:
    """Scatter panels: rows = variant × readout, columns = early/middle/last layer."""
    present = set(df.expression.astype(str))
    labels = [n for n in CANONICAL8 if n in present] + sorted(present - set(CANONICAL8))
    cell = int(max(70, min(120, (FULL_WIDTH - 200) / 3)))
    panels = list(dict.fromkeys(df.sort_values("layer_index").panel))
    method = str(df.method.iloc[0]).upper()
    return (alt.Chart(df).mark_circle(size=5, opacity=0.75).encode(
                x=alt.X("x:Q", axis=None, scale=alt.Scale(zero=False)),
                y=alt.Y("y:Q", axis=None, scale=alt.Scale(zero=False)),
                color=alt.Color("expression:N", scale=expression_scale(labels), sort=labels, title="expression"))
            .properties(width=cell, height=cell)
            .facet(row=alt.Row("row:N", title=None, sort=list(dict.fromkeys(df.row)),
                               header=alt.Header(labelAngle=0, labelAlign="left")),
                   column=alt.Column("panel:N", title=None, sort=panels))
            .resolve_scale(x="independent", y="independent")
            .properties(title=alt.TitleParams(f"{method} of the readouts", subtitle="coloured by expression")))


def chart_interventions(df: pd.DataFrame) -> alt.TopLevelMixin:
    """Accuracy after replacing the CLS token at layer i, per mode, one line per variant."""
    variants = list(dict.fromkeys(df.variant))
    color = alt.Color("variant:N", scale=color_scale(variants), title="variant")
    x = alt.X("layer_index:Q", title="layer where CLS is replaced", axis=alt.Axis(tickMinStep=1, format="d"),
              scale=alt.Scale(nice=False))
    base = alt.Chart(df)
    line = base.mark_line(point=alt.OverlayMarkDef(filled=True)).encode(
        x=x, y=alt.Y("accuracy:Q", title="test accuracy", scale=alt.Scale(domain=[0, 1])), color=color,
        shape=alt.Shape("collapsed:N", title="one class", scale=alt.Scale(domain=[False, True],
                                                                          range=["circle", "cross"])))
    ref = base.mark_rule(strokeDash=[4, 3], strokeWidth=1).encode(y="mean(baseline_accuracy):Q", color=color)
    width = _facet_width(df["panel"].nunique(), cap=150)
    order = [PANEL_TITLES[m] for m in INTERVENTION_PANELS]
    return (alt.layer(ref, line).properties(width=width, height=int(width * 0.8))
            .facet(column=alt.Column("panel:N", title=None, sort=order,
                                     header=alt.Header(labelFontWeight="bold")))
            .properties(title=alt.TitleParams("CLS and patch interventions",
                                              subtitle="dashed: unmodified model; cross: predictions collapse to one class")))


def efficiency_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant: params (M), GMACs, peak throughput and its ratio to the first variant."""
    rows = []
    for variant, part in df.groupby("variant", sort=False):
        peak = part.loc[part.throughput.idxmax()]
        rows.append({"variant": variant, "params_m": part.params.iloc[0] / 1e6,
                     "gmacs": part.macs.iloc[0] / 1e9, "peak_throughput": peak.throughput,
                     "peak_batch_size": int(peak.batch_size)})
    table = pd.DataFrame(rows)
    table["throughput_ratio"] = table.peak_throughput / table.peak_throughput.iloc[0]
    return table


def chart_efficiency(df: pd.DataFrame) -> alt.TopLevelMixin:
    """Throughput vs batch size (log₂ axis) next to a params/MACs table."""
    variants = list(dict.fromkeys(df.variant))
    line = alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("batch_size:Q", title="batch size", scale=alt.Scale(type="log", base=2),
                axis=alt.Axis(values=sorted(set(df.batch_size)), format="d")),
        y=alt.Y("throughput:Q", title="throughput (images/s)"),
        color=alt.Color("variant:N", scale=color_scale(variants), title="variant"),
    ).properties(width=200, height=150, title=alt.TitleParams(
        "Inference throughput", subtitle=f"{df.device.iloc[0]}, {df.img_size.iloc[0]} px"))
    table = efficiency_table(df)
    cells = []
    ratio = f"× {variants[0]}"
    for _, row in table.iterrows():
        for col, text in (("params (M)", f"{row.params_m:.2f}"), ("GMACs", f"{row.gmacs:.3f}"),
                          ("peak img/s", f"{row.peak_throughput:,.0f}"), (ratio, f"{row.throughput_ratio:.2f}")):
            cells.append({"variant": row.variant, "column": col, "text": text})
    cols = ["params (M)", "GMACs", "peak img/s", ratio]
    grid = alt.Chart(pd.DataFrame(cells)).mark_text(fontSize=8).encode(
        x=alt.X("column:N", sort=cols, title=None, axis=alt.Axis(orient="top", labelAngle=0, domain=False, ticks=False)),
        y=alt.Y("variant:N", sort=variants, title=None, axis=alt.Axis(domain=False, ticks=False)),
        text="text:N").properties(width=alt.Step(58), height=alt.Step(16), view=alt.ViewBackground(stroke=None))
    return alt.hconcat(line, grid).resolve_scale(color="independent")


def chart_history(df: pd.DataFrame) -> alt.TopLevelMixin:
    """Training curves: loss (train solid, val dashed) and validation accuracy per epoch."""
    variants = list(dict.fromkeys(df.variant))
    color = alt.Color("variant:N", scale=color_scale(variants), title="variant")
    x = alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d"))
    loss = alt.Chart(df[df.panel == "loss"]).mark_line(point=alt.OverlayMarkDef(size=10)).encode(
        x=x, y=alt.Y("value:Q", title="cross-entropy loss"), color=color,
        strokeDash=alt.StrokeDash("split:N", title="split", scale=alt.Scale(domain=["train", "val"],
                                                                             range=[[1, 0], [4, 3]])),
    ).properties(width=190, height=140, title="Training loss")
    acc = alt.Chart(df[df.panel == "validation accuracy"]).mark_line(point=alt.OverlayMarkDef(size=10)).encode(
        x=x, y=alt.Y("value:Q", title="validation accuracy", scale=alt.Scale(zero=False)), color=color,
    ).properties(width=190, height=140, title="validation accuracy")
    return alt.hconcat(loss, acc)


# ------------------------------------------------------------------------------ attribution grid


@dataclass
class AttributionGrid:
    """Maps for one run: ``images`` (K, H, W, 3) uint8, ``maps[method]`` (K, H, W) in [0, 1]."""

    images: np.ndarray
    labels: list[str]
    sample_ids: list[str]
    preds: list[str]
    maps: dict[str, np.ndarray]
    part_mass: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


AttributionSource = Callable[[RunInfo, Sequence[str]], AttributionGrid]


def examples_per_class(labels: np.ndarray, per_class: int = 1) -> list[int]:
    """The first ``per_class`` indices of every class present, in class order."""
    labels = np.asarray(labels)
    return [int(i) for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:per_class]]


def live_attribution_grid(run: RunInfo, methods: Sequence[str], per_class: int = 1) -> AttributionGrid:
    """Compute the grid's maps with ``probe.explain`` on the run's model and test split.

    Rows are the first test face of every class (the same faces for runs on the same data spec).
    A method the model cannot support (e.g. rollout without attention) is left out with a note.
    """
    import torch

    import probe
    from train.data import load_dataset
    from train.engine import make_eval_transform
    from train.runs import load_run

    if not run.file("model.safetensors").is_file():
        raise MissingArtifacts(f"{run.name}/model.safetensors", f"train fit --model {run.config['model']['name']}")
    model, config = load_run(run.path)
    dataset = load_dataset(config["data"]["spec"], split="test")
    index = examples_per_class(dataset.labels, per_class)
    transform = make_eval_transform(config)
    size = int(config["input"]["img_size"])
    pil = [dataset[i][0] for i in index]
    x = torch.stack([transform(im) for im in pil])  # (K, 3, H, W)
    with torch.inference_mode():
        preds = model(x).argmax(-1).tolist()
    names = list(config["label_names"])
    maps, notes = {}, {}
    for method in methods:
        try:
            heat = probe.explain(model, x, method=method, target=None)  # (K, H, W) in [0, 1]
        except FerlensError as e:
            notes[method] = str(e)
            continue
        maps[method] = np.asarray(heat.detach().cpu() if hasattr(heat, "detach") else heat, dtype=np.float32)
    images = np.stack([np.asarray(im.convert("RGB").resize((size, size))) for im in pil])
    part_mass = _part_mass(dataset, index, names, maps, [int(dataset.labels[i]) for i in index])
    return AttributionGrid(images=images, labels=[names[int(dataset.labels[i])] for i in index],
                           sample_ids=[str(dataset.sample_ids[i]) for i in index],
                           preds=[names[p] for p in preds], maps=maps, part_mass=part_mass, notes=notes)


def _part_mass(dataset, index: list[int], names: list[str], maps: dict[str, np.ndarray],
               labels: list[int]) -> dict[str, list[float]]:
    """Share of each map's mass inside the parts that define the true class (SynthFER only)."""
    if not getattr(dataset, "has_part_masks", hasattr(dataset, "part_mask")):
        return {}
    try:
        from train.data.synthfer import CLASS_PARTS, PART_NAMES
    except ImportError:
        return {}
    from PIL import Image

    out: dict[str, list[float]] = {}
    for method, heat in maps.items():
        values = []
        for k, i in enumerate(index):
            mask = np.asarray(Image.fromarray(dataset.part_mask(i)).resize(heat.shape[1:][::-1], Image.NEAREST))
            ids = [PART_NAMES.index(p) for p in CLASS_PARTS.get(names[labels[k]], []) if p in PART_NAMES]
            inside = np.isin(mask, ids)
            total = float(heat[k].sum())
            values.append(float(heat[k][inside].sum() / total) if total > 0 else float("nan"))
        out[method] = values
    return out


def _overlay_url(image: np.ndarray, heat: np.ndarray | None, size: int = 96) -> str:
    """PNG data URL of the image, or of the map blended on it (pytorch-grad-cam's overlay)."""
    from PIL import Image

    if heat is None:
        rgb = image
    else:
        import cv2
        from pytorch_grad_cam.utils.image import show_cam_on_image

        h, w = image.shape[:2]
        heat = np.asarray(Image.fromarray(np.asarray(heat, dtype=np.float32)).resize((w, h), Image.BILINEAR))
        # Display scaling only: clip at the 99th percentile (captum's outlier_perc convention), so sparse
        # pixel attributions such as IG stay visible; smooth maps (Grad-CAM, rollout) barely change.
        top = float(np.percentile(heat, 99))
        heat = heat / top if top > 0 else heat
        rgb = show_cam_on_image(image.astype(np.float32) / 255.0, np.clip(heat, 0, 1), use_rgb=True,
                                colormap=cv2.COLORMAP_VIRIDIS, image_weight=0.45)
    buf = io.BytesIO()
    Image.fromarray(rgb).resize((size, size), Image.BICUBIC).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def attribution_data(runs: Sequence[RunInfo], source: AttributionSource,
                     methods: Sequence[str] = ATTRIBUTION_METHODS) -> tuple[pd.DataFrame, dict[str, AttributionGrid]]:
    """Figure 5 data: one row per grid cell (class row × variant/method column)."""
    grids = {run.label: source(run, methods) for run in runs}
    records = []
    first = next(iter(grids.values()))
    for k, label in enumerate(first.labels):
        records.append({"variant": "", "run": "", "row": label, "column": "input", "method": "input",
                        "sample_id": first.sample_ids[k], "label": label, "pred": "",
                        "peak_y": np.nan, "peak_x": np.nan, "part_mass": np.nan,
                        "url": _overlay_url(first.images[k], None)})
    for run in runs:
        grid = grids[run.label]
        for method in methods:
            if method not in grid.maps:
                continue
            heat = grid.maps[method]  # (K, H, W)
            for k in range(min(len(grid.labels), len(first.labels))):
                py, px = np.unravel_index(int(np.argmax(heat[k])), heat[k].shape)
                records.append({
                    "variant": run.label, "run": run.name, "row": first.labels[k],
                    "column": f"{run.label} · {METHOD_TITLES.get(method, method)}", "method": method,
                    "sample_id": grid.sample_ids[k], "label": grid.labels[k], "pred": grid.preds[k],
                    "peak_y": py / heat.shape[1], "peak_x": px / heat.shape[2],
                    "part_mass": grid.part_mass.get(method, [np.nan] * len(grid.labels))[k],
                    "url": _overlay_url(grid.images[k], heat[k])})
    df = pd.DataFrame.from_records(records)
    if (df.method != "input").sum() == 0:
        notes = "; ".join(f"{m}: {t}" for g in grids.values() for m, t in g.notes.items())
        raise MissingArtifacts(f"attribution maps ({notes or 'no method produced a map'})",
                               f"probe gradcam --run {runs[0].name}")
    return df, grids


def chart_attribution(df: pd.DataFrame) -> alt.TopLevelMixin:
    """Image grid: rows = one face per class, columns = input then variant × method overlays."""
    columns = list(dict.fromkeys(df.column))
    rows = list(dict.fromkeys(df.row))
    cell = int(max(34, min(56, (FULL_WIDTH - 80) / len(columns) - 3)))
    return alt.Chart(df).mark_image(width=cell, height=cell).encode(
        x=alt.X("column:N", sort=columns, title=None,
                axis=alt.Axis(orient="top", labelAngle=-40, labelAlign="left", domain=False, ticks=False,
                              labelFontSize=7)),
        y=alt.Y("row:N", sort=rows, title=None, axis=alt.Axis(domain=False, ticks=False)),
        url="url:N",
    ).properties(width=alt.Step(cell + 3), height=alt.Step(cell + 3), title=alt.TitleParams(
        "Where each method looks", subtitle="one test face per class; maps blended on the input (viridis)")
    ).configure_view(stroke=None)


# --------------------------------------------------------------------------------------- registry


def cls_read_data(runs: Sequence[RunInfo], max_side: int = 32) -> pd.DataFrame:
    """Figure 9 data: mean CLS attention per grid cell for every block, and the effective receptive field of
    block 0's most-read token (``explain/cls_read.json``; the ERF map summed down to ``max_side`` per axis)."""
    frames = []
    for run in runs:
        data = read_json(_need(run, "explain/cls_read.json", f"probe rollout --run {run.name}"))
        for b in data.get("blocks", []):
            g = np.asarray(b["grid"], dtype=np.float64)
            r, c = np.mgrid[0:g.shape[0], 0:g.shape[1]]
            frames.append(pd.DataFrame({"variant": run.label, "run": run.name, "panel": f"block {b['block']}",
                                        "kind": "CLS attention", "row": r.ravel(), "col": c.ravel(),
                                        "value": g.ravel(), "top_cell": b["top_cell"]}))
        erf = data.get("erf")
        if erf:
            m = np.asarray(erf["map"], dtype=np.float64)
            k = max(1, int(np.ceil(max(m.shape) / max_side)))
            h, w = m.shape[0] // k * k, m.shape[1] // k * k
            m = m[:h, :w].reshape(h // k, k, w // k, k).sum((1, 3))
            r, c = np.mgrid[0:m.shape[0], 0:m.shape[1]]
            frames.append(pd.DataFrame({"variant": run.label, "run": run.name,
                                        "panel": f"ERF of cell {erf['cell']} ({erf['height_px']}×{erf['width_px']} px)",
                                        "kind": "input gradient", "row": r.ravel() * k, "col": c.ravel() * k,
                                        "value": m.ravel(), "top_cell": erf["cell"]}))
    if not frames:
        raise MissingArtifacts("CLS attention per cell", f"probe rollout --run {','.join(r.name for r in runs)}")
    return pd.concat(frames, ignore_index=True)


def chart_cls_read(df: pd.DataFrame) -> alt.TopLevelMixin:
    """Per variant (rows): one heatmap per block of where the CLS reads, then the ERF of the most-read token."""
    charts = []
    for variant, part in df.groupby("variant", sort=False):
        panels = list(dict.fromkeys(part.panel))
        width = _facet_width(len(panels), cap=120)
        row = []
        for panel in panels:
            d = part[part.panel == panel]
            scheme = "greens" if d.kind.iloc[0] == "input gradient" else "blues"
            row.append(alt.Chart(d).mark_rect().encode(
                x=alt.X("col:O", axis=None), y=alt.Y("row:O", axis=None),
                color=alt.Color("value:Q", scale=alt.Scale(scheme=scheme), legend=None),
                tooltip=["panel", "row", "col", alt.Tooltip("value:Q", format=".3f")])
                .properties(width=width, height=width, title=alt.TitleParams(panel, fontSize=10)))
        # the attention panels share one colour scale (blocks compare); the ERF panel gets its own: with one
        # shared scale its input-gradient shares (~1e-3) took the bottom colour of attention shares (~0.7)
        attention = [c for c, p in zip(row, panels) if not p.startswith("ERF")]
        erf = [c for c, p in zip(row, panels) if p.startswith("ERF")]
        charts.append(alt.hconcat(alt.hconcat(*attention), *erf).resolve_scale(color="independent")
                      .properties(title=alt.TitleParams(variant, anchor="start")))
    return (alt.vconcat(*charts).resolve_scale(color="independent").properties(title=alt.TitleParams(
        "Where the CLS token reads", subtitle="mean CLS attention per token cell and block; green: effective "
        "receptive field of block 0's most-read token")))


@dataclass(frozen=True)
class Figure:
    """One paper figure: a file stem, a loader to its tidy frame and a chart over that frame."""

    number: int
    name: str
    title: str
    load: Callable[[Sequence[RunInfo]], pd.DataFrame]
    chart: Callable[[pd.DataFrame], alt.TopLevelMixin]


FIGURES: dict[int, Figure] = {f.number: f for f in (
    Figure(1, "fig1_probe_accuracy", "probe accuracy vs layer, CLS vs patch", probe_accuracy_data, chart_probe_accuracy),
    Figure(2, "fig2_selectivity", "selectivity heatmap, target × layer", selectivity_data, chart_selectivity),
    Figure(3, "fig3_cka", "CKA heatmaps", cka_data, chart_cka),
    Figure(4, "fig4_umap", "UMAP panels early/middle/last × CLS/patch", umap_data, chart_umap),
    Figure(5, "fig5_attribution_grid", "attribution grid", lambda runs: attribution_data(runs, live_attribution_grid)[0],
           chart_attribution),
    Figure(6, "fig6_interventions", "CLS intervention curves", intervention_data, chart_interventions),
    Figure(7, "fig7_efficiency", "throughput vs batch size, params/MACs", profile_data, chart_efficiency),
    Figure(8, "fig8_training_curves", "training curves", history_data, chart_history),
    Figure(9, "fig9_cls_read", "where the CLS reads: attention per cell and block, ERF of the most-read token",
           cls_read_data, chart_cls_read),
)}


@dataclass
class FigureResult:
    """What happened to one figure: files written, or the note explaining the skip."""

    number: int
    name: str
    files: dict[str, Path] = field(default_factory=dict)
    note: str | None = None

    @property
    def skipped(self) -> bool:
        return self.note is not None


def parse_only(text: str | None) -> list[int]:
    """``"1,3"`` → ``[1, 3]``; None/empty → every figure."""
    if not text:
        return list(FIGURES)
    try:
        numbers = [int(t) for t in split_runs(text)]
    except ValueError:
        raise FerlensError(f"--only '{text}' is not a list of figure numbers; use e.g. --only 1,3.") from None
    bad = [n for n in numbers if n not in FIGURES]
    if bad:
        raise FerlensError(f"No figure {bad[0]}; choose among {', '.join(map(str, FIGURES))}.")
    return numbers


def render_figure(figure: Figure, runs: Sequence[RunInfo], out: Path, formats: Sequence[str] = FORMATS,
                  attribution_source: AttributionSource | None = None, scale: float = PNG_SCALE) -> FigureResult:
    """Load, draw and write one figure (+ its CSV); missing artifacts give a skipped result."""
    stem = out / figure.name
    try:
        if figure.number == 5:
            df, grids = attribution_data(runs, attribution_source or live_attribution_grid)
            _save_grid_arrays(stem.with_suffix(".npz"), grids)
        else:
            df = figure.load(runs)
        chart = figure.chart(df)
    except MissingArtifacts as e:
        return FigureResult(figure.number, figure.name, note=str(e))
    files = save_chart(chart, stem, formats, scale=scale)
    table = df.drop(columns=["url"], errors="ignore")
    files["csv"] = atomic_write_csv(stem.with_suffix(".csv"), table.to_dict("records"), list(table.columns))
    return FigureResult(figure.number, figure.name, files=files)


def _save_grid_arrays(path: Path, grids: dict[str, AttributionGrid]) -> None:
    from train.io import atomic_write_bytes

    arrays = {}
    for label, grid in grids.items():
        safe = re.sub(r"[^A-Za-z0-9_]+", "_", label)
        arrays[f"{safe}__images"] = grid.images
        for method, heat in grid.maps.items():
            arrays[f"{safe}__{method}"] = heat.astype(np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def render_figures(runs: Sequence[str | Path], out: str | Path, only: Iterable[int] | None = None,
                   formats: Sequence[str] = FORMATS,
                   attribution_source: AttributionSource | None = None,
                   scale: float = PNG_SCALE) -> list[FigureResult]:
    """Render the chosen figures for ``runs`` into ``out`` and write ``figures.json`` (a manifest).

    Args:
        runs: run names or folders (two or more to compare variants; one works).
        out: output folder, e.g. ``artifacts/figures``.
        only: figure numbers (default all eight).
        formats: subset of png, svg, pdf.
        attribution_source: how figure 5 gets its maps (default: computed live with ``probe.explain``).
        scale: PNG pixels per point (3 → 216 dpi).
    """
    infos = load_runs(list(runs))
    out = Path(out)
    numbers = list(only) if only is not None else list(FIGURES)
    results = [render_figure(FIGURES[n], infos, out, formats, attribution_source, scale) for n in numbers]
    manifest_path = out / "figures.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    figures = previous.get("figures", {}) if previous.get("runs") == [r.name for r in infos] else {}
    for r in results:
        figures[r.name] = {"number": r.number, "files": {k: p.name for k, p in r.files.items()}, "note": r.note}
    atomic_write_json(manifest_path, {"runs": [r.name for r in infos], "labels": [r.label for r in infos],
                                      "figures": dict(sorted(figures.items()))})
    return results
