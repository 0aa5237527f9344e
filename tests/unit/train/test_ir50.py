"""IR-50 fidelity: a face.evoLVe-style reference written here loads strictly into ferlens' IR-50 stem
and both give the same stage-3 / stage-4 feature maps."""
from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from torch import nn

from train.errors import FerlensError
from train.models import create_model, load_backbone_weights

probe_cache = pytest.importorskip("probe.cache")


# ---- independent reference, after face.evoLVe's model_irse.py (names and layout kept) ----------------
class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class bottleneck_IR(nn.Module):  # noqa: N801 - face.evoLVe's name
    def __init__(self, in_channel, depth, stride):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth), nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


Bottleneck = namedtuple("Block", ["in_channel", "depth", "stride"])


def get_block(in_channel, depth, num_units, stride=2):
    return [Bottleneck(in_channel, depth, stride)] + [Bottleneck(depth, depth, 1) for _ in range(num_units - 1)]


class Backbone(nn.Module):
    """face.evoLVe IR-50 for 112x112 input (mode 'ir')."""

    def __init__(self):
        super().__init__()
        blocks = [get_block(64, 64, 3), get_block(64, 128, 4), get_block(128, 256, 14), get_block(256, 512, 3)]
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(), Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))
        self.body = nn.Sequential(*[bottleneck_IR(u.in_channel, u.depth, u.stride) for b in blocks for u in b])

    def stages(self, x):
        x = self.input_layer(x)
        s3 = self.body[:21](x)
        return s3, self.body[21:](s3)


# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(1)
    ref = Backbone()
    for m in ref.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return ref.eval()


@pytest.fixture(scope="module")
def ir50_pth(reference, tmp_path_factory):
    """A POSTER-style checkpoint: DataParallel 'module.' prefix and the face-recognition output_layer."""
    path = tmp_path_factory.mktemp("w") / "ir50.pth"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)
    return path


SMALL = dict(depth=1, embed_dim=64, num_heads=2, img_size=32)


def test_ir50_shapes_at_112():
    with torch.device("meta"):
        m = create_model("ferlens_ir50_vit_s4_d8")
        cache = probe_cache.run_with_cache(m, torch.empty(1, 3, 112, 112), names=["stem.stage3", "stem.stage4"])
    assert cache["stem.stage3"].shape == (1, 256, 14, 14)
    assert cache["stem.stage4"].shape == (1, 512, 7, 7)
    assert len(m.stem.body) == 24 and m.stem.stage_ends == [3, 7, 21, 24]


def test_state_dict_keys_are_face_evolve_keys(reference):
    with torch.device("meta"):
        m = create_model("ferlens_ir50_vit_s4_d8")
    ref_keys = {k for k in reference.state_dict() if not k.startswith("output_layer.")}
    assert set(m.stem.state_dict()) == ref_keys


def test_poster_weights_load_strictly_and_reproduce_stages(reference, ir50_pth):
    m = create_model("ferlens_ir50_vit_s4_d8", **SMALL).eval()
    report = load_backbone_weights(m, ir50_pth, strict=True)
    assert report.loaded == len(m.stem.state_dict())
    assert len(report.skipped["output_layer (face-recognition head)"]) == len(
        [k for k in reference.state_dict() if k.startswith("output_layer.")])
    assert "output_layer" in str(report)
    x = torch.randn(2, 3, 32, 32)
    cache = probe_cache.run_with_cache(m, x, names=["stem.stage3", "stem.stage4"])
    with torch.no_grad():
        s3, s4 = reference.stages(x)
    assert (cache["stem.stage3"] - s3).abs().max().item() <= 1e-5
    assert (cache["stem.stage4"] - s4).abs().max().item() <= 1e-5


def test_truncated_backbones_skip_unbuilt_units_with_a_note(ir50_pth):
    s3 = create_model("ferlens_ir50_vit_s3_d8", **SMALL)
    report = load_backbone_weights(s3, ir50_pth)
    assert len(s3.stem.body) == 21 and report.loaded == len(s3.stem.state_dict())
    assert {k.split(".")[1] for k in report.skipped["unbuilt later-stage"]} == {"21", "22", "23"}
    cut = create_model("ferlens_ir50_vit_s4_d8", cut_last_stage=True, **SMALL)
    report = load_backbone_weights(cut, ir50_pth)
    assert len(cut.stem.body) == 22 and cut.grid_size == (2, 2)
    assert {k.split(".")[1] for k in report.skipped["unbuilt later-stage"]} == {"22", "23"}


def test_mismatched_backbone_weights_name_the_keys(reference, tmp_path):
    state = dict(reference.state_dict())
    state.pop("body.5.res_layer.1.weight")
    state["body.0.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with torch.device("meta"):
        m = create_model("ferlens_ir50_vit_s4_d8")
    with pytest.raises(FerlensError, match=r"missing body\.5\.res_layer\.1\.weight; unexpected body\.0\.extra\.weight"):
        load_backbone_weights(m, path)
    with pytest.raises(FerlensError, match="do not exist"):
        load_backbone_weights(m, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FerlensError, match="Cannot read"):
        load_backbone_weights(m, tmp_path / "junk.pth")


def test_safetensors_backbone_loads(tmp_path):
    from safetensors.torch import save_file

    src = create_model("ferlens_tiny_vit_s3", depth=1)
    save_file({f"backbone.{k}": v.contiguous() for k, v in src.stem.state_dict().items()}, tmp_path / "t.safetensors")
    dst = create_model("ferlens_tiny_cataftermlp_s3", depth=1)
    load_backbone_weights(dst, tmp_path / "t.safetensors")
    for k, v in src.stem.state_dict().items():
        assert torch.equal(dst.stem.state_dict()[k], v)


def test_timm_cnn_and_ferlens_run_weights_load_into_the_stem(tmp_path):
    import timm

    from train.runs import save_weights

    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    m = create_model("ferlens_tiny_vit_s3", backbone="timm:resnet18", depth=1)
    report = load_backbone_weights(m, tmp_path / "r18.pth")  # stage-3 tokens: layer4 and fc are skipped
    assert report.loaded == len(m.stem.state_dict())
    assert {k.split(".")[0] for k in report.skipped["unbuilt later-stage"]} == {"layer4"}
    assert report.skipped["output_layer (face-recognition head)"] == ["fc.weight", "fc.bias"]
    src = create_model("ferlens_tiny_vit_s3", depth=1)
    save_weights(tmp_path / "model.safetensors", src)
    dst = create_model("ferlens_tiny_clsonly_s3", depth=2)
    report = load_backbone_weights(dst, tmp_path / "model.safetensors")
    assert report.loaded == len(dst.stem.state_dict()) and report.skipped["non-backbone (token part of a ferlens run)"]
    assert torch.equal(dst.stem.body[0].conv.weight, src.stem.body[0].conv.weight)
