"""One paper style for every ferlens chart, and static export through vl-convert.

The style targets a two-column paper: a single-column figure is 3.3 in wide and a full-width one
6.9 in; Vega's unit is the point in PDF output (1 px = 1 pt), so those are 238 and 497 units. Fonts are
8–10 pt at that size and the categorical palette is Okabe–Ito (safe for the common colour-vision
deficiencies). The app can use the same look with ``alt.theme.enable(THEME_NAME)``.

Determinism: PNG and SVG bytes are identical for identical charts; vl-convert's PDF embeds font subsets
under random tags, so PDF bytes differ between calls while the drawn content is the same.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import altair as alt

from train.errors import FerlensError
from train.io import atomic_write_bytes

THEME_NAME = "ferlens_paper"
FONT = "Liberation Sans, Arial, Helvetica, DejaVu Sans, sans-serif"
COLUMN_WIDTH = 238  # 3.3 in at 72 pt/in: the total width of a single-column figure
FULL_WIDTH = 497  # 6.9 in: a figure spanning both columns
PNG_SCALE = 3.0  # 216 dpi PNGs at the sizes above

# Okabe & Ito (2008), ordered so the first colours are the most distinct on white paper.
OKABE_ITO: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7",
                              "#F0E442", "#000000")
TOKEN_COLORS: dict[str, str] = {"cls": "#0072B2", "patch": "#E69F00", "patch_max": "#009E73",
                                "stem": "#CC79A7"}
# Expressions keep one colour everywhere (canonical order; contempt last).
EXPRESSION_COLORS: dict[str, str] = {"neutral": "#000000", "happiness": "#E69F00", "sadness": "#0072B2",
                                     "surprise": "#F0E442", "fear": "#CC79A7", "disgust": "#009E73",
                                     "anger": "#D55E00", "contempt": "#56B4E9"}
SEQUENTIAL_SCHEME = "viridis"
DIVERGING_SCHEME = "blueorange"

FORMATS = ("png", "svg", "pdf")


def paper_config() -> dict[str, Any]:
    """The Vega-Lite ``config`` block of the paper style (a fresh dict each call)."""
    axis = {"labelFont": FONT, "titleFont": FONT, "labelFontSize": 8, "titleFontSize": 9,
            "titleFontWeight": "normal", "gridColor": "#e5e5e5", "gridWidth": 0.6,
            "domainColor": "#666666", "tickColor": "#666666", "labelColor": "#222222",
            "titleColor": "#222222"}
    return {
        "font": FONT,
        "background": "white",
        "padding": 4,
        "view": {"continuousWidth": 200, "continuousHeight": 140, "strokeWidth": 0.6,
                 "stroke": "#bbbbbb"},
        "title": {"font": FONT, "fontSize": 10, "fontWeight": "bold", "anchor": "start",
                  "color": "#111111", "subtitleFont": FONT, "subtitleFontSize": 8,
                  "subtitleColor": "#444444"},
        "axis": axis,
        "header": {"labelFont": FONT, "titleFont": FONT, "labelFontSize": 9, "titleFontSize": 9,
                   "titleFontWeight": "normal"},
        "legend": {"labelFont": FONT, "titleFont": FONT, "labelFontSize": 8, "titleFontSize": 9,
                   "titleFontWeight": "normal", "symbolSize": 50, "orient": "right"},
        "range": {"category": list(OKABE_ITO), "heatmap": {"scheme": SEQUENTIAL_SCHEME},
                  "diverging": {"scheme": DIVERGING_SCHEME}},
        "line": {"strokeWidth": 1.5},
        "point": {"size": 18, "filled": True},
        "text": {"font": FONT, "fontSize": 8},
        "concat": {"spacing": 12},
        "facet": {"spacing": 8},
    }


def paper_theme() -> alt.theme.ThemeConfig:
    """The paper style as an Altair theme (registered as ``ferlens_paper``)."""
    return alt.theme.ThemeConfig(config=paper_config())  # type: ignore[typeddict-item]


alt.theme.register(THEME_NAME, enable=False)(paper_theme)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge where ``over`` wins (chart-level ``configure_*`` beats the theme)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def chart_spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    """The chart's Vega-Lite spec with the paper style merged under its own config.

    No global Altair state is changed (the app may render other themes in other threads), except
    the row limit of Altair's data transformer, lifted only while the spec is serialised.
    """
    with alt.data_transformers.enable("default", max_rows=None):
        spec = chart.to_dict()
    spec["config"] = _merge(paper_config(), spec.get("config", {}))
    return spec


def _to_png(spec: dict[str, Any], scale: float) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(spec, scale=scale)


def _to_svg(spec: dict[str, Any], scale: float) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(spec).encode("utf-8")


def _to_pdf(spec: dict[str, Any], scale: float) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_pdf(spec)


CONVERTERS: dict[str, Callable[[dict[str, Any], float], bytes]] = {
    "png": _to_png, "svg": _to_svg, "pdf": _to_pdf}


def chart_bytes(chart: alt.TopLevelMixin, fmt: str = "png", *, scale: float = PNG_SCALE) -> bytes:
    """Render one chart to bytes in ``fmt`` (png, svg or pdf) with the paper style."""
    if fmt not in CONVERTERS:
        raise FerlensError(f"Unknown figure format '{fmt}'; use one of {', '.join(CONVERTERS)}.")
    return CONVERTERS[fmt](chart_spec(chart), scale)


def save_chart(chart: alt.TopLevelMixin, out_stem: str | os.PathLike,
               formats: Sequence[str] = FORMATS, *, scale: float = PNG_SCALE) -> dict[str, Path]:
    """Write ``<out_stem>.<fmt>`` for every format, atomically, and return the paths by format.

    Args:
        chart: any Altair top-level chart (layer, facet or concat).
        out_stem: path without extension, e.g. ``artifacts/figures/fig1_probe_accuracy``.
        formats: subset of ``("png", "svg", "pdf")``.
        scale: PNG pixels per Vega unit (3 → 216 dpi at paper size).
    """
    unknown = [f for f in formats if f not in CONVERTERS]
    if unknown:
        raise FerlensError(f"Unknown figure format(s) {', '.join(unknown)}; use png, svg or pdf.")
    spec = chart_spec(chart)
    stem = Path(out_stem)
    return {fmt: atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"), CONVERTERS[fmt](spec, scale))
            for fmt in formats}


def color_scale(domain: Sequence[str]) -> alt.Scale:
    """An Okabe–Ito scale with a fixed domain, so a variant keeps its colour across figures."""
    domain = list(domain)
    return alt.Scale(domain=domain, range=[OKABE_ITO[i % len(OKABE_ITO)] for i in range(len(domain))])


def token_scale(domain: Sequence[str]) -> alt.Scale:
    """Colours for token readouts: CLS blue, patch orange, others from the palette."""
    domain = list(domain)
    spare = iter(c for c in OKABE_ITO if c not in TOKEN_COLORS.values())
    return alt.Scale(domain=domain, range=[TOKEN_COLORS.get(d) or next(spare) for d in domain])


def expression_scale(domain: Sequence[str]) -> alt.Scale:
    """Fixed colours for the canonical expressions; other labels take the palette in order."""
    domain = list(domain)
    spare = iter(OKABE_ITO * 4)
    return alt.Scale(domain=domain, range=[EXPRESSION_COLORS.get(d) or next(spare) for d in domain])
