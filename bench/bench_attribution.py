"""Cost of attributions per batch, as a ratio to one forward pass of the same batch.

Yardstick: ``model(x)`` under ``torch.no_grad`` on the same model and batch, in the same process.
Targets: rollout ≤ 1.3×, Grad-CAM ≤ 3×, and ``probe.explain(method="gradcam")`` ≤ 1.05× calling
pytorch-grad-cam's ``GradCAM`` directly with the same layer and reshape transform. Timings are the
median of interleaved repeats, so background load affects yardstick and method alike.

    python -m bench.bench_attribution [--model ferlens_tiny_vit_s3] [--batch 16] [--img 64]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

TARGETS = {"rollout": 1.3, "gradcam": 3.0, "gradcam_vs_direct": 1.05}


def _median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run round-robin ``repeats`` times after one warm-up."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main(model_name: str = "ferlens_tiny_vit_s3", batch: int = 16, img: int = 64, ig_steps: int = 16,
         repeats: int = 5) -> dict[str, Any]:
    """Time forward, rollout, gradient rollout, Grad-CAM (ours and direct) and IG; print and return ratios."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from probe.attribution import default_cam_layer, explain, token_reshape
    from train.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=7, img_size=img).eval()
    x = torch.randn(batch, 3, img, img)
    layer_name = default_cam_layer(model)
    layer = model.get_submodule(layer_name)
    reshape = token_reshape(model, layer_name)

    def forward():
        with torch.no_grad():
            return model(x)

    def direct_gradcam():
        cam = pytorch_grad_cam.GradCAM(model=model, target_layers=[layer], reshape_transform=reshape)
        try:
            return cam(input_tensor=x, targets=None)
        finally:
            cam.activations_and_grads.release()

    fns = {
        "forward": forward,
        "rollout": lambda: explain(model, x, "rollout"),
        "grad_rollout": lambda: explain(model, x, "grad_rollout"),
        "gradcam": lambda: explain(model, x, "gradcam"),
        "gradcam_direct": direct_gradcam,
        f"ig_{ig_steps}": lambda: explain(model, x, "ig", n_steps=ig_steps, internal_batch_size=4 * batch),
    }
    seconds = _median_times(fns, repeats)
    base = seconds["forward"]
    ratios = {k: v / base for k, v in seconds.items() if k != "forward"}
    ratios["gradcam_vs_direct"] = seconds["gradcam"] / seconds["gradcam_direct"]
    check = {k: ratios[k] <= limit for k, limit in TARGETS.items()}

    print(f"attribution cost vs one forward: {model_name}, batch {batch}, {img}px, CAM layer {layer_name}")
    print(f"  {'forward':22s} {base * 1e3:9.1f} ms   1.00x")
    for k, r in ratios.items():
        ms = seconds.get(k, float("nan")) * 1e3
        mark = "" if k not in TARGETS else ("  ok" if check[k] else f"  over target {TARGETS[k]}x")
        print(f"  {k:22s} {ms:9.1f} ms  {r:5.2f}x{mark}")
    return {"model": model_name, "batch": batch, "img_size": img, "cam_layer": layer_name,
            "seconds": seconds, "ratios": ratios, "targets": TARGETS, "within_target": check}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ferlens_tiny_vit_s3")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--img", type=int, default=64)
    p.add_argument("--ig-steps", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    main(a.model, a.batch, a.img, a.ig_steps, a.repeats)
