"""AppTest runs of every page with demo artifacts and with an empty root; escapes, corrupt runs, uploads."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from app_fixtures import MAIN

pytest.importorskip("train.models")
pytest.importorskip("train.engine")
pytest.importorskip("probe.attribution")

# page file -> (widget keys that must exist, minimum number of Vega-Lite charts) with the two demo runs
PAGES = {
    "overview.py": ([], 5),
    "probes.py": (["probe_target", "probe_tokens", "probe_view"], 1),
    "embeddings.py": (["emb_method", "emb_tokens", "emb_color", "emb_layer"], 2),
    "explain.py": (["ex_source", "ex_index", "ex_target", "ex_methods", "ex_layer_0", "ex_head_0"], 2),
    "similarity.py": (["sim_matrices"], 4),
    "interventions.py": (["int_modes", "int_metric"], 1),
    "efficiency.py": (["eff_y"], 1),
}
SIDEBAR_KEYS = ["artifacts_root", "run_path", "runs", "split", "target"]


def open_page(page: str, **session) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=120)
    for k, v in session.items():
        at.session_state[k] = v
    at.run()
    if page != "overview.py":
        at.switch_page(f"views/{page}").run()
    return at


def charts(at: AppTest) -> list:
    return list(at.get("vega_lite_chart"))


def chart_data(chart) -> list:
    """The DataFrames a Vega-Lite chart element carries."""
    return [convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.mark.parametrize("page", list(PAGES))
def test_page_with_demo_artifacts(page, demo_root, use_root):
    use_root(demo_root)
    at = open_page(page)
    no_exception(at)
    keys, n_charts = PAGES[page]
    for key in keys:
        assert at.main.get_by_key(key) is not None, key
    for key in SIDEBAR_KEYS:
        assert at.sidebar.get_by_key(key) is not None, key
    assert len(charts(at)) >= n_charts
    assert not at.error, [e.value for e in at.error]
    # the two readable runs are selected by default, the corrupt one is not
    assert sorted(Path(r).name for r in at.multiselect(key="runs").value) == ["tiny_cat_b", "tiny_vit_a"]
    labels = list(at.multiselect(key="runs").options)  # AppTest holds the formatted labels
    assert any("cataftermlp_s3 · synthfer · acc 0.640" in lab for lab in labels), labels
    assert len(at.get("download_button")) >= 3 * n_charts


def test_every_page_with_empty_root(tmp_path, use_root):
    use_root(tmp_path)
    at = open_page("overview.py")
    for page in PAGES:
        if page != "overview.py":
            at.switch_page(f"views/{page}").run()
        no_exception(at)
        assert not charts(at), page
        assert any("No run selected" in i.value for i in at.info), page
        assert any("No runs under" in i.value for i in at.sidebar.info), page


def test_probe_target_change_updates_chart(demo_root, use_root):
    use_root(demo_root)
    at = open_page("probes.py")
    before = pd_concat(chart_data(charts(at)[0]))
    assert set(before["target"]) == {"expression"}
    assert set(before["tokens"]) == {"cls", "patch"}
    # expression is decodable: the best layer beats chance by a wide margin
    assert before["score"].max() > before["chance"].iloc[0] + 0.3
    at.selectbox(key="probe_target").set_value("identity").run()
    no_exception(at)
    after = pd_concat(chart_data(charts(at)[0]))
    assert set(after["target"]) == {"identity"}
    assert not np.allclose(sorted(before["score"]), sorted(after["score"]))
    at.multiselect(key="probe_tokens").set_value(["cls"]).run()
    assert set(pd_concat(chart_data(charts(at)[0]))["tokens"]) == {"cls"}


def test_embedding_layer_slider_updates_chart(demo_root, use_root):
    use_root(demo_root)
    at = open_page("embeddings.py")
    first = chart_data(charts(at)[0])[0]
    assert set(first["layer"]) == {"blocks.1"}
    at.select_slider(key="emb_layer").set_value("tokens").run()
    no_exception(at)
    second = chart_data(charts(at)[0])[0]
    assert set(second["layer"]) == {"tokens"}
    assert not np.allclose(first["x"].to_numpy(), second["x"].to_numpy())


def pd_concat(frames):
    """The chart's run-level rows (frames of side layers such as the chance rule have no ``run``)."""
    import pandas as pd

    return pd.concat([f for f in frames if "run" in f.columns], ignore_index=True)


