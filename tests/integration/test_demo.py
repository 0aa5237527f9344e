"""`make demo` end to end at quick size: every stage runs, leaves its artifacts, and a re-run skips them all."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The demo drives other parts' CLIs; the end-to-end test runs once they all exist.
NEEDED_MODULES = ("train.models", "train.engine", "train.data.synthfer", "probe.features", "probe.linear",
                  "probe.similarity", "probe.attribution", "probe.intervene")
NEEDED_COMMANDS = ("train/commands/profile.py", "probe/commands/extract.py", "probe/commands/linear.py",
                   "probe/commands/cka.py", "probe/commands/umap.py")


def test_plan_names_every_stage_in_order(tmp_path):
    from train.demo import DemoOptions, plan

    stages = plan(DemoOptions(quick=True), tmp_path)
    names = [s.name for s in stages]
    assert names[:3] == ["synthfer", "fit vit", "fit cataftermlp"]  # the slower fit starts first
    assert names[-2:] == ["figures", "report"]
    for want in ("extract quick_vit", "linear probes quick_cataftermlp", "cka", "umap", "rollout quick_vit",
                 "gradcam quick_vit", "attribute quick_cataftermlp", "intervene quick_vit",
                 "profile quick_cataftermlp"):
        assert want in names
    by = {s.name: s for s in stages}
    fit = by["fit vit"]
    assert fit.argv[:4] == ["train", "fit", "-c", "demo"] and "ferlens_tiny_vit_s3" in fit.argv
    assert fit.argv[fit.argv.index("--threads") + 1] == "1" and fit.after == ["synthfer"]
    # each run's probes wait only for its own fit: they use the core the other fit leaves free
    assert by["extract quick_cataftermlp"].after == ["fit cataftermlp"]
    assert by["linear probes quick_cataftermlp"].after == ["extract quick_cataftermlp"]
    assert by["rollout quick_vit"].after == ["fit vit"]
    assert set(by["cka"].after) == {"extract quick_vit", "extract quick_cataftermlp"}
    assert set(by["umap"].after) == set(by["cka"].after) and by["umap"].argv[3] == "quick_vit,quick_cataftermlp"
    assert set(by["figures"].after) == set(names[1:-2]) and by["report"].after == ["figures"]
    # figure 5 (live maps) needs only the fits and runs beside the probes; the last stage draws the rest
    from probe.figures import FIGURES
    from train.demo import FIGURE_NUMBERS

    assert FIGURE_NUMBERS == tuple(FIGURES)
    grid = by["figure 5"]
    assert grid.after == ["fit vit", "fit cataftermlp"] and grid.argv[-2:] == ["--only", "5"]
    assert by["figures"].argv[-1] == ",".join(str(n) for n in FIGURES if n != 5)
    for stage in stages:  # every dependency is planned before the stage that needs it
        assert all(names.index(a) < names.index(stage.name) for a in stage.after)
    # erasure and MLP/MDL stages; writers of the same json file run one after the other
    erase = by["erase quick_vit"]
    assert erase.after == ["extract quick_vit"] and erase.argv[erase.argv.index("--concept") + 1] == "expression,identity"
    assert by["mlp probes quick_vit"].after == ["linear probes quick_vit"]
    assert {"--probe", "mlp", "--mdl"} <= set(by["mlp probes quick_vit"].argv)
    linear = by["linear probes quick_cataftermlp"].argv
    assert linear[:6] == ["probe", "linear", "--run", "quick_cataftermlp", "--tokens", "cls,patch"]
    assert linear[6:8] == ["--targets", "all"] and linear[-4:] == ["--cv", "3", "--seeds", "1"]


def test_schedule_runs_side_by_side_and_blocks_dependents(tmp_path, monkeypatch):
    import io
    import time

    import train.demo as demo
    from train.demo import Stage, schedule

    def stage(name, after=(), secs=0.0, fail=False):  # a toy stage: sleeps, then writes its output
        out = tmp_path / f"{name}.txt"
        code = "raise SystemExit(3)" if fail else \
            f"import time,pathlib; time.sleep({secs}); pathlib.Path({str(out)!r}).write_text('x')"
        return Stage(name, ["-c", code], [out], after=list(after))

    popen = demo.subprocess.Popen
    monkeypatch.setattr(demo.subprocess, "Popen", lambda cmd, **kw: popen([cmd[0], *cmd[2:]], **kw))  # drop "-m"
    stages = [stage("a", secs=0.6), stage("b", secs=0.6), stage("c", ["a"]), stage("bad", ["a"], fail=True),
              stage("d", ["bad"]), stage("e", ["c", "b"])]
    t, out = time.perf_counter(), io.StringIO()
    results = {r.name: r for r in schedule(stages, tmp_path, dict(os.environ), jobs=2, out=out)}
    wall = time.perf_counter() - t
    assert {k: r.status for k, r in results.items()} == {"a": "ran", "b": "ran", "c": "ran", "bad": "failed",
                                                         "d": "blocked", "e": "ran"}
    assert abs(results["a"].start - results["b"].start) < 0.4  # a and b ran side by side
    assert results["c"].start >= results["a"].start + 0.5       # c waited for a
    assert wall < 4 and "not run: it needs bad" in out.getvalue()


def test_schedule_records_each_stages_cpu_time(tmp_path, monkeypatch):
    """Side by side, a stage that computes and one that sleeps get their own CPU seconds (rusage of reaping)."""
    import io

    import train.demo as demo
    from train.demo import Stage, schedule

    popen = demo.subprocess.Popen
    monkeypatch.setattr(demo.subprocess, "Popen", lambda cmd, **kw: popen([cmd[0], *cmd[2:]], **kw))  # drop "-m"
    spin = ("import time,pathlib\nt=time.process_time()\nwhile time.process_time()-t<0.6: pass\n"
            f"pathlib.Path({str(tmp_path / 'spin.txt')!r}).write_text('x')")
    nap = f"import time,pathlib; time.sleep(0.6); pathlib.Path({str(tmp_path / 'nap.txt')!r}).write_text('x')"
    stages = [Stage("spin", ["-c", spin], [tmp_path / "spin.txt"]), Stage("nap", ["-c", nap], [tmp_path / "nap.txt"])]
    results = {r.name: r for r in schedule(stages, tmp_path, dict(os.environ), jobs=2, out=io.StringIO())}
    assert results["spin"].cpu_seconds >= 0.55 and results["spin"].cpu_seconds < results["spin"].seconds + 0.5
    assert results["nap"].cpu_seconds < 0.5 < results["nap"].seconds


def test_stamps_skip_until_an_input_changes(tmp_path):
    import time

    from train.demo import Stage, fingerprint, run_stage, up_to_date

    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("a")
    out.write_text("result")
    stage = Stage("toy", ["json.tool", "--help"], [out], [src])
    assert not up_to_date(tmp_path, stage)  # never stamped
    res = run_stage(stage, tmp_path, dict(os.environ))
    assert res.status == "ran" and up_to_date(tmp_path, stage)
    before = fingerprint(stage)
    time.sleep(0.01)
    src.write_text("bb")
    assert fingerprint(stage) != before and not up_to_date(tmp_path, stage)
    bad = Stage("bad", ["json.tool", "/no/such/file"], [tmp_path / "never.txt"])
    res = run_stage(bad, tmp_path, dict(os.environ))
    assert res.status == "failed" and Path(res.log).read_text()


def test_no_app_from_env(monkeypatch):
    from train.demo import parse_args

    monkeypatch.setenv("FERLENS_DEMO_NO_APP", "1")
    opts = parse_args(["--quick", "--runs", "vit,clsonly"])
    assert not opts.app and opts.variants == ("vit", "clsonly") and opts.run_name("vit") == "quick_vit"
    assert opts.model("clsonly") == "ferlens_tiny_clsonly_s3"


_FAKE_APP = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path == "/_stcore/health" else b"no"
        self.send_response(200 if body == b"ok" else 404)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

server = HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--server.port") + 1])), H)
server.handle_request()  # the demo's health check; then the fake app exits
"""


