"""A SIGKILL, an exception or a full disk at any point of `train fit` and `probe extract` leaves either
nothing (no visible run / features folder) or a folder that resumes; concurrent fits of one name refuse."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import types

import numpy as np
import pytest

from train.cli import main as train_main
from train.runs import claim_run, list_runs

pytest.importorskip("train.models")

TINY = ["--model", "ferlens_tiny_vit_s3", "--data", "synthfer:size=32,n=70", "--img_size", "32",
        "--model_kwargs.depth", "1", "--model_kwargs.embed_dim", "32", "--model_kwargs.num_heads", "2",
        "--epochs", "2", "--batch_size", "16", "--eval_batch_size", "64", "--bootstrap", "10",
        "--warmup_epochs", "0", "--run_name", "tiny", "--threads", "1", "--amp", "none"]


def _spawn(args, env_extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **env_extra}
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _visible(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


@pytest.mark.slow
def test_fit_sigkill_before_and_after_the_first_step(tmp_path, capsys):
    """Killed right after update 1 (before publishing): no run. Killed after update 2 (published, no
    checkpoint yet): a run that --resume finishes."""
    from train.engine import DEBUG_KILL_ENV

    a, b = tmp_path / "a", tmp_path / "b"
    procs = [_spawn(["train", "fit", *TINY, "--out", str(a)], {DEBUG_KILL_ENV: "1"}),
             _spawn(["train", "fit", *TINY, "--out", str(b)], {DEBUG_KILL_ENV: "2"})]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == -signal.SIGKILL, err[-2000:]
    assert _visible(a) == [] and list_runs(a) == []
    with claim_run(a / "tiny", publish=False) as c:        # the name is free; the dead staging is cleared
        assert list(c.path.iterdir()) == []
    assert _visible(b) == ["tiny"] and sorted(p.name for p in (b / "tiny").iterdir()) == ["config.json"]
    assert train_main(["fit", "--resume", str(b / "tiny")]) == 0
    assert json.loads((b / "tiny" / "metrics.json").read_text())["accuracy"] >= 0
    assert len((b / "tiny" / "history.csv").read_text().splitlines()) == 3   # header + 2 epochs


def test_fit_exception_before_the_first_step_leaves_nothing(tmp_path, monkeypatch, capsys):
    import torch

    def boom(self, *a, **k):
        raise RuntimeError("injected optimizer failure")

    monkeypatch.setattr(torch.optim.AdamW, "step", boom)
    assert train_main(["fit", *TINY, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "injected optimizer failure" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


class _FullDisk:
    """Replace train.io's os/tempfile so fsync fails with ENOSPC for files whose name starts with ``prefix``."""

    def __init__(self, monkeypatch, prefix: str):
        import train.io

        self.prefix, self.current = prefix, ""
        fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
        fake_tmp = types.SimpleNamespace(mkstemp=self.mkstemp)
        fake_os.fsync = self.fsync
        monkeypatch.setattr(train.io, "os", fake_os)
        monkeypatch.setattr(train.io, "tempfile", fake_tmp)

    def mkstemp(self, *, dir, prefix, suffix):
        self.current = prefix
        return tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)

    def fsync(self, fd):
        if self.current.startswith(f".{self.prefix}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.fsync(fd)


@pytest.mark.parametrize("failing,left", [("config.json", []), ("state.pt", ["config.json", "history.csv",
                                                                           "model.safetensors"])])
def test_fit_disk_full_is_one_sentence_and_resumable(failing, left, tmp_path, monkeypatch, capsys):
    """ENOSPC while writing config.json (before step 1): nothing is left. ENOSPC while writing state.pt
    (epoch 1 end): the published run holds whole files only and --resume finishes it."""
    with monkeypatch.context() as m:
        _FullDisk(m, failing)
        assert train_main(["fit", *TINY, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "disk is full" in lines[0] and failing in lines[0] and "Traceback" not in err, err
    run = tmp_path / "tiny"
    if not left:
        assert sorted(p.name for p in tmp_path.iterdir()) == []
        return
    assert sorted(p.name for p in run.iterdir()) == left          # no temp files, no half-written state.pt
    assert train_main(["fit", "--resume", str(run)]) == 0
    assert (run / "metrics.json").is_file() and (run / "state.pt").is_file()


def test_second_fit_of_a_name_fails_at_once(tmp_path, capsys):
    from train.engine import DEBUG_KILL_ENV

    with claim_run(tmp_path / "tiny"):   # another process (here: this one) is writing the run
        proc = _spawn(["train", "fit", *TINY, "--out", str(tmp_path)], {DEBUG_KILL_ENV: ""})
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "being written by another process" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ extract
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    args = [a if a != "synthfer:size=32,n=70" else "synthfer:size=32,n=300" for a in TINY]
    assert train_main(["fit", *args, "--epochs", "1", "--out", str(out)]) == 0
    return out / "tiny"


def _clone(run_dir, dest):
    import shutil

    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("features"))
    return dest


@pytest.mark.slow
def test_extract_sigkill_resumes_to_the_same_arrays(run_dir, tmp_path):
    from probe.features import DEBUG_KILL_ENV, load_features, open_folder
    from train.errors import FerlensError

    run, other = _clone(run_dir, tmp_path / "tiny"), _clone(run_dir, tmp_path / "other")
    extract = ["probe", "extract", "--batch-size", "8", "--run"]
    exact = {"MKL_CBWR": "AUTO,STRICT"}  # pins MKL's code path, so floats do not depend on the process
    killed = _spawn(extract + [str(run)], {**exact, DEBUG_KILL_ENV: "16"})
    fresh_proc = _spawn(extract + [str(other)], {**exact, DEBUG_KILL_ENV: ""})
    _, err = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, err[-2000:]
    folder = next((run / "features").iterdir())
    assert not (folder / "index.json").exists() and list(folder.glob(".*.npy.partial"))
    assert json.loads((folder / "progress.rank0.json").read_text())["done"] == 16
    with pytest.raises(FerlensError, match="No features"):
        load_features(run)
    resume = _spawn(extract + [str(run)], {**exact, DEBUG_KILL_ENV: ""})      # continues at sample 16
    for p in (resume, fresh_proc):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    resumed, fresh = open_folder(folder).arrays, open_folder(next((other / "features").iterdir())).arrays
    assert resumed.keys() == fresh.keys()
    assert max(float(np.abs(np.asarray(resumed[k]) - np.asarray(fresh[k])).max()) for k in fresh) == 0.0
    assert not list(folder.glob(".*")) and not list(folder.glob("progress*"))


def test_extract_disk_full_is_one_sentence_and_leaves_nothing(run_dir, tmp_path, monkeypatch, capsys):
    import probe.features
    from probe.cli import main as probe_main

    run = _clone(run_dir, tmp_path / "tiny")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    fake_os.posix_fallocate = full
    monkeypatch.setattr(probe.features, "os", fake_os)
    assert probe_main(["extract", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "disk is full" in lines[0] and ".npy.partial" in lines[0], err
    assert not (run / "features").exists()
