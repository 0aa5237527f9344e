"""`train import` and `train fit --model MODULE:FUNCTION`: an external IR-50-style + timm-Block hybrid (the fixture
module tests/fixtures/ext_irvit.py, imported through PYTHONPATH) saved the way DataParallel training scripts save it,
timm DeiT / CaiT at 64 px, and `--img_size` reaching timm models. Every imported run must give the original logits."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from train.cli import main

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
DATA = "synthfer:size=64,n=70"
INPUT = ["--img_size", "64", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]

# The README section "Analyse a model you trained elsewhere" shows exactly these commands (checked below).
MAKE_CKPT = "python tests/fixtures/ext_irvit.py best.pth"
IMPORT_EXT = ("train import --model ext_irvit:ir_vit --weights best.pth "
              "--hook-map blocks=layers tokens=embed stem.stage3=cnn.layer3 "
              "--data synthfer:size=64,n=300 --run_name ext_irvit --img_size 64 --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5 "
              "--eval")
IMPORT_RENAMED = ("train import --model ext_irvit:ir_vit --weights renamed.pth --key-map '^backbone\\.=cnn.' "
                  "--data synthfer:size=64,n=70 --run_name ext_renamed --img_size 64 --mean 0.5 --std 0.5")
IMPORT_DEIT = ("train import --model deit_tiny_distilled_patch16_224 --model_kwargs.depth 1 --weights deit.pth "
               "--img_size 64 --data synthfer:size=64,n=70 --run_name deit")
IMPORT_CAIT = ("train import --model cait_xxs24_224 --model_kwargs.depth 1 --model_kwargs.depth_token_only 1 "
               "--weights cait.safetensors --img_size 64 --data synthfer:size=64,n=70 --run_name cait")
FIT_EXT = ("train fit --model ext_irvit:ir_vit --model_kwargs.depth 1 --hook-map blocks=layers tokens=embed "
           "--data synthfer:size=32,n=70 --img_size 32 --epochs 1 --batch_size 16 --warmup_epochs 0 "
           "--run_name ext_fit")
FIT_VIT = ("train fit --model vit_tiny_patch16_224 --model_kwargs.depth 1 --img_size 32 "
           "--data synthfer:size=32,n=70 --epochs 1 --batch_size 16 --warmup_epochs 0 --run_name vit32")
PROBES = ["probe extract --run ext_irvit --split test --patch-tokens",
          "probe linear --run ext_irvit --tokens cls,patch --targets expression,background --cv 2 --seeds 1",
          "probe rollout --run ext_irvit --n 8",
          "probe report --runs ext_irvit --out artifacts/reports/ext_irvit"]
README_COMMANDS = [MAKE_CKPT, IMPORT_EXT, IMPORT_RENAMED, IMPORT_DEIT, IMPORT_CAIT, FIT_EXT, FIT_VIT, *PROBES]


def _argv(command: str) -> list[str]:
    """A README command line as the argv of ``train.cli.main``."""
    return shlex.split(command)[1:]


def _runs() -> Path:
    return Path(os.environ["FERLENS_ARTIFACTS"]) / "runs"


@pytest.fixture
def on_path(monkeypatch):
    """The fixture module importable in this process (what PYTHONPATH does for the CLI)."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    import ext_irvit

    return ext_irvit


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(FIXTURES), env.get("PYTHONPATH", "")])
    env.setdefault("TQDM_DISABLE", "1")
    return env


def _original(ext_irvit):
    return ext_irvit.trained()


def _save_dataparallel(model, path: Path) -> Path:
    import ext_irvit

    ext_irvit.save_dataparallel(model, str(path))
    return path


def _max_diff(a: nn.Module, b: nn.Module, size: int = 64) -> float:
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


