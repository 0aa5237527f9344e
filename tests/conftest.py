"""Shared test set-up: every test writes artifacts into a temporary root, single-threaded BLAS
where it matters, deterministic seeds."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _artifacts_root(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("artifacts")
    monkeypatch.setenv("FERLENS_ARTIFACTS", str(root))
    yield root


@pytest.fixture(autouse=True)
def _seed():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
