"""``make demo`` = ``python -m train.demo``: SynthFER → train the demo variants → probe and explain them →
figures → report → ``streamlit run app/main.py``.

Every stage is one CLI call (``python -m train ...`` / ``python -m probe ...``) in a subprocess, so the demo
runs exactly the commands a user would type; they are logged to ``artifacts/demo_commands.json`` and the
report quotes them. A stage is skipped when its outputs exist and its stamp (a fingerprint of the command
and of its input files) is unchanged. Each stage prints one progress line with its time; the timings go
to ``artifacts/demo_timings.json``; each stage's output goes to ``artifacts/demo/logs/<stage>.log``.

    python -m train.demo                 # the full demo, then the app
    python -m train.demo --no-app        # stop after the report (also FERLENS_DEMO_NO_APP=1)
    python -m train.demo --quick         # tiny sizes (tests), runs named quick_<variant>
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import FerlensError
from .io import atomic_write_json
from .runs import artifacts_root

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VARIANTS = ("vit", "cataftermlp")
DEMO_PRESET = "demo"  # train/configs/demo.yaml
QUICK_DATA = "synthfer:size=64,n=420,seed=0"
DEMO_TARGETS = "expression,identity,yaw_bin,background,occluder,illumination,yaw,roll,intensity"
# Explanation stages and their demo methods: the four map types of the attribution figure (rollout, CLS
# attention, Grad-CAM, IG) plus one cheap companion each; occlusion and Grad-CAM++/LayerCAM are left to
# the user (they tripled the stages' time).
EXPLAIN = {"rollout": [], "gradcam": ["--methods", "gradcam,eigencam"], "attribute": ["--methods", "ig,saliency"]}
INTERVENE_N = 256
APP_PORT = 8501  # streamlit's default
FIGURE_NUMBERS = tuple(range(1, 10))  # probe/figures.py FIGURES
DEMO_INTERVENTIONS = "mean,zero,patch_parts,top_attended_patch,random_patch"
# Reviewer-grade evidence at demo cost (issue 15), on the last layer only (``--layers all`` is the default of both
# commands): LEACE erasure of identity and of expression from cls and patch — erasers fitted on the validation
# split (800 faces; the train split's 6,400 would add an extraction of ~2 min per run), probes with 3-fold CV
# × 3 seeds = 3 random-direction draws, the causal version on 128 test faces — and the one-hidden-layer MLP
# probe with its MDL code length for expression and identity.
ERASE_CONCEPTS = ("expression", "identity")
ERASE = ["--tokens", "cls,patch", "--layers", "-1", "--cv", "3", "--seeds", "3", "--fit-split", "val",
         "--causal-n", "128", "--engine", "torch"]
MLP = ["--probe", "mlp", "--mdl", "--tokens", "cls,patch", "--targets", "expression,identity", "--layers", "-1",
       "--cv", "3", "--seeds", "1"]


@dataclass
class Stage:
    """One demo step: a CLI call, the files it reads, the files it must leave behind, and the stages it
    waits for (``after``). Stages whose ``after`` are done run side by side, one per core."""

    name: str
    argv: list[str]
    outputs: list[Path]
    inputs: list[Path] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        """The subprocess command: ``python -m train|probe ...``."""
        return [sys.executable, "-m", *self.argv]

    def display(self) -> str:
        """The command as a user types it (console scripts)."""
        return " ".join(self.argv)


@dataclass
class DemoOptions:
    """What the demo trains and how big it is."""

    variants: tuple[str, ...] = DEFAULT_VARIANTS
    quick: bool = False
    force: bool = False
    app: bool = True
    n_explain: int = 32
    jobs: int = 0  # stages side by side; 0 = one per core

    @property
    def prefix(self) -> str:
        return "quick" if self.quick else "demo"

    def run_name(self, variant: str) -> str:
        return f"{self.prefix}_{variant}"

    def model(self, variant: str) -> str:
        return variant if variant.startswith("ferlens_") else f"ferlens_tiny_{variant}_s3"


def plan(opts: DemoOptions, root: Path) -> list[Stage]:
    """The demo's stages, for the runs ``opts`` names, under artifacts ``root``.

    The order is the start order when several stages are ready: the slowest fit (``vit``) first, then the
    other fits; each run's probes and explanations wait only for its own fit, so they use the core a
    finished fit frees while the other variant still trains.
    """
    runs = [opts.run_name(v) for v in opts.variants]
    rdir = {r: root / "runs" / r for r in runs}
    preset = REPO / "train" / "configs" / f"{DEMO_PRESET}.yaml"
    spec = QUICK_DATA if opts.quick else _preset_data(preset)
    n = 24 if opts.quick else opts.n_explain
    stages = [Stage("synthfer", ["train", "data", "info", spec, "--json", str(root / "demo" / "synthfer_info.json")],
                    [root / "demo" / "synthfer_info.json"])]
    for variant, run in zip(opts.variants, runs):
        # One thread per fit: the variants train side by side (measured faster than one after the other
        # with two threads each: the tiny models do not scale past one core).
        fit = ["train", "fit", "-c", DEMO_PRESET, "--model", opts.model(variant), "--run_name", run, "--data", spec,
               "--threads", "1"]
        if opts.quick:
            fit += ["--epochs", "1", "--batch_size", "32"]
        stages.append(Stage(f"fit {variant}", fit, [rdir[run] / "model.safetensors", rdir[run] / "metrics.json"],
                            [preset], [run], after=["synthfer"]))
    # The demo's probe protocol: identity-grouped 3-fold CV repeated over 3 seeds (the report's equivalence
    # bounds need CIs from >= 3 seeds; 9 fits per probe instead of 5-fold x 1 seed's 5) and the targets the
    # question needs — expression, identity, pose, background, occluder, lighting and
    # expression intensity (``--targets all`` adds roll bins and scale; ``--baseline random-init`` adds the
    # untrained-copy baseline at twice the cost).
    small = (["--cv", "3", "--seeds", "1"] if opts.quick  # quick splits have < 5 faces in some classes
             else ["--cv", "3", "--seeds", "3"])
    for variant, run in zip(opts.variants, runs):
        weights, fit = [rdir[run] / "model.safetensors"], f"fit {variant}"
        stages += [
            Stage(f"extract {run}", ["probe", "extract", "--run", run, "--data", spec, "--split", "test"],
                  [rdir[run] / "features"], weights, [run], after=[fit]),
            Stage(f"linear probes {run}", ["probe", "linear", "--run", run, "--tokens", "cls,patch", "--targets",
                                           "all" if opts.quick else DEMO_TARGETS, *small],
                  [rdir[run] / "probes" / "linear.json"], weights, [run], after=[f"extract {run}"]),
        ]
        # erase reads-modifies-writes erasure.json and the MLP probes linear.json: the MLP stage waits for the
        # linear one; erase handles both concepts in one process (one model load, one val-split extraction)
        extra = (["--tokens", "cls,patch", "--layers", "-1", "--cv", "2", "--seeds", "2", "--fit-split", "train",
                  "--causal-n", "24", "--targets", "expression"]  # quick test splits hold one identity
                 if opts.quick else ERASE)
        stages.append(Stage(f"erase {run}", ["probe", "erase", "--run", run, "--data", spec, "--concept",
                                             ",".join(ERASE_CONCEPTS), *extra],
                            [rdir[run] / "probes" / "erasure.json"], weights, [run], after=[f"extract {run}"]))
        mlp = (MLP[:MLP.index("--targets")] + ["--targets", "expression", "--layers", "-1", "--cv", "2", "--seeds", "1"]
               if opts.quick else MLP)
        stages.append(Stage(f"mlp probes {run}", ["probe", "linear", "--run", run, *mlp],
                            [rdir[run] / "probes" / "linear.json"], weights, [run], after=[f"linear probes {run}"]))
        for method, extra in EXPLAIN.items():
            stages.append(Stage(f"{method} {run}", ["probe", method, "--run", run, "--n", str(n), *extra],
                                [rdir[run] / "explain"], weights, [run], after=[fit]))
        # Interventions at the CLI default n (256 test faces, means from 256 train faces) so the paired CIs
        # resolve a few points; the shuffle rows are left to the user (the zero and mean rows bracket them).
        iv_n = "24" if opts.quick else str(INTERVENE_N)
        stages.append(Stage(f"intervene {run}", ["probe", "intervene", "--run", run, "--n", iv_n, "--n-reference", iv_n,
                                                 "--modes", DEMO_INTERVENTIONS],
                            [rdir[run] / "explain" / "interventions.csv"], weights, [run], after=[fit]))
        profile = ["train", "profile", "--run", run, "--batch-sizes", "1,8" if opts.quick else "1,8,32,128"]
        stages.append(Stage(f"profile {run}", profile, [rdir[run] / "profile.json"], weights, [run], after=[fit]))
    joined = ",".join(runs)
    weights = [rdir[r] / "model.safetensors" for r in runs]
    # One UMAP process for every run: umap-learn's numba kernels compile on the first fit of each process (~20 s
    # of CPU, more than the 12 embeddings of 800 faces take), so the runs share one compilation.
    stages.append(Stage("umap", ["probe", "umap", "--run", joined], [rdir[r] / "probes" / "umap.csv" for r in runs],
                        weights, runs, after=[f"extract {r}" for r in runs]))
    stages.append(Stage("cka", ["probe", "cka", "--run", joined], [rdir[r] / "probes" / "cka.json" for r in runs],
                        weights, runs, after=[f"extract {r}" for r in runs]))
    probe_outputs = [p for s in stages[1:] for p in s.outputs if not s.name.startswith("extract")]
    figures = root / "figures"
    # Figure 5 computes its maps live from the models (IG, Grad-CAM, rollout on one face per class): it needs only
    # the fits, so it runs beside the probes instead of at the end; the last stage draws the other figures, and
    # both merge into figures.json (the grid stage is done before the other starts, so they never write at once).
    others = ",".join(str(n) for n in FIGURE_NUMBERS if n != 5)
    stages.append(Stage("figure 5", ["probe", "figures", "--runs", joined, "--out", str(figures), "--only", "5"],
                        [figures / "fig5_attribution_grid.png"], weights, runs,
                        after=[f"fit {v}" for v in opts.variants]))
    stages.append(Stage("figures", ["probe", "figures", "--runs", joined, "--out", str(figures), "--only", others],
                        [figures / "figures.json"], probe_outputs + weights + [figures / "fig5_attribution_grid.png"],
                        runs, after=[s.name for s in stages[1:]]))
    report = root / "reports" / opts.prefix
    stages.append(Stage("report", ["probe", "report", "--runs", joined, "--out", str(report), "--figures", str(figures)],
                        [report / "report.md", report / "report.html"], probe_outputs + [figures / "figures.json"], runs,
                        after=["figures"]))
    # Start order among ready stages (the scheduler takes them in list order): fits, then extractions, then the
    # longest shared stages (UMAP ~30 s CPU, figure 5) as soon as their inputs exist, so the pipeline does not
    # end waiting on them (longest first); the per-run probes and explanations fill the cores around them.
    def rank(stage: Stage) -> int:
        if stage.name == "synthfer" or stage.name.startswith("fit "):
            return 0
        if stage.name.startswith("extract "):
            return 1
        return {"umap": 2, "figure 5": 3, "cka": 4, "figures": 6, "report": 7}.get(stage.name, 5)

    return sorted(stages, key=rank)  # stable: plan order within a rank


def _preset_data(preset: Path) -> str:
    """The data spec of the demo preset (YAML key ``data``)."""
    import yaml

    if not preset.is_file():
        raise FerlensError(f"The demo preset {preset} is missing; restore train/configs/demo.yaml from the repository.")
    data = yaml.safe_load(preset.read_text()) or {}
    return str(data.get("data", "synthfer:size=64,n=2000"))


# ----------------------------------------------------------------------------------------- stamps


def _file_state(path: Path) -> list:
    """(relative name, size, mtime) of a file, or of every file under a folder."""
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    if path.is_dir():
        return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns]
                for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return [[path.name, None, None]]


def fingerprint(stage: Stage) -> str:
    """Hash of the stage's command and its inputs' sizes and modification times."""
    payload = {"argv": stage.argv, "inputs": {str(p): _file_state(p) for p in stage.inputs}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _stamp_path(root: Path, stage: Stage) -> Path:
    return root / "demo" / "stamps" / (stage.name.replace(" ", "_").replace("/", "_") + ".json")


def _outputs_exist(stage: Stage) -> bool:
    return all(p.is_file() or (p.is_dir() and any(p.iterdir())) for p in stage.outputs)


def up_to_date(root: Path, stage: Stage) -> bool:
    """True when the outputs exist and the stamp matches the current fingerprint."""
    stamp = _stamp_path(root, stage)
    if not stamp.is_file() or not _outputs_exist(stage):
        return False
    try:
        return json.loads(stamp.read_text()).get("fingerprint") == fingerprint(stage)
    except json.JSONDecodeError:
        return False


# ------------------------------------------------------------------------------------------ runner


@dataclass
class StageResult:
    name: str
    status: str  # ran | skipped | failed | blocked
    seconds: float
    log: str | None = None
    start: float | None = None  # seconds after the demo started
    cpu_seconds: float | None = None  # user + system CPU of the stage's process tree


def _children_cpu() -> float:
    """User + system CPU seconds of every child reaped so far (``RUSAGE_CHILDREN``)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_stage(stage: Stage, root: Path, env: dict[str, str]) -> StageResult:
    """Run one stage in a subprocess with its output in a log file; stamp it on success."""
    return _finish(_start(stage, root, env), root)


