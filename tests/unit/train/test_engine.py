"""Engine parts: preprocessing, parameter groups, freezing, schedules, NaN guard, RNG state."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from train.config import TrainConfig
from train.engine import (build_optimizer, build_scheduler, build_transforms, class_weights, frozen_modules,
                          make_eval_transform, param_groups, rng_state, scale_lr, set_rng_state)
from train.errors import FerlensError
from train.nanguard import NanGuard, first_nonfinite_grad, first_nonfinite_output, first_nonfinite_tensor

models = pytest.importorskip("train.models")

TINY = dict(img_size=32, depth=1, embed_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.create_model("ferlens_tiny_vit_s3", num_classes=7, **TINY)


def test_eval_transform_resizes_and_normalizes():
    tf = make_eval_transform({"input": {"img_size": 24, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}})
    x = tf(Image.new("RGB", (40, 30), (255, 0, 255)))
    assert x.shape == (3, 24, 24)                                   # squashed, not cropped
    assert torch.allclose(x[:, 0, 0], torch.tensor([2.0, -1.0, 0.5]))  # (v - mean) / std


def test_train_and_eval_transforms_share_geometry(model):
    cfg = TrainConfig(img_size=32, color_jitter=0.4, re_prob=0.5)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    assert build_transforms(model, cfg, train=True)(img).shape == (3, 32, 32)
    assert build_transforms(model, cfg, train=False)(img).shape == (3, 32, 32)


def test_param_groups_decay_and_backbone_lr(model):
    cfg = TrainConfig(weight_decay=0.1, backbone_lr_mult=0.1)
    groups = param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            name = names[id(p)]
            no_decay = p.ndim <= 1 or name in ("pos_embed", "cls_token")
            assert g["weight_decay"] == (0.0 if no_decay else 0.1), name
            assert g["lr_scale"] == (0.1 if name.startswith("stem.") else 1.0), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_backbone_lr_multiplier_survives_the_scheduler(model):
    cfg = TrainConfig(lr=1e-3, backbone_lr_mult=0.1, scheduler="constant", warmup_epochs=0)
    opt = build_optimizer(model, cfg)
    build_scheduler(opt, cfg, updates_per_epoch=4)
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert lrs == [1e-4, 1e-3]


def test_freeze_specs(model):
    assert frozen_modules(model, "none") == []
    assert frozen_modules(model, "backbone") == ["stem"]
    ends = model.stem.stage_ends
    names = frozen_modules(model, "stages:1-2")
    assert names[0] == "stem.input_layer" and len(names) == 1 + ends[1]
    with pytest.raises(FerlensError, match="stages:A-B"):
        frozen_modules(model, "stages:2-9")
    with pytest.raises(FerlensError, match="Unknown --freeze"):
        frozen_modules(model, "head")


def test_freeze_backbone_excludes_stem_from_optimizer():
    from train.engine import apply_freeze

    m = models.create_model("ferlens_tiny_vit_s3", num_classes=7, **TINY)
    apply_freeze(m, "backbone")
    assert not any(p.requires_grad for p in m.stem.parameters())
    opt = build_optimizer(m, TrainConfig())
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == sum(1 for n, p in m.named_parameters() if not n.startswith("stem."))


@pytest.mark.parametrize("name", ["cosine", "plateau", "exponential", "step", "constant"])
def test_schedulers_warmup_and_lr_halving(model, name):
    """After scale_lr(0.5) every later LR is exactly half of an unscaled twin schedule's."""
    cfg = TrainConfig(lr=1e-3, scheduler=name, warmup_epochs=1, warmup_lr=1e-5, epochs=6, decay_rate=0.5,
                      decay_epochs=2, patience_epochs=0, min_lr=0.0)
    pairs = []
    for _ in range(2):
        opt = build_optimizer(model, cfg)
        pairs.append((opt, build_scheduler(opt, cfg, updates_per_epoch=2)))
    assert all(opt.param_groups[0]["lr"] == pytest.approx(1e-5) for opt, _ in pairs)  # warmup start
    scaled = False
    for epoch in range(5):
        for update in (1, 2):
            for opt, sched in pairs:
                sched.step_update(epoch * 2 + update)
        for opt, sched in pairs:
            sched.step(epoch + 1, 0.5)                      # flat metric: plateau decays after patience
        if epoch == 0:
            assert pairs[0][0].param_groups[0]["lr"] > 1e-5  # warmup moved the LR up
        if epoch == 1:
            scale_lr(pairs[1][0], pairs[1][1], 0.5)
            scaled = True
        if scaled:
            ref, half = pairs[0][0].param_groups[0]["lr"], pairs[1][0].param_groups[0]["lr"]
            assert half == pytest.approx(ref / 2), (name, epoch)


