"""A run SIGKILLed mid-epoch and resumed ends bit-identical to an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

pytest.importorskip("train.models")
pytest.importorskip("train.data.synthfer")

TINY = ["--model", "ferlens_tiny_vit_s3", "--data", "synthfer:size=32,n=70", "--img_size", "32",
        "--model_kwargs.depth", "1", "--model_kwargs.embed_dim", "32", "--model_kwargs.num_heads", "2",
        "--epochs", "3", "--batch_size", "16", "--eval_batch_size", "64", "--bootstrap", "50",
        "--warmup_epochs", "1", "--run_name", "tiny", "--threads", "1", "--ema_decay", "0.8", "--mixup", "0.2",
        "--amp", "none"]  # pinned: two separate fits are compared, and auto picks by a timing probe


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def _fit(args, kill_at=None):
    """Start ``python -m train fit`` in a subprocess. MKL_CBWR pins MKL's code path so float results do
    not depend on memory alignment, which differs between processes."""
    from train.engine import DEBUG_KILL_ENV

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "MKL_CBWR": "AUTO,STRICT"}
    env.pop(DEBUG_KILL_ENV, None)
    if kill_at is not None:
        env[DEBUG_KILL_ENV] = str(kill_at)
    return subprocess.Popen([sys.executable, "-m", "train", "fit", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    full_proc = _fit(TINY + ["--out", str(tmp_path / "a")])
    killed = _fit(TINY + ["--out", str(tmp_path / "b")], kill_at=5)   # both run side by side
    _, err = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, err[-2000:]
    run = tmp_path / "b" / "tiny"
    # killed after update 5 = the middle of epoch 2 (3 updates per epoch): epoch 1 is on disk, whole files only
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    state = torch.load(run / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 3)
    assert len((run / "history.csv").read_text().strip().splitlines()) == 2
    json.loads((run / "config.json").read_text())

    resumed = _fit(["--resume", str(run)])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    _, err = full_proc.communicate(timeout=600)
    assert full_proc.returncode == 0, err[-2000:]
    full = tmp_path / "a" / "tiny"
    a, b = _weights(full), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (full, run))
    for m in (ma, mb):
        m.pop("train_seconds")
    assert ma == mb
    strip = [line.rsplit(",", 1)[0] for line in (full / "history.csv").read_text().splitlines()]
    assert strip == [line.rsplit(",", 1)[0] for line in (run / "history.csv").read_text().splitlines()]


def test_resume_without_checkpoint_is_one_sentence(tmp_path):
    from train.config import resolve_config
    from train.engine import fit
    from train.errors import FerlensError

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {}}))
    with pytest.raises(FerlensError, match="has no state.pt to resume from"):
        fit(resolve_config(None, ["--resume", str(run)]))
