"""Dataset loaders: Sketchy (real sample + basic layout), TU-Berlin, QuickDraw, QMUL, class splits, views."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from duetgen.datasets import (
    CategoryDataset,
    PairedSketchPhotoDataset,
    QMULDataset,
    QuickDrawDataset,
    SketchyDataset,
    TUBerlinDataset,
    list_class_splits,
    load_class_split,
    make_class_split,
    render_strokes,
    sketchy_classes,
)
from duetgen.errors import DuetgenInputError

SKETCHY128 = Path(
    os.environ.get("DUETGEN_SKETCHY128", Path(__file__).resolve().parents[1] / "../shared/data/sketchy128")
)
needs_sketchy = pytest.mark.skipif(not SKETCHY128.is_dir(), reason=f"real Sketchy sample not at {SKETCHY128}")
UNSEEN21 = (
    "bat cabin cow dolphin door giraffe helicopter mouse pear raccoon rhinoceros saw scissors seagull skyscraper "
    "songbird sword tree wheelchair windmill window"
).split()


def _png(path: Path, color=(0, 0, 0), size=(8, 8), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


# ---------------------------------------------------------------------------------------------------------
# Sketchy


@pytest.fixture(scope="module")
def sketchy():
    if not SKETCHY128.is_dir():
        pytest.skip(f"real Sketchy sample not at {SKETCHY128}")
    return SketchyDataset(SKETCHY128)


@needs_sketchy
def test_sketchy_flat_real_sample(sketchy):
    assert sketchy.layout == "flat"
    assert len(sketchy.classes) == 104 and sketchy.classes == sorted(sketchy.classes)
    assert len(sketchy) == 2600 and len(sketchy.photos) == 2600
    assert len(set(sketchy.photo_ids)) == len(sketchy.photo_ids)
    # every sketch pairs with the photo of the same id, in the folder of its class
    for i in range(0, len(sketchy), 37):
        s, p = sketchy.sketches[i], sketchy.photos[sketchy.sketch_photo[i]]
        assert s.stem.rsplit("-", 1)[0] == p.stem
        assert s.parent.name == p.parent.name == sketchy.classes[sketchy.sketch_labels[i]]
        assert sketchy.photo_labels[sketchy.sketch_photo[i]] == sketchy.sketch_labels[i]
    item = sketchy[0]
    assert item["sketch"].size == (128, 128) and item["sketch"].mode == "RGB"
    assert item["photo"].size == (128, 128)
    assert item["label"] == 0 and sketchy.classes[0] == "airplane"
    assert item["sketch_path"].endswith("sketch/airplane/n02691156_10151-1.png")
    assert item["photo_path"].endswith("photo/airplane/n02691156_10151.jpg")
    assert item["photo_index"] == sketchy.sketch_photo[0]
    # several sketches share one photo
    assert len(np.unique(sketchy.sketch_photo)) < len(sketchy)


@needs_sketchy
def test_sketchy_class_filter_paths_and_transforms():
    split = load_class_split("sketchy128_zs")
    ds = SketchyDataset(
        SKETCHY128,
        classes=split.test,
        load_images=False,
        sketch_transform=lambda p: ("S", p),
        photo_transform=lambda p: ("P", p),
    )
    assert ds.classes == list(split.test) and len(ds) == 21 * 25
    item = ds[3]
    assert item["sketch"] == ("S", item["sketch_path"]) and item["photo"] == ("P", item["photo_path"])
    with pytest.raises(DuetgenInputError, match="no class"):
        SketchyDataset(SKETCHY128, classes=["airplane", "bat"])


def _basic_layout(tmp: Path, classes=("airplane", "ant"), n=3, aug="tx_000000000000") -> Path:
    root = tmp / "sketchy"
    for cls in classes:
        sketches = sorted((SKETCHY128 / "sketch" / cls).iterdir())[:n]
        for s in sketches:
            photo_id = s.stem.rsplit("-", 1)[0]
            for kind, src in (("sketch", s), ("photo", SKETCHY128 / "photo" / cls / f"{photo_id}.jpg")):
                dst = root / kind / aug / cls / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists():
                    dst.symlink_to(src)
    return root


@needs_sketchy
def test_sketchy_basic_layout(tmp_path):
    root = _basic_layout(tmp_path)
    ds = SketchyDataset(root)
    assert ds.layout == "basic" and ds.classes == ["airplane", "ant"] and len(ds) == 6
    assert all("tx_000000000000" in str(p) for p in ds.sketches + ds.photos)
    assert ds[5]["sketch"].size == (128, 128) and ds[5]["label"] == 1
    # the rendered release nests everything in 256x256/
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "256x256").symlink_to(root)
    assert len(SketchyDataset(tmp_path / "release")) == 6
    # another augmentation folder
    _basic_layout(tmp_path, aug="tx_000100000000", n=1)
    ds2 = SketchyDataset(root, sketch_augmentation="tx_000100000000", photo_augmentation="tx_000100000000")
    assert len(ds2) == 2
    with pytest.raises(DuetgenInputError, match="no augmentation folder 'tx_000000001010'"):
        SketchyDataset(root, sketch_augmentation="tx_000000001010")


def test_sketchy_errors(tmp_path):
    with pytest.raises(DuetgenInputError, match="is not a folder"):
        SketchyDataset(tmp_path / "nope")
    (tmp_path / "photo").mkdir()
    with pytest.raises(
        DuetgenInputError, match=r"has no 'sketch/' folder; expected sketch/<class>/<photo_id>-<n>\.png"
    ):
        SketchyDataset(tmp_path)
    (tmp_path / "photo").rmdir()
    _png(tmp_path / "sketch" / "cat" / "n1_1-1.png")
    with pytest.raises(DuetgenInputError, match="has no 'photo/' folder"):
        SketchyDataset(tmp_path)
    (tmp_path / "photo" / "dog").mkdir(parents=True)
    with pytest.raises(DuetgenInputError, match="no folder .*photo/cat"):
        SketchyDataset(tmp_path)
    _png(tmp_path / "photo" / "cat" / "n1_2.jpg")
    with pytest.raises(DuetgenInputError, match="n1_1-1.png' has no photo"):
        SketchyDataset(tmp_path)
    with pytest.raises(DuetgenInputError, match="holds no sketches"):  # the only sketch is unpaired: skipped
        SketchyDataset(tmp_path, strict=False, classes=["cat"])


def test_sketchy_unpaired_and_malformed(tmp_path):
    _png(tmp_path / "sketch" / "cat" / "n1_1-1.png")
    _png(tmp_path / "sketch" / "cat" / "n1_9-1.png")
    _png(tmp_path / "photo" / "cat" / "n1_1.jpg")
    _png(tmp_path / "photo" / "cat" / "n1_5.jpg")  # a photo without sketch stays in the gallery
    ds = SketchyDataset(tmp_path, strict=False)
    assert len(ds) == 1 and [p.name for p in ds.photos] == ["n1_1.jpg", "n1_5.jpg"]
    _png(tmp_path / "sketch" / "cat" / "badname.png")
    with pytest.raises(DuetgenInputError, match=r"badname\.png' is not named <photo_id>-<n>"):
        SketchyDataset(tmp_path, strict=False)
    empty = tmp_path / "empty"
    (empty / "sketch").mkdir(parents=True)
    (empty / "photo").mkdir()
    with pytest.raises(DuetgenInputError, match="has no class folders"):
        SketchyDataset(empty)


# ---------------------------------------------------------------------------------------------------------
# TU-Berlin


def test_tuberlin(tmp_path):
    root = tmp_path / "tuberlin"
    for cls, n in (("airplane", 11), ("alarm clock", 2)):
        for i in range(1, n + 1):
            _png(root / "png" / cls / f"{i}.png", color=(0, 0, 0, 0), mode="RGBA")  # transparent
    (root / "png" / "filelist.txt").write_text("airplane/1.png\n")
    ds = TUBerlinDataset(root)
    assert ds.classes == ["airplane", "alarm clock"] and len(ds) == 13
    assert [p.name for p in ds.sketches[:3]] == ["1.png", "2.png", "3.png"] and ds.sketches[10].name == "11.png"
    item = ds[12]
    assert item["label"] == 1 and item["sketch"].mode == "RGB"
    assert item["sketch"].getpixel((0, 0)) == (255, 255, 255)  # transparency composited on white
    assert TUBerlinDataset(root / "png", classes=["alarm clock"], load_images=False)[0]["sketch"].endswith("1.png")
    cat = CategoryDataset(ds)
    assert len(cat) == 13 and cat[0][1] == 0 and cat.classes == ds.classes
    with pytest.raises(DuetgenInputError, match="has no photos"):
        CategoryDataset(ds, domain="photo")


def test_tuberlin_errors(tmp_path):
    with pytest.raises(DuetgenInputError, match="TU-Berlin root .* is not a folder"):
        TUBerlinDataset(tmp_path / "missing")
    with pytest.raises(DuetgenInputError, match="has no class folders; expected <class>/<n>.png"):
        TUBerlinDataset(tmp_path)
    (tmp_path / "cow").mkdir()
    with pytest.raises(DuetgenInputError, match="cow' holds no images"):
        TUBerlinDataset(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# QuickDraw


def _ndjson(path: Path, word: str | None, drawings, recognized=None) -> None:
    with open(path, "w") as fh:
        for i, d in enumerate(drawings):
            rec = {"key_id": str(i), "countrycode": "DE", "drawing": d}
            if word is not None:
                rec["word"] = word
            if recognized is not None:
                rec["recognized"] = recognized[i]
            fh.write(json.dumps(rec) + "\n")


def test_quickdraw_ndjson(tmp_path):
    simplified = [[[0, 100, 200], [0, 100, 0]], [[50, 60], [200, 255]]]
    raw = [[[10.5, 300.0, 600.2], [20.0, 40.0, 800.0], [0, 15, 30]]]
    _ndjson(tmp_path / "full_simplified_alarm clock.ndjson", "alarm clock", [simplified] * 3, [True, False, True])
    _ndjson(tmp_path / "cat.ndjson", None, [raw] * 2)  # no "word": class from the file name
    ds = QuickDrawDataset(tmp_path, image_size=64)
    assert ds.file_format == "ndjson" and ds.classes == ["alarm clock", "cat"] and len(ds) == 5
    assert ds.sketch_labels.tolist() == [0, 0, 0, 1, 1]
    item = ds[0]
    assert item["label"] == 0 and item["sketch"].size == (64, 64)
    px = np.asarray(item["sketch"].convert("L"))
    assert px.min() == 0 and px.max() == 255 and (px == 255).mean() > 0.8  # black strokes on white
    strokes = ds.strokes(4)
    assert len(strokes) == 1 and strokes[0].shape == (3, 3)  # raw strokes keep time
    assert ds.strokes(0)[1].tolist() == [[50, 200], [60, 255]]
    assert len(QuickDrawDataset(tmp_path, recognized_only=True, classes=["alarm clock"])) == 2
    assert len(QuickDrawDataset(tmp_path, max_per_class=1)) == 2
    s = QuickDrawDataset(tmp_path, render=False, sketch_transform=len)[3]["sketch"]
    assert s == 1


def test_quickdraw_npy(tmp_path):
    bitmaps = np.zeros((4, 784), dtype=np.uint8)
    bitmaps[:, 0] = 255  # white ink at (0, 0), as released
    np.save(tmp_path / "full_numpy_bitmap_cat.npy", bitmaps)
    np.save(tmp_path / "dog.npy", bitmaps[:2])
    ds = QuickDrawDataset(tmp_path)
    assert ds.file_format == "npy" and ds.classes == ["cat", "dog"] and len(ds) == 6
    im = ds[5]["sketch"]
    assert im.size == (28, 28) and im.getpixel((0, 0)) == (0, 0, 0) and im.getpixel((5, 5)) == (255, 255, 255)
    raw = QuickDrawDataset(tmp_path, invert_bitmaps=False, image_mode="L")[0]["sketch"]
    assert raw.getpixel((0, 0)) == 255 and raw.getpixel((5, 5)) == 0
    # both formats present: choose explicitly
    _ndjson(tmp_path / "cat.ndjson", "cat", [[[[0, 1], [0, 1]]]])
    assert QuickDrawDataset(tmp_path).file_format == "ndjson"
    assert len(QuickDrawDataset(tmp_path, file_format="npy")) == 6


def test_quickdraw_errors(tmp_path):
    with pytest.raises(DuetgenInputError, match="QuickDraw root .* is not a folder"):
        QuickDrawDataset(tmp_path / "missing")
    with pytest.raises(DuetgenInputError, match=r"holds no \.npy files; expected <class>\.ndjson"):
        QuickDrawDataset(tmp_path)
    np.save(tmp_path / "cat.npy", np.zeros((3, 28, 28), dtype=np.uint8))
    with pytest.raises(DuetgenInputError, match=r"cat\.npy' has shape \(3, 28, 28\); expected \(N, 784\)"):
        QuickDrawDataset(tmp_path)
    (tmp_path / "cat.npy").unlink()
    (tmp_path / "dog.ndjson").write_text("not json\n")
    with pytest.raises(DuetgenInputError, match=r"dog\.ndjson' line 1 is not a JSON object"):
        QuickDrawDataset(tmp_path)
    (tmp_path / "dog.ndjson").write_text('{"word": "dog", "drawing": [[[0, 1], [0, 1]]]}\n{"word": "dog"}\n')
    ds = QuickDrawDataset(tmp_path)
    assert ds[0]["label"] == 0
    with pytest.raises(DuetgenInputError, match="not a drawing record"):
        ds[1]


def test_render_strokes_fits_canvas():
    im = render_strokes([np.array([[1000.0, 1000.0], [3000.0, 2000.0]])], size=32, line_width=1, mode="L")
    px = np.asarray(im)
    ys, xs = np.nonzero(px < 128)
    assert xs.min() <= 2 and xs.max() >= 29  # scaled to fill the width (5% margin)
    assert np.asarray(render_strokes([], size=8, mode="L")).min() == 255


# ---------------------------------------------------------------------------------------------------------
# QMUL Shoe-V2 / Chair-V2


def _qmul_ab(root: Path) -> Path:
    for split, photos in (("train", ["1001", "1002"]), ("test", ["2001"])):
        for p in photos:
            _png(root / f"{split}B" / f"{p}.png", color=(200, 0, 0))
            for n in (1, 2):
                _png(root / f"{split}A" / f"{p}_{n}.png")
    return root


def test_qmul_ab_layout(tmp_path):
    root = _qmul_ab(tmp_path / "ShoeV2")
    train = QMULDataset(root, "train")
    assert train.classes == ["shoe"] and len(train) == 4 and train.photo_ids == ["1001", "1002"]
    assert train.sketch_photo.tolist() == [0, 0, 1, 1]
    item = train[2]
    assert item["photo"].getpixel((0, 0)) == (200, 0, 0) and item["label"] == 0 and item["photo_index"] == 1
    test = QMULDataset(root, "test", category="chair")
    assert test.classes == ["chair"] and len(test) == 2 and test.photo_ids == ["2001"]
    both = QMULDataset(root, None)
    assert len(both) == 6 and both.photo_ids == ["1001", "1002", "2001"] and both.sketch_photo.tolist()[-1] == 2
    paired = PairedSketchPhotoDataset(test)
    sketch, photo, label, pidx = paired[1]
    assert (label, pidx) == (0, 0) and photo.size == (8, 8) and paired.photos == test.photos
    assert paired.targets.tolist() == [0, 0]
    # split_file lists photos (selects their sketches) or sketches
    (tmp_path / "few.txt").write_text("trainB/1002.png\n1001_2\n")
    few = QMULDataset(root, "train", split_file=tmp_path / "few.txt")
    assert [s.name for s in few.sketches] == ["1001_2.png", "1002_1.png", "1002_2.png"]


def test_qmul_named_folders_with_split_files(tmp_path):
    root = tmp_path / "ChairV2"
    for p in ("a1", "a2", "b1"):
        _png(root / "ChairV2_photo" / f"{p}.png")
        _png(root / "ChairV2_sketch" / f"{p}_1.png")
    (root / "photo_train.txt").write_text("a1.png\na2.png\n")
    (root / "sketch_test.txt").write_text("ChairV2_sketch/b1_1.png\n")
    train = QMULDataset(root, "train")
    assert train.classes == ["chair"] and train.photo_ids == ["a1", "a2"] and len(train) == 2
    test = QMULDataset(root, "test")
    assert [s.name for s in test.sketches] == ["b1_1.png"] and test.photo_ids[test.sketch_photo[0]] == "b1"
    assert len(QMULDataset(root, None)) == 3


def test_qmul_errors(tmp_path):
    with pytest.raises(DuetgenInputError, match="QMUL root .* is not a folder"):
        QMULDataset(tmp_path / "missing")
    with pytest.raises(DuetgenInputError, match="no sketch or photo folder.*expected trainA/ trainB/"):
        QMULDataset(tmp_path)
    root = _qmul_ab(tmp_path / "shoes")
    for f in (root / "testB").iterdir():
        f.unlink()
    (root / "testB").rmdir()
    with pytest.raises(DuetgenInputError, match="has no 'testB/' folder"):
        QMULDataset(root, "test")
    _png(root / "trainA" / "9999_1.png")
    with pytest.raises(DuetgenInputError, match="9999_1.png' has no photo"):
        QMULDataset(root, "train")
    assert len(QMULDataset(root, "train", strict=False)) == 4
    with pytest.raises(DuetgenInputError, match="split must be"):
        QMULDataset(root, "val")
    named = tmp_path / "named"
    _png(named / "sketch" / "x_1.png")
    _png(named / "photo" / "x.png")
    with pytest.raises(DuetgenInputError, match="no split file 'photo_train.txt' or 'sketch_train.txt'"):
        QMULDataset(named, "train")
    assert len(QMULDataset(named, None)) == 1


# ---------------------------------------------------------------------------------------------------------
# class splits


def test_builtin_class_splits():
    assert list_class_splits() == ["sketchy128_zs", "sketchy_zs_unseen21"]
    zs = load_class_split("sketchy_zs_unseen21")
    assert list(zs.test) == sorted(UNSEEN21) and len(zs.train) == 104
    assert len(sketchy_classes()) == 125 and set(zs.train) | set(zs.test) == set(sketchy_classes())
    s128 = load_class_split("sketchy128_zs")
    assert len(s128.train) == 83 and len(s128.test) == 21 and not set(s128.train) & set(s128.test)
    # the shipped file is reproducible from its documented procedure
    again = make_class_split(list(s128.train) + list(s128.test), 21, preferred=zs.test)
    assert again.train == s128.train and again.test == s128.test


@needs_sketchy
def test_sketchy128_is_the_standard_seen_set(sketchy):
    zs = load_class_split("sketchy_zs_unseen21")
    assert set(sketchy.classes) == set(zs.train)  # none of the 21 unseen classes is in the sample
    assert set(load_class_split("sketchy128_zs").train) | set(load_class_split("sketchy128_zs").test) == set(
        sketchy.classes
    )


def test_user_class_splits(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"train": ["b", "a"], "test": ["c"], "note": "x"}))
    sp = load_class_split(tmp_path / "s.json")
    assert sp.train == ("a", "b") and sp.test == ("c",)
    (tmp_path / "u.txt").write_text("# unseen\nc\n\nd\n")
    sp = load_class_split(str(tmp_path / "u.txt"), classes=["a", "b", "c", "d"])
    assert sp.train == ("a", "b") and sp.test == ("c", "d")
    assert load_class_split(tmp_path / "u.txt").train is None
    ms = make_class_split(["e", "d", "c", "b", "a"], 2, preferred=["zz", "c"])
    assert "c" in ms.test and len(ms.test) == 2 and len(ms.train) == 3
    assert make_class_split(["a", "b", "c", "d", "e"], 2, preferred=["zz", "c"]) == ms


def test_class_split_errors(tmp_path):
    with pytest.raises(DuetgenInputError, match="neither a built-in split"):
        load_class_split(tmp_path / "none.txt")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DuetgenInputError, match="not valid JSON"):
        load_class_split(tmp_path / "bad.json")
    (tmp_path / "nokey.json").write_text('{"train": ["a"]}')
    with pytest.raises(DuetgenInputError, match='with "train" and "test" lists'):
        load_class_split(tmp_path / "nokey.json")
    (tmp_path / "both.json").write_text('{"train": ["a"], "test": ["a"]}')
    with pytest.raises(DuetgenInputError, match=r"puts \['a'\] in both"):
        load_class_split(tmp_path / "both.json")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(DuetgenInputError, match="lists no class"):
        load_class_split(tmp_path / "empty.txt")
    with pytest.raises(DuetgenInputError, match="n_test must be in 1..2"):
        make_class_split(["a", "b", "c"], 3)


# ---------------------------------------------------------------------------------------------------------
# views


@needs_sketchy
def test_paired_and_category_views(sketchy):
    paired = PairedSketchPhotoDataset(sketchy)
    assert len(paired) == 2600 and paired.classes == sketchy.classes and len(paired.photos) == 2600
    sketch, photo, label, pidx = paired[30]
    assert sketch.size == photo.size == (128, 128)
    assert label == sketchy.sketch_labels[30] and pidx == sketchy.sketch_photo[30]
    assert sketchy.photo_labels[pidx] == label
    gallery = CategoryDataset(sketchy, domain="photo")
    assert len(gallery) == 2600 and gallery.labels is sketchy.photo_labels
    photo2, label2 = gallery[pidx]
    assert label2 == label and np.array_equal(np.asarray(photo2), np.asarray(photo))
    with pytest.raises(DuetgenInputError, match="needs a sketch/photo dataset"):
        PairedSketchPhotoDataset(CategoryDataset(sketchy))
    with pytest.raises(IndexError):
        paired[2600]
