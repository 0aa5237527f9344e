"""Attention rollout on hand-made attention tensors and on a tiny hybrid."""
from __future__ import annotations

import pytest
import torch

from probe import rollout
from train.errors import FerlensError


def _random_attn(b: int, heads: int, nq: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, heads, nq, k, generator=g).softmax(-1)  # (B, heads, Nq, K)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.5])
def test_rollout_rows_sum_to_one(fusion, discard):
    attns = [_random_attn(2, 3, 17, 17, seed=i) for i in range(3)]
    r = rollout.rollout_matrix(attns, head_fusion=fusion, discard_ratio=discard)
    assert r.shape == (2, 17, 17)
    assert torch.allclose(r.sum(-1), torch.ones(2, 17), atol=1e-5)
    assert (r >= 0).all()


def test_identity_attention_gives_identity_rollout():
    eye = torch.eye(10).expand(2, 4, 10, 10)
    r = rollout.rollout_matrix([eye, eye, eye])
    assert torch.allclose(r, torch.eye(10).expand(2, 10, 10))
    rel = rollout.attention_rollout([eye, eye], grid_size=(3, 3))
    assert rel.shape == (2, 3, 3) and rel.abs().max() == 0


def test_single_block_without_residual_equals_mean_attention():
    a = _random_attn(2, 4, 10, 10)
    r = rollout.rollout_matrix([a], residual=False)
    assert torch.allclose(r, a.mean(1), atol=1e-6)
    assert torch.allclose(rollout.attention_rollout([a], residual=False), a.mean(1)[:, 0, 1:], atol=1e-6)


def test_head_fusion_max_min_bound_mean():
    a = _random_attn(1, 4, 10, 10)
    mean = rollout.fuse_heads(a, "mean")
    assert (rollout.fuse_heads(a, "max") >= mean - 1e-7).all()
    assert (rollout.fuse_heads(a, "min") <= mean + 1e-7).all()


def test_discard_ratio_zeroes_lowest_patch_weights():
    a = _random_attn(1, 1, 10, 10)
    m = rollout.layer_matrix(a, 10, discard_ratio=0.5, residual=False)
    # 9 patch keys per row, 4 dropped; the CLS key is never dropped
    assert int(((m[..., 1:] == 0).sum(-1) == 4).all()) == 1
    assert (m[..., 0] > 0).all()


def test_class_attention_keeps_patch_rows_identity():
    self_attn = _random_attn(2, 2, 10, 10, seed=1)
    cls_attn = _random_attn(2, 2, 1, 10, seed=2)              # (B, heads, 1, 1+N)
    r = rollout.rollout_matrix([cls_attn, cls_attn])
    assert torch.allclose(r[:, 1:], torch.eye(10)[1:].expand(2, 9, 10))
    assert torch.allclose(r.sum(-1), torch.ones(2, 10), atol=1e-5)
    # a class-attention layer after self-attention only rewrites the CLS row
    before = rollout.rollout_matrix([self_attn])
    after = rollout.rollout_matrix([self_attn, cls_attn])
    assert torch.allclose(before[:, 1:], after[:, 1:])
    assert not torch.allclose(before[:, 0], after[:, 0])
    # without residual mixing the CLS row of one class-attention layer is the mean attention
    r1 = rollout.rollout_matrix([cls_attn], residual=False)
    assert torch.allclose(r1[:, 0], cls_attn.mean(1)[:, 0], atol=1e-6)


def test_clsonly_blocks_are_identity():
    first = _random_attn(2, 2, 10, 10)
    only_cls = torch.ones(2, 2, 1, 1)                            # later clsonly blocks: (B, h, 1, 1)
    assert torch.allclose(rollout.rollout_matrix([first, only_cls, only_cls]), rollout.rollout_matrix([first]))


def test_cls_attention_per_layer_and_head():
    attns = [_random_attn(2, 3, 10, 10), torch.ones(2, 3, 1, 1)]
    raw = rollout.cls_attention(attns)
    assert list(raw) == [0] and raw[0].shape == (2, 3, 9)
    assert torch.allclose(raw[0], attns[0][:, :, 0, 1:])


def test_grad_rollout_follows_chefer_recursion():
    a = _random_attn(1, 2, 5, 5)
    g = torch.randn(1, 2, 5, 5)
    r = rollout.grad_rollout_matrix([a], [g])
    expected = torch.eye(5) + (a * g).clamp_min(0).mean(1)[0]
    assert torch.allclose(r[0], expected, atol=1e-6)
    zero = rollout.grad_rollout([a, a], [torch.zeros_like(a)] * 2, grid_size=(2, 2))
    assert zero.abs().max() == 0


def test_bad_inputs_are_one_sentence():
    with pytest.raises(FerlensError, match="head fusion"):
        rollout.rollout_matrix([_random_attn(1, 1, 5, 5)], head_fusion="median")
    with pytest.raises(FerlensError, match="does not fit"):
        rollout.rollout_matrix([_random_attn(1, 1, 5, 5), _random_attn(1, 1, 3, 4)])
    with pytest.raises(FerlensError, match="grid"):
        rollout.attention_rollout([_random_attn(1, 1, 5, 5)], grid_size=(3, 3))
    with pytest.raises(FerlensError, match="No attention"):
        rollout.rollout_matrix([])


def _tiny(block: str, img_size: int = 32):
    models = pytest.importorskip("train.models")
    return models.create_model(f"ferlens_tiny_{block}_s3", num_classes=7, img_size=img_size, depth=2,
                               embed_dim=32, num_heads=2).eval()


@pytest.mark.parametrize("block", ["vit", "cataftermlp", "clsonly"])
def test_rollout_on_model_attention(block):
    cache = pytest.importorskip("probe.cache")
    model = _tiny(block)
    x = torch.randn(2, 3, 32, 32)
    names = [f"blocks.{i}.attn" for i in range(len(model.blocks))]
    c = cache.run_with_cache(model, x, names=names)
    rel = rollout.attention_rollout([c[n] for n in names], grid_size=model.grid_size)
    assert rel.shape == (2, *model.grid_size)
    assert (rel >= 0).all() and float(rel.sum(dim=(1, 2)).max()) <= 1.0 + 1e-5
