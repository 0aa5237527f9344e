"""Embeddings: UMAP / PCA scatter of a readout at one layer, coloured by any target; hover shows the sample."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app import actions, charts
from app.state import selection
from train.errors import FerlensError


def _layer_key(name: str) -> tuple[int, str]:
    """Order layers: stem, tokens, blocks.0, blocks.1, ... (CaiT's class blocks last)."""
    from probe.figures import layer_position

    try:
        return layer_position(name), name
    except FerlensError:  # an unknown name sorts first; the page still shows it
        return -2, name


def controls_ui(df: pd.DataFrame, default_color: str) -> tuple[str, str, str, str]:
    """Method, readout, layer (slider) and colour column."""
    c1, c2, c3 = st.columns(3)
    method = c1.radio("Method", sorted(df["method"].unique(), reverse=True), horizontal=True, key="emb_method")
    tokens = c2.radio("Readout", sorted(df["tokens"].unique()), horizontal=True, key="emb_tokens")
    colour_options = [c for c in df.columns if c not in ("sample_id", "layer", "tokens", "method", "x", "y", "run")]
    index = colour_options.index(default_color) if default_color in colour_options else 0
    color = c3.selectbox("Colour by", colour_options, index=index, key="emb_color")
    layers = sorted(df["layer"].unique(), key=_layer_key)
    layer = st.select_slider("Layer", layers, value=layers[-1], key="emb_layer") if len(layers) > 1 else layers[0]
    return method, tokens, layer, color


def main() -> None:
    sel = selection()
    st.title("Embeddings")
    runs = actions.usable_runs(sel.runs)
    if not runs:
        return
    tables = actions.gather("umap", runs, sel.root, key="emb_umap")
    if not tables:
        return
    df = pd.concat([t.assign(run=r) for r, t in tables.items()], ignore_index=True)
    method, tokens, layer, color = controls_ui(df, sel.target)
    d = df[(df["method"] == method) & (df["tokens"] == tokens) & (df["layer"] == layer)]
    tooltip = ["sample_id", "run", color] + [c for c in ("expression", "identity") if c in d.columns and c != color]
    cols = st.columns(min(len(tables), 3))
    for k, run in enumerate(tables):
        with cols[k % len(cols)]:
            st.markdown(f"**{run}** — {method.upper()} of `{tokens}` at `{layer}`")
            dr = d[d["run"] == run]
            if dr.empty:
                st.info(f"{run} has no {method}/{tokens} embedding at {layer}.")
                continue
            charts.show_chart(charts.scatter(dr, x="x", y="y", color=color, tooltip=tooltip), dr,
                              f"embedding_{run}_{method}_{tokens}_{layer}", key=f"emb_chart_{k}")


main()
