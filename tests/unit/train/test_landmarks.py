"""Part masks from dataset landmarks: the right pixels, in each dataset's distributed format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.data import load_dataset
from train.data.landmarks import SCHEMES, part_mask_from_landmarks, scheme_for
from train.errors import FerlensError

PART = {n: i for i, n in enumerate(("background", "face", "hair", "brow_l", "brow_r", "eye_l", "eye_r", "nose",
                                    "mouth", "occluder"))}


def face68(dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """A frontal 68-point face on a 100 px canvas: mouth spans x 35-65, y 70-80; eyes at y 40; brows at y 30."""
    jaw = [(20 + 60 * t, 40 + 50 * np.sin(np.pi * t)) for t in np.linspace(0, 1, 17)]
    brow_l = [(25 + 4 * i, 30) for i in range(5)]
    brow_r = [(59 + 4 * i, 30) for i in range(5)]
    nose = [(50, 38 + 4 * i) for i in range(4)] + [(44 + 3 * i, 58) for i in range(5)]
    eye = lambda cx: [(cx - 8, 40), (cx - 3, 37), (cx + 3, 37), (cx + 8, 40), (cx + 3, 43), (cx - 3, 43)]
    outer = [(35, 75), (40, 71), (45, 70), (50, 70), (55, 70), (60, 71), (65, 75), (60, 79), (55, 80), (50, 80),
             (45, 80), (40, 79)]
    inner = [(40, 75), (45, 73), (50, 73), (55, 73), (60, 75), (55, 77), (50, 77), (45, 77)]
    pts = np.array(jaw + brow_l + brow_r + nose + eye(35) + eye(65) + outer + inner, dtype=np.float64)
    assert pts.shape == (68, 2)
    return pts + [dx, dy]


def test_68_point_mask_covers_the_parts():
    mask = part_mask_from_landmarks(face68(), (100, 100))
    assert mask.shape == (100, 100) and scheme_for(68) == "ibug68"
    assert mask[75, 50] == PART["mouth"] and mask[40, 35] == PART["eye_l"] and mask[40, 65] == PART["eye_r"]
    assert mask[30, 33] == PART["brow_l"] and mask[30, 67] == PART["brow_r"] and mask[50, 50] == PART["nose"]
    assert mask[60, 30] == PART["face"] and mask[5, 5] == PART["background"] and mask[95, 50] == PART["background"]
    mouth = mask == PART["mouth"]
    # the outer lip hull is ~ a 30 x 10 px lens (area ~240 px) plus a 0.06 IOD margin
    assert 200 <= mouth.sum() <= 420
    ys, xs = np.nonzero(mouth)
    assert 33 <= xs.min() and xs.max() <= 67 and 68 <= ys.min() and ys.max() <= 82


def test_5_point_mask_from_synthfer_landmarks_hits_synthfer_parts():
    pytest.importorskip("train.data.synthfer")
    from train.data import synthfer
    from train.data._synth_render import landmarks

    ds = synthfer.load(None, "test", size=96, n=200, seed=1)
    hits = {"eyes": 0, "mouth": 0}
    for i in range(12):
        truth = np.asarray(ds.part_mask(i))
        mine = part_mask_from_landmarks(landmarks(ds.factors(i)), (96, 96), "rafdb5")
        for part, ids in (("eyes", (PART["eye_l"], PART["eye_r"])), ("mouth", (PART["mouth"],))):
            drawn = np.isin(mine, ids)
            true = np.isin(truth, ids)
            # most of SynthFER's visible part lies inside the landmark-drawn region
            if true.sum() and (drawn & true).sum() / true.sum() >= 0.5:
                hits[part] += 1
    assert hits["eyes"] >= 9 and hits["mouth"] >= 9, hits
    assert not np.isin(mine, (PART["brow_l"], PART["brow_r"])).any()        # 5 points carry no brows


def test_bad_landmark_counts_are_one_sentence():
    with pytest.raises(FerlensError, match="12 landmarks match no known scheme"):
        part_mask_from_landmarks(np.zeros((12, 2)), (10, 10))
    assert set(SCHEMES) == {"rafdb5", "rafdb37", "ibug68"}


def _face_jpg(path: Path, size=(120, 110)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 100, 90)).save(path, quality=95)


def test_rafdb_original_images_get_masks_from_auto_then_manual_landmarks(tmp_path):
    root = tmp_path / "RAF-DB"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel/list_patition_label.txt").write_text("test_0001.jpg 4\ntest_0002.jpg 7\n")
    for stem in ("test_0001", "test_0002"):
        _face_jpg(root / "Image/original" / f"{stem}.jpg")
        _face_jpg(root / "Image/aligned" / f"{stem}_aligned.jpg", (100, 100))
        five = [(40, 45), (80, 45), (60, 62), (45, 80), (75, 80)]
        (root / "Annotation/manual").mkdir(parents=True, exist_ok=True)
        (root / "Annotation/manual" / f"{stem}_manu_attri.txt").write_text(
            "".join(f"{x:.2f}\t{y:.2f}\n" for x, y in five) + "1\n2\n3\n")
    # the 37 Face++ points of test_0001 (brows, nose, eyes, mouth), shifted 5 px down from the manual ones
    p68 = face68(10, 5)
    idx = SCHEMES["ibug68"]
    auto = np.concatenate([p68[idx["brow_l"]][[0, 2, 4]], p68[idx["brow_r"]][[0, 2, 4]], p68[idx["nose"]][:7],
                           p68[idx["eye_l"]], p68[idx["eye_r"]], p68[idx["mouth"]][:12]])
    (root / "Annotation/auto").mkdir(parents=True)
    (root / "Annotation/auto/test_0001_auto_attri.txt").write_text("".join(f"{x:.3f} {y:.3f}\n" for x, y in auto))
    ds = load_dataset(f"rafdb:{root},images=original", "test")
    assert ds.has_part_masks
    by_id = {sid: i for i, sid in enumerate(ds.sample_ids)}
    m1, m2 = ds.part_mask(by_id["test_0001"]), ds.part_mask(by_id["test_0002"])
    assert m1.shape == m2.shape == (110, 120)
    assert m1[80, 60] == PART["mouth"] and m1[35, 37] == PART["brow_l"]       # 37 points: brows drawn
    assert m2[80, 60] == PART["mouth"] and m2[45, 40] == PART["eye_l"] and m2[62, 60] == PART["nose"]
    assert not np.isin(m2, (PART["brow_l"], PART["brow_r"])).any()          # 5 manual points: no brows
    manual = load_dataset(f"rafdb:{root},images=original,parts=manual", "test")
    assert not np.isin(manual.part_mask(by_id["test_0001"]), (PART["brow_l"],)).any()
    # aligned images were warped by a transform RAF-DB does not ship: no masks
    assert not load_dataset(f"rafdb:{root}", "test").has_part_masks


def test_affectnet_landmarks_follow_the_face_crop(tmp_path):
    root = tmp_path / "AffectNet"
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    lines = [header]
    for k, (x, y) in enumerate(((10, 20), (30, 5))):
        rel = f"1/img{k}.jpg"
        _face_jpg(root / "Manually_Annotated_Images" / rel, (160, 150))
        pts = face68(x, y)                                                    # photo pixels
        lm = ";".join(f"{v:.2f}" for v in pts.reshape(-1))
        lines.append(f'{rel},{x},{y},100,100,"{lm}",1,0.1,0.2')
    lines.append('1/img2.jpg,0,0,100,100,"1.0;2.0",1,0.1,0.2')                  # no 68 points: no mask
    _face_jpg(root / "Manually_Annotated_Images/1/img2.jpg", (160, 150))
    (root / "Manually_Annotated_file_lists").mkdir(parents=True)
    for name in ("training.csv", "validation.csv"):
        (root / "Manually_Annotated_file_lists" / name).write_text("\n".join(lines) + "\n")
    ds = load_dataset(f"affectnet:{root}", "test")
    want = part_mask_from_landmarks(face68(), (100, 100))
    assert ds.has_part_masks
    for i in range(2):
        assert np.array_equal(ds.part_mask(i), want)                         # shifted into the crop
    assert (ds.part_mask(2) == 0).all() and ds.part_mask(2).shape == (100, 100)


def test_affectnet_npy_release_reads_lnd(tmp_path):
    ann = tmp_path / "val_set" / "annotations"
    ann.mkdir(parents=True)
    _face_jpg(tmp_path / "val_set/images/7.jpg", (100, 100))
    for key, value in (("exp", "3"), ("val", "0.5"), ("aro", "-0.2")):
        np.save(ann / f"7_{key}.npy", np.array(value))
    np.save(ann / "7_lnd.npy", face68().reshape(-1))
    ds = load_dataset(f"affectnet:{tmp_path}", "test")
    assert np.array_equal(ds.part_mask(0), part_mask_from_landmarks(face68(), (100, 100)))
