"""``--amp auto``: bf16 on CPU only with bf16 units and a probe that shows it faster (train/precision.py)."""
from __future__ import annotations

import pytest
import torch

from train import precision as P

SPR = {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}   # Sapphire Rapids
EPYC = {"avx2", "fma"}                                  # AVX2-only


@pytest.mark.parametrize("flags,cap,env,expect", [
    (SPR, "AVX512", {}, True),
    (EPYC, "AVX2", {}, False),
    (SPR, "AVX2", {}, False),                                        # ATEN_CPU_CAPABILITY=avx2
    (SPR, "AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),          # oneDNN capped
    (SPR, "AVX512", {"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}, True),
    ({"avx2", "avx512f"}, "AVX512", {}, False),                     # AVX-512 without bf16 (Skylake-X)
])
def test_bf16_units_from_flags_capability_and_caps(monkeypatch, flags, cap, env, expect):
    monkeypatch.setattr(P.platform, "machine", lambda: "x86_64")
    units, why = P.cpu_bf16_units(flags=flags, capability=cap, env=env)
    assert units is expect and why


def _fake(monkeypatch, flags, cap):
    monkeypatch.setattr(P.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(P, "cpu_flags", lambda path="/proc/cpuinfo": flags)
    monkeypatch.setattr(P, "cpu_capability", lambda: cap)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


def _probe(fp32, bf16, calls):
    def probe(model, batch, img_size, num_classes, channels_last):
        calls.append((batch, img_size, num_classes))
        return fp32, bf16
    return probe


CPU = torch.device("cpu")
MODEL = torch.nn.Linear(2, 2)


def test_auto_without_units_is_fp32_and_never_probes(monkeypatch):
    _fake(monkeypatch, EPYC, "AVX2")
    calls = []
    p = P.choose_precision("auto", CPU, MODEL, probe=_probe(200.0, 20.0, calls))
    assert (p.amp, p.bf16_units, calls) == ("none", False, [])
    assert p.reason.startswith("fp32") and "AVX512-BF16" in p.reason and p.cpu_capability == "AVX2"


@pytest.mark.parametrize("fp32,bf16,amp", [(200.0, 300.0, "bf16"), (200.0, 190.0, "none"), (200.0, 205.0, "none")])
def test_auto_with_units_follows_the_probe(monkeypatch, fp32, bf16, amp):
    _fake(monkeypatch, SPR, "AVX512")
    calls = []
    p = P.choose_precision("auto", CPU, MODEL, batch=64, img_size=64, num_classes=7,
                           probe=_probe(fp32, bf16, calls))
    assert p.amp == amp and calls == [(64, 64, 7)]           # probed once, with the training shape
    assert (p.fp32_img_s, p.bf16_img_s) == (fp32, bf16) and "3-step probe" in p.reason
    assert p.as_dict()["requested"] == "auto"


def test_bf16_on_a_cpu_without_units_warns_with_the_measured_slowdown(monkeypatch):
    _fake(monkeypatch, EPYC, "AVX2")
    p = P.choose_precision("bf16", CPU, MODEL, probe=_probe(199.0, 26.0, []))
    assert p.amp == "bf16"                                   # kept: the user asked for it
    line = P.announce(p)
    assert line.startswith("warning:") and "7.7x slower" in line and line.count(". ") == 0


def test_bf16_with_units_and_none_are_kept_silently(monkeypatch):
    _fake(monkeypatch, SPR, "AVX512")
    calls = []
    assert P.choose_precision("bf16", CPU, MODEL, probe=_probe(1.0, 1.0, calls)).amp == "bf16"
    assert P.choose_precision("none", CPU, MODEL, probe=_probe(1.0, 1.0, calls)).amp == "none"
    assert calls == [] and not P.announce(P.choose_precision("none", CPU)).startswith("warning")


def test_cuda_auto_picks_bf16_or_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert P.choose_precision("auto", torch.device("cuda")).amp == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert P.choose_precision("auto", torch.device("cuda")).amp == "bf16"


def test_probe_measures_both_precisions_on_copies():
    from train.models import create_model

    torch.manual_seed(0)
    model = create_model("ferlens_tiny_cataftermlp_s3", num_classes=7, img_size=32, depth=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.set_num_threads(1)
    fp32, bf16 = P.probe_cpu_speed(model, batch=4, img_size=32, num_classes=7, steps=1)
    assert fp32 > 0 and bf16 > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched
    assert all(p.grad is None for p in model.parameters())


def test_fit_records_the_choice(tmp_path, monkeypatch):
    from train.config import resolve_config
    from train.engine import fit
    from train.io import read_json

    _fake(monkeypatch, EPYC, "AVX2")
    cfg = resolve_config(None, ["--model", "ferlens_tiny_vit_s3", "--data", "synthfer:size=32,n=70", "--img_size", "32",
                                "--model_kwargs.depth", "1", "--model_kwargs.embed_dim", "32",
                                "--model_kwargs.num_heads", "2", "--epochs", "1", "--batch_size", "16",
                                "--bootstrap", "0", "--warmup_epochs", "0", "--out", str(tmp_path), "--threads", "1"])
    assert cfg.amp == "auto"                                  # the default
    config = read_json(fit(cfg) / "config.json")
    assert config["precision"]["requested"] == "auto" and config["precision"]["amp"] == "none"
    assert config["train"]["amp"] == "none"                   # a resumed run continues in the chosen precision
