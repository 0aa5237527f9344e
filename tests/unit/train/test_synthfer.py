"""SynthFER: determinism, identity-disjoint splits, metadata, part masks, counterfactuals, exporters,
bad inputs and a cheap difficulty calibration (small sets, 32-64 px)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from train.data import load_dataset
from train.data import synthfer as S
from train.errors import FerlensError
from train.labels import CANONICAL7

SPEC = "synthfer:size=32,n=300,seed=0"


@pytest.fixture(scope="module")
def splits():
    return {s: load_dataset(SPEC, split=s) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def ds64():
    return S.SynthFER("train", size=64, n=400, seed=3)


def test_counts_labels_and_attrs(splits):
    assert sum(len(d) for d in splits.values()) == 300
    train = splits["train"]
    assert 0.65 < len(train) / 300 < 0.95
    for ds in splits.values():
        assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(ds),)
        assert set(np.unique(ds.labels)) <= set(range(7))
        assert ds.label_names == list(CANONICAL7)
        assert len(ds.attrs) == len(ds.sample_ids) == len(ds)
        assert all(set(a) == set(ds.attr_kinds) for a in ds.attrs)
    assert train.attr_kinds == {
        "identity": "categorical", "background": "categorical", "occluder": "categorical",
        "illumination": "categorical", "yaw_bin": "categorical", "roll_bin": "categorical",
        "yaw": "continuous", "roll": "continuous", "scale": "continuous", "intensity": "continuous"}
    ids = [i for d in splits.values() for i in d.sample_ids]
    assert len(set(ids)) == 300
    image, label, attrs, sid = train[0]
    assert isinstance(image, Image.Image) and image.size == (32, 32) and image.mode == "RGB"
    assert label == int(train.labels[0]) and attrs == train.attrs[0] and sid == train.sample_ids[0]
    assert len(np.unique(train.labels)) == 7  # every class present
    assert all(a["intensity"] == 0.0 for a, y in zip(train.attrs, train.labels) if y == 0)


def test_splits_are_identity_disjoint(splits):
    sets = {s: set(d.attr_array("identity").tolist()) for s, d in splits.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert all(sets.values())


def test_metadata_needs_no_rendering(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("rendered while building metadata")

    monkeypatch.setattr(S, "render", boom)
    ds = S.load(None, "train", size="48", n="500", seed="1")
    assert len(ds) > 300 and ds.size == 48


def test_same_seed_same_bytes_other_seed_differs():
    a = S.load(None, "test", size=32, n=200, seed=5)
    b = S.load(None, "test", size=32, n=200, seed=5)
    c = S.load(None, "test", size=32, n=200, seed=6)
    assert a.sample_ids == b.sample_ids and np.array_equal(a.labels, b.labels)
    for i in range(4):
        assert a.load_image(i).tobytes() == b.load_image(i).tobytes()
    assert any(a.load_image(i).tobytes() != c.load_image(i).tobytes() for i in range(3))
    d = S.load(None, "test", size=32, n=200, seed=5)
    d._cache.clear()
    assert np.array_equal(d.image_array(0), a.image_array(0))  # re-rendered, not cached


def test_render_is_a_pure_function_of_factors(ds64):
    f = ds64.factors(2)
    img1, mask1 = S.render(f)
    img2, mask2 = S.render(dict(f))
    assert img1.dtype == np.uint8 and img1.shape == (64, 64, 3) and mask1.shape == (64, 64)
    assert np.array_equal(img1, img2) and np.array_equal(mask1, mask2)
    assert np.array_equal(img1, ds64.image_array(2))
    img3, none = S.render(f, with_mask=False)
    assert none is None and np.array_equal(img3, img1)
    assert mask1.max() < len(S.PART_NAMES)


def test_render_batch_draws_each_face_as_if_alone(ds64):
    """The stacked renderer: a face's pixels and mask do not depend on its batch-mates or its place."""
    fs = [ds64.factors(i) for i in range(12)]
    fs[7] = S.with_changes(fs[7], tx=5.0)  # a face wholly off the image
    fs[8] = S.with_changes(fs[8], tx=-0.9, ty=0.95, scale=1.5)  # one cut by the border
    imgs, masks = S.render_batch(fs)
    assert imgs.shape == (12, 64, 64, 3) and imgs.dtype == np.uint8
    assert masks.shape == (12, 64, 64) and masks.dtype == np.uint8 and masks.max() < len(S.PART_NAMES)
    for i, f in enumerate(fs):
        img, mask = S.render(f)
        assert np.array_equal(img, imgs[i]) and np.array_equal(mask, masks[i]), i
    order = [5, 0, 11, 8, 3]  # other company, other order
    imgs2, masks2 = S.render_batch([fs[i] for i in order])
    assert all(np.array_equal(imgs2[k], imgs[i]) and np.array_equal(masks2[k], masks[i]) for k, i in enumerate(order))
    assert np.array_equal(S.render_batch(fs, with_mask=False)[0], imgs)
    assert set(np.unique(masks[7])) == {S.PART_INDEX["background"]}
    assert {S.PART_INDEX[p] for p in ("face", "eye_l", "eye_r", "mouth")} <= set(np.unique(masks[0]))


