"""Two-step smoke runs of the stage-1 and stage-2 recipes on tiny settings, with resume."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO


def _run(script, *args, timeout=600):
    r = subprocess.run([sys.executable, str(REPO / "recipes" / script), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("world")
    cache = tmp / "cache.npz"
    out = tmp / "stage1"
    common = ["--out", str(out), "--arch", "duetgen-tiny", "--batch", "16", "--groups", "12", "--cache", str(cache),
              "--save-every", "2", "--log-every", "1", "--warmup", "1"]  # fmt: skip
    _run("train_world_clip.py", *common, "--steps", "2")
    # interrupted run continued: resume from step 2 to 3
    r = _run("train_world_clip.py", *common, "--steps", "3", "--resume")
    assert "resumed at step 2" in r.stdout
    return tmp, cache, out


def test_stage1_two_steps_resume_and_save(stage1):
    _, cache, out = stage1
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]  # the resumed run continued at step 2, not from 0
    assert (out / "encoder" / "config.json").is_file() and (out / "args.json").is_file()
    assert cache.is_file() and cache.with_suffix(".json").is_file()
    import duetgen

    enc = duetgen.load_encoder(out / "encoder")  # P_L saved at its CoOp initialisation, where stage 2 starts it
    saved = enc.prompt_tokens.detach().clone()
    enc.init_prompt_from_text()
    assert torch.equal(saved, enc.prompt_tokens)


@pytest.mark.parametrize("extra", [[], ["--caption-supervised", "--w-rt", "0", "--w-comp", "0"]])
def test_stage2_two_steps(stage1, extra):
    tmp, cache, s1 = stage1
    out = tmp / ("stage2" + ("_cs" if extra else ""))
    _run("train_duet.py", "--init", str(s1 / "encoder"), "--out", str(out), "--steps", "2", "--groups-per-batch", "4",
         "--groups", "12", "--cache", str(cache), "--eval-every", "2", "--eval-queries", "5", "--log-every", "1",
         "--warmup", "1", *extra)  # fmt: skip
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [0, 1]
    assert ("rt" in logs[0]) == (not extra) and "reg" in logs[0] and "tt" in logs[0]
    ev = json.loads((out / "eval.jsonl").read_text().splitlines()[-1])
    assert set(ev) >= {"sketch", "words", "sketch+words"}
    import duetgen

    enc = duetgen.load_encoder(out / "encoder")
    assert enc.visual_prompts.shape[0] == 3


def test_zero_shot_run_never_reads_the_full_cache(stage1):
    """A held-out split gets its own cache (without those shapes) and leaves the full set's cache untouched."""
    from duetgen import world_dataset as wd

    tmp, cache, s1 = stage1
    before = cache.read_bytes()
    out = tmp / "stage2_zs"
    _run("train_duet.py", "--init", str(s1 / "encoder"), "--out", str(out), "--steps", "1", "--groups-per-batch", "4",
         "--groups", "12", "--cache", str(cache), "--eval-every", "1", "--eval-queries", "4", "--log-every", "1",
         "--warmup", "1", "--holdout-shapes", "bell,drop,kite")  # fmt: skip
    split = wd.cache_path(cache, ("bell", "drop", "kite"))
    assert split != cache and split.is_file() and cache.read_bytes() == before
    groups = wd.WorldGroups.load(split)
    assert set(groups.pool) == set(wd.split_shapes("bell,drop,kite")[0])
    seen = {inst["shape"] for rec in groups.records for inst in rec["instances"]}
    assert seen and not seen & {"bell", "drop", "kite"}
    r = subprocess.run([sys.executable, str(REPO / "recipes" / "train_duet.py"), "--init", str(s1 / "encoder"),
                        "--out", str(tmp / "bad"), "--holdout-shapes", "bel"], capture_output=True, text=True,
                       cwd=REPO)  # fmt: skip
    assert r.returncode == 2 and "error: argument --holdout-shapes: shape='bel' is not a world shape" in r.stderr


def test_cache_is_rebuilt_for_another_shape_pool(tmp_path):
    from duetgen import world_dataset as wd

    path = tmp_path / "c.npz"
    full = wd.load_or_build(path, 6, seed=0, size=16)
    assert full.pool == wd.world.SHAPES
    part = wd.load_or_build(path, 6, seed=0, size=16, shapes=("star", "heart"))  # same file: must not reuse it
    assert part.pool == ("star", "heart")
    assert {i["shape"] for r in part.records for i in r["instances"]} <= {"star", "heart"}
    assert wd.WorldGroups.load(path).pool == ("star", "heart")


def test_cache_is_rebuilt_for_another_pattern_frame(tmp_path):
    """A cache of object-frame photos never serves a canvas-frame run (the generator's targets), nor the reverse;
    an older cache without the field reads as object frame, and a bad value is named."""
    import numpy as np

    from duetgen import world_dataset as wd

    path = tmp_path / "c.npz"
    obj = wd.load_or_build(path, 4, seed=0, size=16)
    canvas = wd.load_or_build(path, 4, seed=0, size=16, pattern_frame="canvas")
    assert (obj.pattern_frame, canvas.pattern_frame) == ("object", "canvas")
    assert wd.WorldGroups.load(path).pattern_frame == "canvas"
    assert canvas.records == obj.records and np.array_equal(canvas.sketches, obj.sketches)
    patterned = obj.records[0]["attrs"][0]["pattern"] != "solid"
    assert np.array_equal(canvas.photos[0, 0, 0], obj.photos[0, 0, 0]) != patterned
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(path, **{k: v for k, v in arrays.items() if k != "pattern_frame"})  # written before the field existed
    assert wd.WorldGroups.load(path).pattern_frame == "object"
    np.savez(path, **{**arrays, "pattern_frame": np.int64(7)})
    with pytest.raises(wd.DuetgenInputError, match="is damaged"):
        wd.WorldGroups.load(path)


