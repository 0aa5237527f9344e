"""Probes: linear-probe score vs layer, one line per run and readout, CI bands, chance line, selectivity."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app import actions, charts
from app.state import selection


def probe_frame(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All runs' flattened linear.json rows with a ``run`` column."""
    parts = [df.assign(run=run) for run, df in tables.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def controls_ui(df: pd.DataFrame, default_target: str) -> tuple[str, list[str], str]:
    """Target, readouts and metric view chosen on the page."""
    targets = sorted(df["target"].unique())
    index = targets.index(default_target) if default_target in targets else 0
    c1, c2, c3 = st.columns([2, 3, 2])
    target = c1.selectbox("Probe target", targets, index=index, key="probe_target")
    readouts = sorted(df.loc[df["target"] == target, "tokens"].unique())
    default = [r for r in ("cls", "patch") if r in readouts] or readouts
    tokens = c2.multiselect("Readouts", readouts, default=default, key="probe_tokens")
    view = c3.radio("Show", ["score", "selectivity"], horizontal=True, key="probe_view")
    return target, tokens, view


def main() -> None:
    sel = selection()
    st.title("Probes")
    st.caption("Linear probe on each layer's readout; shaded bands are 95% CIs, the dashed line is chance.")
    runs = actions.usable_runs(sel.runs)
    if not runs:
        return
    tables = actions.gather("linear", runs, sel.root, key="pr_linear")
    if not tables:
        return
    df = probe_frame(tables)
    target, tokens, view = controls_ui(df, sel.target)
    d = df[(df["target"] == target) & (df["tokens"].isin(tokens))].sort_values(["run", "tokens", "layer_index"])
    if d.empty:
        st.info("Pick at least one readout.")
        return
    metric = d["metric"].iloc[0]
    tooltip = ["run", "layer", "tokens", "score", "lo", "hi", "selectivity"]
    order = list(d.drop_duplicates("layer").sort_values("layer_index")["layer"])
    if view == "score":
        chance = d["chance"].dropna()
        chart = charts.line_with_ci(d, x="layer", y="score", lo="lo", hi="hi", dash="tokens", x_sort=order,
                                    chance=chance.iloc[0] if metric == "accuracy" and len(chance) else None,
                                    y_title=f"{target} {metric}", tooltip=tooltip)
    else:
        chart = charts.line_with_ci(d.dropna(subset=["selectivity"]), x="layer", y="selectivity", x_sort=order,
                                    dash="tokens", y_title=f"{target} selectivity (probe − control)",
                                    tooltip=tooltip)
    charts.show_chart(chart, d, f"probes_{target}_{view}", key="pr_chart")
    st.subheader("Table")
    cols = ["run", "target", "layer", "layer_index", "tokens", "metric", "score", "lo", "hi", "chance",
            "control_accuracy", "selectivity", "n_test", "dim"]
    charts.show_table(d[[c for c in cols if c in d.columns]], f"probes_{target}", key="pr_table")


main()
