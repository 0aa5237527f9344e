"""Real-dataset loaders on small fixtures written in each dataset's distributed layout.

Faces come from SynthFER (ground-truth expression per image); each fixture writes them with the
dataset's own label codes, so the tests check the mapping back to canonical names independently of
the loaders' tables (the code tables below are copied from the datasets' documentation).
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.data import load_dataset
from train.data._files import DataWarning, carve_split
from train.errors import FerlensError
from train.labels import CANONICAL7, CANONICAL8

# Dataset label codes as documented by each dataset.
RAF_CODES = {"surprise": 1, "fear": 2, "disgust": 3, "happiness": 4, "sadness": 5, "anger": 6, "neutral": 7}
FER_CODES = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5, "neutral": 6}
AFFECTNET_CODES = {"neutral": 0, "happiness": 1, "sadness": 2, "surprise": 3, "fear": 4, "disgust": 5,
                   "anger": 6, "contempt": 7}
CK_CODES = {"neutral": 0, "anger": 1, "contempt": 2, "disgust": 3, "fear": 4, "happiness": 5, "sadness": 6,
            "surprise": 7}
FERPLUS_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                   "unknown", "NF"]


# ------------------------------------------------------------------------------- face source
class Faces:
    """A pool of SynthFER faces by canonical class (plain coloured squares if SynthFER is absent)."""

    def __init__(self, size: int = 64):
        self.size = size
        try:
            from train.data import synthfer

            ds = synthfer.load(None, "train", size=size, n=700, seed=3)
            self._by_class = {c: [i for i in range(len(ds)) if ds.labels[i] == k]
                              for k, c in enumerate(ds.label_names)}
            self._ds = ds
        except ImportError:
            self._ds = None
        self._next = {c: 0 for c in CANONICAL8}

    def face(self, name: str) -> Image.Image:
        """The next face showing expression ``name`` (contempt: a re-coloured neutral face)."""
        k = self._next[name]
        self._next[name] += 1
        if self._ds is None or name == "contempt":
            rng = np.random.default_rng(hash((name, k)) % 2**32)
            arr = rng.integers(0, 255, (self.size, self.size, 3), dtype=np.uint8)
            return Image.fromarray(arr)
        pool = self._by_class[name]
        return self._ds.load_image(pool[k % len(pool)])


@pytest.fixture(scope="module")
def faces() -> Faces:
    return Faces()


def save_jpg(img: Image.Image, path: Path, size: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (img.resize((size, size)) if size else img).save(path, quality=95)


# ------------------------------------------------------------------------------------ RAF-DB
def write_rafdb(root: Path, faces: Faces, n_train: int = 10, n_test: int = 2, original: bool = False,
                skip_attr: str | None = None) -> dict[str, dict]:
    """RAF-DB basic layout; returns {stem: {"label", "gender", "race", "age", "landmarks"}}."""
    truth, lines, k = {}, [], 0
    for part, count in (("train", n_train), ("test", n_test)):
        for name in CANONICAL7:
            for _ in range(count):
                k += 1
                stem = f"{part}_{k:05d}"
                lines.append(f"{stem}.jpg {RAF_CODES[name]}")
                if original:
                    save_jpg(faces.face(name), root / "Image/original" / f"{stem}.jpg", 120)
                else:
                    save_jpg(faces.face(name), root / "Image/aligned" / f"{stem}_aligned.jpg", 100)
                g, r, a = k % 3, (k // 3) % 3, k % 5
                lm = [[30.5 + i, 40.25 + 2 * i] for i in range(5)]
                truth[stem] = {"label": name, "gender": g, "race": r, "age": a, "landmarks": lm}
                if stem != skip_attr:
                    attr = root / "Annotation/manual" / f"{stem}_manu_attri.txt"
                    attr.parent.mkdir(parents=True, exist_ok=True)
                    attr.write_text("".join(f"{x:.2f}\t{y:.2f}\n" for x, y in lm) + f"{g}\n{r}\n{a}\n")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel/list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return truth


@pytest.fixture(scope="module")
def rafdb(tmp_path_factory, faces):
    root = tmp_path_factory.mktemp("RAF-DB")
    truth = write_rafdb(root, faces, skip_attr="train_00003")
    return root, truth


def test_rafdb_counts_labels_attrs_splits(rafdb):
    root, truth = rafdb
    splits = {s: load_dataset(f"rafdb:{root}", s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [63, 7, 14]
    assert splits["val"].class_counts().tolist() == [1] * 7  # stratified 10% of 10 per class
    assert splits["test"].class_counts().tolist() == [2] * 7
    ids = {s: set(d.sample_ids) for s, d in splits.items()}
    assert not ids["train"] & ids["val"] and len(ids["train"] | ids["val"]) == 70
    assert all(i.startswith("test_") for i in ids["test"])
    for ds in splits.values():
        assert ds.label_names == list(CANONICAL7)
        assert ds.attr_kinds == {"gender": "categorical", "race": "categorical", "age": "categorical"}
        for i, sid in enumerate(ds.sample_ids):
            t = truth[sid]
            assert ds.label_names[ds.labels[i]] == t["label"]
            if sid == "train_00003":
                assert ds.attrs[i]["gender"] is None
                continue
            assert {k: ds.attrs[i][k] for k in ("gender", "race", "age")} == \
                {k: t[k] for k in ("gender", "race", "age")}
            assert np.allclose(ds.attrs[i]["landmarks"], t["landmarks"], atol=0.01)
    image, label, attrs, sid = splits["test"][0]
    assert image.mode == "RGB" and image.size == (100, 100)
    assert label == CANONICAL7.index(truth[sid]["label"])


def test_rafdb_val_carve_is_deterministic_and_seeded(rafdb):
    root, _ = rafdb
    a = load_dataset(f"rafdb:{root}", "val").sample_ids
    assert load_dataset(f"rafdb:{root}", "val").sample_ids == a
    b = load_dataset(f"rafdb:{root},seed=1", "val").sample_ids
    assert b != a and len(b) == len(a)
    assert len(load_dataset(f"rafdb:{root},val_frac=0.2", "val")) == 14


def test_rafdb_original_images_without_attributes(tmp_path, faces):
    write_rafdb(tmp_path, faces, n_train=1, n_test=1, original=True)
    import shutil

    shutil.rmtree(tmp_path / "Annotation")
    ds = load_dataset(f"rafdb:{tmp_path},images=original", "test")
    assert len(ds) == 7 and ds.attr_kinds == {} and ds.attrs[0] == {}
    assert ds.load_image(0).size == (120, 120)


def test_carve_split_is_stratified():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    mask = carve_split(labels, 0.1, seed=0)
    assert np.bincount(labels[mask]).tolist() == [1, 2, 3, 4]
    assert (carve_split(labels, 0.1, seed=0) == mask).all()


# ----------------------------------------------------------------------------------- FER2013
def fer_pixels(img: Image.Image) -> str:
    return " ".join(str(v) for v in np.asarray(img.convert("L").resize((48, 48))).reshape(-1))


def write_fer2013(path: Path, faces: Faces, per: dict[str, int] | None = None) -> list[dict]:
    """fer2013.csv with ``per`` rows per class for each Usage; returns the rows written."""
    per = per or {"Training": 3, "PublicTest": 2, "PrivateTest": 1}
    rows = []
    for usage, count in per.items():
        for name in CANONICAL7:
            for _ in range(count):
                rows.append({"emotion": FER_CODES[name], "pixels": fer_pixels(faces.face(name)),
                             "Usage": usage, "name": name})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows([r["emotion"], r["pixels"], r["Usage"]] for r in rows)
    return rows


def test_fer2013_counts_labels_pixels(tmp_path, faces):
    rows = write_fer2013(tmp_path / "fer2013.csv", faces)
    sizes = {"train": 21, "val": 14, "test": 7}
    for split, n in sizes.items():
        ds = load_dataset(f"fer2013:{tmp_path}", split)
        assert len(ds) == n and ds.label_names == list(CANONICAL7) and ds.attrs[0] == {}
        for i in range(len(ds)):
            row = int(ds.sample_ids[i][3:])
            assert ds.label_names[ds.labels[i]] == rows[row]["name"]
        img = ds.load_image(0)
        arr = np.asarray(img)
        assert img.mode == "RGB" and arr.shape == (48, 48, 3)
        assert (arr[..., 0] == arr[..., 2]).all()
        expect = np.array(rows[int(ds.sample_ids[0][3:])]["pixels"].split(), dtype=np.uint8).reshape(48, 48)
        assert (arr[..., 0] == expect).all()
    assert len(load_dataset(f"fer2013:{tmp_path / 'fer2013.csv'}", "test")) == 7  # the CSV path itself


def test_fer2013_bad_inputs(tmp_path, faces):
    (tmp_path / "fer2013.csv").write_text("emotion,pixels\n0,1 2 3\n")
    with pytest.raises(FerlensError, match="no 'Usage' column"):
        load_dataset(f"fer2013:{tmp_path}", "train")
    pixels = fer_pixels(faces.face("anger"))
    (tmp_path / "fer2013.csv").write_text(f"emotion,pixels,Usage\n0,{pixels},Training\n9,{pixels},Training\n")
    with pytest.raises(FerlensError, match="line 3 has emotion '9'"):
        load_dataset(f"fer2013:{tmp_path}", "train")
    (tmp_path / "fer2013.csv").write_text(f"emotion,pixels,Usage\n0,{pixels},Training\n1,1 2 3,Training\n")
    with pytest.warns(DataWarning, match="1 of 2 FER2013 train images"):
        assert len(load_dataset(f"fer2013:{tmp_path}", "train")) == 1
    with pytest.raises(FerlensError, match="line 3"):
        load_dataset(f"fer2013:{tmp_path},strict=1", "train")
    with pytest.raises(FerlensError, match="val split .* is empty"):
        load_dataset(f"fer2013:{tmp_path}", "val")


# ----------------------------------------------------------------------------------- FERPlus
def write_ferplus(root: Path, faces: Faces) -> list[dict]:
    """fer2013.csv + fer2013new.csv; each row's votes make its majority label obvious, plus edge rows."""
    rows = write_fer2013(root / "fer2013.csv", faces, {"Training": 2, "PublicTest": 1, "PrivateTest": 1})
    out = []
    for i, r in enumerate(rows):
        votes = dict.fromkeys(FERPLUS_COLUMNS, 0)
        votes[r["name"]] = 6
        votes["neutral" if r["name"] != "neutral" else "sadness"] += 4
        out.append({"Usage": r["Usage"], "Image name": f"fer{i:07d}.png", **votes, "expect": r["name"]})
    # edge rows on training images 0..3: removed image, unknown winner, non-face, contempt winner
    out[0]["Image name"], out[0]["expect"] = "", None
    out[1].update(dict.fromkeys(FERPLUS_COLUMNS, 0), unknown=7, happiness=3, expect=None)
    out[2].update(dict.fromkeys(FERPLUS_COLUMNS, 0), NF=10, expect=None)
    out[3].update(dict.fromkeys(FERPLUS_COLUMNS, 0), contempt=6, anger=4, expect="contempt")
    with open(root / "fer2013new.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["Usage", "Image name", *FERPLUS_COLUMNS], extrasaction="ignore")
        w.writeheader()
        w.writerows(out)
    return out


def test_ferplus_modes_counts_and_mapping(tmp_path, faces):
    rows = write_ferplus(tmp_path, faces)
    expect = {r["Image name"][:-4]: r["expect"] for r in rows if r["Usage"] == "Training" and r["expect"]}
    ds = load_dataset(f"ferplus:{tmp_path}", "train")
    assert ds.label_names == list(CANONICAL8) and ds.soft_labels is None
    assert len(ds) == 14 - 3 and {sid: ds.label_names[y] for sid, y in zip(ds.sample_ids, ds.labels)} == expect
    assert len(load_dataset(f"ferplus:{tmp_path}", "val")) == 7
    assert len(load_dataset(f"ferplus:{tmp_path},classes=7", "train")) == 14 - 4  # contempt dropped
    prob = load_dataset(f"ferplus:{tmp_path},mode=probability", "train")
    assert prob.soft_labels.shape == (len(prob), 8)
    assert np.allclose(prob.soft_labels.sum(1), 1.0)
    i = prob.sample_ids.index("fer0000004")  # 6 votes for its class + 4 neutral -> 0.6 / 0.4
    name = rows[4]["expect"]
    assert name != "neutral" and prob.labels[i] == CANONICAL8.index(name)
    assert prob.soft_labels[i, CANONICAL8.index(name)] == pytest.approx(0.6)
    assert prob.soft_labels[i, CANONICAL8.index("neutral")] == pytest.approx(0.4)
    plur = load_dataset(f"ferplus:{tmp_path},mode=plurality", "train")
    assert len(plur) == 11


def test_ferplus_needs_aligned_rows_and_pixels(tmp_path, faces):
    write_ferplus(tmp_path, faces)
    lines = (tmp_path / "fer2013new.csv").read_text().splitlines()
    (tmp_path / "fer2013new.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FerlensError, match="align one-to-one"):
        load_dataset(f"ferplus:{tmp_path}", "train")
    (tmp_path / "fer2013.csv").unlink()
    with pytest.raises(FerlensError, match="copy FER2013's fer2013.csv"):
        load_dataset(f"ferplus:{tmp_path}", "train")
    with pytest.raises(FerlensError, match="mode=vote is not valid; use one of majority, probability, plurality"):
        load_dataset(f"ferplus:{tmp_path},mode=vote", "train")


def test_ferplus_generated_folders(tmp_path, faces):
    """The FER2013Train/Valid/Test folders of FERPlus' generate_training_data.py."""
    expect = {}
    for folder, split in (("FER2013Train", "train"), ("FER2013Valid", "val"), ("FER2013Test", "test")):
        lines = []
        (tmp_path / folder).mkdir()
        for name in CANONICAL8:
            votes = dict.fromkeys(FERPLUS_COLUMNS, 0)
            votes[name] = 7
            votes["unknown"] = 3
            img = f"fer{len(expect):07d}.png"
            faces.face(name).convert("L").resize((48, 48)).save(tmp_path / folder / img)
            lines.append(f'{img},"(0, 0, 48, 48)",' + ",".join(str(votes[c]) for c in FERPLUS_COLUMNS))
            expect[img[:-4]] = (split, name)
        lines.append('fer9999999.png,"(0, 0, 48, 48)",0,0,0,0,0,0,0,0,2,8')  # not a face: dropped
        (tmp_path / folder / "label.csv").write_text("\n".join(lines) + "\n")
    for split in ("train", "val", "test"):
        ds = load_dataset(f"ferplus:{tmp_path}", split)
        assert len(ds) == 8 and ds.load_image(0).size == (48, 48)
        assert {sid: (split, ds.label_names[y]) for sid, y in zip(ds.sample_ids, ds.labels)} == \
            {k: v for k, v in expect.items() if v[0] == split}
    prob = load_dataset(f"ferplus:{tmp_path},mode=probability,classes=7", "test")
    assert len(prob) == 7 and np.allclose(prob.soft_labels.sum(1), 1)


# --------------------------------------------------------------------------------- AffectNet
def write_affectnet_lists(root: Path, faces: Faces, header_less_val: bool = False) -> dict[str, dict]:
    """``Manually_Annotated_file_lists`` release: faces pasted into bigger photos at the CSV box."""
    truth = {}
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    for csv_name, count in (("training.csv", 10), ("validation.csv", 2)):
        lines = [] if (header_less_val and csv_name == "validation.csv") else [header]
        codes = [(name, AFFECTNET_CODES[name]) for name in CANONICAL8 for _ in range(count)]
        codes += [(None, 8), (None, 9), (None, 10)]
        for k, (name, code) in enumerate(codes):
            rel = f"{k % 3 + 1}/{csv_name[:3]}{k:04d}.jpg"
            x, y, w = 10 + k % 7, 20 + k % 5, 64
            photo = Image.new("RGB", (128, 140), (200, 30, 30))
            photo.paste(faces.face(name or "neutral").resize((w, w)), (x, y))
            save_jpg(photo, root / "Manually_Annotated_Images" / rel)
            va, ar = round(-0.9 + 0.05 * k, 3), round(0.5 - 0.03 * k, 3)
            lines.append(f'{rel},{x},{y},{w},{w},"1.0;2.0;3.0",{code},{va},{ar}')
            truth[rel[:-4]] = {"label": name, "valence": va, "arousal": ar}
        path = root / "Manually_Annotated_file_lists" / csv_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return truth


@pytest.mark.parametrize("header_less_val", [False, True])
def test_affectnet_file_lists_crop_labels_attrs(tmp_path, faces, header_less_val):
    truth = write_affectnet_lists(tmp_path, faces, header_less_val)
    sizes = {"train": 63, "val": 7, "test": 14}  # 7 classes; contempt and codes 8-10 dropped
    for split, n in sizes.items():
        ds = load_dataset(f"affectnet:{tmp_path}", split)
        assert len(ds) == n and ds.label_names == list(CANONICAL7)
        assert ds.attr_kinds == {"valence": "continuous", "arousal": "continuous"}
        for i, sid in enumerate(ds.sample_ids):
            assert ds.label_names[ds.labels[i]] == truth[sid]["label"]
            assert ds.attrs[i] == {"valence": truth[sid]["valence"], "arousal": truth[sid]["arousal"]}
    img = np.asarray(ds.load_image(0), dtype=np.float64)
    assert img.shape == (64, 64, 3)
    # the crop holds the pasted face, not the red photo background
    assert abs(img[..., 0].mean() - 200) > 20 or abs(img[..., 1].mean() - 30) > 20
    ds8 = load_dataset(f"affectnet:{tmp_path},classes=8", "test")
    assert len(ds8) == 16 and ds8.class_counts()[7] == 2 and ds8.label_names == list(CANONICAL8)


def write_affectnet_npy(root: Path, faces: Faces) -> dict[str, dict]:
    """``train_set/val_set`` release: images/<id>.jpg + annotations/<id>_{exp,val,aro}.npy."""
    truth = {}
    for folder, count in (("train_set", 10), ("val_set", 2)):
        codes = [(name, AFFECTNET_CODES[name]) for name in CANONICAL8 for _ in range(count)]
        for k, (name, code) in enumerate(codes):
            save_jpg(faces.face(name), root / folder / "images" / f"{k}.jpg", 96)
            ann = root / folder / "annotations"
            ann.mkdir(parents=True, exist_ok=True)
            va, ar = -0.5 + 0.01 * k, 0.25
            np.save(ann / f"{k}_exp.npy", np.array(str(code)))  # the release stores strings
            np.save(ann / f"{k}_val.npy", np.array(str(va)))
            np.save(ann / f"{k}_aro.npy", np.array(ar))
            truth[f"{folder}/{k}"] = {"label": name, "valence": va, "arousal": ar}
    return truth


def test_affectnet_npy_release(tmp_path, faces):
    truth = write_affectnet_npy(tmp_path, faces)
    train = load_dataset(f"affectnet:{tmp_path},classes=8", "train")
    val = load_dataset(f"affectnet:{tmp_path},classes=8", "val")
    test = load_dataset(f"affectnet:{tmp_path},classes=8", "test")
    assert (len(train), len(val), len(test)) == (72, 8, 16)
    assert set(train.sample_ids).isdisjoint(val.sample_ids)
    assert all(s.startswith("val_set/") for s in test.sample_ids)
    for ds in (train, val, test):
        for i, sid in enumerate(ds.sample_ids):
            assert ds.label_names[ds.labels[i]] == truth[sid]["label"]
            assert ds.attrs[i]["valence"] == pytest.approx(truth[sid]["valence"])
            assert ds.attrs[i]["arousal"] == pytest.approx(truth[sid]["arousal"])
    assert test.load_image(0).size == (96, 96)
    assert len(load_dataset(f"affectnet:{tmp_path}", "test")) == 14


def test_affectnet_out_of_range_and_missing_parts(tmp_path, faces):
    write_affectnet_lists(tmp_path, faces)
    path = tmp_path / "Manually_Annotated_file_lists/training.csv"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 3)[0] + ",12,0.1,0.2"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerlensError, match="training.csv line 5 has expression 12"):
        load_dataset(f"affectnet:{tmp_path}", "train")
    with pytest.raises(FerlensError, match="neither Manually_Annotated_file_lists"):
        load_dataset(f"affectnet:{tmp_path / 'Manually_Annotated_Images'}", "train")


