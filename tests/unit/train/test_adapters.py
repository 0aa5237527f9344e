"""train.models.adapters: one ModelSpec per family, checked against manual computations on tiny random models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from train.errors import FerlensError
from train.models.adapters import model_spec, token_grid

timm = pytest.importorskip("timm")

SMALL = dict(img_size=64, embed_dim=64, depth=2, num_heads=2, num_classes=7)


def _timm(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **{**SMALL, **kw}).eval()


@pytest.fixture(scope="module")
def families():
    from train.models import create_model

    torch.manual_seed(0)
    return {
        "ferlens_vit": create_model("ferlens_tiny_vit_s3", num_classes=7, img_size=64, depth=2).eval(),
        "ferlens_cat": create_model("ferlens_tiny_cataftermlp_s3", num_classes=7, img_size=64, depth=2).eval(),
        "ferlens_clsonly": create_model("ferlens_tiny_clsonly_s3", num_classes=7, img_size=64, depth=2).eval(),
        "vit": _timm("vit_tiny_patch16_224", patch_size=8),
        "deit_distilled": _timm("deit_tiny_distilled_patch16_224", patch_size=8),
        "resnetv2_hybrid": _timm("vit_tiny_r_s16_p8_224", patch_size=2),
        "cait": _timm("cait_xxs24_224", patch_size=8),
    }


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


EXPECTED = {  # family, prefix tokens, token grid
    "ferlens_vit": ("ferlens", 1, (8, 8)), "ferlens_cat": ("ferlens", 1, (8, 8)),
    "ferlens_clsonly": ("ferlens", 1, (8, 8)), "vit": ("timm-vit", 1, (8, 8)),
    "deit_distilled": ("timm-vit", 2, (8, 8)), "resnetv2_hybrid": ("timm-hybrid", 1, (8, 8)),
    "cait": ("cait", 1, (8, 8)),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_family_geometry_and_every_hook_records(families, x, name):
    from probe.cache import run_with_cache

    model = families[name]
    spec = model_spec(model)
    family, prefix, grid = EXPECTED[name]
    assert (spec.family, spec.num_prefix_tokens, spec.grid_size, spec.input_size) == (family, prefix, grid, (64, 64))
    cache = run_with_cache(model, x)
    assert list(cache) == spec.names
    for layer in spec.patch_layers:  # patches fill the grid exactly: every prefix token is excluded
        assert spec.patches(cache[layer], layer).shape[1] == grid[0] * grid[1]
    for a in spec.attention_layers:  # post-softmax probabilities, never a module output
        att = cache[a]
        assert att.dim() == 4 and att.min() >= 0
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]))
    assert cache["pre_logits"].shape == (2, model.head.in_features)
    assert torch.allclose(model.head(cache["pre_logits"]), model(x), atol=1e-5) or name == "deit_distilled"


def test_timm_vit_patch_readout_excludes_prefix_and_tokens_is_the_block0_input(families, x):
    from probe.cache import run_with_cache
    from probe.features import batch_readouts

    vit = families["vit"]
    with torch.no_grad():
        t = vit.patch_embed(x)
        manual_tokens = vit._pos_embed(t)                                # (B, 1+N, D)
        manual_b1 = vit.blocks(manual_tokens)
    cache = run_with_cache(vit, x, names=["tokens", "blocks.1"])
    torch.testing.assert_close(cache["tokens"], manual_tokens)
    torch.testing.assert_close(cache["blocks.1"], manual_b1)
    out = batch_readouts(vit, x, layers=["tokens", "blocks.0", "blocks.1"], stem=None)
    torch.testing.assert_close(torch.from_numpy(out["patch"][:, 2]), manual_b1[:, 1:].mean(1))
    torch.testing.assert_close(torch.from_numpy(out["cls"][:, 2]), manual_b1[:, 0])


def test_distilled_deit_patch_mean_never_includes_the_distillation_token(families, x):
    from probe.features import batch_readouts
    from probe.cache import run_with_cache

    deit = families["deit_distilled"]
    spec = model_spec(deit)
    assert spec.cls_index == 0 and spec.layout("blocks.1").num_prefix == 2
    seq = run_with_cache(deit, x, names=["blocks.1"])["blocks.1"]        # (B, 2+64, D): [CLS, DIST, patches]
    assert seq.shape[1] == 66
    out = batch_readouts(deit, x, layers=["blocks.1"], stem=None, patch_tokens=True)
    patch = torch.from_numpy(out["patch"][:, 0])
    torch.testing.assert_close(patch, seq[:, 2:].mean(1))
    assert not torch.allclose(patch, seq[:, 1:].mean(1))                   # the old [:, 1:] mean differs
    assert out["patch_tokens"].shape == (2, 1, 64, 64)


def test_cait_layout_and_talking_head_probabilities_equal_a_manual_softmax(families, x):
    from probe.cache import run_with_cache
    from probe.features import batch_readouts

    cait = families["cait"]
    spec = model_spec(cait)
    assert spec.cls_layers == ["blocks_token_only.0", "blocks_token_only.1"]
    assert spec.patch_layers == ["tokens", "blocks.0", "blocks.1"]
    assert spec.class_attention == frozenset({"blocks_token_only.0", "blocks_token_only.1"})
    cache = run_with_cache(cait, x, names=["blocks.0", "blocks.1.attn", "blocks_token_only.1.attn",
                                           "blocks_token_only.1"])
    attn = cait.blocks[1].attn
    with torch.no_grad():  # TalkingHeadAttn by hand: q k^T, pre-softmax head mix (proj_l), softmax
        h = cait.blocks[1].norm1(cache["blocks.0"])
        b, n, c = h.shape
        qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        logits = (qkv[0] * attn.scale) @ qkv[1].transpose(-2, -1)
        manual = attn.proj_l(logits.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).softmax(-1)
    torch.testing.assert_close(cache["blocks.1.attn"], manual)
    cls_attn = cache["blocks_token_only.1.attn"]
    assert cls_attn.shape == (2, 2, 1, 65)                                 # CLS query over [CLS; patches]
    torch.testing.assert_close(cls_attn.sum(-1), torch.ones(2, 2, 1))
    out = batch_readouts(cait, x, layers=list(spec.token_layers), stem=None)
    assert out["cls"].shape == (2, 2, 64) and out["patch"].shape == (2, 3, 64)
    torch.testing.assert_close(torch.from_numpy(out["cls"][:, 1]), cache["blocks_token_only.1"][:, 0])


def test_cait_gradient_rollout_reaches_the_talking_head_probabilities(families, x):
    from probe.cache import hooked

    cait = families["cait"]
    with hooked(cait, ["blocks.0.attn"], requires_grad=True) as cache:
        cait(x)[:, 0].sum().backward()
    assert cache["blocks.0.attn"].grad is not None and cache["blocks.0.attn"].grad.abs().sum() > 0
    cait.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_rollout_rows_sum_to_one_for_every_family(families, x, name):
    from probe import rollout
    from probe.cache import run_with_cache

    model = families[name]
    spec = model_spec(model)
    cache = run_with_cache(model, x, names=list(spec.attention_layers))
    attns = [spec.lift_attention(cache[n], n) for n in spec.attention_layers]
    r = rollout.rollout_matrix(attns)
    assert r.shape == (2, 64 + spec.num_prefix_tokens, 64 + spec.num_prefix_tokens)
    torch.testing.assert_close(r.sum(-1), torch.ones(r.shape[:-1]))
    import probe

    maps = probe.explain(model, x, method="rollout")
    assert maps.shape == (2, 64, 64) and float(maps.max()) == pytest.approx(1.0)


def test_resnetv2_stages_map_to_stem_hooks():
    r26 = _timm("vit_small_r26_s32_224", depth=1)
    spec = model_spec(r26)
    assert spec.family == "timm-hybrid" and spec.stem_layer == "stem.stage4"
    assert [spec.hooks[f"stem.stage{k}"].module for k in (1, 4)] == ["patch_embed.backbone.stages.0",
                                                                      "patch_embed.backbone.stages.3"]
    assert spec.grid_size == (2, 2)
    tiny = _timm("vit_tiny_r_s16_p8_224", patch_size=2, depth=1)
    assert model_spec(tiny).stem_layer == "stem.stage0"


class _External(nn.Module):
    """A researcher's own hybrid: a CNN, a projection to tokens, timm Blocks under other names."""

    def __init__(self) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.cnn = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1))  # 32 -> 8x8
        self.cls_token = nn.Parameter(torch.randn(1, 1, 16))
        self.embed = nn.Identity()
        self.layers = nn.ModuleList([Block(16, 2) for _ in range(2)])
        self.head = nn.Linear(16, 7)

    def forward(self, x):
        t = self.cnn(x).flatten(2).transpose(1, 2)                         # (B, 64, 16)
        t = self.embed(torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1))
        for blk in self.layers:
            t = blk(t)
        return self.head(t[:, 0])


