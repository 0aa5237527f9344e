"""The app's script, served by the st.App of ``app/main.py``: draws the sidebar, then routes to the pages."""
from __future__ import annotations

import os
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # streamlit puts app/ on sys.path; the pages import the `app` package
    sys.path.insert(0, str(_REPO))

import streamlit as st  # noqa: E402

from app.loaders import script_run, warm_up  # noqa: E402
from app.state import sidebar_ui  # noqa: E402

# Pages live in views/, not pages/: Streamlit treats a pages/ folder beside the entry script as a
# legacy (v1) multipage app and may run a page file without this script (no sidebar, no selection).
_PAGES = Path(__file__).resolve().parent / "views"

# (file, title, icon) in menu order
PAGES: list[tuple[str, str, str]] = [
    ("overview.py", "Overview", ":material/dashboard:"),
    ("probes.py", "Probes", ":material/insights:"),
    ("embeddings.py", "Embeddings", ":material/scatter_plot:"),
    ("explain.py", "Explain", ":material/visibility:"),
    ("similarity.py", "Similarity", ":material/grid_on:"),
    ("interventions.py", "Interventions", ":material/science:"),
    ("efficiency.py", "Efficiency", ":material/speed:"),
]

st.set_page_config(page_title="ferlens", page_icon=":material/face:", layout="wide")
with script_run():  # the background warm-up waits while this run draws
    nav = st.navigation([st.Page(_PAGES / f, title=t, icon=i, default=(k == 0)) for k, (f, t, i) in enumerate(PAGES)])
    selection = sidebar_ui()
    nav.run()
if os.environ.get("FERLENS_APP_WARMUP", "1") != "0":  # AppTest tests switch it off
    warm_up(selection.runs)  # after the page is drawn: the selected runs' models load in the background