def test_serve_app_records_when_the_app_answers(tmp_path, monkeypatch):
    """The demo starts streamlit, waits for its health endpoint and writes how long the user waited:
    from the demo's start and from ``make demo``'s (FERLENS_MAKE_T0, setup included)."""
    import io
    import socket
    import time

    import train.demo as demo

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "fake_app.py"
    script.write_text(_FAKE_APP)
    popen = demo.subprocess.Popen
    seen = {}

    def fake(cmd, **kw):
        seen["cmd"] = cmd
        return popen([sys.executable, str(script), *cmd[cmd.index("--server.headless"):]], **kw)

    monkeypatch.setattr(demo.subprocess, "Popen", fake)
    monkeypatch.setenv("FERLENS_MAKE_T0", str(time.time() - 100.0))
    (tmp_path / "demo_timings.json").write_text(json.dumps({"total_seconds": 1.0}))
    out = io.StringIO()
    started = time.perf_counter() - 3.0
    assert demo.serve_app(tmp_path, dict(os.environ), started, out, port=port, timeout=30) == 0
    assert seen["cmd"][1:4] == ["-m", "streamlit", "run"] and seen["cmd"][4].endswith("app/main.py")
    timings = json.loads((tmp_path / "demo_timings.json").read_text())
    assert timings["total_seconds"] == 1.0  # the pipeline's record is kept
    assert 3.0 <= timings["app_ready_seconds"] < 33.0
    assert 100.0 <= timings["since_make_seconds"] < 130.0
    assert f"app answering at http://localhost:{port}" in out.getvalue()