def test_hook_map_model_works_through_cache_features_and_explain():
    import probe
    from probe.cache import run_with_cache
    from probe.features import batch_readouts

    torch.manual_seed(0)
    model = _External().eval()
    model.ferlens_hook_map = {"blocks": "layers", "tokens": "embed", "stem.stage2": "cnn.2"}
    spec = model_spec(model)
    assert spec.family == "hook-map" and spec.num_prefix_tokens == 1
    assert spec.names == ["stem.stage2", "tokens", "blocks.0.attn", "blocks.0", "blocks.1.attn", "blocks.1",
                          "pre_logits"]
    x = torch.randn(2, 3, 32, 32)
    assert token_grid(model, x) == (8, 8)
    cache = run_with_cache(model, x)
    torch.testing.assert_close(cache["blocks.1.attn"].sum(-1), torch.ones(2, 2, 65))
    out = batch_readouts(model, x, layers=["tokens", "blocks.0", "blocks.1"], stem="stem.stage2")
    torch.testing.assert_close(torch.from_numpy(out["patch"][:, 2]), cache["blocks.1"][:, 1:].mean(1))
    assert out["stem"].shape == (2, 16)
    for method in ("rollout", "gradcam", "cls_attention"):
        assert probe.explain(model, x, method=method).shape == (2, 32, 32)


