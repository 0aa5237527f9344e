"""Bad-input matrix: every adapter × {missing root, empty split, unknown code, corrupt image, truncated image,
missing column}, models, configs, run folders and features. Each case runs the CLI in-process and asserts
exit code 2, exactly one line on stderr that names the offending file (or value), no traceback, and no new or
changed file anywhere under the test's folder (artifacts root included)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from probe.cli import main as probe_main
from train.cli import main as train_main
from train.errors import FerlensError

pytest.importorskip("train.models")

CLASSES7 = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")
RAF_CODES = {"surprise": 1, "fear": 2, "disgust": 3, "happiness": 4, "sadness": 5, "anger": 6, "neutral": 7}
FER_CODES = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5, "neutral": 6}
AN_CODES = {"neutral": 0, "happiness": 1, "sadness": 2, "surprise": 3, "fear": 4, "disgust": 5, "anger": 6}
CK_CODES = {"neutral": 0, "anger": 1, "disgust": 3, "fear": 4, "happiness": 5, "sadness": 6, "surprise": 7}
FERPLUS_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                   "unknown", "NF"]
_RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------- fixture writers
def image(path: Path, side: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_RNG.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path, quality=95)
    return path


def truncate(path: Path) -> Path:
    """Keep the header (it still opens), cut the pixel data: only a full decode notices."""
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def corrupt(path: Path) -> Path:
    path.write_bytes(b"this is not an image at all")
    return path


def pixels() -> str:
    return " ".join(str(v) for v in _RNG.integers(0, 255, 48 * 48))


def write_rafdb(root: Path) -> None:
    lines, k = [], 0
    for part, count in (("train", 3), ("test", 1)):
        for name in CLASSES7:
            for _ in range(count):
                k += 1
                stem = f"{part}_{k:05d}"
                lines.append(f"{stem}.jpg {RAF_CODES[name]}")
                image(root / "Image/aligned" / f"{stem}_aligned.jpg")
                attr = root / "Annotation/manual" / f"{stem}_manu_attri.txt"
                attr.parent.mkdir(parents=True, exist_ok=True)
                attr.write_text("".join(f"{30 + i}.0\t{40 + i}.0\n" for i in range(5)) + "1\n0\n2\n")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel/list_patition_label.txt").write_text("\n".join(lines) + "\n")


def write_fer2013(path: Path, usages=("Training", "PublicTest", "PrivateTest")) -> list[list]:
    rows = [[FER_CODES[name], pixels(), usage] for usage in usages for name in CLASSES7]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(rows)
    return rows


def write_ferplus(root: Path, usages=("Training", "PublicTest", "PrivateTest"), columns=FERPLUS_COLUMNS) -> None:
    rows = write_fer2013(root / "fer2013.csv", usages)
    names = {v: k for k, v in FER_CODES.items()}
    with open(root / "fer2013new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Usage", "Image name", *columns])
        for i, (code, _, usage) in enumerate(rows):
            w.writerow([usage, f"fer{i:07d}.png"] + [10 if c == names[code] else 0 for c in columns])


AN_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


def write_affectnet(root: Path, header: str = AN_HEADER, test_rows: bool = True) -> None:
    for csv_name, count in (("training.csv", 3), ("validation.csv", 1 if test_rows else 0)):
        lines = [header]
        for k, name in enumerate([n for n in CLASSES7 for _ in range(count)]):
            rel = f"1/{csv_name[:3]}{k:04d}.jpg"
            image(root / "Manually_Annotated_Images" / rel, 40)
            lines.append(f'{rel},2,2,32,32,"1.0;2.0",{AN_CODES[name]},0.1,0.2')
        path = root / "Manually_Annotated_file_lists" / csv_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")


def write_ckplus(root: Path, subjects: int = 3) -> None:
    names = [n for n in CK_CODES if n != "neutral"]
    k = 0
    for s in range(subjects):
        subj = f"S{s * 5 + 5:03d}"
        for q in range(2):
            seq, name = f"{q + 1:03d}", names[k % len(names)]
            k += 1
            for f in range(4):
                image(root / "cohn-kanade-images" / subj / seq / f"{subj}_{seq}_{f + 1:08d}.png")
            emo = root / "Emotion" / subj / seq / f"{subj}_{seq}_{4:08d}_emotion.txt"
            emo.parent.mkdir(parents=True, exist_ok=True)
            emo.write_text(f"   {CK_CODES[name]:.7e}\n")


def write_folder(root: Path) -> None:
    for split, count in (("train", 3), ("test", 1)):
        for name in CLASSES7:
            for i in range(count):
                image(root / split / name / f"{i}.jpg")


def first(root: Path, pattern: str) -> Path:
    return sorted(root.rglob(pattern))[0]


def replace_line(path: Path, lineno: int, text: str) -> Path:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def write_csv(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


# --------------------------------------------------------------------------- the dataset cases
# Each case: (writer of the good layout, mutation -> the text the error must name, spec options).
# The command is `train data check SPEC --strict`, which loads every split and decodes every image.
def _raf_unknown(root):
    replace_line(root / "EmoLabel/list_patition_label.txt", 2, "train_00002.jpg 9")
    return "list_patition_label.txt"


def _raf_missing_column(root):
    replace_line(root / "EmoLabel/list_patition_label.txt", 3, "train_00003.jpg")
    return "list_patition_label.txt"


def _raf_empty(root):
    path = root / "EmoLabel/list_patition_label.txt"
    path.write_text("".join(ln + "\n" for ln in path.read_text().splitlines() if ln.startswith("train")))
    return "test split"


def _raf_bad_attr(root):
    first(root, "*_manu_attri.txt").write_text("garbage\n")
    return "_manu_attri.txt"


def _fer_unknown(root):
    rows = csv_rows(root / "fer2013.csv")
    rows[3][0] = "9"
    write_csv(root / "fer2013.csv", rows)
    return "fer2013.csv line 4"


def _fer_missing_column(root):
    rows = [[r[0], r[1]] for r in csv_rows(root / "fer2013.csv")]
    write_csv(root / "fer2013.csv", rows)
    return "'Usage'"


def _fer_empty(root):
    write_fer2013(root / "fer2013.csv", ("Training", "PublicTest"))
    return "test split"


def _fer_corrupt(root):
    rows = csv_rows(root / "fer2013.csv")
    rows[2][1] = "x " * 2304
    write_csv(root / "fer2013.csv", rows)
    return "fer2013.csv line 3"


def _fer_truncated(root):
    rows = csv_rows(root / "fer2013.csv")
    rows[5][1] = " ".join(rows[5][1].split()[:1000])
    write_csv(root / "fer2013.csv", rows)
    return "fer2013.csv line 6"


def _ferplus_unknown(root):
    rows = csv_rows(root / "fer2013new.csv")
    rows[2][2] = "-3"
    write_csv(root / "fer2013new.csv", rows)
    return "fer2013new.csv line 3"


def _ferplus_missing_column(root):
    rows = [r[:-1] for r in csv_rows(root / "fer2013new.csv")]  # no NF column
    write_csv(root / "fer2013new.csv", rows)
    return "fer2013new.csv"


def _ferplus_empty(root):
    write_ferplus(root, ("Training", "PublicTest"))
    return "test split"


def _an_unknown(root):
    path = root / "Manually_Annotated_file_lists/training.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",0.1,0.2", "").rsplit(",", 1)[0] + ",13,0.1,0.2"
    path.write_text("\n".join(lines) + "\n")
    return "training.csv line 3"


def _an_missing_column(root):
    write_affectnet(root, header=AN_HEADER.replace(",expression", ",expr"))
    return "training.csv"


def _an_empty(root):
    write_affectnet(root, test_rows=False)
    return "test split"


def _ck_unknown(root):
    first(root, "*_emotion.txt").write_text("   9.0000000e+00\n")
    return "_emotion.txt line 1"


def _ck_missing_frame(root):
    path = first(root, "S005_001_00000002.png")
    path.unlink()
    return "missing frame(s) 2"


def _ck_empty(root):
    for p in (root / "Emotion").rglob("*_emotion.txt"):
        p.unlink()
    return "Emotion"


def _ck_missing_column(root):
    first(root, "*_emotion.txt").write_text("\n")
    return "_emotion.txt line 1"


def _folder_unknown(root):
    image(root / "train" / "bored" / "0.jpg")
    return "'bored'"


def _folder_empty(root):
    for p in (root / "test").rglob("*.jpg"):
        p.unlink()
    return "test split"


def _missing_root(root):
    return "does not exist"


def _image_case(pattern: str, damage: Callable[[Path], Path]):
    def mutate(root):
        return damage(first(root, pattern)).name
    return mutate


ADAPTERS = {  # name -> (writer, spec options, image glob)
    "rafdb": (write_rafdb, ",val_frac=0.34", "*_aligned.jpg"),
    "fer2013": (lambda r: write_fer2013(r / "fer2013.csv"), "", None),
    "ferplus": (write_ferplus, "", None),
    "affectnet": (write_affectnet, ",val_frac=0.34", "*.jpg"),
    "ckplus": (write_ckplus, ",folds=3", "*.png"),
    "folder": (write_folder, ",val_frac=0.34", "*.jpg"),
}
DATA_CASES = {
    ("rafdb", "unknown code"): _raf_unknown, ("rafdb", "missing column"): _raf_missing_column,
    ("rafdb", "empty split"): _raf_empty, ("rafdb", "unreadable attribute file"): _raf_bad_attr,
    ("fer2013", "unknown code"): _fer_unknown, ("fer2013", "missing column"): _fer_missing_column,
    ("fer2013", "empty split"): _fer_empty, ("fer2013", "corrupt image"): _fer_corrupt,
    ("fer2013", "truncated image"): _fer_truncated,
    ("ferplus", "unknown code"): _ferplus_unknown, ("ferplus", "missing column"): _ferplus_missing_column,
    ("ferplus", "empty split"): _ferplus_empty, ("ferplus", "corrupt image"): _fer_corrupt,
    ("ferplus", "truncated image"): _fer_truncated,
    ("affectnet", "unknown code"): _an_unknown, ("affectnet", "missing column"): _an_missing_column,
    ("affectnet", "empty split"): _an_empty,
    ("ckplus", "unknown code"): _ck_unknown, ("ckplus", "missing frame"): _ck_missing_frame,
    ("ckplus", "empty split"): _ck_empty, ("ckplus", "missing column"): _ck_missing_column,
    ("folder", "unknown code"): _folder_unknown, ("folder", "empty split"): _folder_empty,
}
for _name, (_w, _o, _glob) in ADAPTERS.items():
    DATA_CASES[(_name, "missing root")] = _missing_root
    if _glob:
        DATA_CASES[(_name, "corrupt image")] = _image_case(_glob, corrupt)
        DATA_CASES[(_name, "truncated image")] = _image_case(_glob, truncate)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file (size, mtime) and every folder (presence) under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def run_cli(main, argv: list[str], capsys, watch: Path) -> str:
    """Run one CLI call; assert exit 2, one stderr line, no traceback, nothing written under ``watch``."""
    capsys.readouterr()
    before = snapshot(watch)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert snapshot(watch) == before, "the failed command left files behind or changed them"
    return lines[0]


@pytest.mark.parametrize("adapter,case", sorted(DATA_CASES), ids=lambda v: v.replace(" ", "_"))
def test_dataset_case(adapter, case, tmp_path, capsys, _artifacts_root):
    writer, options, _ = ADAPTERS[adapter]
    root = tmp_path / "data"
    root.mkdir()
    writer(root)
    names = DATA_CASES[(adapter, case)](root)
    spec_root = tmp_path / "no-such-folder" if case == "missing root" else root
    spec = f"{adapter}:{spec_root}{options}"
    line = run_cli(train_main, ["data", "check", spec, "--strict"], capsys, tmp_path)
    assert line.startswith("train data: error: "), line
    assert names in line, (names, line)
    assert (case != "missing root" or str(spec_root) in line), line


def test_dataset_fixtures_are_valid(tmp_path, capsys):
    """The good layouts load cleanly, so every case above fails for its one mutation."""
    from train.data.inspect import check

    for adapter, (writer, options, _) in ADAPTERS.items():
        root = tmp_path / adapter
        root.mkdir()
        writer(root)
        report = check(f"{adapter}:{root}{options}", strict=True)
        assert report["ok"] and report["n_checked"] > 0, (adapter, report)


# ------------------------------------------------------------------------------ training inputs
TINY = ["--data", "synthfer:size=32,n=70", "--img_size", "32", "--model_kwargs.depth", "1",
        "--model_kwargs.embed_dim", "32", "--model_kwargs.num_heads", "2", "--epochs", "1", "--batch_size", "16",
        "--eval_batch_size", "64", "--bootstrap", "10", "--warmup_epochs", "0", "--threads", "1",
        "--run_name", "tiny"]

FIT_CASES = {
    "batch_size 0": (["--batch_size", "0"], "'batch_size'"),
    "epochs -1": (["--epochs", "-1"], "'epochs'"),
    "img_size 13": (["--img_size", "13"], "'img_size' 13"),
    "device tpu": (["--device", "tpu"], "'tpu'"),
    "device cuda on cpu": (["--device", "cuda"], "--device cuda"),
    "unknown model": (["--model", "ferlens_tiny_vit_s9"], "ferlens_tiny_vit_s9"),
    "unknown key": (["--learning_rate", "1"], "'learning_rate'"),
    "ill-typed value": (["--lr", "fast"], "lr"),
    "unknown dataset": (["--data", "rafdbb:/x"], "rafdbb"),
    "missing data root": (["--data", "rafdb:/no/such/raf"], "/no/such/raf"),
    "resume a missing run": (["--resume", "nope"], "'nope'"),
    "amp fp16 on cpu": (["--amp", "fp16"], "fp16"),
    "freeze a foreign model": (["--model", "resnet18", "--freeze", "backbone", "--img_size", "32"], "--freeze"),
}


@pytest.mark.parametrize("case", sorted(FIT_CASES), ids=lambda v: v.replace(" ", "_"))
def test_fit_case(case, capsys, _artifacts_root):
    extra, names = FIT_CASES[case]
    argv = ["fit", "--model", "ferlens_tiny_vit_s3"] + TINY + extra
    if "--resume" in extra:
        argv = ["fit", "--resume", "nope"]
    if "resnet18" in extra:  # a timm CNN has no ferlens model options
        argv = ["fit", "--data", "synthfer:size=32,n=70", "--run_name", "tiny", "--threads", "1"] + extra
    line = run_cli(train_main, argv, capsys, _artifacts_root)
    assert line.startswith("train fit: error: ") and names in line, line
    assert not (_artifacts_root / "runs").exists() or not any((_artifacts_root / "runs").iterdir())


def test_model_that_rejects_the_input_size_is_one_sentence():
    """The dry forward before training turns a model's own size assertion (timm ViT built for 224 px)
    into one sentence naming the model and the size."""
    import timm
    import torch

    from train.config import resolve_config
    from train.engine import check_forward
    from train.errors import FerlensError

    model = timm.create_model("vit_tiny_patch16_224", num_classes=7, depth=1)
    cfg = resolve_config(None, ["--model", "vit_tiny_patch16_224", "--img_size", "64"])
    with pytest.raises(FerlensError, match=r"cannot take 64x64 images \(AssertionError: Input height"):
        check_forward(model, cfg, torch.device("cpu"))


def test_yaml_config_cases(tmp_path, capsys, _artifacts_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    line = run_cli(train_main, ["fit", "-c", str(bad)], capsys, tmp_path)
    assert "bad.yaml" in line and "line" in line, line
    typed = tmp_path / "typed.yaml"
    typed.write_text("epochs: many\n")
    line = run_cli(train_main, ["fit", "-c", str(typed)], capsys, tmp_path)
    assert "epochs" in line and "typed.yaml" in line, line


# ------------------------------------------------------------------------------ run folders, features
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny trained run with extracted features and a probe table (root, run folder)."""
    import os

    root = tmp_path_factory.mktemp("trained")
    old = os.environ.get("FERLENS_ARTIFACTS")
    os.environ["FERLENS_ARTIFACTS"] = str(root)
    try:
        assert train_main(["fit", "--model", "ferlens_tiny_vit_s3"] + TINY + ["--data", "synthfer:size=32,n=300"]) == 0
        assert probe_main(["linear", "--run", "tiny", "--cv", "2", "--seeds", "1", "--layers", "-1"]) == 0
    finally:
        if old is None:
            os.environ.pop("FERLENS_ARTIFACTS")
        else:
            os.environ["FERLENS_ARTIFACTS"] = old
    return root, root / "runs" / "tiny"


