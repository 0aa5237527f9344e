"""`train sweep --launcher local` (submitit's LocalExecutor): 2 lr × 2 depth × 2 seeds of a tiny model, one job
SIGKILLed mid-epoch and one preempted (SIGUSR2 → submitit checkpoint → requeue → --resume). The re-run submits
only the killed point, and summary and weights equal a serial sweep's."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("submitit")
pytest.importorskip("train.models")

from train.cluster import DEBUG_JOB_SIGNAL_ENV  # noqa: E402
from train.engine import DEBUG_KILL_ENV  # noqa: E402

SWEEP = ["sweep", "--model", "ferlens_tiny_vit_s3", "--data", "synthfer:size=32,n=70", "--grid", "lr=1e-3,3e-3",
         "depth=1,2", "--seeds", "2", "--name", "grid", "--img_size", "32", "--model_kwargs.embed_dim", "32",
         "--model_kwargs.num_heads", "2", "--epochs", "2", "--batch_size", "16", "--eval_batch_size", "64",
         "--bootstrap", "0", "--warmup_epochs", "0", "--threads", "1", "--amp", "none"]  # amp auto times a probe
KILLED, PREEMPTED = "grid--lr0.001-depth2-s1", "grid--lr0.003-depth1-s0"


def _sweep(root, *extra, hooks: str = "") -> subprocess.CompletedProcess:
    """``python -m train sweep`` in a subprocess; MKL_CBWR pins MKL's code path so floats do not depend on
    the process (see test_resume.py)."""
    env = {**os.environ, "FERLENS_ARTIFACTS": str(root), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "MKL_CBWR": "AUTO,STRICT"}
    env.pop(DEBUG_KILL_ENV, None)
    env.pop(DEBUG_JOB_SIGNAL_ENV, None)
    if hooks:
        env[DEBUG_JOB_SIGNAL_ENV] = hooks
    return subprocess.run([sys.executable, "-m", "train", *SWEEP, *extra], env=env, capture_output=True, text=True,
                          timeout=1500)


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.timeout(1800)   # 14 python processes start (8 jobs, a requeue, a re-run, 3 sweeps): slow on a busy box
def test_local_launcher_survives_a_killed_job_and_matches_the_serial_sweep(tmp_path):
    local, serial = tmp_path / "local", tmp_path / "serial"
    # 3 updates per epoch: update 5 is mid epoch 2 (epoch 1 is checkpointed), update 4 too
    first = _sweep(local, "--launcher", "local", "--parallel", "2", "--poll", "0.5",
                   hooks=f"{KILLED}=5:SIGKILL,{PREEMPTED}=4:SIGUSR2")
    assert first.returncode == 2, first.stderr[-3000:]
    assert "1 of 8 sweep jobs failed (first: lr0.001-depth2 seed 1, the job ended without a result" in first.stderr
    out = first.stdout
    assert "0/8 points finished, submitting 8 through the local launcher" in out
    assert out.count("submitted as job") == 8 and "running epoch 1/2" in out and "[8/8 done]" in out
    runs, sweep_dir = local / "runs", local / "sweeps" / "grid"
    assert not (runs / KILLED / "metrics.json").exists()
    state = torch.load(runs / KILLED / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 3)
    assert not (sweep_dir / "summary.json").exists()
    # the preempted job was checkpointed and requeued by submitit, then finished through --resume
    record = json.loads((sweep_dir / "jobs.json").read_text())["submissions"]
    job = {j["run"]: j for j in record[0]["jobs"]}
    jid = job[PREEMPTED]["job_id"]
    log = "".join((sweep_dir / "jobs" / jid / f"{jid}_0_log.{x}").read_text() for x in ("out", "err"))
    assert "Calling checkpoint method" in log and "Requeued job" in log and job[PREEMPTED]["ok"]
    assert [j["run"] for j in record[0]["jobs"] if not j["ok"]] == [KILLED]

    again = _sweep(local, "--launcher", "local", "--poll", "0.5")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "7/8 points finished, submitting 1 through the local launcher" in again.stdout
    record = json.loads((sweep_dir / "jobs.json").read_text())["submissions"]
    assert [j["run"] for j in record[1]["jobs"]] == [KILLED] and record[1]["jobs"][0]["ok"]
    assert len([p for p in (sweep_dir / "jobs").iterdir()]) == 9   # submitit's job folders live with the sweep
    assert "best: lr=" in again.stdout and (sweep_dir / "accuracy_vs_lr.png").is_file()

    ref = _sweep(serial, "--launcher", "serial")
    assert ref.returncode == 0, ref.stderr[-3000:]
    got, want = (json.loads((r / "sweeps" / "grid" / "summary.json").read_text()) for r in (local, serial))
    assert got["rows"] == want["rows"] and got["best"] == want["best"] and len(got["runs"]) == 8
    for run in sorted(p.name for p in (serial / "runs").iterdir() if not p.name.startswith(".")):
        a, b = _weights(local / "runs" / run), _weights(serial / "runs" / run)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run


@pytest.mark.slow
def test_probe_linear_local_launcher_equals_serial_and_skips_probed_runs(_artifacts_root, capsys):
    from probe.cli import main
    from test_probe_cli import make_run   # tests/integration is on sys.path (pytest rootdir-less import)

    vit, cat = make_run(_artifacts_root, "vit", "vit"), make_run(_artifacts_root, "cat", "cataftermlp")
    argv = ["linear", "--run", "vit,cat", "--tokens", "cls,patch", "--layers", "0,-1", "--cv", "2", "--seeds", "1"]
    assert main(argv) == 0                                             # serial (the default), in this process
    serial = {r: json.loads((d / "probes" / "linear.json").read_text()) for r, d in (("vit", vit), ("cat", cat))}
    for d in (vit, cat):
        (d / "probes" / "linear.json").unlink()
    capsys.readouterr()
    assert main(argv + ["--launcher", "local", "--poll", "0.5"]) == 0   # one submitit job per run
    out = capsys.readouterr().out
    assert "0/2 runs already probed with these options, submitting 2 through the local launcher" in out
    assert out.count("submitted as job") == 2 and "[2/2 done] " in out and "expression (accuracy" in out
    for r, d in (("vit", vit), ("cat", cat)):
        assert json.loads((d / "probes" / "linear.json").read_text()) == serial[r]
    assert len(list((_artifacts_root / "probe-jobs").iterdir())) == 2
    assert main(argv + ["--launcher", "local"]) == 0
    assert "2/2 runs already probed with these options, submitting 0" in capsys.readouterr().out
    from probe.commands.linear import _probed

    request = json.loads((vit / "probes" / "linear.request.json").read_text())["linear"]
    assert _probed(vit, request) and not _probed(vit, {**request, "cv": 3})   # other options: probed again
