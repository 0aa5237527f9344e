"""Efficiency: the profile table (params, MACs, FLOPs, memory) and throughput vs batch size."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app import actions, charts
from app.state import selection


def profile_frames(profiles: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run, tidy rows per run × batch size)."""
    summary, rows = [], []
    for run, p in profiles.items():
        summary.append({"run": run, "model": p.get("model"), "img_size": p.get("img_size"), "device": p.get("device"),
                        "params_M": p.get("params", 0) / 1e6, "MACs_G": p.get("macs", 0) / 1e9,
                        "FLOPs_G": p.get("flops", 0) / 1e9,
                        "peak_mem_mb": max((r.get("peak_mem_mb") or 0 for r in p.get("rows", [])), default=None)})
        rows += [{"run": run, **r} for r in p.get("rows", [])]
    return pd.DataFrame(summary), pd.DataFrame(rows)


def throughput_chart(df: pd.DataFrame, y: str) -> alt.Chart:
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("batch_size:Q", scale=alt.Scale(type="log", base=2), title="batch size"),
        y=alt.Y(f"{y}:Q", title=y), color=charts.colour("run"),
        tooltip=["run", "batch_size", "throughput", "latency_ms", "peak_mem_mb"]).properties(height=300)


def main() -> None:
    sel = selection()
    st.title("Efficiency")
    runs = actions.usable_runs(sel.runs)
    if not runs:
        return
    profiles = actions.gather("profile", runs, sel.root, key="eff_profile")
    if not profiles:
        return
    summary, rows = profile_frames(profiles)
    charts.show_table(summary, "profile_summary", key="eff_summary")
    if not rows.empty:
        y = st.radio("Y axis", ["throughput", "latency_ms", "peak_mem_mb"], horizontal=True, key="eff_y")
        charts.show_chart(throughput_chart(rows, y), rows, f"profile_{y}", key="eff_chart")
        charts.show_table(rows, "profile_rows", key="eff_rows")


main()
