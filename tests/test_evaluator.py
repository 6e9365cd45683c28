"""The independent evaluator: shipped weights read world photos correctly, scoring, checkpoints, silhouettes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from duetgen import world
from duetgen.errors import CheckpointError, DuetgenInputError
from duetgen.evaluator import (
    EVALUATOR_DIR,
    HEADS,
    WorldEvaluator,
    instance_mask,
    load_evaluator,
    mask_iou,
    summarise,
)

ROOT = Path(__file__).resolve().parents[1]
TEST_SEED = 555_002  # the evaluator's test stream; training uses 555_000, the held-out report 555_001

shipped = pytest.mark.skipif(
    not (EVALUATOR_DIR / "config.json").is_file(),
    reason="shipped evaluator weights absent (train them with recipes/train_evaluator.py)",
)


def _photos(n: int, seed: int = TEST_SEED):
    insts, attrs, photos = [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        inst, att = world.sample_instance(rng), world.sample_attributes(rng)
        insts.append(inst)
        attrs.append(att)
        photos.append(world.render_photo(inst, att, 64, seed=int(rng.integers(2**31))))
    return insts, attrs, np.stack(photos)


@pytest.fixture(scope="module")
def evaluator():
    torch.set_num_threads(1)
    return load_evaluator()


@pytest.fixture(scope="module")
def fresh():
    return _photos(50)


@shipped
def test_shipped_evaluator_reads_fresh_world_photos(evaluator, fresh):
    insts, attrs, photos = fresh
    scores = evaluator.score(photos, [{"instance": i, "attrs": a} for i, a in zip(insts, attrs, strict=True)])
    s = summarise(scores)
    # Measured on 1,000 held-out photos: see duetgen/embedded/evaluator/eval_report.json. Floors sit a little below.
    assert s["shape"] >= 0.92, s
    assert s["colour"] >= 0.94, s
    assert s["pattern"] >= 0.88, s
    assert s["domain"] >= 0.94, s
    assert s["iou"] >= 0.85, s
    assert scores["predicted"]["mask"].shape == (50, 64, 64)
    assert scores["predicted"]["mask"].dtype == torch.bool


@shipped
def test_score_rejects_a_wrong_colour(evaluator, fresh):
    insts, attrs, photos = fresh
    i = next(j for j in range(50) if attrs[j].domain == "plain")
    right = attrs[i]
    wrong = "blue" if right.colour != "blue" else "red"
    scores = evaluator.score(photos[i : i + 1].repeat(2, 0), [
        {"instance": insts[i], "attrs": right},
        {"instance": insts[i], "colour": wrong, "pattern": right.pattern},
    ])  # fmt: skip
    assert scores["colour_ok"].tolist() == [1.0, 0.0]
    assert scores["shape_ok"].tolist() == [1.0, 1.0]  # the shape comes from the instance
    assert np.isnan(scores["domain_ok"][1])  # not requested, not scored
    assert scores["iou"][0] == scores["iou"][1] > 0.8


@shipped
def test_predict_accepts_pil_tensors_and_other_sizes(evaluator, fresh):
    from PIL import Image

    _, attrs, photos = fresh
    big = [Image.fromarray(p).resize((128, 128), Image.BICUBIC) for p in photos[:4]]
    as_tensor = torch.from_numpy(photos[:4]).permute(0, 3, 1, 2).float() / 255
    a, b = evaluator.predict(big), evaluator.predict(as_tensor)
    assert a["colour"] == b["colour"] == [x.colour for x in attrs[:4]]
    assert a["mask"].shape == (4, 64, 64)


def test_save_load_round_trip_is_identical(tmp_path):
    torch.manual_seed(0)
    model = WorldEvaluator(channels=(4, 8), decoder_channels=(4,), stem_stride=1).eval()
    model.save_pretrained(str(tmp_path / "ev"))
    assert json.loads((tmp_path / "ev" / "config.json").read_text())["shapes"] == list(world.SHAPES)
    loaded = load_evaluator(tmp_path / "ev")
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for head in (*HEADS, "mask"):
        assert torch.equal(getattr(a, head), getattr(b, head)), head
    assert b.mask.shape == (3, 64, 64) and a.shape.shape == (3, len(world.SHAPES))
    p = loaded.predict(x)
    assert all(len(p[h]) == 3 for h in HEADS) and p["mask"].shape == (3, 64, 64)


def test_load_refuses_pickles_and_missing_folders(tmp_path):
    model = WorldEvaluator(channels=(4, 8), decoder_channels=(4,), stem_stride=1)
    model.save_pretrained(str(tmp_path / "ev"))
    (tmp_path / "ev" / "diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        load_evaluator(tmp_path / "ev")
    with pytest.raises(CheckpointError):
        load_evaluator(tmp_path / "nowhere")


def test_bad_requests_and_configs_are_named():
    model = WorldEvaluator(channels=(4, 8), decoder_channels=(4,), stem_stride=1)
    with pytest.raises(DuetgenInputError, match="colour='teal'"):
        model.score(torch.rand(1, 3, 64, 64), [{"colour": "teal"}])
    with pytest.raises(DuetgenInputError, match="requests"):
        model.score(torch.rand(2, 3, 64, 64), [{"colour": "red"}])
    with pytest.raises(DuetgenInputError, match="decoder_channels"):
        WorldEvaluator(channels=(4, 8, 16), decoder_channels=(4,))


def _inside(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd ray casting: which points (M, 2) lie inside the closed polygon (N, 2)."""
    x, y = pts[:, 0:1], pts[:, 1:2]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    xi = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1e-12, y1 - y0)
    return (crosses & (x < xi)).sum(1) % 2 == 1


