"""What keeps the app responsive: pages other than Explain never import the explain stack (torch, timm,
scikit-learn, UMAP ...), the background warm-up imports only between script runs, and Streamlit skips
its full garbage collection after every rerun."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

from app import loaders
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


# Enters main.py's lifespan (what `streamlit run app/main.py` does as the server starts) and reports
# whether the warm-up was queued, without waiting for its imports.
LIFESPAN = """
import asyncio, json, time
import app.main as m
from app import loaders
async def serve():
    async with m._lifespan(m.app):
        pass
asyncio.run(serve())
deadline = time.time() + 30
while "<stack>" not in loaders._WARMED and time.time() < deadline and {warm!r} != "0":
    time.sleep(0.05)
print(json.dumps({{"warmed": sorted(loaders._WARMED), "script": str(m.app.script_path)}}))
"""


def test_server_start_queues_the_warm_up(tmp_path):
    repo = Path(MAIN).parents[1]
    for warm, expected in (("1", ["<stack>"]), ("0", [])):
        env = {"FERLENS_APP_WARMUP": warm, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
               "HOME": str(tmp_path)}
        out = subprocess.run([sys.executable, "-c", LIFESPAN.format(warm=warm)], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["warmed"] == expected
        assert Path(report["script"]).resolve() == Path(MAIN).resolve()  # main.py serves ui.py
