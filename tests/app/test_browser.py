"""The app in a real browser: `streamlit run app/main.py` + Playwright driving Debian's headless chromium."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from browser_flow import CHROMIUM, run_flow

pytest.importorskip("train.models")
pytest.importorskip("train.engine")
pytest.importorskip("probe.attribution")


@pytest.mark.browser
@pytest.mark.slow
def test_every_page_renders_in_chromium(demo_root, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium (make chromium) to run the browser test")
    pytest.importorskip("playwright.sync_api")
    shots = os.environ.get("FERLENS_SCREENSHOTS")
    timings = run_flow(demo_root, tmp_path / "browser", Path(shots) if shots else None)
    print("app timings (s):", {k: v for k, v in timings.items() if k != "problems"})
    assert all(not p for p in timings["problems"].values()), timings["problems"]
    pngs = sorted(p.name for p in (tmp_path / "browser").glob("*.png"))
    assert len(pngs) == 10, pngs  # 9 screenshots + the downloaded chart PNG
    assert timings["download_png_bytes"] > 2000
    assert (tmp_path / "browser" / "timings.json").is_file()
    # the speed targets of the issue are reported, not asserted (2 shared cores); only catch hangs
    assert timings["first_page"] < 60 and timings["page_switch_max"] < 60 and timings["explain_request"] < 60
