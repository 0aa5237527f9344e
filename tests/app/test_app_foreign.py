"""The app lists and compares runs of foreign models (a timm ViT, a CaiT) next to a ferlens run: Overview,
Probes and Explain render under AppTest without exception, with real artifacts written by the CLI."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from app_fixtures import LABELS, MAIN

pytest.importorskip("timm")
pytest.importorskip("train.data.synthfer")

SPEC = "synthfer:size=64,n=300,seed=0"
RUNS = {  # run -> (registry name, kwargs)
    "ferlens_vit": ("ferlens_tiny_vit_s3", {"img_size": 64, "depth": 2, "embed_dim": 32, "num_heads": 2}),
    "timm_vit": ("vit_tiny_patch16_224", {"img_size": 64, "patch_size": 8, "embed_dim": 64, "depth": 2,
                                          "num_heads": 2}),
    "timm_cait": ("cait_xxs24_224", {"img_size": 64, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}),
}


@pytest.fixture(scope="module")
def foreign_root(tmp_path_factory):
    """Three run folders with metrics (``train eval``) and linear probes (``probe linear``)."""
    import torch

    from probe.cli import main as probe_main
    from train.cli import main as train_main
    from train.models import create_model
    from train.runs import save_run

    root = tmp_path_factory.mktemp("foreign_artifacts")
    for run, (name, kwargs) in RUNS.items():
        torch.manual_seed(0)
        config = {"model": {"name": name, "kwargs": kwargs}, "num_classes": 7, "label_names": LABELS,
                  "data": {"spec": SPEC}, "input": {"img_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}}
        d = save_run(root / "runs" / run, create_model(name, num_classes=7, **kwargs), config)
        assert train_main(["eval", "--run", str(d)]) == 0
        assert probe_main(["linear", "--run", str(d), "--tokens", "cls,patch", "--targets", "expression",
                           "--cv", "2", "--seeds", "1"]) == 0
    return root


def _open(page: str, root: Path) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.session_state["runs"] = [str((root / "runs" / r).resolve()) for r in RUNS]  # all three side by side
    at.run()
    if page != "overview.py":
        at.switch_page(f"views/{page}").run()
    return at


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_overview_lists_foreign_runs_beside_ferlens(foreign_root, use_root):
    use_root(foreign_root)
    at = _open("overview.py", foreign_root)
    _no_exception(at)
    assert sorted(Path(r).name for r in at.multiselect(key="runs").value) == sorted(RUNS)
    labels = " ".join(at.multiselect(key="runs").options)
    assert "vit_tiny_patch16_224" in labels and "cait_xxs24_224" in labels and "tiny_vit_s3" in labels


def test_probes_page_compares_foreign_runs(foreign_root, use_root):
    use_root(foreign_root)
    at = _open("probes.py", foreign_root)
    _no_exception(at)
    frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for c in at.get("vega_lite_chart")
              for d in c.proto.datasets]
    runs = set().union(*[set(f["run"].astype(str)) for f in frames if "run" in f.columns])
    assert set(RUNS) <= runs, runs
    layers = set().union(*[set(f["layer"].astype(str)) for f in frames if "layer" in f.columns])
    assert "blocks_token_only.1" in layers  # CaiT's CLS readouts exist only at its class-attention blocks


def test_explain_page_maps_every_foreign_run(foreign_root, use_root):
    use_root(foreign_root)
    at = _open("explain.py", foreign_root)
    _no_exception(at)
    assert sum("predicts" in m.value for m in at.markdown) == len(RUNS)
    # one row of four overlays (rollout, CLS attention, Grad-CAM, IG) per run, after the input image
    counts = sorted(len(el.value) for el in at.image)
    assert counts[-len(RUNS):] == [4] * len(RUNS), counts
    captions = [c for el in at.image for c in el.captions]
    assert any("CLS attention blocks_token_only.1" in c for c in captions), captions
    assert not at.warning, [w.value for w in at.warning]