def _demo(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FERLENS_ARTIFACTS=str(root), FERLENS_DEMO_NO_APP="1", TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", "train.demo", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=2400)


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_quick_demo_runs_every_stage_then_skips(_artifacts_root):
    for module in NEEDED_MODULES:
        pytest.importorskip(module)
    missing = [c for c in NEEDED_COMMANDS if not (REPO / c).is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} do not exist yet")
    root = _artifacts_root
    first = _demo(root)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    timings = json.loads((root / "demo_timings.json").read_text())
    assert [s["status"] for s in timings["stages"]] == ["ran"] * len(timings["stages"]), timings
    assert timings["machine"]["cores"] and timings["total_seconds"] > 0
    for run in ("quick_vit", "quick_cataftermlp"):
        d = root / "runs" / run
        for rel in ("config.json", "model.safetensors", "metrics.json", "history.csv", "profile.json",
                    "probes/linear.json", "probes/cka.json", "probes/umap.csv", "explain/interventions.csv",
                    "probes/erasure.json"):
            assert (d / rel).is_file(), f"{run}/{rel}"
        assert any((d / "features").rglob("index.json"))
        assert any((d / "explain").glob("attribution_metrics*"))
    manifest = json.loads((root / "figures" / "figures.json").read_text())
    assert manifest["runs"] == ["quick_vit", "quick_cataftermlp"]
    for name, fig in manifest["figures"].items():
        assert fig["note"] is None, (name, fig["note"])
        assert (root / "figures" / f"{name}.png").stat().st_size > 1000
    report = (root / "reports" / "quick" / "report.md").read_text()
    facts = json.loads((root / "reports" / "quick" / "facts.json").read_text())
    acc = facts["per_run"]["quick_vit"]["test"]["accuracy"]
    assert f"{100 * acc:.1f}%" in report  # the report quotes the measured accuracy
    assert "train fit -c demo --model ferlens_tiny_vit_s3" in report  # and the exact commands of the demo
    assert (root / "reports" / "quick" / "report.html").read_text().count("data:image/png;base64,") == len(manifest["figures"])
    # Second run: everything is up to date, nothing re-runs.
    second = _demo(root)
    assert second.returncode == 0, second.stdout[-3000:]
    again = json.loads((root / "demo_timings.json").read_text())
    assert {s["status"] for s in again["stages"]} == {"skipped"}
    assert second.stdout.count("up to date") == len(again["stages"])