@dataclass
class _Running:
    stage: Stage
    log: Path
    handle: object
    proc: subprocess.Popen
    start: float
    cpu: float | None = None

    def poll(self) -> bool:
        """True once the process has ended; its CPU time is the rusage delta of reaping it (stages are reaped
        one at a time, so the delta is this stage's)."""
        if self.proc.returncode is not None:
            return True
        before = _children_cpu()
        if self.proc.poll() is None:
            return False
        self.cpu = _children_cpu() - before
        return True


def _start(stage: Stage, root: Path, env: dict[str, str]) -> _Running:
    log = root / "demo" / "logs" / (stage.name.replace(" ", "_") + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = stage.command()
    argv = stage.argv
    if argv[:2] == ["train", "fit"] and (root / "runs" / argv[argv.index("--run_name") + 1]).exists():
        cmd.append("--overwrite")  # the demo owns its runs; a stale one is replaced
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return _Running(stage, log, fh, proc, time.perf_counter())


def _finish(r: _Running, root: Path) -> StageResult:
    if r.proc.returncode is None:
        before = _children_cpu()
        r.proc.wait()
        r.cpu = _children_cpu() - before
    returncode = r.proc.returncode
    r.handle.close()
    seconds = time.perf_counter() - r.start
    cpu = None if r.cpu is None else round(r.cpu, 2)
    if returncode != 0 or not _outputs_exist(r.stage):
        return StageResult(r.stage.name, "failed", seconds, str(r.log), cpu_seconds=cpu)
    atomic_write_json(_stamp_path(root, r.stage), {"fingerprint": fingerprint(r.stage), "argv": r.stage.argv,
                                                   "seconds": round(seconds, 2), "cpu_seconds": cpu})
    return StageResult(r.stage.name, "ran", seconds, str(r.log), cpu_seconds=cpu)


def schedule(stages: Sequence[Stage], root: Path, env: dict[str, str], jobs: int, force: bool = False,
             out=sys.stdout) -> list[StageResult]:
    """Run the stages as their ``after`` stages finish, at most ``jobs`` at a time, in plan order.

    A stage that is up to date (outputs present, stamp matches) is skipped; a stage whose ``after`` failed
    or was blocked is reported ``blocked`` and not run. One progress line per start and per end.
    """
    index = {s.name: k for k, s in enumerate(stages, 1)}
    width = max(len(s.name) for s in stages)
    status: dict[str, str] = {}
    results: dict[str, StageResult] = {}
    running: list[_Running] = []
    t0 = time.perf_counter()

    def tag(stage: Stage) -> str:
        return f"[{index[stage.name]:2d}/{len(stages)}] {stage.name:<{width}}"

    while len(status) < len(stages) or running:
        progressed = False
        for stage in stages:
            if stage.name in status or len(running) >= jobs:
                continue
            deps = [status.get(a) for a in stage.after if a in index]
            if any(d in ("failed", "blocked") for d in deps):
                status[stage.name] = "blocked"
                results[stage.name] = StageResult(stage.name, "blocked", 0.0)
                missing = [a for a in stage.after if status.get(a) in ("failed", "blocked")]
                print(f"{tag(stage)}  not run: it needs {', '.join(missing)}", file=out, flush=True)
                progressed = True
                continue
            if not all(d in ("ran", "skipped") for d in deps):
                continue
            if not force and up_to_date(root, stage):
                status[stage.name] = "skipped"
                results[stage.name] = StageResult(stage.name, "skipped", 0.0)
                print(f"{tag(stage)}  up to date", file=out, flush=True)
            else:
                status[stage.name] = "running"
                print(f"{tag(stage)}  {time.perf_counter() - t0:6.1f} s  running: {stage.display()}", file=out,
                      flush=True)
                running.append(_start(stage, root, env))
            progressed = True
        if progressed:
            continue
        if not running:
            break
        while True:  # wait for the first stage to end
            done = [r for r in running if r.poll()]
            if done:
                break
            time.sleep(0.2)
        for r in done:
            running.remove(r)
            res = _finish(r, root)
            res.start = round(r.start - t0, 2)
            status[r.stage.name], results[r.stage.name] = res.status, res
            if res.status == "failed":
                print(f"{tag(r.stage)}  FAILED after {res.seconds:.1f} s (log: {res.log})\n{_tail(res.log)}",
                      file=out, flush=True)
            else:
                cpu = "" if res.cpu_seconds is None else f" ({res.cpu_seconds:.1f} s CPU)"
                print(f"{tag(r.stage)}  {time.perf_counter() - t0:6.1f} s  done in {res.seconds:.1f} s{cpu}", file=out,
                      flush=True)
    return [results[s.name] for s in stages if s.name in results]


def _tail(path: str, lines: int = 12) -> str:
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join("      " + line for line in text[-lines:])


def machine() -> dict[str, object]:
    """CPU model, core count, Python/torch versions and thread settings."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
                               "python": platform.python_version(),
                               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                               "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    cuda=torch.cuda.is_available())
        from .precision import cpu_summary

        info.update(cpu_summary())
    except ImportError:
        pass
    return info


def run_precisions(root: Path, runs: Sequence[str]) -> dict[str, object]:
    """``{run: config.json["precision"]}`` of the demo's fitted runs (what ``--amp auto`` chose and why)."""
    out: dict[str, object] = {}
    for run in runs:
        path = root / "runs" / run / "config.json"
        try:
            out[run] = json.loads(path.read_text()).get("precision")
        except (OSError, json.JSONDecodeError):
            out[run] = None
    return out


def run_demo(opts: DemoOptions, out=sys.stdout) -> int:
    """Run (or skip) every stage, write timings and the command log, then start the app."""
    root = artifacts_root().resolve()
    env = dict(os.environ, FERLENS_ARTIFACTS=str(root), PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    stages = plan(opts, root)
    atomic_write_json(root / "demo_commands.json", {"commands": [
        {"stage": s.name, "runs": s.runs, "argv": s.argv} for s in stages]})
    total = time.perf_counter()
    jobs = opts.jobs or max(1, os.cpu_count() or 1)
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))  # the cores shared by the side-by-side stages
    results = schedule(stages, root, env, jobs, opts.force, out)
    elapsed = time.perf_counter() - total
    _write_timings(root, opts, results, elapsed, jobs)
    failed = [r.name for r in results if r.status in ("failed", "blocked")]
    print(f"demo pipeline: {elapsed:.1f} s; report: {root / 'reports' / opts.prefix / 'report.html'}"
          + (f"; failed stages: {', '.join(failed)}" if failed else ""), file=out, flush=True)
    if not opts.app:
        return 1 if failed else 0
    return serve_app(root, env, total, out)


