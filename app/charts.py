"""Altair charts over tidy DataFrames, and the chart/table widgets with PNG/SVG/CSV downloads."""
from __future__ import annotations

import re

import altair as alt
import pandas as pd
import streamlit as st

alt.data_transformers.disable_max_rows()

HEIGHT = 300
# Okabe–Ito: distinct for the common colour-vision deficiencies (the palette of the paper figures)
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000"]


def colour(field: str, title: str | None = None, legend: bool = True, n: int = 0) -> alt.Color:
    """Nominal colour encoding with the Okabe–Ito palette (tableau20 when more than 8 categories)."""
    scale = alt.Scale(range=PALETTE) if n <= len(PALETTE) else alt.Scale(scheme="tableau20")
    return alt.Color(f"{field}:N", title=title or field, scale=scale, legend=alt.Legend() if legend else None)


def line_with_ci(df: pd.DataFrame, *, x: str, y: str, lo: str | None = None, hi: str | None = None,
                 color: str = "run", dash: str | None = None, chance: float | None = None,
                 x_title: str | None = None, y_title: str | None = None,
                 tooltip: list[str] | None = None, x_sort: list | None = None) -> alt.LayerChart:
    """Lines (one per ``color`` × ``dash``) with a 95% CI band (mark_area) and an optional chance rule.

    Args:
        df: tidy frame, one row per point.
        x, y: column names; ``lo``/``hi`` the CI bounds (band drawn only when given).
        color: column that picks the line colour (usually the run).
        dash: column mapped to stroke dash (e.g. tokens cls/patch).
        chance: y value of a dashed grey chance line.
        x_sort: when given, x is ordinal in this order (e.g. layer names); otherwise quantitative.
    """
    if x_sort is not None:
        enc_x = alt.X(f"{x}:O", title=x_title or x, sort=x_sort, axis=alt.Axis(labelAngle=0))
    else:
        enc_x = alt.X(f"{x}:Q", title=x_title or x, axis=alt.Axis(tickMinStep=1))
    base = alt.Chart(df)
    layers = []
    detail = [color] + ([dash] if dash else [])
    if lo and hi:
        band = base.mark_area(opacity=0.18).encode(
            x=enc_x, y=alt.Y(f"{lo}:Q", title=y_title or y), y2=f"{hi}:Q",
            color=colour(color), detail=[alt.Detail(f"{d}:N") for d in detail])
        layers.append(band)
    y_enc = alt.Y(f"{y}:Q", title=y_title or y, scale=alt.Scale(zero=False))
    tips = tooltip or [c for c in df.columns if df[c].dtype != object or c in detail][:10]
    # No layer sets legend=None: Vega-Lite merges the legends of a shared scale across layers, and one
    # null legend (or a dash legend merged with a shape legend) removes the merged legend entirely.
    line_enc = dict(x=enc_x, y=y_enc, color=colour(color), detail=[alt.Detail(f"{d}:N") for d in detail])
    point_enc = dict(x=enc_x, y=y_enc, color=colour(color), tooltip=tips)
    if dash:
        line_enc["strokeDash"] = alt.StrokeDash(f"{dash}:N", title=dash)
        point_enc["shape"] = alt.Shape(f"{dash}:N", title=dash)
    layers.append(base.mark_line().encode(**line_enc))
    layers.append(base.mark_point(filled=True, size=45).encode(**point_enc))
    if chance is not None and pd.notna(chance):
        rule = alt.Chart(pd.DataFrame({"chance": [float(chance)]})).mark_rule(
            color="gray", strokeDash=[4, 4]).encode(y="chance:Q", tooltip=["chance:Q"])
        layers.append(rule)
    return alt.layer(*layers).properties(height=HEIGHT, width=480)  # width is for PNG/SVG; the app stretches


