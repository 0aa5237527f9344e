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


def token_norms(tokens) -> tuple[np.ndarray, np.ndarray]:
    """L2 norms of the CLS and patch tokens.

    Args:
        tokens: (B, 1+N, D) tensor or array (N may be 0, e.g. clsonly blocks).

    Returns:
        cls norms (B,) and patch norms (B, N).
    """
    t = np.asarray(tokens.float().cpu().numpy() if hasattr(tokens, "cpu") else tokens, dtype=np.float32)
    norms = np.linalg.norm(t, axis=-1)  # (B, 1+N)
    return norms[:, 0], norms[:, 1:]


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


def cls_attention_entropy(attn) -> np.ndarray:
    """Per-image, per-head entropy (nats) of the CLS query's attention over the patch tokens.

    Args:
        attn: (B, heads, Nq, 1+N) post-softmax attention; query 0 is the CLS token.

    Returns:
        (B, heads) entropies; divide by log(N) for the normalized entropy.
    """
    a = np.asarray(attn.float().cpu().numpy() if hasattr(attn, "cpu") else attn, dtype=np.float64)
    p = a[:, :, 0, 1:]  # (B, heads, N)
    p = p / np.clip(p.sum(-1, keepdims=True), 1e-12, None)
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)


@dataclass
class NormAccumulator:
    """Collects norms and entropies batch by batch; ``rows()`` gives the contract's tables."""

    cls: dict[str, list[np.ndarray]] = field(default_factory=dict)
    patch: dict[str, list[np.ndarray]] = field(default_factory=dict)
    entropy: dict[str, list[np.ndarray]] = field(default_factory=dict)
    num_patches: dict[str, int] = field(default_factory=dict)

    def add_tokens(self, layer: str, tokens) -> None:
        """tokens (B, 1+N, D) of one layer."""
        c, p = token_norms(tokens)
        self.cls.setdefault(layer, []).append(c)
        if p.shape[1]:
            self.patch.setdefault(layer, []).append(p)

    def add_attention(self, layer: str, attn) -> None:
        """attn (B, heads, Nq, 1+N) of one block (only when it has patch keys)."""
        if attn.shape[-1] > 1:
            self.entropy.setdefault(layer, []).append(cls_attention_entropy(attn))
            self.num_patches[layer] = int(attn.shape[-1]) - 1

    def norm_rows(self, k: float = 3.0) -> list[dict[str, Any]]:
        """Rows ``layer,tokens,mean_norm,std_norm,max_norm,outlier_frac`` (outliers among patches by the
        patch rule; for CLS, whether CLS norms exceed the patch threshold)."""
        rows = []
        for layer, chunks in self.cls.items():
            c = np.concatenate(chunks)
            p = np.concatenate(self.patch[layer]) if layer in self.patch else None
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

    from .cache import run_with_cache
    from .features import _loader, token_layers

    model = model.eval().to(device)
    layers = token_layers(model)
    attn = [f"blocks.{i}.attn" for i in range(len(model.blocks))]
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    acc = NormAccumulator()
    for images, *_ in tqdm(_loader(dataset, range(n), batch_size), desc="norms", disable=not progress):
        with torch.inference_mode():
            cache = run_with_cache(model, images.to(device), names=layers + attn)
        for name in layers:
            acc.add_tokens(name, cache[name])
        for name in attn:
            acc.add_attention(name[: -len(".attn")], cache[name])
    return acc
