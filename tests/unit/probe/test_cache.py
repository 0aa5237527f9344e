"""probe.cache: named hook points for ferlens hybrids and plain timm ViTs; attention materialised only on request."""
from __future__ import annotations

import pytest
import torch

from probe.cache import hook_names, hooked, run_with_cache
from train.errors import FerlensError

models = pytest.importorskip("train.models")


@pytest.fixture(scope="module")
def tiny():
    return models.create_model("ferlens_tiny_vit_s3", depth=2, img_size=32).eval()


def test_default_names_cover_every_hook_point(tiny):
    cache = run_with_cache(tiny, torch.randn(1, 3, 32, 32))
    assert list(cache) == tiny.hook_names()
    assert tiny.hook_names() == ["stem.stage1", "stem.stage2", "stem.stage3", "tokens", "blocks.0.attn", "blocks.0",
                                 "blocks.1.attn", "blocks.1", "pre_logits"]
    assert not any(t.requires_grad for t in cache.values())


def test_unknown_hook_lists_valid_names(tiny):
    with pytest.raises(FerlensError) as e:
        run_with_cache(tiny, torch.randn(1, 3, 32, 32), names=["blocks.7"])
    msg = str(e.value)
    assert "blocks.7" in msg and "tokens" in msg and "pre_logits" in msg and "blocks.{0..1}.attn" in msg


def test_normal_forward_keeps_fused_attention_and_records_nothing(tiny):
    calls = []
    handle = tiny.blocks[0].attn.attn_drop.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            tiny(torch.randn(1, 3, 32, 32))
        assert calls == []  # fused SDPA path: attention probabilities never materialised
        run_with_cache(tiny, torch.randn(1, 3, 32, 32), names=["blocks.0.attn"])
        assert calls == [1]
    finally:
        handle.remove()
    assert tiny.blocks[0].attn.fused_attn and tiny.blocks[1].attn.fused_attn


def test_fused_flag_restored_after_an_error(tiny):
    with pytest.raises(FerlensError, match="img_size"):
        with hooked(tiny, ["blocks.1.attn"]):
            assert tiny.blocks[1].attn.fused_attn is False
            tiny(torch.randn(1, 3, 20, 21))  # wrong input size → error inside the forward
    assert tiny.blocks[1].attn.fused_attn is True
    assert not tiny.blocks[1].attn.attn_drop._forward_pre_hooks


def test_hooked_keeps_graph_for_gradient_methods(tiny):
    x = torch.randn(2, 3, 32, 32)
    with hooked(tiny, ["blocks.1.attn", "blocks.1", "stem.stage3"], requires_grad=True) as cache:
        logits = tiny(x)
        logits[:, 0].sum().backward()
    attn = cache["blocks.1.attn"]
    assert attn.grad is not None and attn.grad.shape == attn.shape == (2, 4, 17, 17)
    assert cache["stem.stage3"].requires_grad
    tiny.zero_grad(set_to_none=True)


def test_plain_timm_vit_blocks_and_attention():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3).eval()
    assert hook_names(vit)[:3] == ["tokens", "blocks.0.attn", "blocks.0"] and hook_names(vit)[-1] == "pre_logits"
    cache = run_with_cache(vit, torch.randn(2, 3, 32, 32), names=["blocks.11", "blocks.11.attn"])
    assert cache["blocks.11"].shape == (2, 5, 192)
    assert cache["blocks.11.attn"].shape == (2, 3, 5, 5)
    torch.testing.assert_close(cache["blocks.11.attn"].sum(-1), torch.ones(2, 3, 5))