class _OddAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        return x + self.mha(x, x, x, need_weights=False)[0]


def test_attention_that_cannot_be_read_is_one_sentence_never_a_module_output():
    from probe.cache import run_with_cache

    model = _External().eval()
    model.layers = nn.ModuleList([_OddAttention(), _OddAttention()])
    model.ferlens_hook_map = {"blocks": "layers", "tokens": "embed", "blocks.0.attn": "layers.0.mha"}
    assert "blocks.0.attn" not in model_spec(model).names
    with pytest.raises(FerlensError) as e:
        run_with_cache(model, torch.randn(1, 3, 32, 32), names=["blocks.0.attn"])
    msg = str(e.value)
    assert "cannot read attention probabilities" in msg and "--hook-map blocks.0.attn=PATH" in msg and "\n" not in msg
    with pytest.raises(FerlensError, match="has no attention submodule"):
        run_with_cache(model, torch.randn(1, 3, 32, 32), names=["blocks.1.attn"])
    model.ferlens_hook_map = {"blocks": "nope"}
    with pytest.raises(FerlensError, match="'nope' is not a module"):
        model_spec(model)


class _NestedCls(nn.Module):
    """The CLS token lives inside the embedding module (as in a researcher's own TokenEmbed)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _External()
        self.embed = nn.Module()
        self.embed.cls_token = self.inner.cls_token

    def forward(self, x):
        return self.inner(x)


def test_hook_map_counts_prefix_tokens_anywhere_in_the_tree():
    from probe.cache import run_with_cache
    from probe.features import batch_readouts

    torch.manual_seed(0)
    model = _NestedCls().eval()
    del model.inner.cls_token                                          # only embed.cls_token remains
    model.inner.cls_token = model.embed.cls_token                      # (shared, so forward still works)
    model.ferlens_hook_map = {"blocks": "inner.layers", "tokens": "inner.embed"}
    spec = model_spec(model)
    assert spec.num_prefix_tokens == 1 and spec.cls_index == 0
    x = torch.randn(2, 3, 32, 32)
    seq = run_with_cache(model, x, names=["blocks.1"])["blocks.1"]
    out = batch_readouts(model, x, layers=["blocks.1"], stem=None)
    torch.testing.assert_close(torch.from_numpy(out["patch"][:, 0]), seq[:, 1:].mean(1))
    torch.testing.assert_close(torch.from_numpy(out["cls"][:, 0]), seq[:, 0])