def test_class_weights_balanced():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.0])


def test_rng_state_roundtrip_weights_only():
    g = torch.Generator().manual_seed(5)
    state = rng_state(g)
    buf = io.BytesIO()
    torch.save(state, buf)
    first = (torch.rand(3), np.random.rand(3), __import__("random").random(), torch.randperm(5, generator=g))
    set_rng_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True), g)
    again = (torch.rand(3), np.random.rand(3), __import__("random").random(), torch.randperm(5, generator=g))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2] and torch.equal(first[3], again[3])


def test_nan_guard_skip_rollback_stop():
    guard = NanGuard(max_consecutive=2, lr_factor=0.5, max_rollbacks=1, inject_steps=[1])
    assert torch.isfinite(guard.inject(torch.tensor(1.0)))
    assert torch.isnan(guard.inject(torch.tensor(1.0)))            # attempt 1 injected
    assert guard.skip(1, 0, "loss", 1e-3) is False
    guard.ok()
    assert guard.skip(1, 0, "loss", 1e-3) is False
    assert guard.skip(1, 0, "loss", 1e-3) is True                  # two in a row
    assert guard.rollback(1, 0, "loss", 1e-3) == 0.5 and guard.lr_scale == 0.5
    with pytest.raises(FerlensError, match="Training diverged: loss was non-finite"):
        guard.rollback(2, 5, "loss", 5e-4)
    assert [e.action for e in guard.events] == ["skip", "skip", "skip", "rollback", "stop"]


def test_nonfinite_locators():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    with torch.no_grad():
        net[2].weight[0, 0] = float("nan")
    assert first_nonfinite_output(net, torch.ones(1, 2)) == "2"
    assert first_nonfinite_tensor(net.state_dict()) == "2.weight"
    net(torch.ones(1, 2)).sum().backward()
    assert first_nonfinite_grad(net) in ("0.weight", "2.weight")


def test_backbone_weights_freeze_and_lr_mult_from_config(tmp_path, model):
    from safetensors.torch import save_file

    from train.config import resolve_config
    from train.engine import build_model

    path = tmp_path / "stem.safetensors"
    save_file({k: v.contiguous() for k, v in model.stem.state_dict().items()}, str(path))
    cfg = resolve_config(None, ["--model", "ferlens_tiny_vit_s3", "--img_size", "32", "--model_kwargs.depth", "1",
                                "--model_kwargs.embed_dim", "32", "--model_kwargs.num_heads", "2",
                                "--backbone-weights", str(path), "--freeze", "stages:1-1", "--backbone_lr_mult", "0.1"])
    torch.manual_seed(1)                          # a different init: the loaded stem must win
    m = build_model(cfg, 7)
    assert all(torch.equal(v, model.stem.state_dict()[k]) for k, v in m.stem.state_dict().items())
    assert not any(p.requires_grad for p in m.stem.input_layer.parameters())
    assert all(p.requires_grad for p in m.stem.body[-1].parameters())
    scales = {g["lr_scale"] for g in param_groups(m, cfg)}
    assert scales == {0.1, 1.0}
