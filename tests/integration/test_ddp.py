"""`torchrun --nproc_per_node 2 -m train fit` on CPU (gloo): identical weights on both ranks, rank 0 alone writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("train.models")
pytest.importorskip("train.data.synthfer")

TINY = ["--model", "ferlens_tiny_vit_s3", "--data", "synthfer:size=32,n=70", "--img_size", "32",
        "--model_kwargs.depth", "1", "--model_kwargs.embed_dim", "32", "--model_kwargs.num_heads", "2",
        "--epochs", "2", "--batch_size", "8", "--eval_batch_size", "64", "--bootstrap", "20",
        "--warmup_epochs", "0", "--run_name", "ddp", "--threads", "1"]


def _hash(state):
    import hashlib

    digest = hashlib.sha256()
    for k, v in sorted(state.items()):
        digest.update(k.encode())
        digest.update(v.contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_torchrun_two_ranks_stay_identical_and_rank0_writes(tmp_path):
    from safetensors.torch import load_file

    from train.engine import DEBUG_DUMP_ENV

    artifacts, dump = tmp_path / "artifacts", tmp_path / "dump"
    env = {**os.environ, "FERLENS_ARTIFACTS": str(artifacts), DEBUG_DUMP_ENV: str(dump), "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "train", "fit", *TINY]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # 52 train samples → 26 per rank → 3 batches of 8 per epoch, 2 epochs
    assert ranks[0]["step"] == ranks[1]["step"] == 6
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    assert (ranks[0]["checkpoints_written"], ranks[1]["checkpoints_written"]) == (2, 0)
    runs = list((artifacts / "runs").iterdir())
    assert [p.name for p in runs] == ["ddp"]
    files = sorted(p.name for p in runs[0].iterdir())
    assert files == ["config.json", "history.csv", "metrics.json", "model.safetensors", "state.pt"]
    assert _hash(load_file(str(runs[0] / "model.safetensors"))) == ranks[0]["sha256"]
    assert proc.stdout.count("epoch 2/2") == 1          # only rank 0 reports