def heatmap(df: pd.DataFrame, *, x: str, y: str, value: str, title: str = "",
            x_sort: list | None = None, y_sort: list | None = None, scheme: str = "viridis",
            domain: tuple[float, float] | None = None, size: int = 260, x_title: str | None = None,
            y_title: str | None = None) -> alt.LayerChart:
    """A rect heatmap with the value written in each cell (text colour flips at the scale's middle)."""
    lo, hi = domain if domain else (float(df[value].min()), float(df[value].max()))
    mid = (lo + hi) / 2
    dark_high = scheme in ("blues", "greens", "reds", "purples", "greys", "oranges")
    scale = alt.Scale(scheme=scheme, domain=list(domain)) if domain else alt.Scale(scheme=scheme)
    enc = dict(x=alt.X(f"{x}:N", sort=x_sort, title=x_title or x, axis=alt.Axis(labelOverlap=False)),
               y=alt.Y(f"{y}:N", sort=y_sort, title=y_title or y, axis=alt.Axis(labelOverlap=False)))
    rect = alt.Chart(df).mark_rect().encode(**enc, color=alt.Color(f"{value}:Q", scale=scale),
                                            tooltip=[x, y, alt.Tooltip(f"{value}:Q", format=".3f")])
    text = alt.Chart(df).mark_text(fontSize=9).encode(
        **enc, text=alt.Text(f"{value}:Q", format=".2f"),
        color=alt.condition(f"datum.{value} > {mid}", alt.value("white" if dark_high else "black"),
                            alt.value("black" if dark_high else "white")))
    return alt.layer(rect, text).properties(title=title, width=size, height=size)


def scatter(df: pd.DataFrame, *, x: str, y: str, color: str, tooltip: list[str]) -> alt.Chart:
    """Embedding scatter coloured by ``color`` (nominal unless float-valued)."""
    if pd.api.types.is_float_dtype(df[color]):
        enc = alt.Color(f"{color}:Q", title=color, scale=alt.Scale(scheme="viridis"))
    else:
        enc = colour(color, n=df[color].nunique())
    return alt.Chart(df).mark_circle(size=28, opacity=0.8).encode(
        x=alt.X(f"{x}:Q", axis=None), y=alt.Y(f"{y}:Q", axis=None),
        color=enc, tooltip=tooltip).properties(height=380, width=420).interactive()


def bars(df: pd.DataFrame, *, x: str, y: str, color: str | None = None, highlight: str | None = None,
         height: int = 190) -> alt.Chart:
    """Horizontal bars (e.g. class probabilities); ``highlight`` names a boolean column drawn darker."""
    enc = dict(x=alt.X(f"{x}:Q", scale=alt.Scale(domain=[0, 1])),
               y=alt.Y(f"{y}:N", sort=None, title=None, axis=alt.Axis(labelOverlap=False)),
               tooltip=[y, alt.Tooltip(f"{x}:Q", format=".3f")])
    if highlight:
        enc["color"] = alt.condition(f"datum.{highlight}", alt.value("#d62728"), alt.value("#9ecae1"))
    elif color:
        enc["color"] = alt.Color(f"{color}:N")
    return alt.Chart(df).mark_bar().encode(**enc).properties(height=height)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "chart"


def _png(spec: dict) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(spec, scale=2)


def _svg(spec: dict) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(spec).encode("utf-8")


def show_chart(chart: alt.TopLevelMixin, data: pd.DataFrame, name: str, *, key: str, stretch: bool = True) -> None:
    """Render a chart with PNG / SVG / CSV download buttons (images rendered only when clicked).

    Args:
        chart: the Altair chart.
        data: the tidy frame behind it (the CSV download).
        name: file stem for the downloads.
        key: unique widget key prefix.
        stretch: fill the column width (False keeps the chart's own size, e.g. square heatmaps).
    """
    # theme=None: the look of the exported PNG/SVG (Streamlit's theme drops some legends, e.g. shape)
    st.altair_chart(chart, width="stretch" if stretch else "content", theme=None, key=f"{key}_chart")
    stem = _slug(name)  # the spec is built only when a download is clicked (to_dict validates: ~0.1 s)
    row = st.container(horizontal=True, gap="small")
    row.download_button("PNG", data=lambda: _png(chart.to_dict()), file_name=f"{stem}.png", mime="image/png",
                       key=f"{key}_png", on_click="ignore")
    row.download_button("SVG", data=lambda: _svg(chart.to_dict()), file_name=f"{stem}.svg", mime="image/svg+xml",
                       key=f"{key}_svg", on_click="ignore")
    row.download_button("CSV", data=lambda: data.to_csv(index=False).encode(), file_name=f"{stem}.csv",
                       mime="text/csv", key=f"{key}_csv", on_click="ignore")


def show_table(df: pd.DataFrame, name: str, *, key: str) -> None:
    """A dataframe with a CSV download button."""
    st.dataframe(df, width="stretch", hide_index=True, key=f"{key}_table")
    st.download_button("Table CSV", data=df.to_csv(index=False).encode(), file_name=f"{_slug(name)}.csv",
                       mime="text/csv", key=f"{key}_tcsv", on_click="ignore")