def test_instance_mask_matches_the_polygon():
    inst = world.Instance("tee", 0.5, 0.5, 0.6, 0.0, (0.5, 0.5))  # upright T: bar on top, stem below
    m = instance_mask(inst, 32)
    assert m.shape == (32, 32) and m.dtype == bool
    c = (np.arange(32) + 0.5) / 32
    centres = np.stack(np.meshgrid(c, c), -1).reshape(-1, 2)  # (x, y) of each pixel centre, row-major
    truth = _inside(inst.outline(), centres).reshape(32, 32)
    assert (m != truth).mean() < 0.005  # a boundary pixel or two
    assert (m != m[:, ::-1]).mean() < 0.005  # the T is symmetric left-right
    rows = m.sum(1)
    assert rows[m.any(1)].max() > 2 * rows[20]  # the bar is much wider than the stem
    assert not m[0].any() and not m[:, 0].any()  # inside the canvas
    assert m[16, 16]  # the stem passes through the centre
    soft = instance_mask(inst.to_dict(), 32, soft=True)  # a dict works too
    assert soft.dtype == np.float32 and np.array_equal(soft >= 0.5, m)


def test_mask_iou():
    a = np.zeros((2, 8, 8), bool)
    b = np.zeros((2, 8, 8), bool)
    a[0, :4], b[0, 2:6] = True, True
    assert mask_iou(a, b).tolist() == [pytest.approx(2 / 6), 1.0]  # the second pair is empty on both sides