@pytest.mark.slow
def test_external_checkpoint_through_the_cli(tmp_path, on_path):
    """As a user runs it (subprocesses, the module from PYTHONPATH): the run folder rebuilds the same logits."""
    from train.runs import load_run

    (tmp_path / "tests").symlink_to(REPO / "tests")     # the README's commands run from a clone's root
    for command in (MAKE_CKPT, IMPORT_EXT):
        argv = [sys.executable, *shlex.split(command)[1:]] if command.startswith("python") else \
            [sys.executable, "-m", *shlex.split(command)]
        proc = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    assert "unwrapped state_dict, module." in proc.stdout and "max |difference| 0.0e+00" in proc.stdout
    assert "note:" not in proc.stdout                   # the hook map tells the adapter where the tokens are
    run = _runs() / "ext_irvit"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["name"] == "ext_irvit:ir_vit" and cfg["model"]["kwargs"] == {"img_size": 64}
    assert cfg["model"]["hook_map"] == {"blocks": "layers", "tokens": "embed", "stem.stage3": "cnn.layer3"}
    assert cfg["model"]["source"] == str(FIXTURES / "ext_irvit.py")
    assert cfg["input"] == {"img_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert cfg["label_names"][:2] == ["neutral", "happiness"] and cfg["num_classes"] == 7
    assert cfg["import"]["unwrapped"] == ["state_dict", "module."] and len(cfg["import"]["sha256"]) == 64
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == sum(map(sum, metrics["confusion_matrix"]))
    model, config = load_run(run)
    assert _max_diff(model, on_path.trained()) <= 1e-5
    assert model.ferlens_hook_map == cfg["model"]["hook_map"]
    assert model.pretrained_cfg["input_size"] == (3, 64, 64)
    assert not [p.name for p in _runs().iterdir() if p.name.startswith(".")]   # no staging folder or lock left


def test_key_map_renames_and_mismatch_is_one_sentence(tmp_path, on_path, capsys, monkeypatch):
    from train.runs import load_run

    monkeypatch.chdir(tmp_path)
    original = _original(on_path)
    state = {k.replace("cnn.", "backbone.", 1): v for k, v in original.state_dict().items()}
    torch.save({"model": state}, tmp_path / "renamed.pth")
    without = [a for a in _argv(IMPORT_RENAMED) if a not in ("--key-map", r"^backbone\.=cnn.")]
    assert main(without) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith(".")
    assert "missing (cnn.input_layer.0.weight" in err and "unexpected (backbone.input_layer.0.weight" in err
    assert "--key-map '^backbone\\.=cnn.'" in err       # the fix, spelled as the README's command spells it
    assert not (_runs() / "ext_renamed").exists()
    assert main(_argv(IMPORT_RENAMED)) == 0
    assert "note: ferlens finds no token layers in IRViT; import it again with --hook-map" in capsys.readouterr().out
    model, cfg = load_run("ext_renamed")
    assert cfg["import"]["key_map"] == [r"^backbone\.=cnn."] and cfg["import"]["unwrapped"] == ["model"]
    assert _max_diff(model, original) <= 1e-5


class Evil:
    """Unpickling this would create ``marker`` (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_checkpoint_is_refused(tmp_path, on_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _original(on_path).state_dict(), "hook": Evil(marker)}, tmp_path / "evil.pth")
    assert main(["import", "--model", "ext_irvit:ir_vit", "--weights", str(tmp_path / "evil.pth"), "--data", DATA,
                 "--run_name", "evil", *INPUT]) == 2
    err = capsys.readouterr().err
    assert "pickled global io.open" in err and "weights_only=True" in err
    assert not marker.exists() and not (Path(os.environ["FERLENS_ARTIFACTS"]) / "runs" / "evil").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--model", "no_such_module:build"], "Cannot import module 'no_such_module'"),
    (["--model", "ext_irvit:no_such_fn"], "has no 'no_such_fn'"),
    (["--model", "ext_irvit:tuple_model"], "returns a tuple, not a logits tensor"),
    (["--model", "ext_irvit:ir_vit", "--model_kwargs.width", "3"], "cannot be called with"),
    (["--model", "ext_irvit:ir_vit", "--hook-map", "blocks=layerz"], "is not a module of IRViT"),
    (["--model", "ext_irvit:ir_vit", "--lr", "3"], "Unknown option '--lr'"),
])
def test_bad_inputs_one_sentence(argv, fragment, on_path, capsys):
    assert main(["import", *argv, "--data", DATA, "--run_name", "x", *INPUT]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and err.count("\n") == 0, err
    if "no_such_module" in argv[1]:
        assert "PYTHONPATH" in err and os.getcwd() in err


def test_external_model_needs_its_input_stats(on_path, capsys):
    assert main(["import", "--model", "ext_irvit:ir_vit", "--data", DATA, "--run_name", "x"]) == 2
    err = capsys.readouterr().err
    assert "does not say its input mean, std" in err and "--mean" in err


@pytest.mark.parametrize("command, kwargs, prefix", [
    (IMPORT_DEIT, {"depth": 1}, 2),                             # DeiT's own checkpoints: {"model": state}
    (IMPORT_CAIT, {"depth": 1, "depth_token_only": 1}, 1),
])
def test_timm_deit_and_cait_import_at_64px(tmp_path, monkeypatch, command, kwargs, prefix):
    import timm
    from safetensors.torch import save_file

    from train.runs import load_run

    monkeypatch.chdir(tmp_path)
    argv = _argv(command)
    name, weights, run = (argv[argv.index(f) + 1] for f in ("--model", "--weights", "--run_name"))
    torch.manual_seed(3)
    original = timm.create_model(name, img_size=64, num_classes=7, **kwargs).eval()
    if weights.endswith(".pth"):
        torch.save({"model": original.state_dict(), "epoch": 299}, weights)
    else:
        save_file({k: v.contiguous() for k, v in original.state_dict().items()}, weights)
    assert main(argv) == 0
    model, cfg = load_run(run)
    assert _max_diff(model, original) <= 1e-5
    assert cfg["model"]["kwargs"] == {**kwargs, "img_size": 64}
    assert cfg["input"]["img_size"] == 64 and cfg["input"]["mean"] == [float(m) for m in original.pretrained_cfg["mean"]]
    assert model.pretrained_cfg["input_size"] == (3, 64, 64) and model.num_prefix_tokens == prefix


@pytest.mark.slow
def test_fit_external_module_function(tmp_path, on_path):
    """`train fit --model ext_irvit:ir_vit` from a subprocess (PYTHONPATH), one tiny epoch; load_run rebuilds it."""
    from train.runs import load_run

    proc = subprocess.run([sys.executable, "-m", *shlex.split(FIT_EXT), "--threads", "1", "--bootstrap", "20"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((_runs() / "ext_fit" / "config.json").read_text())
    assert cfg["model"]["name"] == "ext_irvit:ir_vit"
    assert cfg["model"]["kwargs"] == {"depth": 1, "img_size": 32}          # --img_size reached the factory
    assert cfg["model"]["hook_map"] == {"blocks": "layers", "tokens": "embed"}
    assert cfg["input"]["img_size"] == 32
    model, _ = load_run("ext_fit")
    assert len(model.layers) == 1 and model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.slow
def test_fit_timm_vit_with_img_size_only():
    """`--img_size` alone reaches a timm ViT (before: an assertion traceback unless --model_kwargs.img_size)."""
    from train.runs import load_run

    assert main(_argv(FIT_VIT) + ["--threads", "1", "--bootstrap", "20"]) == 0
    model, cfg = load_run("vit32")
    assert cfg["model"]["kwargs"] == {"depth": 1, "img_size": 32} and cfg["input"]["img_size"] == 32
    assert model.pretrained_cfg["input_size"] == (3, 32, 32) and model.patch_embed.grid_size == (2, 2)


@pytest.mark.slow
def test_imported_external_model_through_probe_commands(tmp_path, on_path, monkeypatch, capsys):
    """The external-model row of the model matrix: the imported hybrid, found through its --hook-map, goes through
    probe extract / linear / rollout / gradcam / attribute (IG) / intervene / figures / report with the numbers checked against a manual reading of its tokens."""
    import csv

    import numpy as np

    from probe.cache import run_with_cache
    from probe.cli import main as probe_main
    from probe.features import load_features
    from probe.rollout import rollout_matrix
    from train.data import load_dataset
    from train.engine import make_eval_transform
    from train.models.adapters import model_spec
    from train.runs import load_run

    monkeypatch.chdir(tmp_path)
    on_path.save_dataparallel(on_path.trained(), "best.pth")
    assert main(_argv(IMPORT_EXT)) == 0
    extract, linear, rollout, report = (_argv(c) for c in PROBES)
    assert probe_main(extract) == 0
    model, config = load_run("ext_irvit")
    spec = model_spec(model)
    assert spec.family == "hook-map" and spec.num_prefix_tokens == 1     # the CLS inside its `embed` module
    assert spec.token_layers == ("tokens", "blocks.0", "blocks.1")
    fs = load_features(_runs() / "ext_irvit")
    assert fs.layers == ["tokens", "blocks.0", "blocks.1"] and fs.patch_tokens.shape[2] == 64
    assert fs.grid_size == (8, 8)                                 # 65 tokens = CLS + an 8x8 grid
    ds = load_dataset(config["data"]["spec"], "test", transform=make_eval_transform(config))
    x = torch.stack([ds[i][0] for i in range(4)])
    cache = run_with_cache(model, x, names=["blocks.1", "blocks.0.attn", "blocks.1.attn", "stem.stage3"])
    with torch.no_grad():  # the model's own code: tokens after its second timm Block
        t = model.embed(model.cnn(x))
        own = model.layers[1](model.layers[0](t))
    np.testing.assert_allclose(cache["blocks.1"].numpy(), own.numpy(), atol=1e-5)
    np.testing.assert_allclose(fs.readout("patch", "blocks.1")[:4], own[:, 1:].mean(1).numpy(), atol=1e-5)
    np.testing.assert_allclose(fs.readout("cls", "blocks.1")[:4], own[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(fs.stem[:4], cache["stem.stage3"].mean((2, 3)).numpy(), atol=1e-5)
    attns = [cache["blocks.0.attn"], cache["blocks.1.attn"]]
    assert attns[0].shape == (4, 2, 65, 65)                      # post-softmax probabilities of timm Attention
    assert torch.allclose(attns[0].sum(-1), torch.ones(4, 2, 65), atol=1e-5)
    r = rollout_matrix(attns, num_prefix=1)
    assert torch.allclose(r.sum(-1), torch.ones(4, 65), atol=1e-5)   # rollout rows sum to 1
    assert probe_main(linear) == 0
    rows = json.loads((_runs() / "ext_irvit" / "probes" / "linear.json").read_text())
    assert {(r["layer"], r["tokens"]) for r in rows} >= {(l, k) for l in fs.layers for k in ("cls", "patch")}
    assert all(0.0 <= r["metric"]["accuracy"] <= 1.0 and 0 < r["chance"] < 1 for r in rows)
    assert probe_main(rollout) == 0
    with open(_runs() / "ext_irvit" / "explain" / "attribution_metrics.csv", newline="") as f:
        metrics = {r["method"]: r for r in csv.DictReader(f)}
    assert {"rollout", "cls_attention"} <= set(metrics)
    for r in metrics.values():
        assert r["n"] == "8" and all(0.0 <= float(r[k]) <= 1.0 for k in ("deletion_auc", "insertion_auc", "part_mass"))
    # the rest of the matrix row: Grad-CAM, IG, interventions and figures on the same imported run
    run_dir = _runs() / "ext_irvit"
    common = ["--run", "ext_irvit", "--n", "4", "--steps", "4", "--grid-rows", "2"]
    assert probe_main(["gradcam", *common, "--methods", "gradcam"]) == 0
    assert probe_main(["attribute", *common, "--methods", "ig", "--n-steps", "4"]) == 0
    with open(run_dir / "explain" / "attribution_metrics.csv", newline="") as f:
        metrics = {r["method"]: r for r in csv.DictReader(f)}
    assert {"rollout", "cls_attention", "gradcam", "ig"} <= set(metrics)
    for m in ("gradcam", "ig"):
        r = metrics[m]
        assert r["n"] == "4" and all(0.0 <= float(r[k]) <= 1.0 for k in ("deletion_auc", "insertion_auc", "part_mass"))
    assert probe_main(["intervene", "--run", "ext_irvit", "--n", "8", "--modes", "mean,zero,patch_parts",
                       "--no-counterfactual"]) == 0
    with open(run_dir / "explain" / "interventions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["layer"] for r in rows if r["mode"] == "zero"] == list(spec.cls_layers)
    assert [r["layer"] for r in rows if r["mode"] == "patch_parts"] == list(spec.patch_layers)
    assert probe_main(["figures", "--runs", "ext_irvit", "--out", str(tmp_path / "fig"), "--formats", "png",
                       "--only", "1,5"]) == 0
    assert (tmp_path / "fig" / "figures.json").is_file()
    assert any(p.read_bytes()[:4] == b"\x89PNG" for p in (tmp_path / "fig").glob("fig5_*.png"))
    assert probe_main(report) == 0
    md = (tmp_path / "artifacts" / "reports" / "ext_irvit" / "report.md").read_text()
    assert "ext_irvit" in md
    capsys.readouterr()


def test_readme_shows_these_commands():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Analyse a model you trained elsewhere"):]
    section = section[:section.index("\n## ", 5)]
    flat = " ".join(section.replace("\\\n", " ").split())
    for command in README_COMMANDS:
        assert command in flat, command
