"""Token norm statistics and CLS attention entropy per layer (pure functions over cached tensors).

High-norm outlier tokens follow Darcet et al., "Vision Transformers Need Registers" (2024): a patch
token counts as an outlier when its L2 norm exceeds mean + 3 std of that layer's patch-token norms.
The entropy is that of the CLS query's attention over the patch tokens, renormalized to sum to 1
over the patches (the CLS→CLS weight is dropped), so ``entropy_norm = entropy / log(N)`` is 1 for
uniform attention and 0 for attention on a single patch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from train.models.adapters import TokenLayout

FERLENS_LAYOUT = TokenLayout(1, 0, True)  # [CLS; patches]


def token_norms(tokens, layout: TokenLayout = FERLENS_LAYOUT) -> tuple[np.ndarray | None, np.ndarray]:
    """L2 norms of the CLS and patch tokens.

    Args:
        tokens: (B, T, D) tensor or array laid out as ``layout`` (``model_spec(model).layout(name)``).

    Returns:
        cls norms (B,) (None when the layer has no CLS) and patch norms (B, N) (N = 0 without patches;
        every prefix token excluded).
    """
    t = np.asarray(tokens.float().cpu().numpy() if hasattr(tokens, "cpu") else tokens, dtype=np.float32)
    norms = np.linalg.norm(t, axis=-1)  # (B, T)
    cls = norms[:, layout.cls_index] if layout.cls_index is not None else None
    patches = norms[:, layout.num_prefix:] if layout.patches else norms[:, :0]
    return cls, patches


def outlier_fraction(patch_norms: np.ndarray, k: float = 3.0) -> float:
    """Fraction of patch norms above mean + k std of all given patch norms (any shape)."""
    v = np.asarray(patch_norms, dtype=np.float64).ravel()
    if v.size == 0:
        return float("nan")
    return float((v > v.mean() + k * v.std()).mean())


def norm_stats(norms: np.ndarray, k: float = 3.0) -> dict[str, float]:
    """mean / std / max of a set of norms and the outlier fraction (mean + k std rule)."""
    v = np.asarray(norms, dtype=np.float64).ravel()
    return {"mean_norm": float(v.mean()), "std_norm": float(v.std()), "max_norm": float(v.max()),
            "outlier_frac": outlier_fraction(v, k)}


def cls_attention_entropy(attn, query: int = 0, num_prefix: int = 1) -> np.ndarray:
    """Per-image, per-head entropy (nats) of the CLS query's attention over the patch tokens.

    Args:
        attn: (B, heads, Nq, P+N) post-softmax attention.
        query: index of the CLS query; num_prefix: P, the prefix keys dropped before renormalising.

    Returns:
        (B, heads) entropies; divide by log(N) for the normalized entropy.
    """
    a = np.asarray(attn.float().cpu().numpy() if hasattr(attn, "cpu") else attn, dtype=np.float64)
    p = a[:, :, query, num_prefix:]  # (B, heads, N)
    p = p / np.clip(p.sum(-1, keepdims=True), 1e-12, None)
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)


@dataclass
class NormAccumulator:
    """Collects norms and entropies batch by batch; ``rows()`` gives the contract's tables."""

    cls: dict[str, list[np.ndarray]] = field(default_factory=dict)
    patch: dict[str, list[np.ndarray]] = field(default_factory=dict)
    entropy: dict[str, list[np.ndarray]] = field(default_factory=dict)
    num_patches: dict[str, int] = field(default_factory=dict)
    order: dict[str, None] = field(default_factory=dict)  # layers in the order they were added

    def add_tokens(self, layer: str, tokens, layout: TokenLayout = FERLENS_LAYOUT) -> None:
        """tokens (B, T, D) of one layer, laid out as ``layout``."""
        c, p = token_norms(tokens, layout)
        self.order.setdefault(layer, None)
        if c is not None:
            self.cls.setdefault(layer, []).append(c)
        if p.shape[1]:
            self.patch.setdefault(layer, []).append(p)

    def add_attention(self, layer: str, attn, query: int = 0, num_prefix: int = 1) -> None:
        """attn (B, heads, Nq, P+N) of one block (only when it has patch keys)."""
        if attn.shape[-1] > num_prefix:
            self.entropy.setdefault(layer, []).append(cls_attention_entropy(attn, query, num_prefix))
            self.num_patches[layer] = int(attn.shape[-1]) - num_prefix

    def norm_rows(self, k: float = 3.0) -> list[dict[str, Any]]:
        """Rows ``layer,tokens,mean_norm,std_norm,max_norm,outlier_frac`` (outliers among patches by the
        patch rule; for CLS, whether CLS norms exceed the patch threshold)."""
        rows = []
        for layer in (self.order or self.cls):
            p = np.concatenate(self.patch[layer]) if layer in self.patch else None
            if layer not in self.cls:                                      # no CLS at this layer (CaiT patch blocks)
                rows.append({"layer": layer, "tokens": "patch", **norm_stats(p, k)})
                continue
            c = np.concatenate(self.cls[layer])
            cls_row = {"layer": layer, "tokens": "cls", **norm_stats(c, k)}
            if p is not None:
                thr = p.mean() + k * p.std()
                cls_row["outlier_frac"] = float((c > thr).mean())
                rows += [cls_row, {"layer": layer, "tokens": "patch", **norm_stats(p, k)}]
            else:
                cls_row["outlier_frac"] = float("nan")
                rows.append(cls_row)
        return rows

    def entropy_rows(self) -> list[dict[str, Any]]:
        """Rows ``layer,head,entropy,entropy_norm`` (mean over images)."""
        rows = []
        for layer, chunks in self.entropy.items():
            e = np.concatenate(chunks).mean(0)  # (heads,)
            logn = np.log(self.num_patches[layer]) if self.num_patches[layer] > 1 else 1.0
            rows += [{"layer": layer, "head": h, "entropy": float(v), "entropy_norm": float(v / logn)}
                     for h, v in enumerate(e)]
        return rows


def measure(model, dataset, *, batch_size: int = 64, max_samples: int | None = None, device: str = "cpu",
            progress: bool = True) -> NormAccumulator:
    """Run ``dataset`` through ``model`` once and accumulate norms (``tokens``, ``blocks.i``) and
    CLS attention entropy (``blocks.i.attn``).

    Args:
        model: a ferlens hybrid.
        dataset: FERDataset with the run's eval transform.
        max_samples: use only the first samples (None: all).
    """
    import torch
    from tqdm.auto import tqdm

    from train.models.adapters import model_spec

    from .cache import run_with_cache
    from .features import _loader

    model = model.eval().to(device)
    spec = model_spec(model)
    layers = list(spec.token_layers)
    attn = spec.cls_attention_layers()
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    acc = NormAccumulator()
    for images, *_ in tqdm(_loader(dataset, range(n), batch_size), desc="norms", disable=not progress):
        with torch.inference_mode():
            cache = run_with_cache(model, images.to(device), names=layers + attn)
        for name in layers:
            acc.add_tokens(name, cache[name], spec.layout(name))
        for name in attn:
            acc.add_attention(spec.block_of(name), cache[name], spec.attention_queries(name).cls_index,
                              spec.hooks[name].layout.num_prefix)
    return acc
