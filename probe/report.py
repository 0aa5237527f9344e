"""The findings report: every number is read from run artifacts, never typed in.

``build_report(runs)`` computes the facts (a plain dict, also written as ``facts.json``) and lays them
out as a small document that renders to Markdown (relative figure links) and to a self-contained
HTML page (figures embedded as base64 PNG). Definitions used in the text:

* **decodable layer** — the first layer (0 = token embedding, i = after block i) whose expression probe
  accuracy closes ``DECODABLE_FRACTION`` (90%) of the gap between chance and that readout's best layer.
* **selectivity** — probe accuracy minus the accuracy of the same probe on a control task (Hewitt & Liang:
  every *type* — an identity, or a k-means cluster of the stem features where identities never recur
  across the identity-grouped folds — mapped to a fixed random class with the real label marginals), as
  written by ``probe linear`` (its ``control_kind``).
* **equivalence bound** — a target is called "not encoded" only with the upper end of its 95 % CI over
  chance (``hi − chance``, CIs over folds × seeds of grouped CV): "identity ≤ +3.1 pts over chance". A
  bound from fewer than ``MIN_SEEDS`` CV seeds is printed with that caveat.
* **erasure** — LEACE (``probe erase``): probe accuracy after the concept is linearly erased, against
  removing as many random directions; the causal version feeds the erased CLS through the rest of the model.
* **intervention drop** — test accuracy after replacing the CLS token by its dataset mean after a block,
  minus the unmodified model's accuracy (``probe intervene``).
"""
from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from train.errors import FerlensError
from train.io import atomic_write_json, atomic_write_text, read_json
from train.runs import artifacts_root

from .figures import (FIGURES, MissingArtifacts, RunInfo, efficiency_table, layer_position, load_runs,
                      probe_table, profile_data)

DECODABLE_FRACTION = 0.9
MIN_SEEDS = 3  # CV seeds an equivalence bound needs to be stated without a caveat
NOT_ENCODED_PTS = 0.05  # "not encoded": the 95 % upper bound is at most this far above chance


# ------------------------------------------------------------------------------------------ facts


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f}%"