def test_block_rendering_serves_the_same_faces():
    ds = S.SynthFER("train", size=32, n=300, seed=4)
    order = np.random.default_rng(0).permutation(len(ds))[:40]
    for i in order:  # a miss renders the uncached rest of its block; later reads hit the cache
        assert np.array_equal(ds.image_array(int(i)), S.render(ds.factors(int(i)), with_mask=False)[0])
    assert len(ds._cache) > len(order)
    i = int(order[0])
    assert np.array_equal(ds.part_mask(i), S.render(ds.factors(i))[1])  # masks drawn on demand, cached too
    assert ds.render_arrays(i)[1] is not None and np.array_equal(ds.image_array(i), S.render(ds.factors(i))[0])
    with pytest.raises(FerlensError, match="each size in its own batch"):
        S.render_batch([ds.factors(0), S.SynthFER("train", size=48, n=300, seed=4).factors(0)])
    with pytest.raises(FerlensError, match="no factor dicts"):
        S.render_batch([])


def test_loader_batches_are_drawn_together(monkeypatch):
    from torch.utils.data import DataLoader

    from train.data import collate

    ds = S.SynthFER("train", size=32, n=300, seed=5)
    calls = []
    real = S.render_batch
    monkeypatch.setattr(S, "render_batch", lambda fs, with_mask=True: calls.append(len(fs)) or real(fs, with_mask))
    order = np.random.default_rng(1).permutation(len(ds))[:40].tolist()
    images, labels, _, ids = next(iter(DataLoader(ds, batch_size=40, sampler=order, collate_fn=collate)))
    assert calls == [32, 8] and ids == [ds.sample_ids[i] for i in order]  # one call per 32 uncached faces
    assert labels.tolist() == ds.labels[order].tolist()
    assert all(np.array_equal(np.asarray(images[k]), S.render(ds.factors(i), with_mask=False)[0])
               for k, i in enumerate(order[:5]))  # no transform: PIL images, the faces render draws
    ds[order[0]]
    assert calls == [32, 8]  # cached


def test_part_masks_contain_class_parts(ds64):
    assert S.PART_NAMES[0] == "background" and len(S.PART_NAMES) == 10
    assert set(S.CLASS_PARTS) == set(CANONICAL7) and S.EXPRESSIONS == CANONICAL7
    checked = set()
    for i in range(len(ds64)):
        f = ds64.factors(i)
        if f["occluder"] != "none" or abs(f["yaw"]) > 20:
            continue
        mask = ds64.part_mask(i)
        present = {S.PART_NAMES[v] for v in np.unique(mask)}
        assert {"background", "face"} <= present
        missing = set(S.CLASS_PARTS[f["expression"]]) - present
        assert not missing, (i, f["expression"], missing)
        checked.add(f["expression"])
    assert checked == set(CANONICAL7)


