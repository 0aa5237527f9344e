"""TrainConfig layering (defaults → YAML → --key value), type coercion and one-sentence errors."""
from __future__ import annotations

import pytest

from train.config import TrainConfig, parse_overrides, resolve_config
from train.errors import FerlensError


def test_defaults_without_file_or_overrides():
    assert resolve_config(None, []) == TrainConfig()


def test_yaml_then_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-3\nepochs: 4\nbetas: [0.8, 0.9]\nmodel_kwargs: {depth: 2}\n")
    cfg = resolve_config(path, ["--lr", "3e-4", "--model_kwargs.embed_dim", "64", "--overwrite"])
    assert cfg.lr == pytest.approx(3e-4)          # CLI beats YAML
    assert cfg.epochs == 4                        # YAML beats default
    assert cfg.betas == (0.8, 0.9)
    assert cfg.model_kwargs == {"depth": 2, "embed_dim": 64}
    assert cfg.overwrite is True                  # bare flag → true


@pytest.mark.parametrize("tokens, field, value", [
    (["--epochs", "3"], "epochs", 3),
    (["--epochs=3.0"], "epochs", 3),
    (["--batch-size", "8"], "batch_size", 8),
    (["--betas", "0.9,0.95"], "betas", (0.9, 0.95)),
    (["--debug_nan_steps", "3,4"], "debug_nan_steps", [3, 4]),
    (["--balanced_sampler", "no"], "balanced_sampler", False),
    (["--rrc_scale", "[0.5, 1]"], "rrc_scale", (0.5, 1.0)),
    (["--model_kwargs", "{depth: 1, readout: gap}"], "model_kwargs", {"depth": 1, "readout": "gap"}),
    (["--min_lr", "-1e-6"], "min_lr", -1e-6),
])
def test_type_coercion(tokens, field, value):
    assert getattr(resolve_config(None, tokens), field) == value


def test_preset_name_resolves_to_bundled_yaml():
    cfg = resolve_config("demo", [])
    assert cfg.data.startswith("synthfer:") and cfg.epochs > 0


@pytest.mark.parametrize("tokens, fragment", [
    (["--learning_rate", "1e-3"], "Unknown config key 'learning_rate'"),
    (["--epoch", "3"], "Did you mean: epochs"),
    (["--epochs", "three"], "'epochs' is not a valid integer"),
    (["--scheduler", "cosin"], "Did you mean: cosine"),
    (["--amp", "fp8"], "must be one of auto, none, bf16, fp16"),
    (["lr", "3"], "overrides are written '--key value'"),
])
def test_bad_overrides_one_sentence(tokens, fragment):
    with pytest.raises(FerlensError) as e:
        resolve_config(None, tokens)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lrr: 0.1\n")
    with pytest.raises(FerlensError, match=r"Unknown config key 'lrr' in .*c\.yaml.*Did you mean: lr"):
        resolve_config(path, [])


@pytest.mark.parametrize("text, fragment", [
    ("lr: [1, 2\n", "is not valid YAML at line"),
    ("- 1\n- 2\n", "must hold a mapping"),
])
def test_bad_yaml_one_sentence(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FerlensError, match=fragment):
        resolve_config(path, [])


def test_missing_yaml_lists_presets(tmp_path):
    with pytest.raises(FerlensError, match=r"Cannot read the config file .*preset name \(.*demo"):
        resolve_config(tmp_path / "nope.yaml", [])


def test_parse_overrides_flags_and_negative_numbers():
    assert parse_overrides(["--overwrite", "--lr", "-1", "--x=y"]) == [("overwrite", "true"), ("lr", "-1"),
                                                                        ("x", "y")]


def test_resume_uses_saved_config_and_refuses_changes(tmp_path):
    from train.io import atomic_write_json

    run = tmp_path / "run"
    saved = TrainConfig(lr=1e-2, epochs=7).to_dict()
    atomic_write_json(run / "config.json", {"train": saved})
    cfg = resolve_config(None, ["--resume", str(run), "--workers", "2"])
    assert (cfg.lr, cfg.epochs, cfg.workers, cfg.resume) == (1e-2, 7, 2, str(run))
    with pytest.raises(FerlensError, match="'--lr' cannot change when resuming"):
        resolve_config(None, ["--resume", str(run), "--lr", "1"])
