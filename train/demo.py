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
STEM_EPOCHS = 4  # epochs of the stem pre-training run (the demo preset's batch size and learning rate)


@dataclass
class Stage:
    """One demo step: a CLI call, the files it reads and the files it must leave behind.

    ``required`` stages stop the demo when they fail (nothing downstream could work); the others are
    reported and the demo goes on (figures and the report name what is missing).
    """

    name: str
    argv: list[str]
    outputs: list[Path]
    inputs: list[Path] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    required: bool = False
    group: str = ""  # consecutive stages of one group run side by side (the fits: one thread each)

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
    n_explain: int = 64

    @property
    def prefix(self) -> str:
        return "quick" if self.quick else "demo"

    def run_name(self, variant: str) -> str:
        return f"{self.prefix}_{variant}"

    def model(self, variant: str) -> str:
        return variant if variant.startswith("ferlens_") else f"ferlens_tiny_{variant}_s3"


def plan(opts: DemoOptions, root: Path) -> list[Stage]:
    """The demo's stages in order, for the runs ``opts`` names, under artifacts ``root``."""
    runs = [opts.run_name(v) for v in opts.variants]
    rdir = {r: root / "runs" / r for r in runs}
    preset = REPO / "train" / "configs" / f"{DEMO_PRESET}.yaml"
    spec = QUICK_DATA if opts.quick else _preset_data(preset)
    n = 24 if opts.quick else opts.n_explain
    stages = [Stage("synthfer", ["train", "data", "info", spec, "--json", str(root / "demo" / "synthfer_info.json")],
                    [root / "demo" / "synthfer_info.json"], required=True)]
    # The study's hybrids start from a pretrained IR-50. From scratch, a CLS-readout hybrid sits on a loss
    # plateau far longer than its CNN stem does, so the demo first trains the tiny stem with a GAP readout
    # (cataftermlp + gap = stem + projection + linear head: the CNN baseline) and starts the variants from it.
    stem_run = f"{opts.prefix}_stem"
    stem_weights = root / "runs" / stem_run / "model.safetensors"
    pre = ["train", "fit", "-c", DEMO_PRESET, "--model", "ferlens_tiny_cataftermlp_s3", "--model_kwargs.readout", "gap",
           "--run_name", stem_run, "--data", spec, "--epochs", "1" if opts.quick else str(STEM_EPOCHS)]
    if opts.quick:
        pre += ["--batch_size", "32"]
    stages.append(Stage("fit stem", pre, [stem_weights, root / "runs" / stem_run / "metrics.json"], [preset],
                        [stem_run], required=True))
    for variant, run in zip(opts.variants, runs):
        fit = ["train", "fit", "-c", DEMO_PRESET, "--model", opts.model(variant), "--run_name", run, "--data", spec,
               "--threads", str(max(1, (os.cpu_count() or 2) // len(opts.variants)))]
        if opts.model(variant).startswith("ferlens_tiny_"):
            fit += ["--backbone_weights", str(stem_weights)]
        if opts.quick:
            fit += ["--epochs", "1", "--batch_size", "32"]
        stages.append(Stage(f"fit {variant}", fit, [rdir[run] / "model.safetensors", rdir[run] / "metrics.json"],
                            [preset, stem_weights], [run], required=True, group="fit"))
    weights = [rdir[r] / "model.safetensors" for r in runs]
    joined = ",".join(runs)
    small = ["--cv", "3", "--seeds", "1"] if opts.quick else []  # quick splits have < 5 faces in some classes
    stages += [
        Stage("extract", ["probe", "extract", "--run", joined, "--data", spec, "--split", "test"],
              [rdir[r] / "features" for r in runs], weights, runs, required=True),
        Stage("linear probes", ["probe", "linear", "--run", joined, "--tokens", "cls,patch", "--targets", "all", *small],
              [rdir[r] / "probes" / "linear.json" for r in runs], weights, runs),
        Stage("cka", ["probe", "cka", "--run", joined], [rdir[r] / "probes" / "cka.json" for r in runs], weights, runs),
        Stage("umap", ["probe", "umap", "--run", joined], [rdir[r] / "probes" / "umap.csv" for r in runs], weights, runs),
    ]
    for run in runs:
        for method in ("rollout", "gradcam", "attribute"):
            stages.append(Stage(f"{method} {run}", ["probe", method, "--run", run, "--n", str(n)],
                                [rdir[run] / "explain"], [rdir[run] / "model.safetensors"], [run]))
        stages.append(Stage(f"intervene {run}", ["probe", "intervene", "--run", run, "--n", str(n)],
                            [rdir[run] / "explain" / "interventions.csv"], [rdir[run] / "model.safetensors"], [run]))
        profile = ["train", "profile", "--run", run, "--batch-sizes", "1,8" if opts.quick else "1,8,32,128"]
        stages.append(Stage(f"profile {run}", profile, [rdir[run] / "profile.json"], [rdir[run] / "model.safetensors"],
                            [run]))
    probe_outputs = [p for s in stages[1:] for p in s.outputs if s.name.split()[0] not in ("extract",)]
    figures = root / "figures"
    stages.append(Stage("figures", ["probe", "figures", "--runs", joined, "--out", str(figures)],
                        [figures / "figures.json"], probe_outputs + weights, runs))
    report = root / "reports" / opts.prefix
    stages.append(Stage("report", ["probe", "report", "--runs", joined, "--out", str(report), "--figures", str(figures)],
                        [report / "report.md", report / "report.html"], probe_outputs + [figures / "figures.json"], runs))
    return stages


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
    status: str  # ran | skipped | failed
    seconds: float
    log: str | None = None


def run_stage(stage: Stage, root: Path, env: dict[str, str]) -> StageResult:
    """Run one stage in a subprocess with its output in a log file; stamp it on success."""
    return run_stages([stage], root, env)[0]


def run_stages(stages: Sequence[Stage], root: Path, env: dict[str, str]) -> list[StageResult]:
    """Run stages side by side (one subprocess each, output in log files); stamp each success."""
    started = []
    for stage in stages:
        log = root / "demo" / "logs" / (stage.name.replace(" ", "_") + ".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = list(stage.argv)
        if argv[:2] == ["train", "fit"] and (root / "runs" / argv[argv.index("--run_name") + 1]).exists():
            argv.append("--overwrite")  # the demo owns its runs; a stale one is replaced
        fh = open(log, "wb")
        proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        started.append((stage, log, fh, proc, time.perf_counter()))
    results = []
    for stage, log, fh, proc, start in started:
        returncode = proc.wait()
        fh.close()
        seconds = time.perf_counter() - start
        if returncode != 0 or not _outputs_exist(stage):
            results.append(StageResult(stage.name, "failed", seconds, str(log)))
            continue
        atomic_write_json(_stamp_path(root, stage), {"fingerprint": fingerprint(stage), "argv": stage.argv,
                                                     "seconds": round(seconds, 2)})
        results.append(StageResult(stage.name, "ran", seconds, str(log)))
    return results


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
                               "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    cuda=torch.cuda.is_available())
    except ImportError:
        pass
    return info


def run_demo(opts: DemoOptions, out=sys.stdout) -> int:
    """Run (or skip) every stage, write timings and the command log, then start the app."""
    root = artifacts_root().resolve()
    env = dict(os.environ, FERLENS_ARTIFACTS=str(root), PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.setdefault("OMP_NUM_THREADS", "2")
    stages = plan(opts, root)
    atomic_write_json(root / "demo_commands.json", {"commands": [
        {"stage": s.name, "runs": s.runs, "argv": s.argv} for s in stages]})
    results: list[StageResult] = []
    total = time.perf_counter()
    width = max(len(s.name) for s in stages)
    k = 0
    while k < len(stages):
        batch = [stages[k]]
        while stages[k].group and k + len(batch) < len(stages) and stages[k + len(batch)].group == stages[k].group:
            batch.append(stages[k + len(batch)])
        todo = []
        for j, stage in enumerate(batch, k + 1):
            tag = f"[{j:2d}/{len(stages)}] {stage.name:<{width}}"
            if not opts.force and up_to_date(root, stage):
                results.append(StageResult(stage.name, "skipped", 0.0))
                print(f"{tag}  up to date", file=out, flush=True)
            else:
                print(f"{tag}  running: {stage.display()}", file=out, flush=True)
                todo.append((tag, stage))
        for (tag, stage), res in zip(todo, run_stages([s for _, s in todo], root, env)):
            results.append(res)
            if res.status == "failed":
                print(f"{tag}  FAILED after {res.seconds:.1f} s (log: {res.log})\n{_tail(res.log)}", file=out, flush=True)
                if stage.required:
                    _write_timings(root, opts, results, time.perf_counter() - total)
                    print(f"demo stopped: stage '{stage.name}' is required by the ones after it.", file=out)
                    return 1
            else:
                print(f"{tag}  done in {res.seconds:.1f} s", file=out, flush=True)
        k += len(batch)
    elapsed = time.perf_counter() - total
    _write_timings(root, opts, results, elapsed)
    failed = [r.name for r in results if r.status == "failed"]
    print(f"demo pipeline: {elapsed:.1f} s; report: {root / 'reports' / opts.prefix / 'report.html'}"
          + (f"; failed stages: {', '.join(failed)}" if failed else ""), file=out, flush=True)
    if not opts.app:
        return 1 if failed else 0
    print("starting the app: streamlit run app/main.py (Ctrl-C to stop)", file=out, flush=True)
    return subprocess.run([sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py"),
                           "--server.headless", "true"], cwd=REPO, env=env).returncode


def _write_timings(root: Path, opts: DemoOptions, results: Sequence[StageResult], elapsed: float) -> None:
    atomic_write_json(root / "demo_timings.json", {
        "quick": opts.quick, "variants": list(opts.variants), "total_seconds": round(elapsed, 2),
        "stages": [{"stage": r.name, "status": r.status, "seconds": round(r.seconds, 2)} for r in results],
        "machine": machine()})


def parse_args(argv: Sequence[str] | None = None) -> DemoOptions:
    parser = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(DEFAULT_VARIANTS),
                        help="demo variants (block names or full model names), default vit,cataftermlp")
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (for tests)")
    parser.add_argument("--no-app", action="store_true", help="do not start the app (or set FERLENS_DEMO_NO_APP=1)")
    parser.add_argument("--force", action="store_true", help="re-run every stage even when up to date")
    parser.add_argument("--n", type=int, default=64, help="images per attribution/intervention stage (default 64)")
    args = parser.parse_args(argv)
    variants = tuple(v.strip() for v in args.runs.split(",") if v.strip())
    if not variants:
        raise FerlensError("--runs is empty; pass variants such as --runs vit,cataftermlp.")
    no_app = args.no_app or os.environ.get("FERLENS_DEMO_NO_APP", "") not in ("", "0")
    return DemoOptions(variants=variants, quick=args.quick, force=args.force, app=not no_app, n_explain=args.n)


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
