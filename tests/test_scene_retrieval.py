"""Scene retrieval: region boxes, region embeddings stored with a gallery, best-region scores and boxes, the recipe.

Mechanics run on the tiny random encoder; the semantic target (region matching beats the global baseline on world
scenes) runs once the embedded encoder exists."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import duetgen
from duetgen import world
from duetgen.backbones import get_clip_config
from duetgen.embedded import ENCODER_DIR
from duetgen.errors import DuetgenInputError
from duetgen.gallery import Gallery, decode_image
from duetgen.scene_retrieval import RegionConfig, box_pixels, region_scores, search_scenes

REPO = Path(__file__).resolve().parents[1]
HAS_EMBEDDED = (ENCODER_DIR / "config.json").exists()


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return duetgen.ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny").eval()


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    for i in range(6):
        photo, _ = world.render_scene(world.sample_scene(rng), size=96 + 8 * i, seed=i)  # sizes vary
        Image.fromarray(photo).save(d / f"scene{i}.png")
    return d


def load_recipe():
    spec = importlib.util.spec_from_file_location("scene_recipe", REPO / "recipes" / "scene_retrieval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_region_boxes():
    cfg = RegionConfig()
    boxes = cfg.window_boxes()
    assert len(boxes) == 1 + 9 + 25  # whole image, 3x3 at 1/2, 5x5 at 0.35
    assert tuple(boxes[0]) == (0, 0, 1, 1)
    assert (boxes >= 0).all() and (boxes <= 1 + 1e-6).all()
    np.testing.assert_allclose(boxes[1:10, 2] - boxes[1:10, 0], 0.5)
    assert boxes[:, 2].max() == pytest.approx(1.0) and boxes[:, 3].max() == pytest.approx(1.0)  # reach the edge
    assert len(RegionConfig(patches=True).boxes(grid=4)) == 35 + 16
    assert box_pixels(np.array([0.25, 0.5, 0.75, 1.0]), 200, 100) == (50, 50, 150, 100)
    with pytest.raises(DuetgenInputError):
        RegionConfig(scales=(1.5,))


def test_region_gallery_scores_are_best_region(tmp_path, scene_dir, encoder):
    cfg = RegionConfig(scales=(0.5,), patches=True)
    g = Gallery.build(scene_dir, encoder, tmp_path / "g", regions=cfg, batch_size=4, num_workers=0, progress=False)
    n_regions = 1 + 9 + 16
    assert g.regions.shape == (6, n_regions, 32)
    opened = Gallery.open(tmp_path / "g", encoder)
    assert opened.regions.dtype == np.float16 and opened.region_config == cfg
    assert opened.memory_per_item()["regions"] == n_regions * 32 * 2

    # independent path: crop the windows ourselves and encode them, take the max over regions
    windows = cfg.window_boxes()
    q = torch.nn.functional.normalize(torch.randn(3, 32), dim=-1)
    expected = np.zeros((3, 6))
    best = np.zeros((3, 6), int)
    with torch.no_grad():
        for row, path in enumerate(opened.paths):
            image, crops, (w, h) = decode_image(path, encoder.image_size, windows)
            assert crops.shape[0] == len(windows)
            photo = encoder.encode_photo(image[None])
            regs = torch.cat([encoder.encode_image(crops), photo.patch_embeds[0]])  # (R, D)
            sims = (q @ regs.T).numpy()
            expected[:, row], best[:, row] = sims.max(1), sims.argmax(1)
            assert opened.items[row]["w"] == w and opened.items[row]["h"] == h
    results = opened.search(q, k=6, regions=True)
    for qi, res in enumerate(results):
        assert [r.score for r in res] == sorted((r.score for r in res), reverse=True)
        for r in res:
            row = opened.ids.index(r.id)
            assert r.score == pytest.approx(expected[qi, row], abs=5e-3)  # fp16 storage
            it = opened.items[row]
            assert r.box == box_pixels(opened.region_boxes[r.region], it["w"], it["h"])
            assert 0 <= r.box[0] < r.box[2] <= it["w"] and 0 <= r.box[1] < r.box[3] <= it["h"]
    scores = region_scores(opened.regions, q.numpy())
    np.testing.assert_allclose(scores.scores, expected, atol=5e-3)
    assert search_scenes(opened, q[0], k=2)[0].path == results[0][0].path  # (D,) query -> one list

    # adding keeps region rows aligned with items
    extra = tmp_path / "extra.png"
    Image.open(opened.paths[0]).save(extra)
    opened.add([extra], encoder, num_workers=0)
    assert opened.regions.shape[0] == 7
    np.testing.assert_allclose(np.asarray(opened.regions[6], np.float32), np.asarray(opened.regions[0], np.float32),
                               atol=1e-3)  # fmt: skip


def test_search_regions_needs_region_gallery(tmp_path, scene_dir, encoder):
    g = Gallery.build(scene_dir, encoder, num_workers=0, progress=False)
    with pytest.raises(DuetgenInputError, match="no region embeddings"):
        g.search(np.zeros((1, 32), np.float32), k=3, regions=True)


def test_recipe_runs_on_world_scenes(tmp_path, encoder):
    encoder.save_pretrained(tmp_path / "enc")
    recipe = load_recipe()
    out = recipe.main(["--model", str(tmp_path / "enc"), "--scenes", "10", "--queries", "6", "--size", "96",
                       "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.json")])  # fmt: skip
    for name in ("sketch", "sketch+words"):
        for key in ("map_regions", "map_global", "box_hit_own_scene"):
            assert 0 <= out[name][key] <= 1
    assert out["regions_per_item"] == 35 and (tmp_path / "r.json").is_file()
    sketch = recipe.object_sketch(world.sample_instance(np.random.default_rng(1), "arrow"), 64, seed=0)
    ink = np.argwhere(sketch < 128)
    centre = (ink.min(0) + ink.max(0)) / 2
    assert np.abs(centre - 31.5).max() < 6 and (ink.max(0) - ink.min(0)).max() > 40  # re-centred, filling


@pytest.mark.skipif(not HAS_EMBEDDED, reason="needs the embedded encoder (duetgen/embedded/encoder)")
def test_region_matching_beats_global_with_embedded_model(tmp_path):
    out = load_recipe().main(["--scenes", "120", "--queries", "60", "--work", str(tmp_path / "w")])
    # measured with the shipped model (300 scenes): regions 0.138 vs global 0.087 with words, best region on the
    # object in 91 % of the query's own scenes; sketch only, regions and global tie (0.277); the 0.8 target is not met
    assert out["sketch+words"]["map_regions"] > out["sketch+words"]["map_global"] + 0.02
    assert out["sketch+words"]["box_hit_own_scene"] >= 0.75


def test_scene_ceiling_benchmark_crops_the_objects(tmp_path, encoder):
    """bench_scene_ceiling.py: oracle crops are centred on each object at the asked fill; a tiny run reports."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scene_ceiling.py"
    spec = importlib.util.spec_from_file_location("bench_scene_ceiling", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    photo = torch.ones(3, 128, 128)
    boxes = [(10, 20, 40, 35), (90, 100, 120, 128)]  # a wide box, and one touching the bottom edge
    for x0, y0, x1, y1 in boxes:
        photo[:, y0:y1, x0:x1] = 0
    crops = bench.oracle_crops(photo, boxes, 0.5, 64)
    assert crops.shape == (2, 3, 64, 64)
    for crop in crops[:1]:
        ink = (crop.mean(0) < 0.5).nonzero()
        lo, hi = ink.amin(0).float(), ink.amax(0).float()
        assert ((lo + hi) / 2 - 31.5).abs().max() <= 1  # centred on the box ...
        assert abs((hi - lo)[1] + 1 - 32) <= 2  # ... whose long side is half the crop
        assert abs((hi - lo)[0] + 1 - 16) <= 2  # (the short side keeps its aspect)
    assert (crops[1].mean(0) < 0.5).float().mean() > 0.25  # replicate padding below the edge: still ink, no hole
    encoder.save_pretrained(tmp_path / "enc")
    out = bench.main(["--model", str(tmp_path / "enc"), "--scenes", "6", "--queries", "4", "--fills", "0.8"])
    assert set(out["oracle"]) == {"sketch fill 0.8", "sketch+words fill 0.8"}
    assert all(0 <= v <= 1 for v in out["oracle"].values()) and 0 <= out["single_object_same_shape_map"] <= 1
    assert out["single_object_chance"] == pytest.approx(1 / len(world.SHAPES), abs=0.03)