def test_landmarks_sit_on_their_parts(ds64):
    from train.data._synth_render import landmarks

    hits = 0
    for i in range(40):
        f = ds64.factors(i)
        if f["occluder"] != "none":
            continue
        pts = np.rint(landmarks(f)).astype(int)
        mask = ds64.part_mask(i)
        for (x, y), part in zip(pts[:3], ("eye_l", "eye_r", "nose")):
            hits += S.PART_INDEX[part] in mask[max(0, y - 1):y + 2, max(0, x - 1):x + 2]
    assert hits >= 0.9 * 3 * sum(ds64.factors(i)["occluder"] == "none" for i in range(40))


def test_counterfactual_changes_only_expression_parts(ds64):
    i = next(k for k in range(len(ds64)) if ds64.factors(k)["expression"] == "neutral"
             and ds64.factors(k)["occluder"] == "none")
    orig = ds64.image_array(i)
    happy = np.asarray(ds64.counterfactual(i, expression="happiness"))
    assert happy.shape == orig.shape and not np.array_equal(happy, orig)
    f2 = S.with_changes(ds64.factors(i), expression="happiness")
    parts = [S.PART_INDEX[p] for p in ("brow_l", "brow_r", "eye_l", "eye_r", "nose", "mouth")]
    changed_region = np.isin(ds64.part_mask(i), parts) | np.isin(S.render(f2)[1], parts)
    grown = changed_region.copy()  # one-pixel dilation for anti-aliased borders
    grown[1:] |= changed_region[:-1]
    grown[:-1] |= changed_region[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    same = np.all(orig == happy, axis=2)
    assert same[~grown].mean() > 0.97
    assert not same[changed_region].all()
    # the same identity stays: same face shape and colours in the face region
    assert np.array_equal(ds64.part_mask(i) == S.PART_INDEX["hair"], S.render(f2)[1] == S.PART_INDEX["hair"])


@pytest.mark.parametrize("kwargs, match", [
    ({"size": "16"}, "size=16 is out of range"),
    ({"size": "abc"}, "not an integer"),
    ({"n": "10"}, "n=10 is out of range"),
    ({"seed": "-1"}, "seed=-1 is out of range"),
    ({"colour": "1"}, "Unknown SynthFER option 'colour'; valid options are size, n, seed"),
])
def test_bad_options_are_one_sentence_errors(kwargs, match):
    with pytest.raises(FerlensError, match=match) as e:
        S.load(None, "train", **kwargs)
    assert "\n" not in str(e.value) and str(e.value).endswith((".", "?"))


def test_other_bad_inputs(ds64, tmp_path):
    with pytest.raises(FerlensError, match="takes no path"):
        S.load("/data", "train")
    with pytest.raises(FerlensError, match="Unknown split"):
        S.SynthFER("dev", size=32, n=100)
    with pytest.raises(FerlensError, match="Unknown SynthFER option 'sizee'.*Did you mean: size"):
        load_dataset("synthfer:sizee=64", split="train")
    with pytest.raises(FerlensError, match="Cannot change SynthFER factor 'expresion'"):
        ds64.counterfactual(0, expresion="anger")
    with pytest.raises(FerlensError, match="Unknown expression 'joy'"):
        ds64.counterfactual(0, expression="joy")
    with pytest.raises(FerlensError, match="Unknown SynthFER export format 'coco'"):
        S.export(tmp_path / "x", size=32, n=70, fmt="coco")
    with pytest.raises(FerlensError, match="out of range"):
        ds64.load_image(10**6)


def test_export_rafdb_layout(tmp_path):
    out = S.export(tmp_path / "raf", size=32, n=70, seed=0, fmt="rafdb")
    lines = (out / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    assert len(lines) == 70
    names = [ln.split()[0] for ln in lines]
    codes = [int(ln.split()[1]) for ln in lines]
    assert names[0] == "train_00001.jpg" and any(n.startswith("test_0001") for n in names)
    assert set(codes) <= set(range(1, 8))
    # labels read back equal the dataset's (train then val, then test), via RAF-DB's numbering
    order = [S.SynthFER(s, size=32, n=70, seed=0) for s in ("train", "val", "test")]
    expected = [S.RAFDB_LABELS[d.label_names[y]] for d in order for y in d.labels]
    assert codes == expected
    stem = names[0][:-4]
    img = Image.open(out / "Image" / "aligned" / f"{stem}_aligned.jpg")
    assert img.size == (32, 32) and img.format == "JPEG"
    attri = (out / "Annotation" / "manual" / f"{stem}_manu_attri.txt").read_text().splitlines()
    assert len(attri) == 8
    pts = np.array([[float(v) for v in ln.split()] for ln in attri[:5]])
    assert pts.shape == (5, 2) and (pts > -5).all() and (pts < 37).all()
    assert int(attri[5]) in (0, 1, 2) and int(attri[6]) in (0, 1, 2) and int(attri[7]) in range(5)
    assert len(list((out / "Image" / "aligned").glob("*.jpg"))) == 70


def test_export_folder_layout_and_contact_sheet(tmp_path):
    out = S.export(tmp_path / "fold", size=32, n=70, seed=1, fmt="folder")
    files = list(out.glob("*/*/*.png"))
    assert len(files) == 70
    assert {p.parent.parent.name for p in files} <= {"train", "val", "test"}
    assert {p.parent.name for p in files} <= set(CANONICAL7)
    test = S.SynthFER("test", size=32, n=70, seed=1)
    p = out / "test" / test.label_names[test.labels[0]] / f"{test.sample_ids[0]}.png"
    assert np.array_equal(np.asarray(Image.open(p)), test.image_array(0))  # PNG is lossless
    sheet = S.contact_sheet(tmp_path / "sheet.png", size=32, seed=0, per_class=3, n=300)
    im = Image.open(sheet)
    assert im.format == "PNG" and im.height >= 7 * 32 and im.width >= 3 * 32
    with pytest.raises(FerlensError, match="per_class"):
        S.contact_sheet(tmp_path / "bad.png", per_class=0)


def test_small_calibration_pixels_carry_nuisance_not_expression():
    """Pixel LR (16x16 grey, to stay cheap) on a few hundred samples: expression stays low while identity
    and background are decodable. The full-size calibration (32x32, default set) is in the bench notes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    ds = S.SynthFER("train", size=32, n=450, seed=0)
    X = np.stack([np.asarray(ds.load_image(i).convert("L").resize((16, 16), Image.BILINEAR), np.float32).ravel()
                  for i in range(len(ds))])
    X = StandardScaler().fit_transform(X)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(ds))
    tr, te = perm[: len(ds) * 3 // 4], perm[len(ds) * 3 // 4:]

    def acc(y, C=0.01):
        y = np.asarray(y)
        with threadpool_limits(1):  # tiny problem: BLAS threads only add contention
            return LogisticRegression(C=C, max_iter=100).fit(X[tr], y[tr]).score(X[te], y[te])

    ident = ds.attr_array("identity")
    assert acc(ident) > 5.0 / len(np.unique(ident))
    bg = ds.attr_array("background")
    assert acc(bg) > 2.0 * np.bincount(np.unique(bg, return_inverse=True)[1]).max() / len(bg)
    assert acc(ds.labels) < 0.6


def test_bench_row():
    bench = pytest.importorskip("bench.bench_synthfer")
    row = bench.main(n_images=60, size=32, repeats=1)
    assert row["name"] == "synthfer_generation" and row["target"] == 2000
    assert row["images_per_s"] > 0 and isinstance(row["ok"], bool)
