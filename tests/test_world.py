"""Tests of the procedural world (duetgen/world.py). Fast: the whole file runs in a few seconds on one core."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pytest
from PIL import Image, ImageFilter

from duetgen import world
from duetgen.errors import DuetgenInputError


def _inst(shape: str = "star", **kw) -> world.Instance:
    d = dict(cx=0.5, cy=0.5, scale=0.5, rotation=0.0, params=(0.5, 0.5)) | kw
    return world.Instance(shape, **d)


def _photo_mask(instance: world.Instance, size: int) -> np.ndarray:
    """Exact silhouette of the instance (the photo's object region)."""
    return world._mask(instance.outline(), size) > 0.5


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def _edge_band(mask: np.ndarray, width: int = 5) -> np.ndarray:
    """Pixels within about width // 2 of the silhouette's edge."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    outer = np.asarray(img.filter(ImageFilter.MaxFilter(width))) > 0
    inner = np.asarray(img.filter(ImageFilter.MinFilter(width))) > 0
    return outer & ~inner


def test_determinism_and_seed_dependence():
    rng = np.random.default_rng(3)
    inst, attrs = world.sample_instance(rng), world.sample_attributes(rng)
    p1, s1 = world.render_pair(inst, attrs, 64, seed=5)
    p2, s2 = world.render_pair(inst, attrs, 64, seed=5)
    assert p1.shape == (64, 64, 3) and p1.dtype == np.uint8
    assert s1.shape == (64, 64) and s1.dtype == np.uint8
    assert np.array_equal(p1, p2) and np.array_equal(s1, s2)
    p3, s3 = world.render_pair(inst, attrs, 64, seed=6)
    assert not np.array_equal(p1, p3) and not np.array_equal(s1, s3)
    # Sampling is deterministic from the generator's seed.
    assert world.sample_instance(np.random.default_rng(9)) == world.sample_instance(np.random.default_rng(9))
    assert world.sample_instance(np.random.default_rng(9)) != world.sample_instance(np.random.default_rng(10))


@pytest.mark.parametrize("shape", world.SHAPES)
def test_every_shape_renders_inside_canvas(shape):
    assert len(world.SHAPES) >= 12
    rng = np.random.default_rng([1, world.SHAPES.index(shape)])
    for _ in range(5):
        inst = world.sample_instance(rng, shape)
        poly = inst.outline()
        assert poly.min() >= world.MARGIN - 1e-6 and poly.max() <= 1 - world.MARGIN + 1e-6
        mask = _photo_mask(inst, 64)
        assert mask.sum() > 40  # a real object, not a speck
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        ink = world.render_sketch(inst, 64, seed=1) < 200
        assert 20 < ink.sum() < 0.5 * ink.size


@pytest.mark.parametrize("shape", world.SHAPES)
def test_sketch_lines_up_with_photo(shape):
    rng = np.random.default_rng([2, world.SHAPES.index(shape)])
    for k in range(4):
        inst = world.sample_instance(rng, shape)
        photo_mask = _photo_mask(inst, 64)
        ink = world.render_sketch(inst, 64, seed=k) < 200
        assert _box_iou(_box(ink), _box(photo_mask)) > 0.7
        assert (ink & _edge_band(photo_mask)).sum() > 0.85 * ink.sum()  # the ink traces the silhouette's edge
        # Control: the same drawing moved by 0.12 of the canvas no longer traces it.
        moved = dataclasses.replace(inst, cx=inst.cx + (0.12 if inst.cx < 0.5 else -0.12))
        ink_moved = world.render_sketch(moved, 64, seed=k) < 200
        assert (ink_moved & _edge_band(photo_mask)).sum() < 0.75 * ink_moved.sum()


def test_sketch_is_not_a_clean_edge_map():
    inst = _inst("triangle")
    a, b = world.render_sketch(inst, 64, seed=0), world.render_sketch(inst, 64, seed=1)
    assert (np.abs(a.astype(int) - b.astype(int)) > 100).mean() > 0.01  # two hands draw differently


def test_photo_shows_colour_and_domain():
    inst = _inst("heart", scale=0.6)
    mask = world._mask(world._unit_outline("heart", 0.5, 0.5) * 0.6 * 0.8 + 0.5, 64) > 0.99  # well inside
    means = {}
    for name, rgb in world.COLOURS.items():
        photo = world.render_photo(inst, world.Attributes(name, "solid", "plain"), 64, seed=0)
        means[name] = photo[mask].mean(0)
        assert np.linalg.norm(means[name] - np.asarray(rgb)) < 60, name
    # Every pair of colours stays apart.
    names = list(means)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert np.linalg.norm(means[names[i]] - means[names[j]]) > 40, (names[i], names[j])
    corner = {
        d: world.render_photo(inst, world.Attributes("red", "solid", d), 64, 0)[:8, :8].mean() for d in world.DOMAINS
    }
    assert corner["night"] < 60 < corner["plain"]
    pixel = world.render_photo(inst, world.Attributes("red", "stripes", "pixel art"), 64, 0)
    assert len(np.unique(pixel.reshape(-1, 3), axis=0)) < 12  # flat, posterised
    solid = world.render_photo(inst, world.Attributes("blue", "solid", "plain"), 64, 0)[mask]
    striped = world.render_photo(inst, world.Attributes("blue", "stripes", "plain"), 64, 0)[mask]
    assert striped.std(0).mean() > 2 * solid.std(0).mean()


def test_caption_words():
    inst = _inst("star", cx=0.2, cy=0.15, scale=0.65, rotation=math.radians(45), params=(0.0, 0.5))  # 5 points
    attrs = world.Attributes("red", "stripes", "plain")
    text = world.caption(inst, attrs)
    assert text.startswith("a photo of a large red star with stripes at the top left")
    # 45 degrees on a 5-point star (period 72) reduces to -27: tilted left.
    assert text.endswith("tilted left")
    arrow = _inst("arrow", cx=0.8, cy=0.8, scale=0.35, rotation=math.pi)
    text = world.caption(arrow, world.Attributes("orange", "solid", "night"))
    assert text == "a night photo of a small solid orange arrow at the bottom right, upside down"
    assert world.orientation_word(_inst("arrow", rotation=math.pi / 2)) == "on its right side"
    assert world.words(attrs) == "red with stripes in a photo"
    assert world.words(world.Attributes("blue", "solid", "pixel art")) == "solid blue in pixel art"
    assert world.geometry_words(arrow) == "small, at the bottom right, upside down"


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        (("red", "solid", "plain"), ("blue", "solid", "plain"), "in blue"),
        (("red", "dots", "plain"), ("red", "solid", "plain"), "solid"),
        (("red", "solid", "plain"), ("red", "checks", "night"), "with checks at night"),
        (("red", "solid", "plain"), ("blue", "dots", "pixel art"), "blue with dots in pixel art"),
        (("red", "dots", "plain"), ("green", "solid", "plain"), "solid green"),
        (("red", "dots", "night"), ("red", "dots", "night"), ""),
    ],
)
def test_change_words_name_only_what_changes(source, target, expected):
    assert world.change_words(world.Attributes(*source), world.Attributes(*target)) == expected


def test_caption_drop_prob():
    inst, attrs = _inst("heart"), world.Attributes("green", "dots", "painting")
    full = world.caption(inst, attrs)
    rng = np.random.default_rng(0)
    texts = [world.caption(inst, attrs, rng, drop_prob=0.5) for _ in range(200)]
    assert all("heart" in t for t in texts)
    assert len(set(texts)) > 20
    assert 0.3 < np.mean(["green" in t for t in texts]) < 0.7
    assert all(t == "a heart" for t in (world.caption(inst, attrs, rng, drop_prob=1.0) for _ in range(5)))
    assert world.caption(inst, attrs, rng, drop_prob=0.0) == full
    with pytest.raises(DuetgenInputError):
        world.caption(inst, attrs, None, drop_prob=0.3)


def test_variants_and_validation():
    rng = np.random.default_rng(0)
    attrs = world.Attributes("red", "solid", "plain")
    vs = world.attribute_variants(10, rng, exclude=attrs)
    assert len(set(vs)) == 10 and attrs not in vs
    inst = _inst("bell")
    others = world.pose_variants(inst, 3, rng)
    assert all(o.shape == "bell" and o != inst for o in others)
    with pytest.raises(DuetgenInputError):
        world.Attributes("teal", "solid", "plain")
    with pytest.raises(DuetgenInputError):
        world.sample_instance(rng, "circle")


def test_scenes():
    for k in range(10):
        rng = np.random.default_rng([4, k])
        scene = world.sample_scene(rng)
        assert 2 <= len(scene.objects) <= 4
        assert len({a.domain for a in scene.attrs}) == 1
        assert len({a.colour for a in scene.attrs}) == len(scene.attrs)
        photo, boxes = world.render_scene(scene, 128, seed=k)
        assert photo.shape == (128, 128, 3)
        assert len(boxes) == len(scene.objects)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
        text = world.scene_caption(scene)
        assert all(a.colour in text for a in scene.attrs)
    with pytest.raises(DuetgenInputError):
        world.sample_scene(np.random.default_rng(0), n_objects=5)


def test_dataset_items():
    torch = pytest.importorskip("torch")
    ds = world.WorldDataset(8, seed=1, size=32, shapes=("star", "heart"), attribute_variants=2)
    a, b = ds[2], ds[3]
    assert a["photo"].shape == (3, 32, 32) and a["photo"].dtype == torch.float32
    assert a["sketch"].shape == (3, 32, 32) and 0 <= a["sketch"].min() and a["sketch"].max() <= 1
    assert a["instance"] == b["instance"] and a["attrs"] != b["attrs"]  # one instance, two attribute variants
    assert {ds[i]["shape"] for i in range(8)} <= {0, 1}
    again = world.WorldDataset(8, seed=1, size=32, shapes=("star", "heart"), attribute_variants=2)[2]
    assert torch.equal(a["photo"], again["photo"]) and a["caption"] == again["caption"]
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["photo"].shape == (4, 3, 32, 32)
    json.dumps(a["instance"]), json.dumps(a["attrs"])
    assert world.Instance.from_dict(a["instance"]).to_dict() == a["instance"]


def test_write_world(tmp_path):
    manifest = world.write_world(tmp_path / "w", n=3, seed=0, size=32, scenes=1)
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    pairs = [x for x in lines if x["kind"] == "pair"]
    scenes = [x for x in lines if x["kind"] == "scene"]
    assert len(pairs) == 3 and len(scenes) == 1
    for p in pairs:
        assert Image.open(tmp_path / "w" / p["photo"]).size == (32, 32)
        assert Image.open(tmp_path / "w" / p["sketch"]).mode == "L"
        assert world.Attributes.from_dict(p["attrs"]).colour in p["caption"]
    assert len(scenes[0]["objects"]) >= 2 and len(scenes[0]["objects"][0]["box"]) == 4
    assert not list((tmp_path / "w").glob("*.tmp"))


def test_speed():
    rng = np.random.default_rng(0)
    items = [(world.sample_instance(rng), world.sample_attributes(rng)) for _ in range(200)]
    t = time.perf_counter()
    for k, (inst, attrs) in enumerate(items):
        world.render_pair(inst, attrs, 64, seed=k)
    assert time.perf_counter() - t < 5.0


def test_canvas_pattern_frame_is_fixed_to_the_canvas():
    """pattern_frame="canvas": the pattern does not move, turn or rescale with the object (the generator's targets);
    in the object frame it does. Everything else about the photo is the same render."""
    a = world.Instance("star", 0.4, 0.5, 0.6, 0.3, (0.5, 0.5))
    b = world.Instance("house", 0.6, 0.45, 0.35, 1.2, (0.5, 0.5))
    for pattern in ("stripes", "dots", "checks"):
        ca, cb = (world._pattern(x, pattern, 64, hard=False, frame="canvas") for x in (a, b))
        oa, ob = (world._pattern(x, pattern, 64, hard=False) for x in (a, b))
        assert np.array_equal(ca, cb) and not np.allclose(oa, ob, atol=0.1)
        assert 0.2 < ca.mean() < 0.8  # a pattern, not a flat tone
    # the canvas checks are the sign of the product of two sines of period 2 x CANVAS_PATTERN_PERIOD
    u, v = world._grid(64)
    p = world.CANVAS_PATTERN_PERIOD
    hard = world._pattern(a, "checks", 64, hard=True, frame="canvas")
    assert np.array_equal(hard > 0, np.sin(np.pi * u / p) * np.sin(np.pi * v / p) > 0)
    # a solid photo is the same in either frame; a patterned one differs only inside the object
    solid, dotted = world.Attributes("red", "solid", "plain"), world.Attributes("red", "dots", "plain")
    assert np.array_equal(world.render_photo(a, solid, 64, 3), world.render_photo(a, solid, 64, 3, "canvas"))
    diff = np.abs(world.render_photo(a, dotted, 64, 3).astype(int) - world.render_photo(a, dotted, 64, 3, "canvas"))
    inside = world._mask(a.outline(), 64) > 0.99
    assert diff[inside].max() > 50 and diff[~world._mask(a.outline(), 64).astype(bool)].max() == 0
    with pytest.raises(DuetgenInputError, match="pattern_frame must be one of"):
        world.render_photo(a, dotted, 64, 3, "rotated")


@pytest.mark.parametrize("domain", world.DOMAINS)
def test_canvas_pattern_is_where_a_canvas_frame_photo_puts_the_second_tone(domain):
    """world.canvas_pattern (the generator's pattern masks): inside an object of a canvas-frame photo the pixel
    brightness follows its field, not the other domains' (pixel art draws its pattern coarser)."""
    a = world.Instance("house", 0.5, 0.5, 0.85, 0.0, (0.5, 0.5))
    inside = world._mask(a.outline(), 64) > 0.99
    for shift in ((3, 0), (-3, 0), (3, 1), (-3, 1)):  # away from the antialiased edge
        inside &= np.roll(inside, *shift)
    other = "plain" if domain == "pixel art" else "pixel art"
    for pattern in ("stripes", "dots", "checks"):
        img = world.render_photo(a, world.Attributes("blue", pattern, domain), 64, 5, "canvas").astype(float)
        grey = img.mean(-1)[inside]
        field = world.canvas_pattern(pattern, 64, domain)
        assert field.shape == (64, 64) and 0.2 < field.mean() < 0.6
        assert np.corrcoef(grey, field[inside])[0, 1] > 0.9
        assert abs(np.corrcoef(grey, world.canvas_pattern(pattern, 64, other)[inside])[0, 1]) < 0.2
    assert not world.canvas_pattern("solid", 64, domain).any()
    with pytest.raises(DuetgenInputError, match="pattern must be one of"):
        world.canvas_pattern("plaid", 64, domain)
    with pytest.raises(DuetgenInputError, match="domain must be one of"):
        world.canvas_pattern("dots", 64, "sepia")
