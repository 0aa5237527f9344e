"""Interventions: accuracy after replacing the CLS token (mean / shuffle / zero) at each layer, per run."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app import actions, charts
from app.state import selection
from probe.figures import layer_position


def main() -> None:
    sel = selection()
    st.title("Interventions")
    st.caption("Accuracy when the CLS token is replaced after a layer: a large drop means later layers read it.")
    runs = actions.usable_runs(sel.runs)
    if not runs:
        return
    found = actions.gather("interventions", runs, sel.root, key="int_csv")
    if not found:
        return
    df = pd.concat([t.assign(run=r) for r, t in found.items()], ignore_index=True)
    df["layer_index"] = [layer_position(s) if str(s) not in ("none", "input") else -1 for s in df["layer"]]
    modes = sorted(df["mode"].unique())
    default = [m for m in ("mean", "shuffle", "zero") if m in modes] or modes
    chosen = st.multiselect("Modes", modes, default=default, key="int_modes")
    metric = st.radio("Score", ["accuracy", "delta_accuracy"], horizontal=True, key="int_metric")
    d = df[df["mode"].isin(chosen) & (df["layer_index"] >= 0)].sort_values(["run", "mode", "layer_index"])
    if d.empty:
        st.info("Pick at least one mode with per-layer rows.")
        return
    order = list(d.drop_duplicates("layer").sort_values("layer_index")["layer"])
    chart = charts.line_with_ci(d, x="layer", y=metric, dash="mode", x_sort=order, x_title="CLS replaced after",
                                y_title=metric, tooltip=["run", "layer", "mode", "accuracy", "delta_accuracy", "n"])
    charts.show_chart(chart, d, f"interventions_{metric}", key="int_chart")
    charts.show_table(df.drop(columns=["layer_index"]), "interventions", key="int_table")
    attribution = actions.gather("attribution", runs, sel.root, key="int_attr")
    if attribution:
        st.subheader("Attribution metrics")
        a = pd.concat([t.assign(run=r) for r, t in attribution.items()], ignore_index=True)
        charts.show_table(a, "attribution_metrics", key="int_attr_table")


main()
