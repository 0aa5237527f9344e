"""Overview: per run model, size, speed, accuracy/macro-F1 with CIs, training curves, confusion matrices."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app import actions, charts, loaders
from app.state import selection


def summary_table(configs: dict, metrics: dict, profiles: dict) -> pd.DataFrame:
    """One row per run: model, params, MACs, best throughput, accuracy / macro-F1 with 95% CIs."""
    rows = []
    for run, cfg in configs.items():
        m, p = metrics.get(run, {}), profiles.get(run, {})
        ci = m.get("ci95", {})
        thr = max((r["throughput"] for r in p.get("rows", [])), default=np.nan)
        rows.append({"run": run, "model": cfg["model"]["name"], "data": (cfg.get("data") or {}).get("spec"),
                     "params_M": p.get("params", np.nan) / 1e6, "MACs_G": p.get("macs", np.nan) / 1e9,
                     "throughput_img_s": thr, "accuracy": m.get("accuracy", np.nan),
                     "accuracy_ci95": _ci(ci.get("accuracy")), "macro_f1": m.get("macro_f1", np.nan),
                     "macro_f1_ci95": _ci(ci.get("macro_f1")),
                     "balanced_accuracy": m.get("balanced_accuracy", np.nan), "ece": m.get("ece", np.nan),
                     "best_epoch": m.get("best_epoch")})
    return pd.DataFrame(rows)


def _ci(pair) -> str:
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""


def metric_frame(metrics: dict) -> pd.DataFrame:
    """Tidy (run, metric, value, lo, hi) for accuracy and macro-F1."""
    rows = []
    for run, m in metrics.items():
        for name in ("accuracy", "macro_f1"):
            lo, hi = (m.get("ci95") or {}).get(name, [np.nan, np.nan])
            rows.append({"run": run, "metric": name, "value": float(m[name]) if name in m else np.nan,
                         "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def metric_chart(df: pd.DataFrame) -> alt.LayerChart:
    base = alt.Chart(df).encode(y=alt.Y("run:N", title=None), color=charts.colour("run", legend=False))
    err = base.mark_errorbar(ticks=True).encode(x=alt.X("lo:Q", title="score (95% CI)", scale=alt.Scale(zero=False)),
                                                x2="hi:Q")
    pts = base.mark_point(filled=True, size=70).encode(x="value:Q", tooltip=["run", "metric", "value", "lo", "hi"])
    return alt.layer(err, pts).properties(height=40 + 24 * df["run"].nunique(), width=320).facet(
        column=alt.Column("metric:N", title=None))


def history_frame(histories: dict) -> pd.DataFrame:
    """Tidy (run, epoch, series, value, panel) from history.csv files."""
    parts = []
    for run, h in histories.items():
        cols = [c for c in ("train_loss", "val_loss", "val_acc", "val_macro_f1") if c in h.columns]
        long = h.melt(id_vars=["epoch"], value_vars=cols, var_name="series", value_name="value")
        long["run"] = run
        long["panel"] = np.where(long["series"].str.endswith("loss"), "loss", "accuracy")
        parts.append(long)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def confusion_frame(run: str, m: dict) -> pd.DataFrame:
    """Row-normalised confusion matrix as tidy (true, predicted, rate, count)."""
    cm = np.asarray(m["confusion_matrix"], dtype=float)
    names = m.get("label_names") or [str(i) for i in range(len(cm))]
    rates = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
    return pd.DataFrame([{"run": run, "true": names[i], "predicted": names[j], "rate": rates[i, j],
                          "count": int(cm[i, j])} for i in range(len(cm)) for j in range(len(cm))])


def main() -> None:
    sel = selection()
    st.title("Overview")
    runs = actions.usable_runs(sel.runs)
    if not runs:
        return
    configs = {r.name: loaders.load(r, "config").data for r in runs}
    metrics = actions.gather("metrics", runs, sel.root, key="ov_metrics")
    profiles = actions.gather("profile", runs, sel.root, key="ov_profile")
    if configs:
        charts.show_table(summary_table(configs, metrics, profiles), "overview_summary", key="ov_summary")
    if metrics:
        st.subheader("Accuracy and macro-F1 (95% CI)")
        df = metric_frame(metrics)
        charts.show_chart(metric_chart(df), df, "overview_metrics", key="ov_metric_chart")
    histories = actions.gather("history", runs, sel.root, key="ov_history")
    if histories:
        st.subheader("Training curves")
        hist = history_frame(histories)
        left, right = st.columns(2)
        for col, panel in ((left, "loss"), (right, "accuracy")):
            with col:
                d = hist[hist["panel"] == panel]
                charts.show_chart(charts.line_with_ci(d, x="epoch", y="value", dash="series", y_title=panel,
                                                      tooltip=["run", "series", "epoch", "value"]),
                                  d, f"training_{panel}", key=f"ov_hist_{panel}")
    with_cm = {r: m for r, m in metrics.items() if m.get("confusion_matrix")}
    if with_cm:
        st.subheader("Confusion matrices (rows: true class, normalised)")
        cols = st.columns(min(len(with_cm), 3))
        for k, (run, m) in enumerate(with_cm.items()):
            with cols[k % len(cols)]:
                df = confusion_frame(run, m)
                names = m.get("label_names")
                chart = charts.heatmap(df, x="predicted", y="true", value="rate", title=run, x_sort=names,
                                       y_sort=names, scheme="blues", domain=(0, 1), size=300)
                charts.show_chart(chart, df, f"confusion_{run}", key=f"ov_cm_{k}", stretch=False)


main()
