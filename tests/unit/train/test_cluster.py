"""train/cluster.py without a cluster: flag → submitit parameter mapping, the sbatch file submitit would write,
the preemption hook, the in-process DebugExecutor path and the missing-submitit sentence."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from train.cluster import (FitPoint, LaunchOptions, add_launcher_arguments, executor_parameters, make_executor,
                           options_from_args, run_jobs)
from train.errors import FerlensError

submitit = pytest.importorskip("submitit")


def _parse(argv: list[str]) -> LaunchOptions:
    parser = argparse.ArgumentParser()
    add_launcher_arguments(parser)
    return options_from_args(parser.parse_args(argv))


def test_flags_map_to_autoexecutor_parameters():
    opts = _parse(["--launcher", "slurm", "--slurm.partition", "gpu", "--slurm.gpus_per_task", "1",
                   "--slurm.timeout_min", "90", "--slurm.cpus_per_task", "8", "--slurm.mem_gb", "32",
                   "--slurm.account", "lab", "--slurm.setup", "module load cuda", "--slurm.setup", "source venv/bin/activate",
                   "--parallel", "4"])
    assert executor_parameters(opts, "grid") == {
        "name": "grid", "timeout_min": 90, "cpus_per_task": 8, "mem_gb": 32, "slurm_partition": "gpu",
        "slurm_account": "lab", "slurm_gpus_per_task": 1, "slurm_setup": ["module load cuda", "source venv/bin/activate"],
        "slurm_array_parallelism": 4}
    local = _parse([])
    assert local.launcher == "local" and executor_parameters(local, "grid") == {"name": "grid", "timeout_min": 240}


def test_slurm_executor_writes_the_expected_sbatch_file(tmp_path, monkeypatch):
    """AutoExecutor(cluster="slurm") with srun faked present: submitit validates the parameters and renders
    the sbatch script it would submit (nothing is submitted)."""
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    opts = LaunchOptions(launcher="slurm", partition="gpu", gpus_per_task=1, timeout_min=240, max_requeues=5,
                         setup=["module load cuda"])
    executor = make_executor(opts, tmp_path / "jobs", "grid")
    assert executor.cluster == "slurm" and executor._executor.max_num_timeout == 5
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit X", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-task=1", "#SBATCH --time=240",
                 "#SBATCH --job-name=grid", "#SBATCH --signal=USR2@90", "module load cuda"):
        assert line in sbatch, line
    assert str(tmp_path / "jobs" / "%j") in sbatch   # logs under the sweep's jobs/ folder


def test_slurm_refusals_are_one_sentence(tmp_path, monkeypatch):
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: -1))   # no srun on this machine
    with pytest.raises(FerlensError, match="Cannot submit to Slurm from this machine"):
        make_executor(LaunchOptions(launcher="slurm"), tmp_path, "grid")
    with pytest.raises(FerlensError, match="does not submit jobs"):
        make_executor(LaunchOptions(launcher="serial"), tmp_path, "grid")


def test_missing_submitit_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)    # import submitit -> ImportError
    with pytest.raises(FerlensError, match=r"pip install ferlens\[cluster\]"):
        make_executor(LaunchOptions(launcher="local"), tmp_path, "grid")


def test_fit_point_checkpoint_requeues_the_same_point():
    """submitit calls checkpoint() on preemption and re-runs what it returns: the same plan, next attempt."""
    job = FitPoint(plan="PLAN", artifacts="/abs/artifacts")
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function == FitPoint("PLAN", "/abs/artifacts", attempt=1) and delayed.args == ()


@dataclass
class _Square:
    x: int

    @property
    def label(self) -> str:
        return f"x={self.x}"

    def __call__(self) -> int:
        if self.x < 0:
            raise FerlensError(f"x={self.x} is negative; pass a positive x.")
        return self.x * self.x

    def progress(self) -> str:
        return ""


def test_run_jobs_debug_executor_runs_in_process(tmp_path: Path, monkeypatch):
    opts = LaunchOptions(launcher="debug", poll_s=0.0)
    lines: list[str] = []
    outcomes = run_jobs(make_executor(opts, tmp_path, "t"), [_Square(2), _Square(3), _Square(4)], opts,
                        parallel=2, echo=lines.append)
    assert [o.result for o in outcomes] == [4, 9, 16] and all(o.ok for o in outcomes)
    assert sum("submitted as job" in line for line in lines) == 3 and lines[-1].startswith("[3/3 done]")
    # the debug launcher is for debugging: a job's error opens pdb (skipped here) and propagates unchanged
    import pdb

    monkeypatch.setattr(pdb, "post_mortem", lambda *a: None)
    with pytest.raises(FerlensError, match="x=-1 is negative"):
        run_jobs(make_executor(opts, tmp_path, "t"), [_Square(-1)], opts, parallel=1, echo=lines.append)


def test_sweep_points_are_identified_by_config_hash(_artifacts_root):
    """A finished point is reused only when its run holds the same config (runtime keys and keys the sweep
    leaves 'auto' aside); a run of another config in the folder is one sentence, before any job."""
    import json

    from train.sweep import plan_sweep, point_state

    grid = {"lr": [1e-3]}
    (plan,) = plan_sweep("ferlens_tiny_vit_s3", "synthfer:size=32,n=70", grid, seeds=1, overrides=["--epochs", "2"],
                         name="g")
    assert point_state(plan) == "new"
    plan.run_dir.mkdir(parents=True)
    saved = {**plan.train, "threads": 7, "device": "cpu", "amp": "bf16", "resume": str(plan.run_dir)}
    (plan.run_dir / "config.json").write_text(json.dumps({"train": saved}))
    assert point_state(plan) == "restart"
    (plan.run_dir / "metrics.json").write_text("{}")
    assert point_state(plan) == "done"
    (plan.run_dir / "config.json").write_text(json.dumps({"train": {**saved, "epochs": 3}}))
    with pytest.raises(FerlensError, match="holds a run of another config"):
        point_state(plan)
