"""Extraction overhead: all layers' cls/patch/stem readouts (and with attention requested) vs a bare
forward pass over the same batches. Target: ≤ 1.10× the bare forward.

    python -m bench.bench_extract
"""
from __future__ import annotations

import time


def _time_interleaved(fns: dict, batches, repeats: int = 7) -> dict[str, float]:
    """Best time over ``repeats`` passes of every function, the functions taking turns in each round so
    that a slow spell of a shared machine hits them all (a 60 ms forward is easily skewed by 10 %)."""
    for fn in fns.values():
        fn(batches[0])  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            for b in batches:
                fn(b)
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main(model_name: str = "ferlens_tiny_vit_s3", img_size: int = 64, batch_size: int = 32, n_batches: int = 8) -> dict:
    import torch

    from probe.cache import run_with_cache
    from probe.features import batch_readouts, stem_layer, token_layers
    from train.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=7, img_size=img_size).eval()
    batches = [torch.randn(batch_size, 3, img_size, img_size) for _ in range(n_batches)]
    layers, stem = token_layers(model), stem_layer(model)
    attn = [f"blocks.{i}.attn" for i in range(len(model.blocks))]

    def bare(x):
        with torch.inference_mode():
            model(x)

    def readouts(x):
        batch_readouts(model, x, layers=layers, stem=stem)

    def with_attention(x):
        with torch.inference_mode():
            run_with_cache(model, x, names=layers + attn + ([stem] if stem else []))

    t = _time_interleaved({"bare": bare, "readouts": readouts, "attention": with_attention}, batches)
    result = {"model": model_name, "img_size": img_size, "batch_size": batch_size, "bare_s": t["bare"],
              "extract_ratio": t["readouts"] / t["bare"], "extract_with_attention_ratio": t["attention"] / t["bare"]}
    print(f"extraction vs bare forward ({model_name}, {img_size}px, {n_batches}×{batch_size}): "
          f"readouts {result['extract_ratio']:.3f}× (target ≤ 1.10×), "
          f"with attention {result['extract_with_attention_ratio']:.3f}×")
    return result


if __name__ == "__main__":
    main()
