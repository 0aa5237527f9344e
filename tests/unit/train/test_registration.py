"""`import train` registers the ferlens variants with timm without importing timm (or torch) itself, and
`--img_size` routing: which models take `img_size` at construction."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_import_train_registers_variants_lazily():
    proc = _python("import sys, train, train.runs\n"
                   "assert 'timm' not in sys.modules and 'torch' not in sys.modules, 'import train stays cheap'\n"
                   "import timm\n"
                   "m = timm.create_model('ferlens_tiny_vit_s3', num_classes=5)\n"
                   "assert type(m).__name__ == 'HybridFER' and m.num_classes == 5\n"
                   "assert timm.is_model('ferlens_ir50_cataftermlp_s3_d8')\n"
                   "from train.models import VARIANTS\n"
                   "assert sorted(timm.list_models('ferlens_*')) == sorted(VARIANTS)")
    assert proc.returncode == 0, proc.stderr


def test_timm_first_then_train_and_train_models_first():
    for code in ("import timm, train; timm.create_model('ferlens_tiny_clsonly_s3')",
                 "import train.models, timm; timm.create_model('ferlens_tiny_clsonly_s3')",
                 "import importlib.util, train; importlib.util.find_spec('timm'); import timm;"
                 "timm.create_model('ferlens_tiny_clsonly_s3')"):
        proc = _python(code)
        assert proc.returncode == 0, (code, proc.stderr)


@pytest.mark.parametrize("name, takes", [("ferlens_tiny_vit_s3", True), ("vit_tiny_patch16_224", True),
                                         ("deit_tiny_distilled_patch16_224", True), ("cait_xxs24_224", True),
                                         ("vit_tiny_r_s16_p8_224", True), ("resnet18", False)])
def test_takes_img_size(name, takes):
    from train.models import takes_img_size

    assert takes_img_size(name) is takes
