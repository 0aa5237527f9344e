"""SynthFER generation speed: images per second on one core at 64 px (target >= 2,000).

Run: ``python -m bench.bench_synthfer``. Time is CPU time of this process (``time.process_time``),
so the figure is per core even when other jobs share the machine; the wall-clock rate is printed too.
"""
from __future__ import annotations

import json
import time

TARGET = 2000.0


def _rate(fn, items, repeats: int) -> tuple[float, float]:
    """Best (CPU, wall) items/s of ``fn`` over ``items`` in ``repeats`` passes."""
    best_cpu = best_wall = 0.0
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        for item in items:
            fn(item)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        best_cpu = max(best_cpu, len(items) / max(cpu, 1e-9))
        best_wall = max(best_wall, len(items) / max(wall, 1e-9))
    return best_cpu, best_wall


def main(n_images: int = 1000, size: int = 64, repeats: int = 3) -> dict:
    """Measure SynthFER rendering (factors → uint8 image) and print + return the result row.

    Args:
        n_images: images per timed pass.
        size: image side in pixels.
        repeats: timed passes (the best one counts).
    """
    from train.data.synthfer import SynthFER, render

    ds = SynthFER("train", size=size, n=max(70, int(n_images * 1.3)), seed=0)
    idx = list(range(min(n_images, len(ds))))
    factors = [ds.factors(i) for i in idx]
    for f in factors[:50]:  # warm the identity and noise caches
        render(f, with_mask=False)
    cpu, wall = _rate(lambda f: render(f, with_mask=False), factors, repeats)
    cpu_mask, _ = _rate(lambda f: render(f, with_mask=True), factors, 1)
    c0 = time.process_time()
    for i in idx:
        ds.factors(i)
    factor_s = (time.process_time() - c0) / len(idx)
    per_image = 1.0 / (1.0 / cpu + factor_s)  # the full load_image path: factors + render
    row = {"name": "synthfer_generation", "images_per_s": round(per_image, 1), "target": TARGET,
           "ok": bool(per_image >= TARGET), "render_only_images_per_s": round(cpu, 1),
           "with_mask_images_per_s": round(cpu_mask, 1), "wall_images_per_s": round(wall, 1),
           "size": size, "n_images": len(idx)}
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
