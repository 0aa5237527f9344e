"""What keeps the app responsive: pages other than Explain never import the explain stack (torch, timm,
scikit-learn, UMAP ...), Explain leaves timm, captum and pytorch-grad-cam to the explain worker, the
server starts that worker and its background warm-up as it starts (the warm-up imports only between script
runs and sends the selected runs' models to the worker), and Streamlit skips its full garbage collection
after every rerun."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

from app import compute, loaders
from app_fixtures import MAIN

HEAVY = ("torch", "timm", "torchvision", "sklearn", "scipy", "umap", "numba", "matplotlib", "captum",
         "pytorch_grad_cam", "cv2", "vl_convert", "train.data", "train.models")
# Visits every page but Explain in one AppTest session and prints, after each, the heavy modules loaded.
VISIT = """
import json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({main!r}, default_timeout=120)
at.run()
seen = {{}}
for page in {pages!r}:
    if page != "overview.py":
        at.switch_page("views/" + page).run()
    assert not at.exception, [e.value for e in at.exception]
    seen[page] = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps(seen))
"""


def test_pages_but_explain_do_not_import_the_explain_stack(demo_root, tmp_path):
    pages = ["overview.py", "probes.py", "embeddings.py", "similarity.py", "interventions.py", "efficiency.py"]
    repo = Path(MAIN).parents[1]
    env = {"FERLENS_ARTIFACTS": str(demo_root), "FERLENS_APP_WARMUP": "0", "PYTHONPATH": str(repo),
           "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", VISIT.format(main=MAIN, pages=pages, heavy=HEAVY)], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(seen) == pages
    assert all(mods == [] for mods in seen.values()), seen  # the first page included


# Visits Explain (worker on) in one AppTest session; prints what it drew and which modules the server loaded.
VISIT_EXPLAIN = """
import json, sys
from streamlit.testing.v1 import AppTest
from app import compute
at = AppTest.from_file({main!r}, default_timeout=120)
at.run()
at.switch_page("views/explain.py").run()
print(json.dumps({{"exceptions": [e.value for e in at.exception], "errors": [e.value for e in at.error],
                  "images": sorted(len(el.value) for el in at.image), "worker": compute.WORKER.proc is not None,
                  "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""
EXPLAIN_STACK = ("timm", "torchvision", "pytorch_grad_cam", "captum", "sklearn", "matplotlib", "cv2",
                 "train.models", "probe.attribution")


def test_explain_leaves_the_explain_stack_to_the_worker(demo_root, tmp_path):
    repo = Path(MAIN).parents[1]
    env = {"FERLENS_ARTIFACTS": str(demo_root), "FERLENS_APP_WARMUP": "0", "PYTHONPATH": str(repo),
           "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", VISIT_EXPLAIN.format(main=MAIN, heavy=EXPLAIN_STACK)], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["exceptions"] == [] and report["errors"] == [], report
    assert report["images"] == [2, 4, 4] and report["worker"]  # image + mask, 4 maps per run, from the worker
    assert report["loaded"] == [], report


def test_warm_up_sends_new_runs_to_the_worker(monkeypatch):
    sent = []
    monkeypatch.setattr(compute, "warm", sent.append)
    monkeypatch.setattr(loaders, "_WARMED", set())
    monkeypatch.setattr(loaders, "_WARM_JOBS", queue.Queue())
    monkeypatch.setattr(loaders, "_WARM_THREAD", threading.current_thread())  # the queue only: no thread starts
    loaders.warm_up([Path("/r/a"), Path("/r/b")])
    loaders.warm_up([Path("/r/b"), Path("/r/c")])
    assert sent == [["/r/a", "/r/b"], ["/r/c"]]                  # each run's model once, to the worker
    jobs = [loaders._WARM_JOBS.get_nowait() for _ in range(loaders._WARM_JOBS.qsize())]
    assert jobs == ["<stack>", "/r/a", "/r/b", "/r/c"]           # the server warms imports and datasets only


def test_warm_up_waits_while_a_script_run_is_active():
    done = threading.Event()
    with loaders.script_run():
        t = threading.Thread(target=lambda: loaders.wait_idle(timeout=10) and done.set(), daemon=True)
        t.start()
        assert not done.wait(0.3)           # a page is drawing: the warm-up holds off
        assert loaders.wait_idle(timeout=0.05) is False
    assert done.wait(2)                     # the run ended: the warm-up goes on at once
    assert loaders.wait_idle(timeout=0.05) is True


def test_warm_thread_imports_only_between_runs(tmp_path, monkeypatch):
    (tmp_path / "ferlens_warm_probe.py").write_text("import time\nLOADED = time.monotonic()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(loaders, "WARM_MODULES", ("ferlens_warm_probe",))
    sys.modules.pop("ferlens_warm_probe", None)
    try:
        with loaders.script_run():
            t = threading.Thread(target=loaders._warm_stack, daemon=True)
            t.start()
            time.sleep(0.3)
            assert "ferlens_warm_probe" not in sys.modules
            ended = time.monotonic()
        t.join(60)
        assert not t.is_alive()
        assert sys.modules["ferlens_warm_probe"].LOADED >= ended
    finally:
        sys.modules.pop("ferlens_warm_probe", None)


def test_no_full_gc_after_every_rerun():
    # script-level config: Streamlit reads app/.streamlit/config.toml whatever the working directory
    config = tomllib.loads((Path(MAIN).parent / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False


# Enters main.py's lifespan (what `streamlit run app/main.py` does as the server starts), waits until the
# worker and the warm-up are under way (not for their imports), leaves it (the server stops) and reports.
LIFESPAN = """
import asyncio, json, os, time
import app.main as m
from app import compute, loaders
started = {{}}
async def serve():
    async with m._lifespan(m.app):
        deadline = time.time() + 30
        while time.time() < deadline and (
                ({worker!r} != "0" and compute.WORKER.proc is None) or ({warm!r} != "0" and not loaders._WARMED)):
            await asyncio.sleep(0.05)
        proc = compute.WORKER.proc
        started["pid"] = proc and proc.pid
asyncio.run(serve())
pid = started["pid"]
print(json.dumps({{"warmed": sorted(loaders._WARMED), "script": str(m.app.script_path), "worker": pid is not None,
                  "worker_left": pid is None or not os.path.exists(f"/proc/{{pid}}")}}))
"""


def test_server_start_starts_the_worker_and_the_warm_up(tmp_path):
    repo = Path(MAIN).parents[1]
    for warm, worker, expected in (("1", "1", ["<stack>"]), ("0", "1", []), ("1", "0", ["<stack>"])):
        env = {"FERLENS_APP_WARMUP": warm, "FERLENS_APP_WORKER": worker, "PYTHONPATH": str(repo),
               "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        out = subprocess.run([sys.executable, "-c", LIFESPAN.format(warm=warm, worker=worker)], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["warmed"] == expected
        assert report["worker"] == (worker != "0")
        assert report["worker_left"]                                 # the server's shutdown stopped it
        assert Path(report["script"]).resolve() == Path(MAIN).resolve()  # main.py serves ui.py
