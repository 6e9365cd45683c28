"""The user recipes end to end: attribute transfer, batch sketch+text generation, scene retrieval.

Tiny real models (random weights) saved to a temp folder run every recipe's plumbing; the semantic checks need the
shipped embedded model and evaluator and are skipped while they are absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from PIL import Image

from duetgen import world
from duetgen.evaluator import EVALUATOR_DIR, WorldEvaluator

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def embedded_pipeline_present() -> bool:
    from duetgen.embedded import PIPELINE_DIR

    return (PIPELINE_DIR / "model_index.json").is_file() and (PIPELINE_DIR / "unet").is_dir()


needs_pipeline = pytest.mark.skipif(not embedded_pipeline_present(), reason="embedded pipeline not shipped yet")
needs_evaluator = pytest.mark.skipif(not (EVALUATOR_DIR / "config.json").is_file(), reason="evaluator not shipped yet")


@pytest.fixture(scope="module")
def tiny_pipe_dir(tmp_path_factory) -> Path:
    """A tiny DuetGenPipeline (32 px, random weights) saved with save_pretrained."""
    path = tmp_path_factory.mktemp("tiny") / "pipe"
    make_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_evaluator_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    ev = WorldEvaluator(channels=(4, 8, 8, 8, 8), decoder_channels=(8, 8, 8, 4), silhouette_channels=4,
                        polar_size=(8, 16))  # fmt: skip
    path = tmp_path_factory.mktemp("tiny") / "evaluator"
    ev.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def world_inputs(tmp_path_factory) -> dict:
    """Four world sketches and two world photos (128 px), plus an unreadable file."""
    d = tmp_path_factory.mktemp("inputs")
    sketches, photos = [], []
    for i in range(4):
        rng = np.random.default_rng([424_242, i])
        inst, attrs = world.sample_instance(rng), world.sample_attributes(rng)
        sketches.append(d / f"s{i}.png")
        Image.fromarray(world.render_sketch(inst, 128, seed=i)).save(sketches[-1])
        if i < 2:
            photos.append(d / f"p{i}.png")
            Image.fromarray(world.render_photo(inst, attrs, 128, seed=i)).save(photos[-1])
    (d / "bad.png").write_bytes(b"this is not an image")
    return {"dir": d, "sketches": sketches, "photos": photos, "bad": d / "bad.png"}


# ---------------------------------------------------------------------------------------------------------------
# attribute transfer
# ---------------------------------------------------------------------------------------------------------------


def test_attribute_transfer_end_to_end(tiny_pipe_dir, world_inputs, tmp_path):
    at = load_recipe("attribute_transfer")
    phrases = ["in pixel art", "with stripes"]
    argv = ["--model", str(tiny_pipe_dir), "--sketches", *map(str, world_inputs["sketches"][:2]),
            "--photos", str(world_inputs["photos"][0]), str(tmp_path / "missing.png"), "--phrases", *phrases,
            "--steps", "2", "--k", "2", "--gallery-size", "10", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    res = at.main(argv)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["pairs"] == res["pairs"] and len(res["pairs"]) == 3 * len(phrases)
    assert [f["input"] for f in res["failed_inputs"]] == [str(tmp_path / "missing.png")]
    gallery_paths = {str(p) for p in (Path(res["gallery"]).parent / "photos").glob("*.png")}
    assert len(gallery_paths) == 10
    for i, pair in enumerate(res["pairs"]):
        assert pair["phrase"] == phrases[i % 2] and pair["seed"] == i
        assert len(pair["retrieved"]) == 2 and {r["path"] for r in pair["retrieved"]} <= gallery_paths
        assert all("iou" in r for r in pair["retrieved"])  # verified by silhouette against the outline (default)
        assert pair["retrieved"][0]["score"] >= pair["retrieved"][1]["score"]
        assert Image.open(pair["generated"]).size == (32, 32)
    assert [p["kind"] for p in res["pairs"]] == ["sketch"] * 4 + ["photo"] * 2
    # a sketch composes with the phrase as typed; a photo's phrase is completed with the attributes read from it
    for pair in res["pairs"]:
        if pair["kind"] == "sketch":
            assert pair["words"] == pair["phrase"] and pair["read"] is None
        else:
            read = world.Attributes.from_dict(pair["read"])
            named = {"in pixel art": {"domain": "pixel art"}, "with stripes": {"pattern": "stripes"}}[pair["phrase"]]
            assert pair["words"] == world.words(world.Attributes(**{**read.to_dict(), **named}))
    # the phrase enters the query: the same input with two phrases ranks the gallery differently
    scores = [[r["score"] for r in p["retrieved"]] for p in res["pairs"][:2]]
    assert scores[0] != scores[1]
    sheet = Image.open(out / "sheet.png")
    assert sheet.size[1] == 18 + 6 * (96 + 4) + 4  # header + one row per pair
    # a second run reuses the cached gallery and reproduces the images (seeds are per pair)
    manifest = Path(res["gallery"]) / "manifest.json"
    before = manifest.stat().st_mtime_ns
    first = np.asarray(Image.open(res["pairs"][0]["generated"]))
    res2 = at.main(argv[:-1] + [str(tmp_path / "out2")])
    assert manifest.stat().st_mtime_ns == before and res2["gallery"] == res["gallery"]
    assert np.array_equal(first, np.asarray(Image.open(res2["pairs"][0]["generated"])))


def test_attribute_transfer_strength_starts_photos_from_themselves(tiny_pipe_dir, world_inputs, tmp_path):
    """--strength: photo inputs start from the photo (image-to-image); sketches, which have no pixels, do not."""
    at = load_recipe("attribute_transfer")
    base = ["--model", str(tiny_pipe_dir), "--sketches", str(world_inputs["sketches"][0]), "--photos",
            str(world_inputs["photos"][0]), "--phrases", "in blue", "--steps", "4", "--k", "1", "--gallery-size", "6",
            "--cache", str(tmp_path / "cache"), "--no-verify"]  # fmt: skip
    plain = at.main([*base, "--out", str(tmp_path / "plain")])
    start = at.main([*base, "--strength", "0.5", "--out", str(tmp_path / "start")])
    assert start["strength"] == 0.5 and plain["strength"] is None
    img = [[np.asarray(Image.open(p["generated"]), dtype=int) for p in r["pairs"]] for r in (plain, start)]
    assert [p["kind"] for p in start["pairs"]] == ["sketch", "photo"]
    assert np.array_equal(img[0][0], img[1][0])  # the sketch row is generated as before
    photo = np.asarray(Image.open(world_inputs["photos"][0]).convert("RGB").resize((32, 32)), dtype=int)
    assert np.abs(img[1][1] - photo).mean() < np.abs(img[0][1] - photo).mean()  # closer to the photo it started at
    with pytest.raises(SystemExit):
        at.parse_args(["--strength", "0"])


def test_attribute_transfer_best_of_picks_one_of_the_seeded_candidates(
    tiny_pipe_dir, world_inputs, tmp_path, monkeypatch
):
    """--best-of N: each pair's image is one of its N candidates, candidate j drawn with seed + i + j * 1,000,000;
    pipeline calls shrink so that rows x candidates stay within DUETGEN_MAX_IMAGES."""
    at = load_recipe("attribute_transfer")
    assert at.parse_args([]).best_of == 4  # the recipe's default
    monkeypatch.setenv("DUETGEN_MAX_IMAGES", "3")  # 4 pairs x 2 candidates would be 8 in one call
    base = ["--model", str(tiny_pipe_dir), "--sketches", *map(str, world_inputs["sketches"][:2]), "--phrases",
            "in blue", "at night", "--steps", "2", "--k", "1", "--gallery-size", "6", "--cache",
            str(tmp_path / "cache"), "--no-verify"]  # fmt: skip
    runs = {name: at.main([*base, *extra, "--out", str(tmp_path / name)])
            for name, extra in (("first", ["--best-of", "1"]), ("second", ["--best-of", "1", "--seed", "1000000"]),
                                ("best", ["--best-of", "2"]))}  # fmt: skip
    assert runs["best"]["best_of"] == 2
    for i, pair in enumerate(runs["best"]["pairs"]):
        got = np.asarray(Image.open(pair["generated"]), dtype=int)
        diffs = [np.abs(got - np.asarray(Image.open(runs[c]["pairs"][i]["generated"]), dtype=int)).max()
                 for c in ("first", "second")]  # fmt: skip
        assert min(diffs) <= 1 and max(diffs) > 1, diffs
    with pytest.raises(SystemExit):
        at.parse_args(["--best-of", "0"])
    with pytest.raises(SystemExit):
        at.parse_args(["--best-of", "4"])  # over DUETGEN_MAX_IMAGES


def test_attribute_transfer_evaluate_plumbing(tiny_pipe_dir, tiny_evaluator_dir, tmp_path):
    at = load_recipe("attribute_transfer")
    res = at.main(["--evaluate", "--model", str(tiny_pipe_dir), "--evaluator", str(tiny_evaluator_dir), "--n", "6",
                   "--steps", "2", "--out", str(tmp_path / "ev")])  # fmt: skip
    assert res["gallery_size"] == 4 * 6 and res["n"] == 6 and res["verify"]
    for name in ("retrieval", "generation", "real_photo_ceiling"):
        for key in ("attribute", "shape_kept", "success", "others_kept"):
            assert 0.0 <= res[name][key] <= 1.0
        assert res[name]["success"] <= min(res[name]["attribute"], res[name]["shape_kept"])
    assert [it["kind"] for it in res["items"]] == ["colour", "pattern", "domain"] * 2
    for it in res["items"]:  # exactly one attribute changes, and the phrase names the new value
        changed = [k for k in ("colour", "pattern", "domain") if it["source"][k] != it["target"][k]]
        assert changed == [it["kind"]]
        t = it["target"]
        domain = {"plain": "in a photo", "painting": "in a painting", "pixel art": "in pixel art", "night": "at night"}
        pattern = "solid" if t["pattern"] == "solid" else f"with {t['pattern']}"
        expected = {"colour": f"in {t['colour']}", "pattern": pattern, "domain": domain[t["domain"]]}
        assert it["phrase"] == expected[it["kind"]]
    lp = res["lpips"]
    assert (lp["available"] and lp["generation"] >= 0) or ("LPIPS" in lp["reason"] and not lp["available"])
    assert Image.open(tmp_path / "ev" / "sheet.png").size[1] == 18 + 6 * 100 + 4


@needs_pipeline
@needs_evaluator
def test_attribute_transfer_with_the_shipped_model(tmp_path):
    """With the embedded model, a photo's transfer keeps its pose and its other attributes: retrieval finds the exact
    target (the source's pose with the new attribute and the old others) and generation keeps what was not named.

    Measured at 96 sources (recipes/README.md): retrieval attribute 0.90, exact target in the top 5 0.99, others
    kept 0.93; generation others kept 0.76. With the bare phrase and the photo embedding they were 0.84, 0.43, 0.45
    and 0.31: the floors below sit between the two, far above chance (attribute: 1/8 to 1/4; the target among
    4 * 24 photos in the top 5: 5 %).
    """
    at = load_recipe("attribute_transfer")
    res = at.main(["--evaluate", "--n", "24", "--steps", "10", "--out", str(tmp_path / "ev")])
    assert res["real_photo_ceiling"]["success"] >= 0.85  # the evaluator reads real target photos right
    assert res["complete"] and res["photo_route"] == "sketch"
    assert res["read_accuracy"]["colour"] >= 0.85 and res["read_accuracy"]["domain"] >= 0.85, res["read_accuracy"]
    assert res["retrieval"]["attribute"] >= 0.7, res["retrieval"]
    assert res["retrieval"]["target_at_5"] >= 0.75 and res["retrieval"]["others_kept"] >= 0.75, res["retrieval"]
    # silhouette verification keeps the source's shape and pose (96 sources: shape kept 0.98, target at 1 0.91;
    # without it 0.73 and 0.68)
    assert res["verify"] and res["retrieval"]["shape_kept"] >= 0.85, res["retrieval"]
    assert res["retrieval"]["target_at_1"] >= 0.75, res["retrieval"]
    assert res["generation"]["others_kept"] >= 0.55, res["generation"]


# ---------------------------------------------------------------------------------------------------------------
# batch sketch + text generation
# ---------------------------------------------------------------------------------------------------------------


def write_rows(path: Path, inputs: dict, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["sketch,words,seed"] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*.png"))}


def test_batch_generation_resume_and_bad_rows(tiny_pipe_dir, world_inputs, tmp_path, capsys):
    gen = load_recipe("sketch_text_generation")
    s = [str(p) for p in world_inputs["sketches"]]
    rows = write_rows(tmp_path / "rows.csv", world_inputs, [
        (s[0], "red with stripes in pixel art", "7"),
        (s[1], "solid blue at night", ""),
        (str(tmp_path / "missing.png"), "green with dots", ""),  # missing file
        ("", "", ""),  # no sketch, no words
        (s[2], "", ""),  # sketch only
        ("", "pink with checks in a painting", "3"),  # text only
        (str(world_inputs["bad"]), "red", ""),  # unreadable sketch
        (s[3], "yellow with dots in a photo", "11"),
    ])  # fmt: skip
    out = tmp_path / "out"
    common = ["--out", str(out), "--model", str(tiny_pipe_dir), "--steps", "2", "--seed", "100"]
    assert gen.main([str(rows), *common, "--limit", "2"]) == 0
    first = mtimes(out / "images")
    assert len(first) == 2
    time.sleep(0.05)
    capsys.readouterr()
    assert gen.main([str(rows), *common, "--batch", "2"]) == 0
    captured = capsys.readouterr()
    assert "done 3, skipped 2 (already done), failed 3 of 8 rows" in captured.out
    after = mtimes(out / "images")
    assert {k: after[k] for k in first} == first  # finished outputs untouched
    assert len(after) == 5 and not list((out / "images").glob(".*"))
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["row"] for m in manifest] == list(range(8))  # compacted: one line per row
    status = {m["row"]: m["status"] for m in manifest}
    assert [r for r, st in status.items() if st == "failed"] == [2, 3, 6]
    errors = {m["row"]: m.get("error", "") for m in manifest}
    assert "missing.png" in errors[2] and "no sketch and no words" in errors[3] and "bad.png" in errors[6]
    assert [m["seed"] for m in manifest if m["status"] == "done"] == [7, 101, 104, 3, 11]  # given or --seed + row
    for m in manifest:
        if m["status"] == "done":
            assert Image.open(out / m["output"]).size == (32, 32)
    assert Image.open(out / "grid.png").size[0] > 0
    # every row's image depends on its seed alone, not on the batch it was generated in
    alone = tmp_path / "alone"
    assert gen.main([str(rows), "--out", str(alone), "--model", str(tiny_pipe_dir), "--steps", "2", "--seed", "100",
                     "--batch", "1"]) == 0  # fmt: skip
    for name in after:
        a = np.asarray(Image.open(out / "images" / name), dtype=int)
        b = np.asarray(Image.open(alone / "images" / name), dtype=int)
        assert np.abs(a - b).max() <= 2, name


def test_batch_generation_jsonl_and_all_failed(tiny_pipe_dir, world_inputs, tmp_path, capsys):
    gen = load_recipe("sketch_text_generation")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join([json.dumps({"sketch": "s0.png", "words": "red", "seed": 5}), "{not json",
                               json.dumps({"words": "blue at night"})]) + "\n")  # fmt: skip
    # relative sketch paths are relative to the rows file: copy one sketch next to it
    (tmp_path / "s0.png").write_bytes(world_inputs["sketches"][0].read_bytes())
    out = tmp_path / "out"
    assert gen.main([str(rows), "--out", str(out), "--model", str(tiny_pipe_dir), "--steps", "1"]) == 0
    assert "done 2, skipped 0 (already done), failed 1 of 3 rows" in capsys.readouterr().out
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["status"] for m in manifest] == ["done", "failed", "done"] and manifest[2]["seed"] == 2
    bad = tmp_path / "bad.csv"
    write_rows(bad, world_inputs, [("", "", ""), (str(tmp_path / "nope.png"), "red", "")])
    assert gen.main([str(bad), "--out", str(tmp_path / "bad_out"), "--model", str(tiny_pipe_dir)]) == 1
    assert "done 0, skipped 0 (already done), failed 2 of 2 rows" in capsys.readouterr().out


def test_batch_generation_best_of_is_a_new_output_and_one_of_its_candidates(
    tiny_pipe_dir, world_inputs, tmp_path, monkeypatch
):
    """--best-of 2: each row's image is one of its two candidates (seeds s and s + 1,000,000); the file name changes
    with it, so a folder generated without it is not mistaken for done. Calls shrink to fit DUETGEN_MAX_IMAGES."""
    monkeypatch.setenv("DUETGEN_MAX_IMAGES", "3")  # 2 rows x 2 candidates would be 4 in one call
    gen = load_recipe("sketch_text_generation")
    s = [str(p) for p in world_inputs["sketches"]]
    rows = write_rows(tmp_path / "rows.csv", world_inputs, [(s[0], "red", "5"), (s[1], "blue at night", "6")])
    shifted = write_rows(tmp_path / "shifted.csv", world_inputs,
                         [(s[0], "red", "1000005"), (s[1], "blue at night", "1000006")])  # fmt: skip
    common = ["--model", str(tiny_pipe_dir), "--steps", "2"]
    out = tmp_path / "out"
    assert gen.main([str(rows), "--out", str(out), *common]) == 0
    assert gen.main([str(shifted), "--out", str(tmp_path / "second"), *common]) == 0
    assert gen.main([str(rows), "--out", str(out), *common, "--best-of", "2"]) == 0  # same folder: new files
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    first = sorted((out / "images").glob("*.png"))
    assert len(first) == 4 and len(manifest) == 2
    for m in manifest:
        best = np.asarray(Image.open(out / m["output"]), dtype=int)
        plain = [p for p in first if p.name.startswith(f"{m['row']:05d}_") and p.name != Path(m["output"]).name]
        second = sorted((tmp_path / "second" / "images").glob(f"{m['row']:05d}_*.png"))
        diffs = [np.abs(best - np.asarray(Image.open(c), dtype=int)).max() for c in (*plain, *second)]
        assert len(diffs) == 2 and min(diffs) <= 2, diffs
    with pytest.raises(SystemExit):
        gen.parse_args([str(rows), "--out", str(out), "--best-of", "0"])


def test_batch_generation_survives_a_kill(tiny_pipe_dir, world_inputs, tmp_path):
    """Kill the recipe after its first outputs appear; a rerun keeps them and completes the rest."""
    s = [str(p) for p in world_inputs["sketches"]]
    rows = write_rows(tmp_path / "rows.csv", world_inputs, [(s[i % 4], f"word {i}", "") for i in range(10)])
    out = tmp_path / "out"
    cmd = [sys.executable, str(RECIPES / "sketch_text_generation.py"), str(rows), "--out", str(out), "--model",
           str(tiny_pipe_dir), "--steps", "40", "--batch", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600  # a safety bound only: on an idle machine the first images appear in seconds
    while time.time() < deadline and len(list((out / "images").glob("*.png"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = mtimes(out / "images")
    assert 2 <= len(before) < 10, "the run finished before it could be interrupted"
    r = subprocess.run(cmd[:-4] + ["--steps", "40", "--batch", "4"], capture_output=True, text=True, env=env,
                       timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"skipped {len(before)} (already done), failed 0 of 10 rows" in r.stdout
    after = mtimes(out / "images")
    assert len(after) == 10 and {k: after[k] for k in before} == before
    assert not list((out / "images").glob(".*"))  # no temp file left behind
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["row"] for m in manifest] == list(range(10)) and all(m["status"] == "done" for m in manifest)


@needs_pipeline
def test_batch_generation_with_the_shipped_model(world_inputs, tmp_path):
    gen = load_recipe("sketch_text_generation")
    rows = write_rows(tmp_path / "rows.csv", world_inputs, [(str(world_inputs["sketches"][0]), "solid red", "1")])
    assert gen.main([str(rows), "--out", str(tmp_path / "out"), "--steps", "5"]) == 0
    (image,) = (tmp_path / "out" / "images").glob("*.png")
    assert Image.open(image).size[0] >= 32


# ---------------------------------------------------------------------------------------------------------------
# scene retrieval
# ---------------------------------------------------------------------------------------------------------------


def test_scene_retrieval_recipe_runs(tiny_pipe_dir, tmp_path):
    sr = load_recipe("scene_retrieval")
    res = sr.main(["--model", str(tiny_pipe_dir / "encoder"), "--scenes", "6", "--queries", "4", "--size", "64",
                   "--work", str(tmp_path / "work"), "--out", str(tmp_path / "scene.json"), "--sheet",
                   str(tmp_path / "sheet.png"), "--sheet-rows", "2"])  # fmt: skip
    saved = json.loads((tmp_path / "scene.json").read_text())
    for name in ("sketch", "sketch+words"):
        assert 0.0 <= saved[name]["map_regions"] <= 1.0 and 0.0 <= saved[name]["map_global"] <= 1.0
    assert res["regions_per_item"] == 35
    for name in ("sketch", "sketch+words"):  # the object-verified ranking (on by default)
        assert 0.0 <= saved[name]["map_verified"] <= 1.0
    assert Image.open(tmp_path / "sheet.png").size == (6 + 134 * 5, 16 + 6 + 134 * 2)  # sketch, words, 3 scenes
    for bad in (["--sheet-rows", "0"], ["--verify-weight", "-1"], ["--queries", "0"]):
        with pytest.raises(SystemExit):
            sr.parse_args(bad)


@needs_pipeline
def test_scene_retrieval_verified_by_objects_with_the_embedded_encoder(tmp_path):
    """Scenes re-scored by their best object (rotation-free shape agreement + the colour read from the object) find
    the scenes holding a sketched object far better than the best region does. Measured at 60 scenes / 30 queries
    (seeds 0 and 1): with a colour word 0.88-0.93 against 0.22-0.23; sketch alone 0.88-0.89 against 0.29-0.33
    (300 / 150: recipes/README)."""
    sr = load_recipe("scene_retrieval")
    res = sr.main(["--scenes", "60", "--queries", "30", "--work", str(tmp_path / "work")])
    words, sketch = res["sketch+words"], res["sketch"]
    assert words["map_verified"] >= 0.75 and words["map_verified"] >= 3 * words["map_regions"], words
    assert sketch["map_verified"] >= 0.75 and sketch["map_verified"] >= 2 * sketch["map_regions"], sketch


def _to_fp16(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    for f in folder.rglob("*.safetensors"):
        save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(f).items()}, f)


def test_export_embedded_installs_a_replacement_encoder_and_refuses_bad_pipelines(
    tiny_pipe_dir, tmp_path, capsys, monkeypatch
):
    """export_embedded.py checks everything before it replaces anything: an fp32 pipeline leaves the installed one as
    it was; ``--encoder`` installs another encoder's weights (as fp16) in the pipeline's place."""
    import duetgen
    from duetgen.pipelines import load_pipeline

    ex = load_recipe("export_embedded")
    dest = tmp_path / "installed"
    dest.mkdir()
    (dest / "model_index.json").write_text("{}")  # stands for the pipeline installed before
    assert ex.main([str(tiny_pipe_dir), "--dest", str(dest)]) == 1  # the tiny pipeline is saved in float32
    assert "fp16" in capsys.readouterr().err and (dest / "model_index.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["installed"]  # no temp folder left behind

    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(tiny_pipe_dir, src, dirs_exist_ok=True)
    _to_fp16(src)
    monkeypatch.setattr(ex, "BUDGET_MB", 0.01)
    assert ex.main([str(src), "--dest", str(dest)]) == 1
    assert "budget" in capsys.readouterr().err and (dest / "model_index.json").read_text() == "{}"
    monkeypatch.undo()
    other = duetgen.load_encoder(tiny_pipe_dir / "encoder")
    with torch.no_grad():
        other.visual_prompts.add_(1.0)  # a refined encoder: the same architecture, other weights
    other.save_pretrained(str(tmp_path / "refined"))  # float32: the recipe converts it
    assert ex.main([str(src), "--encoder", str(tmp_path / "refined"), "--dest", str(dest)]) == 0
    installed = load_pipeline(dest).encoder.visual_prompts.float()
    assert torch.allclose(installed, other.visual_prompts.half().float())
    assert not torch.allclose(installed, load_pipeline(src).encoder.visual_prompts.float())
    assert ex._problem(dest) is None  # every shipped file fp16 safetensors
    assert json.loads((dest / "encoder" / "config.json").read_text())["_name_or_path"] == str(dest / "encoder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["installed", "refined", "src"]

    # a missing encoder folder, or one of another architecture: one line, exit 2, the installed pipeline untouched
    from duetgen import ComposedQueryEncoder
    from duetgen.backbones import get_clip_config

    ComposedQueryEncoder(get_clip_config("duetgen-world"), backbone="duetgen-world").save_pretrained(tmp_path / "big")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "big" not in p.parts)
    for bad, says in ((tmp_path / "missing", "neither a folder"), (tmp_path / "big", "not the architecture")):
        assert ex.main([str(src), "--encoder", str(bad), "--dest", str(dest)]) == 2
        err = capsys.readouterr().err
        assert says in err and "nothing was installed" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "big" not in p.parts) == before


def _script_commands(script: Path) -> list[list[str]]:
    """The ``python recipes/NAME.py ...`` commands of a bash recipe, continuation lines joined, comments dropped."""
    import shlex

    text = "\n".join(line.split(" #")[0] for line in script.read_text().splitlines() if not line.startswith("#"))
    cmds = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        if len(words) >= 2 and words[0] == "python" and words[1].startswith("recipes/"):
            cmds.append(words[1:])
    return cmds


def test_train_embedded_script_commands_parse_and_chain(tmp_path):
    """Every command of recipes/train_embedded.sh parses with its recipe's own argument parser (a renamed flag fails
    here, not an hour into a retrain), each stage starts from what the one before wrote, and a bad option is a
    one-line error before anything runs."""
    from duetgen.embedded import PIPELINE_DIR

    script = RECIPES / "train_embedded.sh"
    cmds = _script_commands(script)
    names = [Path(c[0]).stem for c in cmds]
    assert names == ["train_world_clip", "train_duet", "train_duet", *["train_generator"] * 7, "export_embedded"]
    run = tmp_path / "run"
    outs = {}
    for cmd in cmds[:-1]:
        argv = [a.replace("$RUN", str(run)) for a in cmd[1:]]
        inits = [argv[i + 1] for i, a in enumerate(argv) if a in ("--init", "--encoder")]
        assert all(i.replace(str(run) + "/", "").split("/")[0] in outs.values() for i in inits), (cmd, outs)
        if Path(cmd[0]).stem == "train_generator" and "--init" in argv:  # the parser checks the folder exists
            argv[argv.index("--init") + 1] = str(PIPELINE_DIR)
        args = load_recipe(Path(cmd[0]).stem).parse_args(argv)
        outs[len(outs)] = Path(args.out).name
        assert "--resume" in argv  # rerunning the script after a crash continues every stage
    assert outs[2] == "stage2b" and cmds[-1][1:] == ["$RUN/generator7/pipeline", "--encoder", "$RUN/stage2b/encoder"]

    r = subprocess.run(["bash", str(script), str(run), "--bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not run.exists()


def test_benchmarks_name_a_bad_model_in_one_line(tmp_path):
    """A benchmark given a model folder that does not exist says so in one line (exit 2), not with a traceback."""
    scripts = ["bench_world_duet", "bench_scene_verify", "bench_generation_fidelity", "bench_generation_speed"]
    bad = str(tmp_path / "no_such_model")

    def start(s: str) -> subprocess.Popen:
        out = str(tmp_path / f"{s}.json")
        cmd = [sys.executable, str(REPO / "benchmarks" / f"{s}.py"), "--model", bad, "--out", out]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)

    procs = {s: start(s) for s in scripts}  # side by side: each spends its time importing torch
    for s, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (s, err[-2000:])
        assert err.startswith(f"{s}: error: ") and bad in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())  # nothing written