def _stage1_recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_world_clip", REPO / "recipes" / "train_world_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shape_label_loss_classifies_among_the_shape_prompts(tiny_encoder):
    """UniCL's image-label term: photos against "a photo of a {shape}", sketches against "a sketch of a {shape}",
    over the training pool only (a held-out shape is not a class)."""
    import torch.nn.functional as F

    from duetgen import world

    loss_fn = _stage1_recipe().shape_label_loss
    enc = tiny_encoder
    pool = ("star", "heart", "cross")
    prompts = [f"a photo of a {world.SHAPE_NOUNS[s]}" for s in pool] + [
        f"a sketch of a {world.SHAPE_NOUNS[s]}" for s in pool
    ]
    with torch.no_grad():
        txt = enc.clip.encode_text(enc.tokenizer(prompts), normalize=True)
    # two photos (heart, cross) and one sketch (star), embedded exactly as their right prompt
    img = torch.stack([txt[1], txt[2], txt[3]])
    labels = torch.tensor([world.SHAPES.index(s) for s in ("heart", "cross", "star")])
    with torch.no_grad():
        got = loss_fn(enc, img, labels, 2, pool)
        scale = enc.clip.logit_scale.exp()
        logits = torch.cat([scale * img[:2] @ txt[:3].T, scale * img[2:] @ txt[3:].T])
        want = F.cross_entropy(logits, torch.tensor([1, 2, 0]))
        wrong = loss_fn(enc, img, labels[[1, 2, 0]], 2, pool)  # the same embeddings under the wrong labels
    assert torch.allclose(got, want, atol=1e-6)
    assert got < wrong


def test_stage1_label_term_is_logged_and_trains(stage1):
    tmp, cache, _ = stage1
    out = tmp / "stage1_label"
    _run("train_world_clip.py", "--out", str(out), "--arch", "duetgen-tiny", "--batch", "16", "--groups", "12",
         "--cache", str(cache), "--log-every", "1", "--warmup", "1", "--steps", "2",
         "--label-weight", "1")  # fmt: skip
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [0, 1]
    for r in logs:  # the logged total is the caption contrast plus the label term at weight 1
        assert abs(r["loss"] - (r["clip"] + r["label"])) < 2e-4 and r["label"] > 0


def test_stage2_continues_a_duet_encoder_with_its_prompts(stage1):
    """--init with a stage-2 encoder keeps its learned prompt P_L and visual prompts: nothing is reset."""
    import duetgen

    tmp, cache, s1 = stage1
    common = ["--steps", "1", "--groups-per-batch", "4", "--groups", "12", "--cache", str(cache), "--eval-every", "1",
              "--eval-queries", "4", "--log-every", "1", "--warmup", "1"]  # fmt: skip
    first = tmp / "duet_first"
    _run("train_duet.py", "--init", str(s1 / "encoder"), "--out", str(first), "--lr", "0.05", *common)
    more = tmp / "duet_more"
    r = _run("train_duet.py", "--init", str(first / "encoder"), "--out", str(more), "--lr", "0", *common)
    assert f"starting from {first / 'encoder'} with its visual prompts and P_L" in r.stdout
    a, b = duetgen.load_encoder(first / "encoder"), duetgen.load_encoder(more / "encoder")
    assert torch.equal(a.prompt_tokens, b.prompt_tokens) and torch.equal(a.visual_prompts, b.visual_prompts)
    fresh = duetgen.load_encoder(first / "encoder")
    fresh.init_prompt_from_text()
    assert not torch.equal(fresh.prompt_tokens, a.prompt_tokens)  # stage 2 moved P_L: a reset would show


def test_stage2_visual_blocks_train_v_s_last_blocks_at_their_own_rate(stage1):
    """--visual-blocks 1 --visual-lr 0.05 with --lr 0: only V's last transformer block and projection move."""
    import duetgen

    tmp, cache, s1 = stage1
    common = ["--steps", "1", "--groups-per-batch", "4", "--groups", "12", "--cache", str(cache), "--eval-every", "1",
              "--eval-queries", "4", "--log-every", "1", "--warmup", "1", "--lr", "0"]  # fmt: skip
    base = tmp / "duet_base"
    _run("train_duet.py", "--init", str(s1 / "encoder"), "--out", str(base), *common)
    out = tmp / "duet_vb"
    _run("train_duet.py", "--init", str(base / "encoder"), "--out", str(out), "--visual-blocks", "1",
         "--visual-lr", "0.05", *common)  # fmt: skip
    enc = duetgen.load_encoder(base / "encoder")
    a, b = enc.state_dict(), duetgen.load_encoder(out / "encoder").state_dict()
    last = f"clip.visual.transformer.resblocks.{len(enc.clip.visual.transformer.resblocks) - 1}."
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert last + "attn.in_proj_weight" in changed and "clip.visual.proj" in changed
    assert all(k.startswith(last) or k == "clip.visual.proj" for k in changed), changed
    r = subprocess.run([sys.executable, str(REPO / "recipes" / "train_duet.py"), "--init", str(s1 / "encoder"),
                        "--out", str(tmp / "bad_vb"), "--visual-blocks", "99", "--cache", str(cache),
                        "--groups", "12"],
                       capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert r.returncode != 0 and "--visual-blocks" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp / "bad_vb").exists()  # refused before the run folder is made
    r = subprocess.run([sys.executable, str(REPO / "recipes" / "train_duet.py"), "--init", str(tmp / "no_such"),
                        "--out", str(tmp / "bad_init"), "--cache", str(cache), "--groups", "12"],
                       capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("train_duet: error: model ") and "no_such" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp / "bad_init").exists(), r.stderr
