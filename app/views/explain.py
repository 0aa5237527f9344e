"""Explain: one image, every selected run side by side — prediction, rollout, CLS attention per
layer/head, Grad-CAM and IG overlays; on SynthFER also the part mask and a counterfactual.

Labels come from each run's config.json; the model spec, predictions and maps from the explain worker
(``app.compute``), so this page imports no model code in the server (datasets are rendered here).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from app import actions, charts, explainer, loaders
from app.state import selection
from train.errors import FerlensError

TITLES = {"rollout": "Attention rollout", "cls_attention": "CLS attention", "gradcam": "Grad-CAM",
          "ig": "Integrated Gradients"}


def dataset_image_ui(spec: str, split: str) -> tuple[Image.Image, np.ndarray | None, str] | None:
    """Index slider (and counterfactual controls on SynthFER); returns (image, part mask, caption)."""
    try:
        ds = loaders.dataset_for(spec, split)
    except FerlensError as e:
        st.error(str(e))
        return None
    index = (st.slider(f"Image index ({spec}, {split})", 0, len(ds) - 1, 0, key="ex_index") if len(ds) > 1
             else 0)  # a slider needs two positions
    try:
        image = ds.load_image(index)
    except FerlensError as e:  # a truncated/corrupt file: this image only, pick another
        st.error(f"{e} Pick another image index.")
        return None
    except (OSError, ValueError, SyntaxError) as e:
        path = ds.image_path(index) if hasattr(ds, "image_path") else ds.sample_ids[index]
        st.error(f"Image {path} cannot be decoded ({type(e).__name__}); pick another image index, or run "
                 f"'train data check {spec}' to list every bad file.")
        return None
    truth = ds.label_names[int(ds.labels[index])]
    caption = f"{ds.sample_ids[index]} · true: {truth}"
    mask = ds.part_mask(index) if getattr(ds, "has_part_masks", hasattr(ds, "part_mask")) else None
    if hasattr(ds, "counterfactual") and st.toggle("Counterfactual: change one factor", key="ex_cf"):
        factors = ds.factors(index)
        c1, c2 = st.columns(2)
        names = [f for f in explainer.CATEGORICAL_FACTORS + tuple(explainer.NUMERIC_FACTORS) if f in factors]
        factor = c1.selectbox("Factor", names, key="ex_cf_factor")
        value = _factor_value_ui(c2, factor, factors[factor])
        try:
            cf = ds.counterfactual(index, **{factor: value})
        except FerlensError as e:
            st.error(str(e))
        else:
            st.image([explainer.upscale(np.asarray(image), 160), explainer.upscale(np.asarray(cf), 160)],
                     caption=[f"original ({factor} = {_fmt(factors[factor])})", f"counterfactual ({factor} = {_fmt(value)})"],
                     width=160)
            image, caption = cf, f"{caption} · counterfactual {factor} = {_fmt(value)}"
    return image, mask, caption


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _factor_value_ui(col, factor: str, current):
    """A widget for the new value of one SynthFER factor."""
    if factor in explainer.NUMERIC_FACTORS:
        lo, hi = explainer.NUMERIC_FACTORS[factor]
        return col.slider(f"New {factor}", lo, hi, float(np.clip(current, lo, hi)), key=f"ex_cf_{factor}")
    from train.data import synthfer

    choices = list({"expression": synthfer.EXPRESSIONS, "illumination": synthfer.ILLUMINATIONS,
                    "background": synthfer.BACKGROUNDS, "occluder": synthfer.OCCLUDERS}[factor])
    others = [c for c in choices if c != current] or choices
    return col.selectbox(f"New {factor}", others, key=f"ex_cf_{factor}")


def upload_ui() -> tuple[Image.Image, None, str] | None:
    """File uploader with size/format checks."""
    up = st.file_uploader("Upload a face image (PNG/JPEG/BMP/WebP, ≤ 10 MB, ≤ 20 MP)", key="ex_upload")
    if up is None:
        st.info("Upload an image to explain it.")
        return None
    try:
        return explainer.read_upload(up.name, up.getvalue()), None, up.name
    except FerlensError as e:
        st.error(str(e))
        return None


def run_column(run: Path, config: dict, image: Image.Image, methods: list[str], target_name: str, k: int) -> None:
    """Prediction and maps of one run for one image (computed by the explain worker, ``app.compute``)."""
    st.markdown(f"#### {run.name}")
    label_names = tuple(config.get("label_names") or [str(i) for i in range(config["num_classes"])])
    rgb = np.asarray(image.convert("RGB"))  # (h, w, 3) uint8: the worker applies the run's eval transform
    run_key = f"{run}:{loaders.stamp(run / 'model.safetensors')}"
    img_key = explainer.image_key(image)
    try:
        pred = explainer.predict(str(run), run_key, img_key, label_names, rgb)
    except FerlensError as e:
        st.error(str(e))
        return
    st.markdown(f"**{config['model']['name']}** predicts **{label_names[pred.top]}** ({pred.probs[pred.top]:.2f})")
    probs = pd.DataFrame({"class": label_names, "probability": pred.probs, "top": np.arange(len(label_names)) == pred.top})
    charts.show_chart(charts.bars(probs, x="probability", y="class", highlight="top"), probs,
                      f"probs_{run.name}", key=f"ex_probs_{k}")
    target = pred.top if target_name == "predicted" else (label_names.index(target_name)
                                                          if target_name in label_names else pred.top)
    images, captions = [], []
    for method in methods:
        layer = head = None
        try:
            if method == "cls_attention":
                layer, head = _attention_ui(str(run), run_key, k)
            _, over = explainer.attribution(str(run), run_key, img_key, method, target, layer, head, rgb)
        except FerlensError as e:
            st.warning(f"{TITLES[method]}: {e}")
            continue
        images.append(explainer.upscale(over))
        where = f" {layer}, {'mean of heads' if head is None else f'head {head}'}" if method == "cls_attention" else ""
        captions.append(f"{TITLES[method]}{where} → {label_names[target]}" if method in ("gradcam", "ig")
                        else f"{TITLES[method]}{where}")
    if images:
        st.image(images, caption=captions, width=170)


def _attention_ui(run: str, run_key: str, k: int) -> tuple[str, int | None]:
    """Layer and head sliders for CLS attention of one run."""
    layers, heads = explainer.attention_spec(run, run_key)
    if not layers:
        raise FerlensError("This model has no CLS query over patch tokens, so there is no CLS attention to show.")
    c1, c2 = st.columns(2)
    layer = c1.select_slider("CLS attn layer", layers, value=layers[-1], key=f"ex_layer_{k}") if len(layers) > 1 \
        else layers[0]
    head = c2.select_slider("Head", ["mean"] + list(range(heads)), value="mean", key=f"ex_head_{k}")
    return layer, (None if head == "mean" else int(head))


def main() -> None:
    sel = selection()
    st.title("Explain")
    runs = actions.usable_runs(sel.runs)
    if not runs:
        return
    configs = {r.name: loaders.load(r, "config").data for r in runs}
    specs = list(dict.fromkeys(str((configs[r.name].get("data") or {}).get("spec", "")) for r in runs))
    c1, c2, c3 = st.columns([2, 2, 3])
    source = c1.radio("Image", ["Dataset", "Upload"], horizontal=True, key="ex_source")
    spec = c2.selectbox("Dataset", specs, key="ex_spec") if source == "Dataset" else None
    label_names = list(dict.fromkeys(n for r in runs for n in (configs[r.name].get("label_names") or [])))
    target_name = c3.selectbox("Explain class (Grad-CAM / IG)", ["predicted"] + label_names, key="ex_target")
    methods = st.multiselect("Maps", list(explainer.METHODS), default=list(explainer.METHODS),
                             format_func=TITLES.get, key="ex_methods")
    chosen = dataset_image_ui(spec, sel.split) if source == "Dataset" else upload_ui()
    if chosen is None:
        return
    image, mask, caption = chosen
    top = [explainer.upscale(np.asarray(image.convert("RGB")), 160)]
    captions = [caption]
    legend = ""
    if mask is not None:
        top.append(explainer.upscale(explainer.colour_mask(mask), 160))
        from train.data.synthfer import PART_NAMES

        present = [int(i) for i in np.unique(mask) if i < len(PART_NAMES)]
        captions.append("part mask: " + ", ".join(PART_NAMES[i] for i in present))
        legend = " ".join(f'<span style="background:rgb{tuple(int(c) for c in explainer.PART_COLOURS[i])};'
                          f'padding:0 7px;margin-right:3px;border-radius:2px"></span>{PART_NAMES[i]}' for i in present)
    st.image(top, caption=captions, width=160)
    if legend:
        st.html(f'<div style="font-size:0.8rem">{legend}</div>')
    cols = st.columns(len(runs))
    for k, run in enumerate(runs):
        with cols[k]:
            run_column(run, configs[run.name], image, methods, target_name, k)


main()