def _make_started() -> float | None:
    """Epoch seconds at which ``make demo`` started (``FERLENS_MAKE_T0``, set by the Makefile before setup)."""
    try:
        return float(os.environ["FERLENS_MAKE_T0"])
    except (KeyError, ValueError):
        return None


def _health(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except OSError:
        return False


def serve_app(root: Path, env: dict[str, str], started: float, out=sys.stdout, port: int = APP_PORT,
              timeout: float = 120.0) -> int:
    """Start ``streamlit run app/main.py``, record when it answers in ``demo_timings.json``, then serve.

    ``app_ready_seconds`` counts from the demo's start, ``since_make_seconds`` from ``make demo``'s (setup
    included) when the Makefile passed its start time. The app keeps serving until Ctrl-C.
    """
    print(f"starting the app: streamlit run app/main.py on http://localhost:{port} (Ctrl-C to stop)", file=out,
          flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py"),
                             "--server.headless", "true", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false"], cwd=REPO, env=env)
    deadline, answered = time.perf_counter() + timeout, False
    while not answered and proc.poll() is None and time.perf_counter() < deadline:
        answered = _health(port)
        if not answered:
            time.sleep(0.1)
    if answered:
        ready = time.perf_counter() - started
        t0 = _make_started()
        since_make = None if t0 is None else time.time() - t0
        timings_path = root / "demo_timings.json"
        try:
            timings = json.loads(timings_path.read_text())
        except (OSError, json.JSONDecodeError):
            timings = {}
        timings.update(app_ready_seconds=round(ready, 2),
                       since_make_seconds=None if since_make is None else round(since_make, 2))
        atomic_write_json(timings_path, timings)
        print(f"app answering at http://localhost:{port} {ready:.1f} s after the demo started"
              + ("" if since_make is None else f" ({since_make:.1f} s after make demo, setup included)"),
              file=out, flush=True)
    else:
        print(f"the app did not answer on port {port} within {timeout:.0f} s; is another program using it? "
              f"Stop it or run: streamlit run app/main.py --server.port 8502", file=out, flush=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return 130


def _write_timings(root: Path, opts: DemoOptions, results: Sequence[StageResult], elapsed: float,
                   jobs: int) -> None:
    atomic_write_json(root / "demo_timings.json", {
        "quick": opts.quick, "variants": list(opts.variants), "total_seconds": round(elapsed, 2),
        "jobs": jobs, "precision": run_precisions(root, [opts.run_name(v) for v in opts.variants]),
        "stages": [{"stage": r.name, "status": r.status, "seconds": round(r.seconds, 2), "start": r.start,
                    "cpu_seconds": r.cpu_seconds} for r in results],
        "cpu_seconds": round(sum(r.cpu_seconds or 0.0 for r in results), 2),
        "machine": machine()})


def parse_args(argv: Sequence[str] | None = None) -> DemoOptions:
    parser = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(DEFAULT_VARIANTS),
                        help="demo variants (block names or full model names), default vit,cataftermlp")
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (for tests)")
    parser.add_argument("--no-app", action="store_true", help="do not start the app (or set FERLENS_DEMO_NO_APP=1)")
    parser.add_argument("--force", action="store_true", help="re-run every stage even when up to date")
    parser.add_argument("--n", type=int, default=32, help="images per attribution/intervention stage (default 32)")
    parser.add_argument("--jobs", type=int, default=0, help="stages side by side (default: one per core)")
    args = parser.parse_args(argv)
    variants = tuple(v.strip() for v in args.runs.split(",") if v.strip())
    if not variants:
        raise FerlensError("--runs is empty; pass variants such as --runs vit,cataftermlp.")
    no_app = args.no_app or os.environ.get("FERLENS_DEMO_NO_APP", "") not in ("", "0")
    return DemoOptions(variants=variants, quick=args.quick, force=args.force, app=not no_app, n_explain=args.n,
                       jobs=max(0, args.jobs))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run_demo(parse_args(argv))
    except FerlensError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted; finished stages are stamped and will be skipped next time.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
