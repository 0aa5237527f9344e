"""train.profile: exact MAC counts (attention included), the profile.json schema, files and the CLI."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from train.profile import count_flops, profile_model, write_profiles

models = pytest.importorskip("train.models")
SMALL = dict(depth=1, embed_dim=64, num_heads=2, img_size=32)


def test_linear_macs_are_half_the_flops():
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5, bias=False))
    assert count_flops(m, (4, 4)) == 2 * 48 * 5


def test_mac_difference_between_vit_and_class_attention_is_exact():
    vit = models.create_model("ferlens_tiny_vit_s3", **SMALL).eval()
    cat = models.create_model("ferlens_tiny_cataftermlp_s3", **SMALL).eval()
    t, d = 1 + 16, 64  # tokens, dim
    vit_block = 12 * t * d * d + 2 * t * t * d       # qkv + proj + MLP on all tokens, q@k^T and a@v (SDPA)
    cat_block = 10 * d * d + 2 * t * d * d + 2 * t * d  # q, proj, MLP on CLS; k, v on all; CLS attention
    diff = (count_flops(vit, (32, 32)) - count_flops(cat, (32, 32))) // 2
    assert diff == vit_block - cat_block


def test_profile_schema_and_files(tmp_path):
    m = models.create_model("ferlens_tiny_vit_s3", **SMALL)
    r = profile_model(m, batch_sizes=[1, 2], repeats=1, warmup=0)
    assert {"model", "img_size", "device", "params", "macs", "flops", "rows"} <= set(r)
    assert r["model"] == "ferlens_tiny_vit_s3" and r["img_size"] == 32 and r["device"] == "cpu"
    assert r["flops"] == 2 * r["macs"] > 0 and r["params"] == sum(p.numel() for p in m.parameters())
    assert [row["batch_size"] for row in r["rows"]] == [1, 2]
    assert all(row["throughput"] > 0 and row["latency_ms"] > 0 and row["peak_mem_mb"] >= 0 for row in r["rows"])
    paths = write_profiles([r], tmp_path / "p.json")
    assert [p.name for p in paths] == ["p.json", "p.csv", "p.png"]
    assert json.loads(paths[0].read_text())["macs"] == r["macs"]
    lines = paths[1].read_text().splitlines()
    assert lines[0].startswith("model,img_size,device,params,macs,flops,batch_size,throughput") and len(lines) == 3
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_cli_profiles_names_and_runs(_artifacts_root, capsys):
    from train.cli import main
    from train.runs import save_run

    rc = main(["profile", "--model", "ferlens_tiny_vit_s3", "--img-size", "32", "--batch-sizes", "1",
               "--repeats", "1", "--warmup", "0", "--no-chart"])
    assert rc == 0
    out = _artifacts_root / "profiles" / "ferlens_tiny_vit_s3-32.json"
    assert json.loads(out.read_text())["rows"][0]["batch_size"] == 1
    assert "GMACs" in capsys.readouterr().out
    run = _artifacts_root / "runs" / "r1"
    save_run(run, models.create_model("ferlens_tiny_clsonly_s3", num_classes=3, **SMALL),
             {"model": {"name": "ferlens_tiny_clsonly_s3", "kwargs": SMALL}, "num_classes": 3,
              "input": {"img_size": 32}})
    assert main(["profile", "--run", str(run), "--batch-sizes", "1", "--repeats", "1", "--no-chart"]) == 0
    assert json.loads((run / "profile.json").read_text())["model"] == "ferlens_tiny_clsonly_s3"
    assert main(["profile", "--model", "ferlens_tiny_vit_s3", "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
    assert main(["profile", "--model", "ferlens_tiny_vt_s3", "--batch-sizes", "1"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_cait_flops_count_and_grad_flags_restored():
    """CaiT hands its cls_token parameter to the class-attention blocks: counting works and every
    parameter's requires_grad is as it was."""
    import timm

    model = timm.create_model("cait_xxs24_224", img_size=32, patch_size=8, embed_dim=32, depth=1,
                              num_heads=2, num_classes=7).eval()
    model.head.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    flops = count_flops(model, (32, 32))
    # patch embedding alone: 16 patches x (3*8*8) x 32 outputs x 2 FLOPs
    assert flops > 16 * 3 * 8 * 8 * 32 * 2
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
