"""ferlens app entry: ``streamlit run app/main.py``.

An ``st.App`` (Streamlit's own server, with a lifespan hook) serving ``app/ui.py`` — the sidebar and the
pages. The hook starts the explain worker (``app.compute``: a process that imports torch, timm, captum and
pytorch-grad-cam, about 5 s on one core, on the other core) and the background warm-up as the server
starts: while the browser loads Streamlit's frontend, the server imports what the first page draws with
(pandas, Altair, pyarrow) and then torch and the datasets' code, only ever between script runs
(``app.loaders.script_run``), so neither the first page nor the first Explain visit pays for them. The hook
stops the worker when the server shuts down.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # the warm-up imports the `app` package from the repo root
    sys.path.insert(0, str(_REPO))

import streamlit as st  # noqa: E402


def _warm_up() -> None:
    from app import compute  # off the event loop, which must start serving at once

    compute.start()
    if os.environ.get("FERLENS_APP_WARMUP", "1") != "0":
        from app.loaders import warm_up

        warm_up([])  # the import stack only; the selected runs' models follow the first page (ui.py)


@asynccontextmanager
async def _lifespan(_app):
    threading.Thread(target=_warm_up, name="ferlens-warm-up-start", daemon=True).start()
    try:
        yield
    finally:
        from app import compute

        compute.stop()


app = st.App(Path(__file__).resolve().parent / "ui.py", lifespan=_lifespan)
