"""Fixtures for the app tests: one demo artifacts root per session, and an empty one."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the app package lives at the repo root
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# no background model warm-up inside the test process (the browser test's server keeps it on)
os.environ["FERLENS_APP_WARMUP"] = "0"

from app_fixtures import build_artifacts  # noqa: E402


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Two schema-exact runs (with tiny-model weights) and one corrupt run."""
    return build_artifacts(tmp_path_factory.mktemp("demo_artifacts"))


@pytest.fixture()
def use_root(monkeypatch):
    """Point FERLENS_ARTIFACTS (the app's default root) at a given folder."""
    def _use(root: Path) -> Path:
        monkeypatch.setenv("FERLENS_ARTIFACTS", str(root))
        return root
    return _use