def _ci(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f" [{100 * lo:.1f}, {100 * hi:.1f}]"


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def test_accuracy(run: RunInfo) -> dict[str, Any] | None:
    """Test metrics of a run (metrics.json), or None when it has not been evaluated."""
    path = run.file("metrics.json")
    if not path.is_file():
        return None
    m = read_json(path)
    ci = m.get("ci95", {})
    return {"accuracy": _num(m.get("accuracy")), "accuracy_ci": ci.get("accuracy"),
            "macro_f1": _num(m.get("macro_f1")), "macro_f1_ci": ci.get("macro_f1"),
            "balanced_accuracy": _num(m.get("balanced_accuracy")), "ece": _num(m.get("ece")),
            "n": m.get("n"), "split": m.get("split"), "data": m.get("data"),
            "best_epoch": m.get("best_epoch"), "train_seconds": _num(m.get("train_seconds"))}


def decodable_layer(rows: pd.DataFrame, fraction: float = DECODABLE_FRACTION) -> dict[str, Any] | None:
    """First layer reaching ``chance + fraction × (best − chance)`` in one readout's accuracy curve.

    Args:
        rows: probe rows of one run, target and readout (columns layer, layer_index, value, lo, hi, chance).
        fraction: share of the chance→best gap that counts as "decodable".
    """
    rows = rows[rows.layer_index >= 0].sort_values("layer_index")
    if rows.empty:
        return None
    best = rows.loc[rows.value.idxmax()]
    chance = float(rows.chance.dropna().iloc[0]) if rows.chance.notna().any() else 0.0
    above = float(best.value) > chance
    threshold = chance + fraction * (float(best.value) - chance) if above else float(best.value)
    first = rows[rows.value >= threshold - 1e-12].iloc[0]
    return {"above_chance": above, "layer": first.layer, "layer_index": int(first.layer_index), "accuracy": float(first.value),
            "ci": [float(first.lo), float(first.hi)], "threshold": threshold, "chance": chance,
            "best_layer": best.layer, "best_layer_index": int(best.layer_index), "best_accuracy": float(best.value),
            "best_ci": [float(best.lo), float(best.hi)], "n_layers": int(rows.layer_index.nunique())}


def last_layer_keep(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Per target at the deepest layer: CLS and patch accuracy (or R²), CI and selectivity."""
    rows = rows[(rows.layer_index >= 0) & rows.tokens.isin(["cls", "patch"])]
    out = []
    for target, part in rows.groupby("target", sort=False):
        last = part[part.layer_index == part.layer_index.max()]
        rec: dict[str, Any] = {"target": target, "metric": last.metric.iloc[0], "layer": last.layer.iloc[0],
                               "chance": _num(last.chance.iloc[0])}
        for tokens in ("cls", "patch"):
            r = last[last.tokens == tokens]
            if len(r):
                r = r.iloc[0]
                chance = _num(r.chance)
                rec[tokens] = {"value": _num(r.value), "ci": [_num(r.lo), _num(r.hi)],
                               "selectivity": _num(r.selectivity),
                               "upper_over_chance": (None if chance is None or _num(r.hi) is None
                                                     or r.metric != "accuracy" else _num(r.hi) - chance),
                               "n_seeds": None if pd.isna(r.get("n_seeds")) else int(r.get("n_seeds")),
                               "cv_scheme": r.get("cv_scheme"), "cv_groups": r.get("cv_groups"),
                               "control_kind": r.get("control_kind")}
        out.append(rec)
    return sorted(out, key=lambda r: (r["target"] != "expression", r["target"]))


def _iv_row(r: dict[str, Any]) -> dict[str, Any]:
    lo, hi = _num(r.get("delta_lo")), _num(r.get("delta_hi"))
    return {"layer": r["layer"], "layer_index": layer_position(r["layer"]), "mode": r["mode"],
            "accuracy": float(r["accuracy"]), "delta": float(r["delta_accuracy"]),
            "ci": [lo, hi] if lo is not None and hi is not None else None,
            "collapsed": str(r.get("collapsed", "False")).lower() in ("true", "1"),
            "majority_share": _num(r.get("majority_share"))}


def intervention_summary(run: RunInfo) -> dict[str, Any] | None:
    """The interventions of one run (``explain/interventions.csv``): the mean-CLS drop per layer, the largest
    drop among rows that do not collapse to one class, the collapsed rows, and the patch control (the most-read
    patch token vs one random patch token). None when the file is missing."""
    path = run.file("explain/interventions.csv")
    if not path.is_file():
        return None
    rows = [_iv_row(r) for r in pd.read_csv(path, keep_default_na=False).to_dict("records")
            if r["layer"] not in ("none", "input")]
    clean = pd.read_csv(path)
    clean_row = clean[clean["mode"] == "clean"]
    mean = sorted((r for r in rows if r["mode"] == "mean"), key=lambda r: r["layer_index"])
    if not mean:
        return None
    baseline = (float(clean_row.accuracy.iloc[0]) if len(clean_row)
                else mean[0]["accuracy"] - mean[0]["delta"])
    n = int(clean["n"].iloc[0]) if "n" in clean and pd.notna(clean["n"].iloc[0]) else None
    means_from = str(clean["means_from"].iloc[0]) if "means_from" in clean else None
    finding = [r for r in mean if not r["collapsed"]]
    worst = min(finding, key=lambda r: r["delta"]) if finding else None
    last = mean[-1]
    out: dict[str, Any] = {
        "baseline": baseline, "n": n, "means_from": means_from, "per_layer": mean,
        "worst_layer": worst["layer"] if worst else None, "worst_layer_index": worst["layer_index"] if worst else None,
        "worst_delta": worst["delta"] if worst else None, "worst_accuracy": worst["accuracy"] if worst else None,
        "worst_ci": worst["ci"] if worst else None,
        "last_layer": last["layer"], "last_layer_index": last["layer_index"], "last_delta": last["delta"],
        "last_ci": last["ci"], "last_collapsed": last["collapsed"], "last_majority_share": last["majority_share"],
        "collapsed": [r for r in rows if r["collapsed"]]}
    top = [r for r in rows if r["mode"] == "top_attended_patch"]
    rnd = {r["layer"]: r for r in rows if r["mode"] == "random_patch"}
    if top:
        t = min(top, key=lambda r: r["delta"])
        out["patch_control"] = {"layer": t["layer"], "layer_index": t["layer_index"], "top": t, "random": rnd.get(t["layer"])}
    return out


def erasure_summary(run: RunInfo) -> dict[str, Any] | None:
    """``probes/erasure.json`` at the deepest layer erased: probe rows per (concept, target, tokens) and the
    causal rows per concept (None when ``probe erase`` has not run)."""
    path = run.file("probes/erasure.json")
    if not path.is_file():
        return None
    data = read_json(path)
    rows = data.get("rows", [])
    if not rows:
        return None
    deepest = max(r["layer_index"] for r in rows)
    last = [r for r in rows if r["layer_index"] == deepest]
    causal = data.get("causal", [])
    cdeep = {}
    for c in causal:
        cdeep.setdefault(c["concept"], []).append(c)
    return {"fit_split": data.get("fit_split"), "eval_split": data.get("eval_split"),
            "layer": last[0]["layer"], "rows": last,
            "causal": {k: sorted(v, key=lambda c: c["layer"]) for k, v in cdeep.items()}}


def family_summary(run: RunInfo) -> list[dict[str, Any]] | None:
    """MLP probe rows (``probe linear --probe mlp``) at their deepest layer, with MDL compression."""
    try:
        df = probe_table([run], probe="mlp")
    except MissingArtifacts:
        return None
    if df.empty:
        return None
    df = df[df.layer_index >= 0]
    out = []
    for (target, tokens), part in df.groupby(["target", "tokens"], sort=False):
        r = part.loc[part.layer_index.idxmax()]
        out.append({"target": target, "tokens": tokens, "layer": r.layer, "metric": r.metric, "value": _num(r.value),
                    "ci": [_num(r.lo), _num(r.hi)], "chance": _num(r.chance), "selectivity": _num(r.selectivity),
                    "compression": _num(r.compression), "n_seeds": None if pd.isna(r.n_seeds) else int(r.n_seeds)})
    return out


def bound_text(v: dict[str, Any]) -> str:
    """``≤ +3.1 pts over chance (95 % upper bound, 3 seeds)`` for one probe cell (see ``last_layer_keep``)."""
    seeds = v.get("n_seeds")
    caveat = "" if seeds is None or seeds >= MIN_SEEDS else f"; from {seeds} CV seed{'s' if seeds != 1 else ''}, " \
        f"fewer than the {MIN_SEEDS} a bound needs"
    return f"≤ {100 * v['upper_over_chance']:+.1f} pts over chance (95% upper bound{caveat})"


def localisation(run: RunInfo) -> list[dict[str, Any]] | None:
    """Rows of ``explain/attribution_metrics.csv`` (one per method)."""
    path = run.file("explain/attribution_metrics.csv")
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    text = ("method", "layer", "peak_cell")
    return [{k: (_num(v) if k not in text else (None if pd.isna(v) else str(v))) for k, v in row.items()}
            for row in df.to_dict("records")]


def cls_read_summary(run: RunInfo) -> dict[str, Any] | None:
    """Where the CLS reads (``explain/cls_read.json``): the most-read cell and its share per block, and the
    effective receptive field of block 0's most-read token (without the maps)."""
    path = run.file("explain/cls_read.json")
    if not path.is_file():
        return None
    data = read_json(path)
    out = {k: data.get(k) for k in ("grid_size", "image_size", "n")}
    out["blocks"] = [{k: b[k] for k in ("block", "top_cell", "top_share", "patch_share")} for b in data.get("blocks", [])]
    if "erf" in data:
        out["erf"] = {k: v for k, v in data["erf"].items() if k != "map"}
    return out


def run_commands(run: RunInfo, demo_log: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """Commands that produced a run's artifacts: the demo's log, else rebuilt from config.json."""
    logged = [" ".join(e["argv"]) for e in demo_log if run.name in e.get("runs", [])]
    if logged:
        return logged, True
    cfg = run.config
    model = cfg.get("model", {}).get("name", "MODEL")
    spec = cfg.get("data", {}).get("spec", "SPEC")
    name = run.name
    return [f"train fit --model {model} --data {spec} --seed {cfg.get('seed', 0)} --run_name {name}",
            f"probe extract --run {name} --data {spec} --split test",
            f"probe linear --run {name} --tokens cls,patch --targets all",
            f"probe cka --run {name}", f"probe umap --run {name}",
            f"probe rollout --run {name} --data {spec}", f"probe gradcam --run {name} --data {spec}",
            f"probe attribute --run {name} --data {spec}", f"probe intervene --run {name} --data {spec}",
            f"train profile --run {name}"], False


def machine_info() -> dict[str, Any]:
    """The CPU the facts were measured on: ``lscpu``'s model name, core count, and which of the matmul paths
    torch uses on it exists (AMX / AVX-512 BF16 / AVX2), from the CPU flags."""
    import platform
    import subprocess

    info: dict[str, Any] = {"machine": platform.machine(), "cpu": None, "cores": os.cpu_count(), "isa": None}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info["cpu"] = fields.get("Model name")
    flags = set(fields.get("Flags", "").split())
    if not flags and Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if {"amx_bf16", "amx_tile"} <= flags:
        info["isa"] = "AMX + AVX-512 BF16"
    elif "avx512_bf16" in flags:
        info["isa"] = "AVX-512 BF16"
    elif "avx512f" in flags:
        info["isa"] = "AVX-512"
    elif "avx2" in flags:
        info["isa"] = "AVX2"
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        from train.precision import cpu_summary

        summary = cpu_summary()  # what torch actually runs: an ATen/oneDNN cap in the environment lowers the ISA
        if summary.get("isa_caps"):
            info["isa"] = f"{summary['isa_label']}: {summary['isa_reason']}"
            info["isa_caps"] = summary["isa_caps"]
    except (ImportError, AttributeError):
        pass
    return info


def collect_facts(runs: Sequence[RunInfo]) -> dict[str, Any]:
    """Every number the report states, read from the runs' artifacts (missing parts are None)."""
    facts: dict[str, Any] = {"runs": [r.name for r in runs], "labels": [r.label for r in runs],
                             "decodable_fraction": DECODABLE_FRACTION, "per_run": {}, "missing": {},
                             "machine": machine_info()}
    demo_log_path = artifacts_root() / "demo_commands.json"
    demo_log = read_json(demo_log_path).get("commands", []) if demo_log_path.is_file() else []
    for run in runs:
        rec: dict[str, Any] = {"label": run.label, "model": run.config.get("model", {}),
                               "data": run.config.get("data", {}).get("spec"), "test": test_accuracy(run)}
        try:
            probes = probe_table([run])
        except MissingArtifacts as e:
            probes = None
            facts["missing"].setdefault("probes", []).append(str(e))
        if probes is not None and not probes.empty:
            expr = probes[(probes.target == "expression") & (probes.metric == "accuracy")]
            rec["decodable"] = {t: decodable_layer(expr[expr.tokens == t]) for t in ("cls", "patch")
                                if (expr.tokens == t).any()}
            rec["keep"] = last_layer_keep(probes)
        rec["interventions"] = intervention_summary(run)
        if rec["interventions"] is None:
            facts["missing"].setdefault("interventions", []).append(
                f"{run.name}/explain/interventions.csv is missing; produce it with 'probe intervene --run {run.name}'.")
        rec["cls_read"] = cls_read_summary(run)
        rec["erasure"] = erasure_summary(run)
        rec["families"] = family_summary(run)
        rec["localisation"] = localisation(run)
        if rec["localisation"] is None:
            facts["missing"].setdefault("localisation", []).append(
                f"{run.name}/explain/attribution_metrics.csv is missing; produce it with "
                f"'probe rollout --run {run.name}' / 'probe gradcam' / 'probe attribute'.")
        rec["commands"], rec["commands_logged"] = run_commands(run, demo_log)
        rec["config"] = {k: run.config.get(k) for k in ("model", "data", "input", "train", "seed",
                                                         "ferlens_version", "git_commit", "created")}
        facts["per_run"][run.name] = rec
    try:
        table = efficiency_table(profile_data(runs))
        base = table.iloc[0]
        facts["efficiency"] = [{"variant": r.variant, "params_m": float(r.params_m), "gmacs": float(r.gmacs),
                                "peak_throughput": float(r.peak_throughput), "peak_batch_size": int(r.peak_batch_size),
                                "params_ratio": float(r.params_m / base.params_m),
                                "macs_ratio": float(r.gmacs / base.gmacs),
                                "throughput_ratio": float(r.throughput_ratio)} for r in table.itertuples()]
    except MissingArtifacts as e:
        facts["efficiency"] = None
        facts["missing"]["efficiency"] = [str(e)]
    return facts


# --------------------------------------------------------------------------------------- document


@dataclass
class Doc:
    """A tiny document model rendered to both Markdown and HTML (no Markdown library is a dependency)."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def table(self, columns: list[str], rows: list[list[str]]) -> None:
        if rows:
            self.blocks.append(("table", (columns, rows)))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("fig", (path, caption)))

    def code(self, text: str, lang: str = "") -> None:
        self.blocks.append(("code", (lang, text)))

    def markdown(self, base: Path) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "h":
                out.append("#" * value[0] + " " + value[1])
            elif kind == "p":
                out.append(value)
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in value))
            elif kind == "table":
                cols, rows = value
                lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
                lines += ["| " + " | ".join(r) + " |" for r in rows]
                out.append("\n".join(lines))
            elif kind == "fig":
                path, caption = value
                out.append(f"![{caption}]({Path(os.path.relpath(path, base)).as_posix()})\n\n*{caption}*")
            elif kind == "code":
                out.append(f"```{value[0]}\n{value[1]}\n```")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h{value[0]}>{_inline(value[1])}</h{value[0]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                cols, rows = value
                head = "".join(f"<th>{_inline(c)}</th>" for c in cols)
                trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "fig":
                path, caption = value
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{_inline(caption)}</figcaption></figure>")
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(value[1])}</code></pre>")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


_CSS = ("body{font-family:'Liberation Sans',Arial,sans-serif;max-width:52em;margin:2em auto;padding:0 1em;"
        "line-height:1.45;color:#111}table{border-collapse:collapse;margin:1em 0;font-size:.9em}"
        "th,td{border-bottom:1px solid #ccc;padding:.25em .6em;text-align:left}th{border-bottom:2px solid #333}"
        "figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:.9em;color:#444}"
        "pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}code{font-size:.92em}")


def _inline(text: str) -> str:
    """Escape HTML and turn the Markdown we emit (**bold**, `code`) into tags."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


# ----------------------------------------------------------------------------------------- layout


def _layer_name(index: int) -> str:
    from .figures import CLASS_BLOCK_OFFSET

    if index > CLASS_BLOCK_OFFSET:
        return f"class-attention block {index - CLASS_BLOCK_OFFSET - 1}"
    return "the token embedding (layer 0)" if index == 0 else f"layer {index} (after block {index - 1})"


def _findings(facts: dict[str, Any], doc: Doc) -> None:
    runs = facts["per_run"]
    doc.heading("Test accuracy")
    rows = []
    for name, rec in runs.items():
        t = rec["test"]
        if t:
            rows.append([f"**{rec['label']}**", f"{_pct(t['accuracy'])}{_ci(*(t['accuracy_ci'] or [None, None]))}",
                         f"{_pct(t['macro_f1'])}{_ci(*(t['macro_f1_ci'] or [None, None]))}",
                         _pct(t["balanced_accuracy"]), str(t["n"]), f"{t['train_seconds'] or 0:.0f} s"])
    doc.table(["variant", "accuracy [95% CI]", "macro-F1 [95% CI]", "balanced acc.", "n test", "train time"], rows)
    if not rows:
        doc.para("No run has a metrics.json yet; evaluate with `train eval --run RUN`.")

    doc.heading("When expression becomes linearly decodable")
    doc.para(f"Definition: the decodable layer is the first layer whose expression probe accuracy closes "
             f"{100 * facts['decodable_fraction']:.0f}% of the gap between chance and that readout's best layer "
             f"(layer 0 = token embedding, layer i = residual stream after block i).")
    sentences = []
    for rec in runs.values():
        dec = rec.get("decodable", {})
        cls, patch = dec.get("cls"), dec.get("patch")
        if cls and not cls["above_chance"]:
            sentences.append(f"In **{rec['label']}**, the CLS expression probe never exceeds chance "
                             f"({_pct(cls['chance'])}; best {_pct(cls['best_accuracy'])}{_ci(*cls['best_ci'])} at "
                             f"layer {cls['best_layer_index']}): expression is not linearly decodable from CLS "
                             f"(≤ {100 * (cls['best_ci'][1] - cls['chance']):+.1f} pts over chance, 95% upper bound).")
        elif cls:
            s = (f"In **{rec['label']}**, expression becomes linearly decodable from the CLS token at "
                 f"{_layer_name(cls['layer_index'])}: {_pct(cls['accuracy'])}{_ci(*cls['ci'])} "
                 f"(chance {_pct(cls['chance'])}; best {_pct(cls['best_accuracy'])}{_ci(*cls['best_ci'])} at "
                 f"layer {cls['best_layer_index']}).")
            if patch:
                s += (f" The mean patch token reaches its own criterion at layer {patch['layer_index']} "
                      f"({_pct(patch['accuracy'])}{_ci(*patch['ci'])}) and peaks at "
                      f"{_pct(patch['best_accuracy'])}{_ci(*patch['best_ci'])}.")
            sentences.append(s)
    doc.bullets(sentences)
    if not sentences:
        doc.para("No expression probes yet; run `probe linear --run RUN --tokens cls,patch --targets all`.")

    doc.heading("What each token type keeps (last layer)")
    for rec in runs.values():
        keep = rec.get("keep")
        if not keep:
            continue
        rows = []
        for k in keep:
            cells = [k["target"] + (" (R²)" if k["metric"] == "r2" else "")]
            for tokens in ("cls", "patch"):
                v = k.get(tokens)
                if v is None:
                    cells += ["–", "–"]
                elif k["metric"] == "r2":
                    cells += [f"{v['value']:.3f}" + (f" [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" if v["ci"][0] is not None else ""), "–"]
                else:
                    sel = v["selectivity"]
                    cells += [f"{_pct(v['value'])}{_ci(*v['ci'])}", "–" if sel is None else f"{100 * sel:+.1f} pts"]
            cells.append(_pct(k["chance"]) if k["chance"] is not None and k["metric"] != "r2" else "–")
            rows.append(cells)
        doc.para(f"**{rec['label']}** at {keep[0]['layer']}: probe accuracy [95% CI] and selectivity per target.")
        doc.table(["target", "CLS", "CLS selectivity", "patch", "patch selectivity", "chance"], rows)
        nuisance = [k for k in keep if k["target"] != "expression" and k["metric"] == "accuracy"]
        lines = []
        for tokens, title in (("cls", "CLS token"), ("patch", "mean patch token")):
            have = [k for k in nuisance if k.get(tokens) and k[tokens]["selectivity"] is not None]
            if have:
                top = max(have, key=lambda k: k[tokens]["selectivity"])
                lines.append(f"the {title} keeps most about **{top['target']}** "
                             f"({_pct(top[tokens]['value'])}, selectivity {100 * top[tokens]['selectivity']:+.1f} pts)")
        if lines:
            doc.para(f"Among the non-expression factors of **{rec['label']}**, " + "; ".join(lines) + ".")
        first = next((k[t] for k in keep for t in ("cls", "patch") if k.get(t)), None)
        if first and first.get("cv_scheme"):
            doc.para(f"Folds: {_folds_text(first)}; control task: `{first.get('control_kind')}`.")
        bounds = []
        for tokens, title in (("cls", "CLS"), ("patch", "mean patch")):
            quiet = [k for k in nuisance if k.get(tokens) and k[tokens].get("upper_over_chance") is not None
                     and k[tokens]["upper_over_chance"] <= NOT_ENCODED_PTS]
            if quiet:
                bounds.append(f"the {title} token does not encode " + ", ".join(
                    f"**{k['target']}** ({bound_text(k[tokens])})" for k in quiet))
        if bounds:
            doc.para(f"Not encoded in **{rec['label']}** (upper 95% bound at most {100 * NOT_ENCODED_PTS:.0f} pts "
                     "over chance): " + "; ".join(bounds) + ".")
    if not any(rec.get("keep") for rec in runs.values()):
        doc.para("No attribute probes yet; run `probe linear --run RUN --tokens cls,patch --targets all`.")

    _families(runs, doc)
    _erasure(runs, doc)
    _interventions_section(runs, doc)
    _localisation_section(runs, doc)
    _cls_read_section(runs, doc)

    doc.heading("Efficiency")
    eff = facts.get("efficiency")
    if eff:
        doc.table(["variant", "params (M)", "GMACs", "peak throughput (img/s)", "batch", "params ×", "MACs ×",
                   "throughput ×"],
                  [[e["variant"], f"{e['params_m']:.3f}", f"{e['gmacs']:.3f}", f"{e['peak_throughput']:,.0f}",
                    str(e["peak_batch_size"]), f"{e['params_ratio']:.2f}", f"{e['macs_ratio']:.2f}",
                    f"{e['throughput_ratio']:.2f}"] for e in eff])
        if len(eff) > 1:
            doc.para(f"Ratios are relative to **{eff[0]['variant']}**: " + "; ".join(
                f"{e['variant']} has {e['params_ratio']:.2f}× the parameters, {e['macs_ratio']:.2f}× the MACs and "
                f"{e['throughput_ratio']:.2f}× the peak inference throughput" for e in eff[1:]) + ".")
    else:
        doc.para("No profiles yet; run `train profile --run RUN`.")


def _pts(delta: float | None, ci: Sequence[float | None] | None = None) -> str:
    """``−12.3 pts [−15.0, −9.6]`` (points of accuracy, paired bootstrap CI when given)."""
    if delta is None:
        return "n/a"
    text = f"{100 * delta:+.1f} pts".replace("-", "−")
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]".replace("-", "−")
    return text


def _interventions_section(runs: dict[str, Any], doc: Doc) -> None:
    doc.heading("CLS and patch interventions")
    sentences = []
    for rec in runs.values():
        iv = rec.get("interventions")
        if not iv:
            continue
        faces = f"the {iv['n']} evaluated" if iv.get("n") else "the evaluated"
        src = "train-split mean" if iv.get("means_from") == "train" else "mean"
        if iv.get("worst_layer_index") is not None:
            s = (f"**{rec['label']}**: replacing the CLS token by its {src} drops the accuracy on {faces} test faces "
                 f"from {_pct(iv['baseline'])} to {_pct(iv['worst_accuracy'])} at {_layer_name(iv['worst_layer_index'])} "
                 f"(Δ = {_pts(iv['worst_delta'], iv.get('worst_ci'))}, paired bootstrap 95% CI; the largest drop "
                 f"among layers where the predictions do not collapse to one class)")
        else:
            s = f"**{rec['label']}**: replacing the CLS token by its {src} collapses the predictions at every layer"
        if iv.get("last_collapsed"):
            s += (f". After the last block it collapses to one class ({_pct(iv.get('last_majority_share'))} of the "
                  f"predictions are one class; Δ = {_pts(iv['last_delta'])}): the head then reads one constant vector, "
                  f"so that drop restates the CLS readout rather than measuring what the CLS encodes.")
        else:
            s += f"; after the last block Δ = {_pts(iv['last_delta'], iv.get('last_ci'))}."
        pc = iv.get("patch_control")
        if pc:
            s += (f" Mean-ablating the one patch token the CLS reads most costs {_pts(pc['top']['delta'], pc['top']['ci'])}"
                  f" at {_layer_name(pc['layer_index'])}")
            if pc.get("random"):
                s += f", one random patch token {_pts(pc['random']['delta'], pc['random']['ci'])} (the control)"
            s += "."
        sentences.append(s)
    doc.bullets(sentences)
    if not sentences:
        doc.para("No interventions yet; run `probe intervene --run RUN --data SPEC`.")


def _localisation_section(runs: dict[str, Any], doc: Doc) -> None:
    doc.heading("Localisation against the part answer key")
    rows = []
    for rec in runs.values():
        for m in rec.get("localisation") or []:
            xc = m.get("part_mass_x_chance")
            rows.append([rec["label"], str(m.get("method")), _fmt(m.get("part_mass")),
                         "–" if xc is None else f"{xc:.1f}×", _fmt(m.get("best_cell_part_mass")),
                         _fmt(m.get("pointing_game")), _fmt(m.get("best_cell_pointing")),
                         (f"{m['peak_cell']} ({int(m['peak_cell_count'])})" if m.get("peak_cell") and
                          m.get("peak_cell_count") is not None else "–"),
                         _fmt(m.get("deletion_auc")), _fmt(m.get("insertion_auc")),
                         str(int(m["n"])) if m.get("n") else "–"])
    doc.para("Part mass: share of positive attribution inside the parts that define the class, also as a multiple "
             "of chance (the parts' share of the image area, what a uniform map scores); best cell: the best any "
             "map on the token grid can score (all mass on the single best cell — no token-level map can beat it); "
             "pointing game: share of maps whose peak falls in those parts; peak cell: the grid cell where most maps "
             "peak (how many); deletion AUC lower and insertion AUC higher are better.")
    doc.table(["variant", "method", "part mass", "× chance", "best cell", "pointing game", "best cell pointing",
               "peak cell (n)", "deletion AUC", "insertion AUC", "n"], rows)
    best = []
    for rec in runs.values():
        loc = [m for m in rec.get("localisation") or [] if m.get("part_mass") is not None]
        if not loc:
            continue
        top = max(loc, key=lambda m: m["part_mass"])
        text = (f"in **{rec['label']}** {top['method']} puts the most mass on the defining parts "
                f"({_fmt(top['part_mass'])}, pointing game {_fmt(top.get('pointing_game'))}")
        if top.get("part_mass_x_chance") is not None:
            text += f"; {top['part_mass_x_chance']:.1f}× the chance level {_fmt(top.get('chance_part_mass'))}"
        text += ")"
        grid = [m for m in loc if m.get("best_cell_part_mass") is not None and m.get("peak_cell_count") is not None
                and str(m.get("layer")) != "input"]
        if grid:
            g = grid[0]
            text += (f"; a token-grid map can reach at most part mass {_fmt(g['best_cell_part_mass'])} / pointing "
                     f"{_fmt(g.get('best_cell_pointing'))}, and " + ", ".join(
                         f"{m['method']} peaks on cell {m['peak_cell']} in {int(m['peak_cell_count'])} of "
                         f"{int(m['n'])} faces" for m in grid))
        best.append(text)
    if best:
        text = "; ".join(best)
        doc.para(text[0].upper() + text[1:] + ".")


def _cls_read_section(runs: dict[str, Any], doc: Doc) -> None:
    sentences = []
    for rec in runs.values():
        cr = rec.get("cls_read")
        if not cr or not cr.get("blocks"):
            continue
        b0 = cr["blocks"][0]
        s = (f"**{rec['label']}**: in block {b0['block']} the CLS puts {_pct(b0['top_share'])} of its attention on the "
             f"token at cell {b0['top_cell']} (of a {cr['grid_size'][0]}×{cr['grid_size'][1]} grid; "
             f"{_pct(b0['patch_share'])} on patches in all)")
        erf = cr.get("erf")
        if erf:
            s += (f"; that token's effective receptive field (95% of its input gradient) spans {erf['height_px']}×"
                  f"{erf['width_px']} px of the {cr['image_size'][0]}×{cr['image_size'][1]} input (rows "
                  f"{erf['rows'][0]}–{erf['rows'][1]}, columns {erf['cols'][0]}–{erf['cols'][1]})")
        others = [f"block {b['block']}: cell {b['top_cell']} ({_pct(b['top_share'])})" for b in cr["blocks"][1:]]
        if others:
            s += "; later blocks read " + ", ".join(others)
        sentences.append(s + f" — mean over {cr['n']} test faces.")
    if sentences:
        doc.heading("Where the CLS token reads")
        doc.bullets(sentences)


def _layer_order(name: str) -> int:
    """``tokens`` → -1, ``blocks.{i}`` → i (the forward order of residual-stream hooks)."""
    tail = name.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _folds_text(v: dict[str, Any]) -> str:
    scheme = v.get("cv_scheme")
    if scheme == "grouped":
        return f"grouped by {v.get('cv_groups')} (no {v.get('cv_groups')} in a training and a test fold at once; " \
               "the grouping attribute itself is probed within groups)"
    return "stratified (not grouped: the dataset has no identity/subject attribute, or --group none)"


def _families(runs: dict[str, Any], doc: Doc) -> None:
    """Non-linear probe and MDL sentences (rows of ``probe linear --probe mlp --mdl``)."""
    sentences = []
    for rec in runs.values():
        fam = rec.get("families")
        if not fam:
            continue
        parts = []
        for f in fam:
            if f["metric"] != "accuracy":
                continue
            text = f"{f['target']} from {f['tokens']} {_pct(f['value'])}{_ci(*f['ci'])} (chance {_pct(f['chance'])}"
            if f["ci"][1] is not None and f["chance"] is not None and f["ci"][1] - f["chance"] <= NOT_ENCODED_PTS:
                text += "; " + bound_text({"upper_over_chance": f["ci"][1] - f["chance"], "n_seeds": f["n_seeds"]})
            if f.get("compression") is not None:
                text += f"; MDL compression {f['compression']:.2f}×"
            parts.append(text + ")")
        if parts:
            sentences.append(f"**{rec['label']}** at {fam[0]['layer']}, one-hidden-layer MLP probe on the same folds: "
                             + "; ".join(parts) + ".")
    if sentences:
        doc.heading("Non-linear probes and description length")
        doc.para("An MLP probe that also fails is stronger evidence than a linear one; MDL compression is the "
                 "uniform code length over the online code length (Voita & Titov 2020; 1× = the features say "
                 "nothing about the labels).")
        doc.bullets(sentences)


def _erasure(runs: dict[str, Any], doc: Doc) -> None:
    """LEACE erasure sentences (``probe erase``): probes before/after and the causal model accuracy."""
    sentences = []
    for rec in runs.values():
        er = rec.get("erasure")
        if not er:
            continue
        for r in er["rows"]:
            lo, hi = r["ci95"]["random_control_after"]
            sentences.append(
                f"**{rec['label']}**, {r['tokens']} at {r['layer']}: erasing **{r['concept']}** (rank {r['rank']}) takes "
                f"the {r['target']} probe from {_pct(r['before'])}{_ci(*r['ci95']['before'])} to "
                f"{_pct(r['after'])}{_ci(*r['ci95']['after'])}; removing {r['rank']} random directions leaves "
                f"{_pct(r['random_control_after'])}{_ci(lo, hi)} (chance {_pct(r['chance'])}).")
        for concept, rows in er["causal"].items():
            last = max(rows, key=lambda c: _layer_order(c["layer"]))
            sentences.append(
                f"**{rec['label']}**, causal: with **{concept}** erased from the CLS token at {last['layer']} and the "
                f"rest of the model run on, its accuracy on {last['n']} test faces goes from "
                f"{_pct(last['baseline_accuracy'])} to {_pct(last['accuracy'])}{_ci(*last['ci95']['accuracy'])} "
                f"(random directions of the same rank: {_pct(last['random_control_accuracy'])}).")
    if sentences:
        doc.heading("Concept erasure (LEACE)")
        fit = next(rec["erasure"] for rec in runs.values() if rec.get("erasure"))
        doc.para(f"Erasers fitted on the {fit['fit_split']} split, probes on the {fit['eval_split']} split with "
                 "the folds above; the control removes as many random directions (CI over its seeds).")
        doc.bullets(sentences)


def _fmt(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "–" if v is None else f"{v:.{digits}f}"


def build_document(facts: dict[str, Any], figures_dir: Path | None, title: str) -> Doc:
    """Lay the facts out: findings, figures (those rendered for the same runs), commands, config."""
    doc = Doc()
    doc.heading(title, 1)
    labels = ", ".join(f"**{v['label']}** (`{k}`)" for k, v in facts["per_run"].items())
    doc.para(f"Runs: {labels}. Every number below is read from the runs' artifacts; 95% confidence "
             "intervals in brackets.")
    _findings(facts, doc)
    figures = _figure_paths(figures_dir, facts["runs"]) if figures_dir else []
    if figures:
        doc.heading("Figures")
        for path, caption in figures:
            doc.figure(path, caption)
    elif figures_dir:
        doc.para(f"No figures for these runs in {figures_dir}; render them with "
                 f"`probe figures --runs {','.join(facts['runs'])} --out {figures_dir}`.")
    missing = [m for ms in facts["missing"].values() for m in ms]
    if missing:
        doc.heading("Missing artifacts")
        doc.bullets(missing)
    doc.heading("Reproduce")
    for name, rec in facts["per_run"].items():
        how = "as run by `make demo`" if rec["commands_logged"] else "rebuilt from config.json"
        doc.para(f"**{rec['label']}** (`{name}`), commands {how}:")
        doc.code("\n".join(rec["commands"]), "sh")
        doc.para(f"Configuration of `{name}` (config.json):")
        doc.code(json.dumps(rec["config"], indent=2, default=str), "json")
    return doc


def _figure_paths(figures_dir: Path, runs: list[str]) -> list[tuple[Path, str]]:
    """PNG figures in ``figures_dir`` whose manifest says they were drawn for exactly these runs."""
    manifest = figures_dir / "figures.json"
    if not manifest.is_file():
        return []
    data = json.loads(manifest.read_text())
    if data.get("runs") != runs:
        return []
    out = []
    for fig in sorted(FIGURES.values(), key=lambda f: f.number):
        entry = data.get("figures", {}).get(fig.name)
        png = figures_dir / f"{fig.name}.png"
        if entry and not entry.get("note") and png.is_file():
            out.append((png, f"Figure {fig.number}: {fig.title}."))
    return out


@dataclass
class Report:
    """A rendered report and the facts it states."""

    facts: dict[str, Any]
    markdown: str
    html: str


def build_report(runs: Sequence[str | Path], out: str | Path, figures_dir: str | Path | None = None,
                 title: str = "What CLS and patch tokens encode: findings") -> Report:
    """Compute facts from the runs' artifacts and render Markdown + HTML for ``out``.

    Args:
        runs: run names or folders.
        out: the report folder (Markdown links to figures are relative to it).
        figures_dir: folder with ``probe figures`` output (default ``<artifacts>/figures``).
        title: the report's first heading.
    """
    infos = load_runs(list(runs))
    facts = collect_facts(infos)
    fig_dir = Path(figures_dir) if figures_dir is not None else artifacts_root() / "figures"
    doc = build_document(facts, fig_dir, title)
    return Report(facts=facts, markdown=doc.markdown(Path(out)), html=doc.html(title))


def write_report(report: Report, out: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and facts.json atomically into ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FerlensError(f"{out} is a file; pass a folder for --out, e.g. artifacts/reports/demo.")
    return {"md": atomic_write_text(out / "report.md", report.markdown),
            "html": atomic_write_text(out / "report.html", report.html),
            "facts": atomic_write_json(out / "facts.json", report.facts)}
