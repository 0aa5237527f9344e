"""Token norms, high-norm outliers and CLS attention entropy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.norms import NormAccumulator, cls_attention_entropy, outlier_fraction, token_norms


def test_token_norms_and_outliers():
    t = torch.ones(2, 1 + 100, 4)  # every token norm 2
    t[0, 0] *= 5
    t[1, 7] *= 50  # one high-norm patch (registers-style artifact)
    c, p = token_norms(t)
    assert c.tolist() == [10.0, 2.0] and p.shape == (2, 100)
    assert outlier_fraction(p) == pytest.approx(1 / 200)
    assert outlier_fraction(np.full(10, 3.0)) == 0.0


def test_attention_entropy_extremes():
    uniform = torch.full((1, 2, 1, 17), 1 / 17)
    peaked = torch.zeros(1, 2, 1, 17)
    peaked[..., 0, 3] = 1.0
    assert np.allclose(cls_attention_entropy(uniform), np.log(16))
    assert np.allclose(cls_attention_entropy(peaked), 0.0, atol=1e-6)


def test_accumulator_rows():
    acc = NormAccumulator()
    acc.add_tokens("tokens", torch.randn(4, 1 + 9, 8))
    acc.add_tokens("blocks.0", torch.randn(4, 1, 8))  # clsonly: no patches
    acc.add_attention("blocks.0", torch.full((4, 3, 1, 10), 0.1))
    rows = acc.norm_rows()
    assert [(r["layer"], r["tokens"]) for r in rows] == [("tokens", "cls"), ("tokens", "patch"), ("blocks.0", "cls")]
    ent = acc.entropy_rows()
    assert len(ent) == 3 and all(r["entropy_norm"] == pytest.approx(1.0) for r in ent)
