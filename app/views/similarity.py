"""Similarity: linear-CKA heatmaps (layer × layer, CLS vs patch, run vs run)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app import actions, charts
from app.state import selection


def cka_frame(run: str, matrix: dict) -> pd.DataFrame:
    """Tidy (run, matrix, x, y, value) of one CKA matrix."""
    return pd.DataFrame([{"run": run, "matrix": matrix["name"], "x": x, "y": y, "value": float(matrix["values"][j][i])}
                         for j, y in enumerate(matrix["y_labels"]) for i, x in enumerate(matrix["x_labels"])])


def axis_titles(name: str) -> tuple[str, str]:
    """('cls layer', 'patch layer') for 'cls_vs_patch'; ('runA layer', 'runB layer') for 'runA_vs_runB_cls'."""
    left, _, right = name.partition("_vs_")
    if not right:
        return "layer", "layer"
    return f"{left} layer", f"{right} layer"


def main() -> None:
    sel = selection()
    st.title("Similarity")
    st.caption("Linear CKA between layers of one readout, between CLS and patch readouts, and across runs.")
    runs = actions.usable_runs(sel.runs)
    if not runs:
        return
    found = actions.gather("cka", runs, sel.root, key="sim_cka")
    if not found:
        return
    names = list(dict.fromkeys(m["name"] for d in found.values() for m in d["matrices"]))
    chosen = st.multiselect("Matrices", names, default=names[:2], key="sim_matrices")
    cols = st.columns(min(max(len(found), 1), 3))
    k = 0
    for run, data in found.items():
        for m in data["matrices"]:
            if m["name"] not in chosen:
                continue
            df = cka_frame(run, m)
            with cols[k % len(cols)]:
                y_title, x_title = axis_titles(m["name"])
                chart = charts.heatmap(df, x="x", y="y", value="value", title=f"{run}: {m['name']}",
                                       x_sort=m["x_labels"], y_sort=m["y_labels"], domain=(0, 1),
                                       x_title=x_title, y_title=y_title)
                charts.show_chart(chart, df, f"cka_{run}_{m['name']}", key=f"sim_chart_{k}", stretch=False)
            k += 1
    if k == 0:
        st.info("Pick at least one matrix.")


main()