def test_run_path_cannot_escape_root(demo_root, use_root):
    use_root(demo_root)
    at = open_page("overview.py")
    for escape in ("../../etc", "runs/../../outside", "/etc", "runs/tiny_vit_a/../../../x"):
        at.text_input(key="run_path").set_value(escape).run()
        no_exception(at)
        errors = [e.value for e in at.sidebar.error]
        assert len(errors) == 1 and "outside the artifacts root" in errors[0], (escape, errors)
        assert len(at.multiselect(key="runs").options) == 3  # nothing outside the root was added
    at.multiselect(key="runs").set_value([]).run()
    at.text_input(key="run_path").set_value("tiny_vit_a").run()  # a typed name inside the root is selected
    assert not at.sidebar.error
    assert [Path(r).name for r in at.multiselect(key="runs").value] == ["tiny_vit_a"]


def test_query_param_escape_rejected_and_valid_name_accepted(demo_root, use_root):
    use_root(demo_root)
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.query_params["runs"] = "../../../tmp,tiny_vit_a"
    at.run()
    no_exception(at)
    assert any("outside the artifacts root" in e.value for e in at.sidebar.error)
    assert [Path(r).name for r in at.multiselect(key="runs").value] == ["tiny_vit_a"]


def test_resolve_inside_rejects_symlink_escape(demo_root, tmp_path):
    from app.state import resolve_inside
    from train.errors import FerlensError

    outside = tmp_path / "elsewhere"
    (outside / "x").mkdir(parents=True)
    (outside / "x" / "config.json").write_text("{}")
    link = demo_root / "runs" / "sneaky"
    if not link.exists():
        link.symlink_to(outside / "x")
    try:
        with pytest.raises(FerlensError, match="outside the artifacts root"):
            resolve_inside(demo_root, "sneaky")
        assert resolve_inside(demo_root, "tiny_vit_a") == (demo_root / "runs" / "tiny_vit_a").resolve()
        assert resolve_inside(demo_root, "runs/tiny_vit_a") == (demo_root / "runs" / "tiny_vit_a").resolve()
    finally:
        link.unlink()


def test_corrupt_run_is_isolated(demo_root, use_root):
    use_root(demo_root)
    runs = [str((demo_root / "runs" / n).resolve()) for n in ("corrupt_run", "tiny_vit_a")]
    at = open_page("overview.py", runs=runs)
    for page in ("overview.py", "probes.py", "explain.py", "efficiency.py"):
        if page != "overview.py":
            at.switch_page(f"views/{page}").run()
        no_exception(at)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and "corrupt_run" in errors[0] and "not valid JSON" in errors[0], (page, errors)
        assert charts(at), f"{page}: the readable run still draws its charts"
        assert {"tiny_vit_a"} <= set().union(*(set(f["run"]) for c in charts(at) for f in chart_data(c)
                                               if "run" in f.columns)) or page == "explain.py"


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 80, 60)).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_bad_files_give_clear_message(demo_root, use_root):
    use_root(demo_root)
    at = open_page("explain.py")
    at.radio(key="ex_source").set_value("Upload").run()
    for name, data, message in [("notes.txt", b"this is not an image", "not an image"),
                                ("huge.png", _png(5000, 4500), "20 MP"),
                                ("big.bin", b"\0" * (10 * 2**20 + 1), "10 MB")]:
        at.get_by_key("ex_upload").set_value((name, data, "application/octet-stream")).run()
        no_exception(at)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and message in errors[0] and name in errors[0], errors
        assert not charts(at)