@shipped
def test_benchmark_real_photos_mode(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_generation_fidelity as bench

    result = bench.main(["--real-photos", "--n", "8", "--samples", "2", "--out", str(tmp_path / "r.json"),
                         "--sheet", str(tmp_path / "sheet.png"), "--sheet-rows", "3"])  # fmt: skip
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == result["metrics"]
    assert result["metrics"]["colour"] >= 0.8 and result["metrics"]["iou"] >= 0.8
    assert (tmp_path / "sheet.png").stat().st_size > 0
    confusion = result["pattern_confusion"]  # requested -> read; real photos are read right
    assert sum(sum(row.values()) for row in confusion.values()) == 16
    assert sum(confusion[p][p] for p in confusion) >= 13, confusion
    sys.modules.pop("bench_generation_fidelity", None)


def generate_held_out(evaluator, n: int, scheduler: str | None = None, **overrides) -> dict:
    """The shipped generator on ``n`` held-out requests (world seed 777_000+, the fidelity benchmark's, unused in
    training), 25 steps, seed 0, scored by the evaluator: :func:`summarise` of the scores."""
    from duetgen.pipelines import load_pipeline, make_scheduler

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config, **overrides)
    insts, attrs, sketches = [], [], []
    for i in range(n):
        rng = np.random.default_rng([777_000, i])
        insts.append(world.sample_instance(rng))
        attrs.append(world.sample_attributes(rng))
        sketches.append(world.render_sketch(insts[-1], 64, seed=int(rng.integers(2**31))))
    sk = torch.from_numpy(np.stack(sketches)).float().div(255)[:, None].expand(-1, 3, -1, -1)
    images = pipe(sketch=sk, text=[world.words(a) for a in attrs], num_inference_steps=25,
                  generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip
    return summarise(evaluator.score(images, [{"instance": i, "attrs": a} for i, a in zip(insts, attrs, strict=True)]))


@shipped
def test_shipped_generator_draws_the_requested_colour_in_the_sketched_region(evaluator):
    """Semantic check of the embedded generator, read by the independent evaluator (never used in its training)."""
    s = generate_held_out(evaluator, 6)
    # measured (benchmarks/bench_generation_fidelity.py, 64 x 4): colour 1.00, IoU 0.75
    assert s["colour"] >= 5 / 6, s
    assert s["iou"] >= 0.5, s


@shipped
def test_shipped_generator_with_ddim_keeps_the_request(evaluator):
    """DDIM through make_scheduler (the CLI's and studio's --scheduler ddim) draws what was asked, as DDPM does.

    With the leading timestep spacing DDIM drifts off the request: on these 8 requests the shipped generator then
    scores colour 0.75, domain 0.38 and IoU 0.39 (trailing: 0.88, 1.00, 0.67; DDPM: 1.00, 1.00, 0.76).
    """
    s = generate_held_out(evaluator, 8, "ddim")
    assert s["colour"] >= 6 / 8 and s["domain"] >= 7 / 8, s
    assert s["iou"] >= 0.5, s


@shipped
def test_shipped_generator_image_to_image_recolours_a_photo_in_place(evaluator):
    """image= / strength=: starting from a held-out photo at strength 0.6, the shipped generator paints the new
    colour the words ask for and keeps the photo's object where it was (recipes/README.md, 96 colour/pattern/domain
    changes: colour success 0.94, shape kept 0.91)."""
    from duetgen.pipelines import load_pipeline

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    names = list(world.COLOURS)
    insts, targets, photos, sketches = [], [], [], []
    for i in range(6):
        rng = np.random.default_rng([777_100, i])
        inst, att = world.sample_instance(rng), world.sample_attributes(rng)
        new = names[(names.index(att.colour) + 1 + i) % len(names)]
        insts.append(inst)
        targets.append(world.Attributes(**{**att.to_dict(), "colour": new}))
        photos.append(world.render_photo(inst, att, 64, seed=i))
        sketches.append(world.render_sketch(inst, 64, seed=i))
    sk = torch.from_numpy(np.stack(sketches)).float().div(255)[:, None].expand(-1, 3, -1, -1)
    start = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float() / 255
    kw = dict(sketch=sk, text=[world.words(a) for a in targets], num_inference_steps=25, output_type="np")
    images = pipe(image=start, strength=0.6, generator=torch.Generator().manual_seed(0), **kw).images
    s = summarise(evaluator.score(images, [{"instance": i, "attrs": a} for i, a in zip(insts, targets, strict=True)]))
    assert s["colour"] >= 5 / 6, s  # the new colour, not the photo's
    assert s["iou"] >= 0.7, s  # the photo's object, where it was
    # and the photo's own background survives: closer to it than the same request drawn from noise (measured 0.031
    # against 0.043 mean absolute difference outside the object)
    fresh = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    outside = [~np.asarray(instance_mask(inst, 64), dtype=bool) for inst in insts]
    photos_f = np.stack(photos).astype(np.float32) / 255

    def off_background(gen):
        return float(np.mean([np.abs(g - p)[m].mean() for g, p, m in zip(gen, photos_f, outside, strict=True)]))

    assert off_background(images) < 0.85 * off_background(fresh), (off_background(images), off_background(fresh))


@shipped
def test_shipped_generator_draws_each_requested_pattern(evaluator):
    """The embedded generator draws "with stripes", "with dots" and "with checks" as patterns the evaluator reads
    (measured on these 8 sketches each: 5, 3 and 5 of 8; the previous generator, without the gated pattern masks,
    7, 2 and 1, and the one before it, trained on object-frame patterns, 0 stripes of 8)."""
    from duetgen.generator import has_pattern_masks, has_pattern_waves
    from duetgen.pipelines import load_pipeline

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    assert has_pattern_waves(pipe.unet) and has_pattern_masks(pipe.unet) and pipe.conditioner.uses_pattern_gates
    right, colours = {}, 0
    for pattern in ("stripes", "dots", "checks"):
        insts, attrs, sketches = [], [], []
        for i in range(8):
            rng = np.random.default_rng([777_200, i])
            insts.append(world.sample_instance(rng))
            colour = list(world.COLOURS)[i % len(world.COLOURS)]
            attrs.append(world.Attributes(colour, pattern, ("plain", "painting")[i % 2]))
            sketches.append(world.render_sketch(insts[-1], 64, seed=int(rng.integers(2**31))))
        sk = torch.from_numpy(np.stack(sketches)).float().div(255)[:, None].expand(-1, 3, -1, -1)
        images = pipe(sketch=sk, text=[world.words(a) for a in attrs], num_inference_steps=25, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images  # fmt: skip
        read = evaluator.predict(images)
        right[pattern] = sum(p == pattern for p in read["pattern"])
        colours += sum(c == a.colour for c, a in zip(read["colour"], attrs, strict=True))
    # chance is 2 of 8 per pattern; the previous generator scores 10 of 24 with checks 1
    assert min(right.values()) >= 2 and sum(right.values()) >= 11, right  # measured: 5 + 3 + 5
    assert colours >= 22, colours  # measured: 24 of 24
