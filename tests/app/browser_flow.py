"""Drive the real app in headless Debian chromium (Playwright sync API) and time what a user waits for.

Used by ``test_browser.py`` and ``bench/bench_app.py``. ``run_flow(root, out_dir)`` starts
``streamlit run app/main.py`` on a free port with ``FERLENS_ARTIFACTS=root``, visits every page, waits for
the Vega charts to render, checks that no exception block or "Traceback" is shown, saves a screenshot per
page and returns the timings (seconds), also written to ``out_dir/timings.json``.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# (nav link text, page title, minimum rendered Vega charts) in the order a user would visit them
PAGES = [("Overview", "Overview", 5), ("Probes", "Probes", 1), ("Embeddings", "Embeddings", 2),
         ("Explain", "Explain", 2), ("Similarity", "Similarity", 4), ("Interventions", "Interventions", 1),
         ("Efficiency", "Efficiency", 1)]
RENDERED = ".vega-embed canvas, .vega-embed svg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, log: Path) -> subprocess.Popen:
    """``streamlit run app/main.py`` headless on ``port`` with the given artifacts root."""
    env = dict(os.environ, FERLENS_ARTIFACTS=str(root), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py"), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    url = f"http://127.0.0.1:{port}/_stcore/health"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"streamlit did not answer {url} within {timeout} s")


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the server process has used: a load-independent cost measure."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Before an action: watch the app's script state, so a rerun that starts and ends between two polls is
# still seen ('running' may last only milliseconds; waiting for it to be visible would time out instead).
ARM = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  window.__ferlensRan = false;
  if (window.__ferlensObserver) window.__ferlensObserver.disconnect();
  window.__ferlensObserver = new MutationObserver(() => {
    if (app.getAttribute('data-test-script-state') === 'running') window.__ferlensRan = true;
  });
  window.__ferlensObserver.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""


def arm(page) -> None:
    """Call before a click that triggers a rerun: ``wait_idle`` then knows whether the rerun started."""
    page.evaluate(ARM)


def wait_idle(page, timeout_ms: int = 60_000, started: bool = False) -> None:
    """Wait until the script run triggered by the last action (after ``arm``) has finished.

    Args:
        started: the caller has seen output of the new run (a new title, a new caption), so it has begun.
    """
    if not started:
        try:  # seen by the observer of ``arm``; without one (or when React batched the state away) go on
            page.wait_for_function("window.__ferlensRan === true", timeout=1500)
        except Exception:  # playwright's TimeoutError
            pass
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout_ms)


def wait_page(page, title: str, n_charts: int, timeout_ms: int = 60_000) -> None:
    """Wait for the page title, the end of the script run and ``n_charts`` rendered Vega charts."""
    page.wait_for_selector(f'h1:has-text("{title}")', timeout=timeout_ms)
    wait_idle(page, timeout_ms, started=True)  # the new page's title comes from the new run
    page.wait_for_function(f"document.querySelectorAll('{RENDERED}').length >= {n_charts}", timeout=timeout_ms)
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=timeout_ms)


def problems(page) -> list[str]:
    """Exception blocks or tracebacks shown on the page."""
    found = []
    if page.locator('[data-testid="stException"]').count():
        found.append("an st.exception block is shown")
    if "Traceback" in page.inner_text("body"):
        found.append("'Traceback' appears in the page")
    return found


def run_flow(root: Path, out_dir: Path, screenshot_dir: Path | None = None) -> dict:
    """Visit every page in chromium and time it; returns the timings dict (also ``timings.json``).

    Args:
        root: artifacts root with the demo runs.
        out_dir: where screenshots, the server log and timings.json go.
        screenshot_dir: optional second folder for the screenshots (``$FERLENS_SCREENSHOTS``).
    """
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    shots = [out_dir] + ([screenshot_dir] if screenshot_dir else [])
    for d in shots:
        d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    timings: dict = {"pages": {}, "problems": {}, "server_cpu": {}}
    t0 = time.perf_counter()
    proc = start_server(root, port, out_dir / "streamlit.log")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            # tall viewport: Streamlit scrolls inside its own container, so full-page shots need the height here
            page = browser.new_page(viewport={"width": 1400, "height": 2600})
            wait_healthy(port, proc)
            t_up = time.perf_counter()
            timings["server_start"] = t_up - t0
            c = server_cpu(proc.pid)
            page.goto(f"http://127.0.0.1:{port}/")
            wait_page(page, "Overview", PAGES[0][2])
            timings["first_page"] = time.perf_counter() - t_up
            timings["server_cpu"]["first_page"] = server_cpu(proc.pid) - c

            def shoot(name: str) -> None:
                for d in shots:
                    page.screenshot(path=str(d / f"{name}.png"), full_page=True)

            shoot("01_overview")
            timings["problems"]["Overview"] = problems(page)
            for k, (link, title, n) in enumerate(PAGES[1:], start=2):
                arm(page)
                t, c = time.perf_counter(), server_cpu(proc.pid)
                page.locator('[data-testid="stSidebarNavLink"]', has_text=link).first.click()
                wait_page(page, title, n)
                timings["pages"][title] = time.perf_counter() - t
                timings["server_cpu"][title] = server_cpu(proc.pid) - c
                timings["problems"][title] = problems(page)
                shoot(f"{k:02d}_{title.lower()}")
                if title == "Probes":
                    timings["download_png_bytes"] = download_png(page, out_dir / "probes_chart.png")
                    if not timings["download_png_bytes"]:
                        timings["problems"][title].append("the PNG download is not a PNG")
                if title == "Explain":
                    c = server_cpu(proc.pid)
                    timings["explain_request"] = explain_request(page)
                    timings["server_cpu"]["explain_request"] = server_cpu(proc.pid) - c
                    shoot(f"{k:02d}_{title.lower()}_next_image")
                    timings["problems"]["Explain (next image)"] = problems(page)
            # switching runs: drop one run from the sidebar multiselect and wait for the charts again
            arm(page)
            t, c = time.perf_counter(), server_cpu(proc.pid)
            page.locator('[data-testid="stSidebar"] [aria-label^="Remove "]').first.click()
            wait_idle(page)
            page.wait_for_function(f"document.querySelectorAll('{RENDERED}').length >= 1", timeout=60_000)
            timings["run_switch"] = time.perf_counter() - t
            timings["server_cpu"]["run_switch"] = server_cpu(proc.pid) - c
            timings["problems"]["after run switch"] = problems(page)
            shoot("09_efficiency_one_run")
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    # the first Explain visit loads models (timed on its own); the other switches only redraw artifacts
    timings["explain_first_visit"] = timings["pages"].get("Explain")
    timings["page_switch_max"] = max(v for k, v in timings["pages"].items() if k != "Explain")
    timings["load_average"] = os.getloadavg()[0]
    (out_dir / "timings.json").write_text(json.dumps(timings, indent=2))
    return timings


def explain_request(page) -> float:
    """Move the image-index slider one step and time until both runs' maps are back."""
    caption = page.locator('[data-testid="stImageCaption"]').first.inner_text()
    arm(page)
    t = time.perf_counter()
    slider = page.get_by_role("slider", name=re.compile("Image index")).first
    slider.focus()
    slider.press("ArrowRight")
    page.wait_for_function(
        "c => { const e = document.querySelector('[data-testid=\"stImageCaption\"]'); return e && e.innerText !== c; }",
        arg=caption, timeout=60_000)
    wait_idle(page, started=True)  # the new caption comes from the new run
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=60_000)
    return time.perf_counter() - t


def download_png(page, path: Path) -> int:
    """Click the first chart's PNG button, save the file and return its size (0 when it is not a PNG)."""
    with page.expect_download(timeout=60_000) as info:
        page.locator('[data-testid="stDownloadButton"] button', has_text="PNG").first.click()
    info.value.save_as(str(path))
    data = path.read_bytes()
    return len(data) if data[:8] == b"\x89PNG\r\n\x1a\n" else 0