# ------------------------------------------------------------------------------------- CK+
def write_ckplus(root: Path, faces: Faces, subjects: int = 4, frames: int = 5) -> dict[str, str]:
    """CK+ layout: 2 labelled + 1 unlabelled sequence per subject; returns {sequence: label name}."""
    labels, k = {}, 0
    names = [n for n in CK_CODES if n != "neutral"]
    for s in range(subjects):
        subj = f"S{s * 5 + 5:03d}"
        for q in range(3):
            seq = f"{q + 1:03d}"
            name = names[k % len(names)]
            for f in range(frames):
                img = faces.face("neutral" if f == 0 else name).convert("L").resize((96, 80))
                path = root / "cohn-kanade-images" / subj / seq / f"{subj}_{seq}_{f + 1:08d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                img.save(path)
                lm = root / "Landmarks" / subj / seq / f"{subj}_{seq}_{f + 1:08d}_landmarks.txt"
                lm.parent.mkdir(parents=True, exist_ok=True)
                pts = [(30 + 20 * (i % 2), 20 + 20 * (i // 2 % 2)) for i in range(68)]
                lm.write_text("".join(f"   {x:.7e}   {y:.7e}\n" for x, y in pts))
            if q < 2:  # the third sequence has no emotion file
                emo = root / "Emotion" / subj / seq / f"{subj}_{seq}_{frames:08d}_emotion.txt"
                emo.parent.mkdir(parents=True, exist_ok=True)
                emo.write_text(f"   {CK_CODES[name]:.7e}\n")
                labels[f"{subj}/{seq}"] = name
                k += 1
    return labels


def test_ckplus_peaks_neutral_folds_subject(tmp_path, faces):
    labels = write_ckplus(tmp_path, faces)
    spec = f"ckplus:{tmp_path},folds=3,fold=1,peak=2"
    splits = {s: load_dataset(spec, s) for s in ("train", "val", "test")}
    subjects = {s: set(d.attr_array("subject")) for s, d in splits.items()}
    assert sum(len(v) for v in subjects.values()) == 4 and not (subjects["train"] & subjects["test"])
    n_contempt = sum(v == "contempt" for v in labels.values())
    total = sum(len(d) for d in splits.values())
    assert total == 8 * 3 - 2 * n_contempt  # 8 sequences x (2 peaks + 1 neutral) minus contempt peaks
    for ds in splits.values():
        assert ds.label_names == list(CANONICAL7) and ds.attr_kinds == {"subject": "categorical"}
        for i, sid in enumerate(ds.sample_ids):
            subj, seq, frame = sid.split("_")
            want = "neutral" if frame == "00000001" else labels[f"{subj}/{seq}"]
            assert ds.label_names[ds.labels[i]] == want and ds.attrs[i]["subject"] == subj
    img = splits["test"].load_image(0)
    assert img.mode == "RGB" and img.size == (30, 30)  # 20 px landmark box + 25% margin each side
    assert load_dataset(spec + ",crop=none", "test").load_image(0).size == (96, 80)
    eight = sum(len(load_dataset(spec + ",classes=8", s)) for s in ("train", "val", "test"))
    assert eight == 8 * 3
    assert sum(len(load_dataset(spec + ",neutral=0", s)) for s in ("train", "val", "test")) == total - 8


def test_ckplus_bad_inputs(tmp_path, faces):
    write_ckplus(tmp_path, faces, subjects=3)
    with pytest.raises(FerlensError, match="fewer than folds=10"):
        load_dataset(f"ckplus:{tmp_path}", "train")
    with pytest.raises(FerlensError, match="fold=3 is out of range"):
        load_dataset(f"ckplus:{tmp_path},folds=3,fold=3", "train")
    emo = next((tmp_path / "Emotion").rglob("*_emotion.txt"))
    emo.write_text("   9.0000000e+00\n")
    with pytest.raises(FerlensError, match="line 1 has emotion 9"):
        for s in ("train", "val", "test"):
            load_dataset(f"ckplus:{tmp_path},folds=3", s)


# ------------------------------------------------------------------------------------ folder
def test_folder_split_layout_with_aliases(tmp_path, faces):
    aliases = {"neutral": "Neutral", "happiness": "happy", "sadness": "SAD", "surprise": "surprised",
               "fear": "fearful", "disgust": "disgusted", "anger": "Angry"}
    for split, count in (("train", 4), ("val", 1), ("test", 2)):
        for name, folder in aliases.items():
            for j in range(count):
                save_jpg(faces.face(name), tmp_path / split / folder / f"{j}.png")
    (tmp_path / "train" / "happy" / "notes.txt").write_text("not an image")
    for split, n in (("train", 28), ("val", 7), ("test", 14)):
        ds = load_dataset(f"folder:{tmp_path}", split)
        assert len(ds) == n and ds.label_names == list(CANONICAL7)
        for i, sid in enumerate(ds.sample_ids):
            folder = Path(sid).parent.name
            assert aliases[ds.label_names[ds.labels[i]]] == folder
    (tmp_path / "train" / "bored").mkdir()
    with pytest.raises(FerlensError, match="Class folder 'bored' .* neutral, happiness"):
        load_dataset(f"folder:{tmp_path}", "train")


def test_folder_without_val_carves_it_from_train(tmp_path, faces):
    for split, count in (("train", 10), ("test", 1)):
        for name in CANONICAL7:
            for j in range(count):
                save_jpg(faces.face(name), tmp_path / split / name / f"{j}.jpg", 32)
    train, val = (load_dataset(f"folder:{tmp_path}", s) for s in ("train", "val"))
    assert (len(train), len(val)) == (63, 7) and set(train.sample_ids).isdisjoint(val.sample_ids)
    assert all(sid.startswith("train/") for sid in val.sample_ids)
    with pytest.raises(FerlensError, match="leave nothing to train on"):
        load_dataset(f"folder:{tmp_path},val_frac=0.5,test_frac=0.5", "train")


def test_folder_single_root_split_and_contempt(tmp_path, faces):
    for name in CANONICAL8:
        for j in range(10):
            save_jpg(faces.face(name), tmp_path / name / f"{j}.jpg", 32)
    splits = {s: load_dataset(f"folder:{tmp_path}", s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [64, 8, 8]
    assert splits["test"].class_counts().tolist() == [1] * 8
    assert splits["train"].label_names == list(CANONICAL8)
    ids = [set(d.sample_ids) for d in splits.values()]
    assert len(ids[0] | ids[1] | ids[2]) == 80
    assert splits["val"].sample_ids == load_dataset(f"folder:{tmp_path}", "val").sample_ids


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("spec,match", [
    ("rafdb:{root}/nope", "does not exist; point the spec at the folder that holds EmoLabel/list_patition_label.txt"),
    ("rafdb:{root},colour=1", "Unknown option 'colour' for rafdb; valid options are images, val_frac, seed, strict"),
    ("rafdb:{root},strict=maybe", "strict=maybe is not a yes/no value"),
    ("rafdb:{root},val_frac=2", "val_frac=2 is out of range"),
    ("affectnet:{root},classes=6", "classes=6 is not valid; use one of 7, 8"),
    ("ckplus:{root},fold=x", "fold=x is not an integer"),
    ("fer2013:{root}", "label file .*fer2013.csv is missing"),
    ("ferplus:{root}", "fer2013new.csv is missing"),
    ("ckplus:{root}", "cohn-kanade-images does not exist"),
])
def test_bad_specs_give_one_sentence(tmp_path, spec, match):
    with pytest.raises(FerlensError, match=match) as err:
        load_dataset(spec.format(root=tmp_path), "train")
    assert "\n" not in str(err.value)


def test_rafdb_missing_label_file_and_out_of_range(tmp_path, faces):
    (tmp_path / "Image/aligned").mkdir(parents=True)
    with pytest.raises(FerlensError, match="EmoLabel/list_patition_label.txt is missing"):
        load_dataset(f"rafdb:{tmp_path}", "train")
    write_rafdb(tmp_path, faces, n_train=1, n_test=1)
    path = tmp_path / "EmoLabel/list_patition_label.txt"
    lines = path.read_text().splitlines()
    lines[2] = "train_00003.jpg 8"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerlensError, match="line 3 has label 8, outside RAF-DB's 1-7"):
        load_dataset(f"rafdb:{tmp_path}", "test")


# ---------------------------------------------------------------------- missing and corrupt
@pytest.fixture
def broken_rafdb(tmp_path, faces):
    write_rafdb(tmp_path, faces, n_train=1, n_test=5)
    aligned = tmp_path / "Image/aligned"
    (aligned / "test_00010_aligned.jpg").unlink()                               # missing
    (aligned / "test_00011_aligned.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")  # corrupt header
    data = (aligned / "test_00012_aligned.jpg").read_bytes()
    (aligned / "test_00012_aligned.jpg").write_bytes(data[: len(data) // 3])     # truncated pixels
    return tmp_path


def test_missing_and_corrupt_images_warn_once_or_fail_strict(broken_rafdb):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(f"rafdb:{broken_rafdb}", "test")
    msgs = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(msgs) == 1
    assert msgs[0].startswith("2 of 35 RAF-DB test images are missing or unreadable")
    assert "test_00010_aligned.jpg (missing)" in msgs[0] and "test_00011_aligned.jpg (unreadable" in msgs[0]
    assert len(ds) == 33 and "test_00010" not in ds.sample_ids
    with pytest.raises(FerlensError, match="2 of 35 RAF-DB test images .*drop strict=1"):
        load_dataset(f"rafdb:{broken_rafdb},strict=1", "test")
    bad = ds.sample_ids.index("test_00012")  # header reads; the pixels do not
    with pytest.raises(FerlensError, match="test_00012_aligned.jpg cannot be decoded.*train data check"):
        ds.load_image(bad)


def test_info_and_check(broken_rafdb):
    from train.data.inspect import check, info

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # info reports skipped files instead of warning
        result = info(f"rafdb:{broken_rafdb}", sample=40)
    test = result["splits"]["test"]
    assert result["label_names"] == list(CANONICAL7) and result["total"] == 7 + 33
    assert test["n"] == 33 and test["skipped"] == 2 and sum(test["class_counts"].values()) == 33
    assert test["attr_coverage"] == {"age": 1.0, "gender": 1.0, "landmarks": 1.0, "race": 1.0}
    assert test["image_size"]["width"] == {"min": 100, "mean": 100.0, "max": 100}
    assert test["image_size"]["unreadable"] == 1
    assert "error" in result["splits"]["val"]  # 10% of 1 per class rounds to an empty val split

    report = check(f"rafdb:{broken_rafdb},strict=1")
    t = report["splits"]["test"]
    assert (t["n_listed"], t["n_ok"], report["n_bad"], report["ok"]) == (35, 32, 3, False)
    assert [Path(m["path"]).name for m in t["missing"]] == ["test_00010_aligned.jpg"]
    assert sorted(Path(m["path"]).name for m in t["corrupt"]) == ["test_00011_aligned.jpg", "test_00012_aligned.jpg"]
    with pytest.raises(FerlensError, match="3 of 42 images .* are missing or corrupt"):
        check(f"rafdb:{broken_rafdb}", strict=True)


def test_check_flags_bad_fer2013_rows(tmp_path, faces):
    from train.data.inspect import check

    write_fer2013(tmp_path / "fer2013.csv", faces, {"Training": 1, "PublicTest": 1, "PrivateTest": 1})
    text = (tmp_path / "fer2013.csv").read_text().splitlines()
    emotion, pixels, usage = text[1].split(",")
    text[1] = ",".join([emotion, pixels.replace(" ", " x", 1), usage])
    text[2] = ",".join([text[2].split(",")[0], "1 2 3", text[2].split(",")[2]])
    (tmp_path / "fer2013.csv").write_text("\n".join(text) + "\n")
    report = check(f"fer2013:{tmp_path}")
    train = report["splits"]["train"]
    assert report["n_bad"] == 2 and train["n_ok"] == 5
    assert "non-numeric" in train["corrupt"][-1]["problem"] or "non-numeric" in train["corrupt"][0]["problem"]


# -------------------------------------------------------------------------------------- CLI
def test_cli_info_check_and_bad_synth_args(broken_rafdb, capsys):
    from train.cli import main

    assert main(["data", "info", f"rafdb:{broken_rafdb}"]) == 0
    out = capsys.readouterr().out
    assert "rafdb:" in out and "happiness" in out and "gender" in out and "100-100" in out
    row = next(line for line in out.splitlines() if line.startswith("total"))
    assert row.split()[1:] == ["7", "33"]
    report_path = broken_rafdb / "check.json"
    assert main(["data", "check", f"rafdb:{broken_rafdb}", "--json", str(report_path)]) == 0
    assert json.loads(report_path.read_text())["n_bad"] == 3
    out = capsys.readouterr().out
    assert "test_00010_aligned.jpg: missing" in out and "3 of 42 files are missing or corrupt" in out
    assert main(["data", "check", f"rafdb:{broken_rafdb}", "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train data: error: 3 of 42 images") and "\n" not in err
    for bad, match in ((["--size", "10"], "size=10 is out of range"), (["--n", "many"], "--n many is not an integer"),
                       (["--format", "rafbd"], "--format rafbd is unknown; use one of rafdb, folder. Did you mean: rafdb?")):
        assert main(["data", "synth", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and "\n" not in err


@pytest.mark.parametrize("fmt", ["rafdb", "folder"])
def test_cli_synth_exports_a_loadable_layout(tmp_path, capsys, fmt):
    synthfer = pytest.importorskip("train.data.synthfer")
    try:
        synthfer.export  # noqa: B018 - the exporter is written by the SynthFER engineer
    except (AttributeError, ImportError):
        pytest.skip("train.data.synthfer.export is not there yet")
    from train.cli import main

    out = tmp_path / "synth"
    sheet = ["--contact-sheet", str(tmp_path / "sheet.png"), "--per-class", "2"] if fmt == "rafdb" else []
    assert main(["data", "synth", "--size", "48", "--n", "140", "--format", fmt, "--out", str(out), *sheet]) == 0
    assert f"{fmt}:{out}" in capsys.readouterr().out
    assert not sheet or Image.open(tmp_path / "sheet.png").size[0] > 2 * 48
    splits = {s: load_dataset(f"{fmt}:{out}", s) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 140
    reference = {s: synthfer.load(None, s, size=48, n=140, seed=0) for s in ("train", "val", "test")}
    if fmt == "folder":  # same splits, same labels, same pixels
        for s, ds in splits.items():
            ref = reference[s]
            assert sorted(Path(i).name for i in ds.sample_ids) == sorted(ref.sample_ids)
            by_id = {Path(i).name: k for k, i in enumerate(ds.sample_ids)}
            for j in range(0, len(ref), 7):
                k = by_id[ref.sample_ids[j]]
                assert ds.labels[k] == ref.labels[j]
                assert np.array_equal(np.asarray(ds.load_image(k)), np.asarray(ref.load_image(j)))
    else:  # RAF-DB has train/test only: SynthFER test identities are the RAF-DB test files
        assert len(splits["test"]) == len(reference["test"])
        assert sorted(splits["test"].labels.tolist()) == sorted(reference["test"].labels.tolist())
        assert set(splits["test"].attr_kinds) == {"gender", "race", "age"}
        assert all(a["gender"] in (0, 1, 2) for a in splits["test"].attrs)
        assert splits["test"].load_image(0).size == (48, 48)