@pytest.fixture()
def use_trained(trained, monkeypatch):
    root, run = trained
    monkeypatch.setenv("FERLENS_ARTIFACTS", str(root))
    return root, run


def _clone(run: Path, name: str) -> Path:
    import shutil

    out = run.parent / name
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("features", "probes"))
    return out


def test_multi_run_probe_validates_every_run_first(use_trained, capsys):
    root, run = use_trained
    line = run_cli(probe_main, ["linear", "--run", "tiny,missing", "--cv", "2", "--seeds", "1"], capsys, root)
    assert "'missing'" in line, line
    assert len(json.loads((run / "probes" / "linear.json").read_text())) > 1   # untouched (the snapshot agrees)


@pytest.mark.parametrize("damage,names", [
    ("config-garbage", "config.json"), ("config-wrong-model", "ferlens_nope"),
    ("weights-garbage", "model.safetensors"), ("weights-missing", "model.safetensors"),
    ("state-garbage", "state.pt")])
def test_run_folder_case(damage, names, use_trained, capsys):
    root, run = use_trained
    bad = _clone(run, f"bad-{damage}")
    if damage == "config-garbage":
        (bad / "config.json").write_text("{not json")
    elif damage == "config-wrong-model":
        cfg = json.loads((bad / "config.json").read_text())
        cfg["model"]["name"] = "ferlens_nope"
        (bad / "config.json").write_text(json.dumps(cfg))
    elif damage == "weights-garbage":
        (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    elif damage == "weights-missing":
        (bad / "model.safetensors").unlink()
    else:
        (bad / "state.pt").write_bytes(b"PK\x03\x04 not a zip")
    if damage == "state-garbage":
        line = run_cli(train_main, ["fit", "--resume", str(bad)], capsys, root)
    else:
        line = run_cli(train_main, ["eval", "--run", str(bad)], capsys, root)
    assert names in line, line


@pytest.mark.parametrize("argv,names", [
    (["linear", "--run", "tiny", "--tokens", "clss"], "clss"),
    (["linear", "--run", "tiny", "--targets", "shoe_size"], "shoe_size"),
    (["linear", "--run", "tiny", "--seeds", "0"], "--seeds"),
    (["extract", "--run", "tiny", "--batch-size", "0"], "--batch-size"),
    (["extract", "--run", "tiny", "--split", "holdout"], "holdout"),
    (["extract", "--run", "tiny", "--data", "rafdb:/no/such/raf"], "/no/such/raf"),
    (["cka", "--run", "tiny,missing"], "'missing'"),
    (["umap", "--run", "missing,tiny"], "'missing'"),
    (["norms", "--run", "tiny,missing"], "'missing'"),
])
def test_probe_case(argv, names, use_trained, capsys):
    root, _ = use_trained
    line = run_cli(probe_main, argv, capsys, root)
    assert line.startswith(f"probe {argv[0]}: error: ") and names in line, line


@pytest.mark.parametrize("damage", ["labels-deleted", "cls-deleted", "cls-truncated", "index-garbage"])
def test_damaged_features_are_refused_or_re_extracted(damage, use_trained, capsys):
    """open_folder refuses a damaged folder in one sentence; probe linear re-extracts it."""
    from probe.features import open_folder
    from train.errors import FerlensError

    root, run = use_trained
    bad = _clone(run, f"feat-{damage}")
    assert probe_main(["extract", "--run", str(bad)]) == 0
    folder = next((bad / "features").iterdir())
    if damage == "labels-deleted":
        (folder / "labels.npy").unlink()
    elif damage == "cls-deleted":
        (folder / "cls.npy").unlink()
    elif damage == "cls-truncated":
        data = (folder / "cls.npy").read_bytes()
        (folder / "cls.npy").write_bytes(data[: len(data) // 2])
    else:
        (folder / "index.json").write_text('"complete"')
    with pytest.raises(FerlensError, match="re-run 'probe extract" if damage != "index-garbage" else "index.json"):
        open_folder(folder)
    capsys.readouterr()
    assert probe_main(["linear", "--run", str(bad), "--cv", "2", "--seeds", "1", "--layers", "-1"]) == 0
    fs = open_folder(folder)                                   # re-extracted: whole again
    assert fs.n == len(fs.labels) == np.asarray(fs.arrays["cls"]).shape[0]


def test_worker_error_is_its_sentence(tmp_path, capsys, _artifacts_root):
    """A FerlensError raised in a DataLoader worker (a truncated image) prints as its sentence only."""
    root = tmp_path / "data"
    root.mkdir()
    write_folder(root)
    bad = truncate(first(root / "train", "*.jpg"))
    argv = ["fit", "--model", "ferlens_tiny_vit_s3", *TINY, "--data", f"folder:{root},val_frac=0.34", "--workers", "1",
            "--batch_size", "4"]
    capsys.readouterr()
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and ": warning: " not in ln]
    assert len(lines) == 1 and bad.name in lines[0] and "Traceback" not in err and "DataLoader worker" not in err, err
    left = sorted(p.name for p in (_artifacts_root / "runs").iterdir()) if (_artifacts_root / "runs").exists() else []
    # the bad image may come after the first good step: then the run is published and resumable
    assert left == [] or (left == ["tiny"] and (_artifacts_root / "runs" / "tiny" / "config.json").is_file()), left


def test_hook_map_onto_a_cnn_stage_is_one_sentence(tmp_path, capsys, monkeypatch):
    """A hook map whose token points name CNN feature maps (B, C, H, W) fails in one sentence before
    anything is extracted, and leaves no features folder."""
    monkeypatch.setenv("FERLENS_ARTIFACTS", str(tmp_path))
    assert train_main(["fit", "--model", "resnet18", "--data", "synthfer:size=32,n=150", "--img_size", "32",
                       "--epochs", "1", "--batch_size", "16", "--bootstrap", "10", "--warmup_epochs", "0",
                       "--threads", "1", "--run_name", "r18"]) == 0
    cfg_path = tmp_path / "runs" / "r18" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["hook_map"] = {"blocks": "layer1", "tokens": "conv1"}
    cfg_path.write_text(json.dumps(cfg))
    line = run_cli(probe_main, ["extract", "--run", "r18"], capsys, tmp_path)
    assert "'tokens'" in line and "(B, T, D)" in line and "hook_map" in line, line


@pytest.mark.parametrize("adapter", ["fer2013", "rafdb"])
def test_data_check_lists_every_invalid_label(adapter, tmp_path, capsys):
    """`train data check` lists every invalid label row, not only the first; --strict exits 2 naming the first;
    loading the split for training still stops at the first one."""
    from train.data import load_dataset

    root = tmp_path / "data"
    root.mkdir()
    if adapter == "fer2013":
        write_fer2013(root / "fer2013.csv")
        rows = csv_rows(root / "fer2013.csv")
        rows[2][0], rows[5][0] = "9", "12"                      # csv lines 3 and 6 (header is line 1)
        write_csv(root / "fer2013.csv", rows)
        wanted = ["line 3 has emotion '9'", "line 6 has emotion '12'"]
    else:
        write_rafdb(root)
        path = root / "EmoLabel/list_patition_label.txt"
        lines = path.read_text().splitlines()
        lines[0] = lines[0].split()[0] + " 9"
        lines[3] = lines[3].split()[0] + " 0"
        path.write_text("\n".join(lines) + "\n")
        wanted = ["line 1 has label 9", "line 4 has label 0"]
    spec = f"{adapter}:{root}"
    capsys.readouterr()
    assert train_main(["data", "check", spec]) == 0
    out = capsys.readouterr().out
    for w in wanted:
        assert w in out, (w, out)
    line = run_cli(train_main, ["data", "check", spec, "--strict"], capsys, tmp_path)
    assert wanted[0] in line and "1 more invalid" in line, line
    with pytest.raises(FerlensError, match=wanted[0]):
        load_dataset(spec, "train")
