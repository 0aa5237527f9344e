"""One explain() interface over rollout, pytorch-grad-cam and captum, on tiny untrained hybrids."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from probe import attribution
from train.errors import FerlensError

models = pytest.importorskip("train.models")


def _tiny(block: str = "vit", img_size=32, depth: int = 1, **kw) -> nn.Module:
    return models.create_model(f"ferlens_tiny_{block}_s3", num_classes=7, img_size=img_size, depth=depth,
                               **kw).eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return _tiny("vit", depth=2, embed_dim=32, num_heads=2)


@pytest.mark.parametrize("method", sorted(attribution.METHODS))
def test_every_method_gives_unit_range_maps(vit, method):
    x = torch.randn(1, 3, 32, 32)
    opts = {"n_steps": 4} if method == "ig" else {"nt_samples": 2} if method == "smoothgrad" else {}
    maps = attribution.explain(vit, x, method=method, **opts)
    assert maps.shape == (1, 32, 32) and maps.dtype == torch.float32
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert float(maps.flatten(1).max(1).values.min()) == pytest.approx(1.0)   # normalised per image


def test_probe_explain_forwards(vit):
    import probe

    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(probe.explain(vit, x, method="rollout"), attribution.explain(vit, x, "rollout"))


@pytest.mark.parametrize("img_size,grid", [(56, (7, 7)), (64, (8, 8)), ((32, 48), (4, 6))])
def test_cam_reshape_follows_model_grid(img_size, grid):
    model = _tiny("cataftermlp", img_size=img_size, depth=2, embed_dim=32, num_heads=2)
    assert tuple(model.grid_size) == grid
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    maps = attribution.explain(model, torch.randn(1, 3, h, w), method="gradcam", layer="blocks.0")
    assert maps.shape == (1, h, w) and float(maps.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("img_size,grid", [(56, (7, 7)), (64, (8, 8)), ((24, 40), (3, 5))])
def test_token_reshape_drops_prefix(img_size, grid):
    h, w = grid
    model = _tiny("vit", img_size=img_size, depth=1, embed_dim=32, num_heads=2)
    x = torch.randn(2, 1 + h * w, 6)                              # (B, 1+N, D)
    y = attribution.token_reshape(model, "blocks.0")(x)
    assert y.shape == (2, 6, h, w)
    assert torch.equal(y[:, :, 1, 2], x[:, 1 + 1 * w + 2])      # row-major patch order, CLS dropped
    cnn = torch.randn(2, 4, h, w)
    assert attribution.token_reshape(model, "stem.stage3")(cnn) is cnn
    with pytest.raises(FerlensError, match="prefix"):
        attribution.token_reshape(model, "blocks.0")(torch.randn(2, 1, 6))


def test_clsonly_stage_target_works_and_block_target_is_refused():
    model = _tiny("clsonly", depth=2, embed_dim=32, num_heads=2)
    x = torch.randn(1, 3, 32, 32)
    assert attribution.default_cam_layer(model) == "stem.stage3"
    assert attribution.explain(model, x, "gradcam").shape == (1, 32, 32)
    with pytest.raises(FerlensError, match="only the CLS token"):
        attribution.explain(model, x, "gradcam", layer="blocks.1")
    assert attribution.explain(model, x, "rollout").shape == (1, 32, 32)


def test_cls_target_differs_from_class_target(vit):
    x = torch.randn(1, 3, 32, 32)
    a = attribution.explain(vit, x, "saliency", target="cls", raw=True)
    b = attribution.explain(vit, x, "saliency", target=3, raw=True)
    assert a.shape == b.shape == (1, 32, 32) and not torch.allclose(a, b)


def test_one_block_rollout_equals_cached_attention():
    from probe.cache import run_with_cache

    model = _tiny("vit", depth=1)
    x = torch.randn(2, 3, 32, 32)
    attn = run_with_cache(model, x, names=["blocks.0.attn"])["blocks.0.attn"]   # (B, h, 1+N, 1+N)
    raw = attribution.explain(model, x, "rollout", raw=True, residual=False)
    assert torch.allclose(raw.flatten(1), attn.mean(1)[:, 0, 1:], atol=1e-6)


def test_integrated_gradients_completeness():
    model = _tiny("vit", depth=1).double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([2])
    ig = attribution.IntegratedGradients(model, n_steps=128, internal_batch_size=64)
    attrs = ig.attribute_pixels(x, target, model)                  # (1, 3, H, W)
    with torch.no_grad():
        gap = model(x)[0, 2] - model(torch.zeros_like(x))[0, 2]
    assert abs(float(attrs.sum()) - float(gap)) < 1e-3
    assert abs(float(gap)) > 1e-3                                   # the check is not vacuous


def test_integrated_gradients_default_chunking_does_not_change_the_attributions(vit):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2, 3])
    assert attribution.IntegratedGradients(vit).captum_kwargs(x)["internal_batch_size"] == 64
    chunked = attribution.IntegratedGradients(vit).attribute_pixels(x, target, vit)       # 4 x 32 steps in 2 passes
    whole = attribution.IntegratedGradients(vit, internal_batch_size=128).attribute_pixels(x, target, vit)
    assert torch.allclose(chunked, whole, atol=1e-6, rtol=1e-5)
    import captum.attr                                                   # captum on the plain layout, one pass
    direct = captum.attr.IntegratedGradients(vit).attribute(x, target=target, baselines=0.0, n_steps=32)
    assert torch.allclose(chunked, direct, atol=1e-5, rtol=1e-4)


def test_randomised_model_changes_the_maps():
    from probe.metrics import cascading_randomisation

    model = _tiny("vit", depth=1, embed_dim=32, num_heads=2)
    x = torch.randn(1, 3, 32, 32)

    def fn(m, images, t):
        return attribution.explain(m, images, "gradcam", target=t)

    rows = cascading_randomisation(model, x, fn)
    assert [r["randomised"] for r in rows] == ["head", "blocks.0", "stem"]
    assert rows[-1]["spearman"] < 0.5
    again = fn(model, x, model(x).argmax(-1))                       # the original model is untouched
    assert torch.allclose(again, fn(model, x, model(x).argmax(-1)))


class _PlainCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 7)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def test_bad_inputs_are_one_sentence(vit):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(FerlensError, match=r"needs attention hook points .*has none"):
        attribution.explain(_PlainCNN(), x, "rollout")
    with pytest.raises(FerlensError, match=r"Layer 'blocks\.9' does not exist"):
        attribution.explain(vit, x, "gradcam", layer="blocks.9")
    with pytest.raises(FerlensError, match="64x64 but the model expects 32x32"):
        attribution.explain(vit, torch.randn(1, 3, 64, 64), "gradcam")
    with pytest.raises(FerlensError, match="Unknown attribution method 'gradcm'.*gradcam"):
        attribution.explain(vit, x, "gradcm")
    with pytest.raises(FerlensError, match="Target"):
        attribution.explain(vit, x, "saliency", target=11)
    with pytest.raises(FerlensError) as info:
        attribution.explain(vit, x, "gradcam", layer="nope")
    assert "\n" not in str(info.value) and str(info.value).startswith("Layer 'nope' does not exist")
    # a plain CNN still works with gradient methods on its own layers
    assert attribution.explain(_PlainCNN(), x, "gradcam", layer="features").shape == (1, 32, 32)


@pytest.mark.parametrize("method,cam_name", [("gradcam", "GradCAM"), ("gradcampp", "GradCAMPlusPlus"),
                                             ("layercam", "LayerCAM")])
@pytest.mark.parametrize("layer", ["blocks.1", "stem.stage3"])
def test_cam_maps_equal_pytorch_grad_cam_called_directly(method, cam_name, layer):
    """Our CAM freezes the weights and cuts the graph below the target layer (half the cost): same maps."""
    import pytorch_grad_cam

    torch.manual_seed(0)
    model = _tiny(depth=2)
    x = torch.randn(3, 3, 32, 32)
    ours = attribution.explain(model, x, method=method, target=None, layer=layer)
    assert all(p.grad is None for p in model.parameters())   # no weight gradient was computed
    assert all(p.requires_grad for p in model.parameters())  # and the weights are unfrozen afterwards
    reshape = attribution.token_reshape(model, layer) if layer.startswith("blocks") else None
    cam = getattr(pytorch_grad_cam, cam_name)(model=model, target_layers=[model.get_submodule(layer)],
                                              reshape_transform=reshape)
    try:
        direct = torch.from_numpy(cam(input_tensor=x, targets=None))
    finally:
        cam.activations_and_grads.release()
    assert torch.allclose(ours, direct, atol=1e-5)
