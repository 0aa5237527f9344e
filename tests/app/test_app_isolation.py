"""One broken run folder never takes the app down: wrongly typed config.json / metrics.json mark that run
broken in the sidebar (one sentence) and every page keeps working; a truncated dataset image on the
Explain page is one message."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_fixtures import MAIN

pytest.importorskip("train.models")

PAGES = ("overview.py", "probes.py", "embeddings.py", "explain.py", "similarity.py", "interventions.py",
         "efficiency.py")


def _copy_run(demo_root, root, name):
    shutil.copytree(demo_root / "runs" / "tiny_vit_a", root / "runs" / name)
    return root / "runs" / name


@pytest.fixture()
def typed_root(demo_root, tmp_path, use_root):
    root = use_root(tmp_path / "artifacts")
    _copy_run(demo_root, root, "good")
    cfg_run = _copy_run(demo_root, root, "bad_config")
    cfg = json.loads((cfg_run / "config.json").read_text())
    (cfg_run / "config.json").write_text(json.dumps({**cfg, "data": "garbage"}))
    met_run = _copy_run(demo_root, root, "bad_metrics")
    m = json.loads((met_run / "metrics.json").read_text())
    (met_run / "metrics.json").write_text(json.dumps({**m, "accuracy": "0.9"}))
    return root


def test_wrongly_typed_config_and_metrics_are_isolated(typed_root):
    runs = [str((typed_root / "runs" / n).resolve()) for n in ("bad_config", "bad_metrics", "good")]
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.session_state["runs"] = runs
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    labels = {o.split(" · ")[0]: o for o in at.multiselect(key="runs").options}
    assert set(labels) == {"bad_config", "bad_metrics", "good"}                 # every run is listed
    assert "broken:" in labels["bad_config"] and "data is str" in labels["bad_config"]
    assert "\n" not in labels["bad_config"]
    assert "metrics broken" in labels["bad_metrics"] and "acc 0." in labels["good"]
    for page in PAGES:
        if page != "overview.py":
            at.switch_page(f"views/{page}").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        errors = [e.value for e in at.error]
        assert any("bad_config" in e and "config.json" in e for e in errors), (page, errors)
        assert not any(e.startswith("Run good") for e in errors), (page, errors)
    at.switch_page("views/overview.py").run()
    errors = [e.value for e in at.error]
    assert any("bad_metrics" in e and "accuracy is str" in e for e in errors), errors


def test_explain_survives_a_truncated_dataset_image(demo_root, tmp_path, use_root):
    root = use_root(tmp_path / "artifacts")
    data = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 3)):
        (data / split / "happy").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                data / split / "happy" / f"{i}.jpg", quality=95)
    first = data / "test" / "happy" / "0.jpg"
    first.write_bytes(first.read_bytes()[:2000])                     # header intact, pixels cut off
    run = _copy_run(demo_root, root, "folder_run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"] = {"spec": f"folder:{data}", "attr_kinds": {}}
    (run / "config.json").write_text(json.dumps(cfg))
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.session_state["runs"] = [str(run.resolve())]
    at.run()
    at.switch_page("views/explain.py").run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any("0.jpg" in e and "cannot be decoded" in e for e in errors), errors
    at.slider(key="ex_index").set_value(1).run()                    # the next image explains normally
    assert not at.exception and not at.error, [e.value for e in at.error]