def test_upload_image_is_explained_by_both_runs(demo_root, use_root):
    use_root(demo_root)
    at = open_page("explain.py")
    at.radio(key="ex_source").set_value("Upload").run()
    at.get_by_key("ex_upload").upload("face.png", _png(80, 80), "image/png").run()
    no_exception(at)
    assert not at.error
    probs = [chart_data(c)[0] for c in charts(at)]
    assert len(probs) == 2
    for p in probs:
        assert p["probability"].sum() == pytest.approx(1.0, abs=1e-4)
        assert p["top"].sum() == 1
    assert sum("predicts" in m.value for m in at.markdown) == 2


def test_explain_maps_and_counterfactual(demo_root, use_root):
    use_root(demo_root)
    at = open_page("explain.py")
    # top row (image + part mask) and one row of 4 overlays per run
    counts = sorted(len(el.value) for el in at.image)
    assert counts == [2, 4, 4], counts
    assert any(c.startswith("part mask: ") and "mouth" in c for el in at.image for c in el.captions)
    before = [m.value for m in at.markdown if "predicts" in m.value]
    at.toggle(key="ex_cf").set_value(True).run()
    at.selectbox(key="ex_cf_factor").set_value("expression").run()
    no_exception(at)
    captions = [c for el in at.image for c in el.captions]
    assert any(c.startswith("counterfactual (expression = ") for c in captions), captions
    assert len([m for m in at.markdown if "predicts" in m.value]) == len(before) == 2
    at.select_slider(key="ex_head_0").set_value(1).run()
    no_exception(at)
    captions = [c for el in at.image for c in el.captions]
    assert any("head 1" in c for c in captions), captions


def test_missing_artifacts_name_their_command(demo_root, tmp_path, use_root):
    import shutil

    root = use_root(tmp_path)
    run = root / "runs" / "bare"
    run.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(demo_root / "runs" / "tiny_vit_a" / f, run / f)
    for page, command, button in [("probes.py", "probe linear --run bare --tokens cls,patch", False),
                                  ("similarity.py", "probe cka --run bare", True),
                                  ("efficiency.py", "train profile --run bare", True),
                                  ("interventions.py", "probe intervene --run bare", False)]:
        at = open_page(page)
        no_exception(at)
        codes = " ".join(c.value for c in at.code)
        assert command in codes, (page, codes)
        assert any(b.label.startswith("Run it now") for b in at.button) == button, page


@pytest.mark.slow
def test_run_button_produces_missing_profile(demo_root, tmp_path, use_root):
    """The cheap command behind the button really runs (a `train profile` subprocess) and the chart appears."""
    import shutil

    pytest.importorskip("train.commands.profile")
    root = use_root(tmp_path)
    run = root / "runs" / "bare"
    run.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(demo_root / "runs" / "tiny_vit_a" / f, run / f)
    at = open_page("efficiency.py")
    assert not charts(at)
    next(b for b in at.button if b.label.startswith("Run it now")).click().run(timeout=240)
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert (run / "profile.json").is_file()
    rows = pd_concat(chart_data(charts(at)[0]))
    assert sorted(rows["batch_size"]) == [1, 8] and (rows["throughput"] > 0).all()


def test_chart_downloads_are_png_svg_csv():
    """The deferred download callables of show_chart render real PNG/SVG bytes through vl-convert."""
    import pandas as pd

    from app import charts as app_charts

    df = pd.DataFrame({"run": ["a", "a", "b", "b"], "layer": ["tokens", "blocks.0"] * 2, "score": [.3, .5, .4, .6],
                       "lo": [.2, .4, .3, .5], "hi": [.4, .6, .5, .7]})
    chart = app_charts.line_with_ci(df, x="layer", y="score", lo="lo", hi="hi", chance=0.14,
                                    x_sort=["tokens", "blocks.0"])
    png, svg = app_charts._png(chart.to_dict()), app_charts._svg(chart.to_dict())
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert svg.lstrip().startswith(b"<svg") and b"</svg>" in svg
    spec = chart.to_dict()
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in spec["layer"]]
    assert marks == ["area", "line", "point", "rule"]  # CI band, lines, points (legends), chance
