"""``duetgen index`` and ``duetgen retrieve`` end to end: real files, the real parser, JSON output, contact sheet,
incremental re-indexing and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import duetgen
from duetgen import world
from duetgen.backbones import get_clip_config
from duetgen.cli import main
from duetgen.embedded import ENCODER_DIR

REPO = Path(__file__).resolve().parents[1]
HAS_EMBEDDED = (ENCODER_DIR / "config.json").exists()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny encoder folder, a folder of world photos and a sketch file."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    enc = duetgen.ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny").eval()
    enc.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    (root / "photos" / "more").mkdir(parents=True)
    for i in range(14):
        inst, attrs = world.sample_instance(rng), world.sample_attributes(rng)
        sub = "more/" if i % 2 else ""
        Image.fromarray(world.render_photo(inst, attrs, size=48, seed=i)).save(root / "photos" / f"{sub}p{i:02d}.png")
    Image.fromarray(world.render_sketch(world.sample_instance(rng, "star"), size=64)).save(root / "star.png")
    return root


def run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_index_then_retrieve_json_and_sheet(setup, capsys, tmp_path):
    gal = tmp_path / "g"
    rc, out, err = run(["index", str(setup / "photos"), "--out", str(gal), "--model", str(setup / "model"),
                        "--batch-size", "4", "--num-workers", "0"], capsys)  # fmt: skip
    assert rc == 0, err
    assert "indexed 14 images" in out and "indexing" in err  # summary and progress bar
    manifest = json.loads((gal / "manifest.json").read_text())
    assert manifest["counts"]["items"] == 14 and manifest["model_source"] == str((setup / "model").resolve())

    sheet = tmp_path / "sheet.png"
    rc, out, err = run(["retrieve", "--sketch", str(setup / "star.png"), "--text", "in red", "--gallery", str(gal),
                        "-k", "5", "--json", "--sheet", str(sheet)], capsys)  # fmt: skip
    assert rc == 0, err
    payload = json.loads(out)
    res = payload["results"]
    assert [r["rank"] for r in res] == [1, 2, 3, 4, 5]
    assert [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)
    assert all(Path(r["path"]).is_file() and isinstance(r["id"], int) for r in res)
    assert payload["query"] == {"sketch": str(setup / "star.png"), "text": "in red"}

    # the same query through the library gives the same ranking (no --model: the gallery's recorded model is used)
    from duetgen.gallery import Gallery
    from duetgen.sketch_input import load_sketch

    enc = duetgen.load_encoder(setup / "model")
    sk = load_sketch(setup / "star.png", fit=enc.config.sketch_fit, size=enc.image_size)
    with torch.no_grad():
        q = enc.encode_query(sk[None], ["in red"])
    lib = Gallery.open(gal, enc).search(q, 5)[0]
    assert [r.path for r in lib] == [r["path"] for r in res]

    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.size == (6 * (128 + 12), 1 * (128 + 12 + 30))
        arr = np.asarray(im.convert("RGB"))
    assert arr[6:134, 6:134].min() < 50  # the sketch's ink is in the first cell
    assert arr[6:134, 146:274].std() > 10  # a photo thumbnail in the second

    # words only, plain text output
    rc, out, err = run(["retrieve", "--text", "red with stripes", "--gallery", str(gal), "-k", "3"], capsys)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1" and Path(lines[0].split()[2]).is_file()


def test_reindex_updates_incrementally(setup, capsys, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((setup / "photos").rglob("*.png"), key=lambda p: p.name)[:6]:
        (photos / p.name).write_bytes(p.read_bytes())
    gal = tmp_path / "g"
    args = ["index", str(photos), "--out", str(gal), "--model", str(setup / "model"), "--num-workers", "0", "--quiet"]
    assert run(args, capsys)[0] == 0
    (photos / "p00.png").unlink()
    (photos / "new.png").write_bytes((setup / "star.png").read_bytes())
    rc, out, _ = run(args, capsys)
    assert rc == 0 and "1 added, 1 removed, 6 items" in out
    items = [
        str((gal / json.loads(line)["path"]).resolve()) for line in (gal / "items.jsonl").read_text().splitlines()
    ]
    assert str(photos / "new.png") in items and str(photos / "p00.png") not in items
    rc, _, err = run([*args, "--regions"], capsys)
    assert rc == 2 and "--rebuild" in err
    assert run([*args, "--regions", "--rebuild"], capsys)[0] == 0
    assert json.loads((gal / "manifest.json").read_text())["regions"]["per_item"] == 35
    rc, out, err = run(["retrieve", "--sketch", str(setup / "star.png"), "--gallery", str(gal), "--regions",
                        "--json", "-k", "2"], capsys)  # fmt: skip
    assert rc == 0, err
    assert all(len(r["box"]) == 4 for r in json.loads(out)["results"])
    # --verify with --regions: each scene re-scored by its best object (its box, its shape agreement)
    rc, out, err = run(["retrieve", "--sketch", str(setup / "star.png"), "--gallery", str(gal), "--regions",
                        "--verify", "--verify-weight", "2", "--json", "-k", "3"], capsys)  # fmt: skip
    assert rc == 0, err
    payload = json.loads(out)
    assert payload["verify_weight"] == 2.0 and len(payload["results"]) == 3
    found = [r for r in payload["results"] if "iou" in r]  # photos where objects were found
    assert found and all(-1 <= r["iou"] <= 1 and len(r["box"]) == 4 and r["region"] is None for r in found)
    # a sketch alone scores each object by its shape: the score is weight x shape agreement
    assert all(abs(r["score"] - 2.0 * r["iou"]) < 1e-5 for r in found)


def test_errors_are_one_line_exit_2(setup, capsys, tmp_path):
    gal = tmp_path / "g"
    assert run(["index", str(setup / "photos"), "--out", str(gal), "--model", str(setup / "model"), "--quiet",
                "--num-workers", "0"], capsys)[0] == 0  # fmt: skip
    cases = [
        (["retrieve", "--gallery", str(gal)], "needs --sketch, --text or both"),
        (["retrieve", "--text", "red", "--gallery", str(tmp_path / "none")], "is not a folder"),
        (["retrieve", "--sketch", str(tmp_path / "missing.png"), "--gallery", str(gal)], "missing.png"),
        (["retrieve", "--text", "red", "--gallery", str(gal), "--model", "duetgen-tiny"], "built with encoder"),
        (["retrieve", "--text", "red", "--gallery", str(gal), "-k", "0"], "-k must be >= 1"),
        (["index", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--model", str(setup / "model")],
         "is not a folder"),
        (["retrieve", "--text", "red", "--gallery", str(setup / "photos")], "not a gallery"),
        (["retrieve", "--text", "red", "--gallery", str(gal), "--verify"], "--verify compares the photos with"),
        (["retrieve", "--sketch", str(setup / "star.png"), "--gallery", str(gal), "--verify-weight", "1"],
         "--verify-weight goes with --verify"),
        (["retrieve", "--sketch", str(setup / "star.png"), "--gallery", str(gal), "--verify", "--verify-weight",
          "-1"], "verification weight must be"),
        (["retrieve", "--sketch", str(setup / "star.png"), "--gallery", str(gal), "--verify", "--regions"],
         "has no region embeddings"),
    ]  # fmt: skip
    for argv, needle in cases:
        rc, _, err = run(argv, capsys)
        assert rc == 2, argv
        assert err.count("\n") == 1 and err.startswith("duetgen: error:") and needle in err, err


def test_console_script_exit_status(setup, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    entry = "import sys; from duetgen.cli import main; sys.exit(main())"  # what the `duetgen` console script runs
    proc = subprocess.run([sys.executable, "-c", entry, "retrieve", "--text", "red", "--gallery",
                           str(tmp_path / "none")], capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("duetgen: error:") and "Traceback" not in proc.stderr


@pytest.mark.skipif(not HAS_EMBEDDED, reason="needs the embedded encoder (duetgen/embedded/encoder)")
def test_embedded_sketch_and_words_find_the_photo(tmp_path, capsys):
    rng = np.random.default_rng(5)
    photos = tmp_path / "photos"
    photos.mkdir()
    pairs = []
    for i in range(40):
        inst, attrs = world.sample_instance(rng), world.sample_attributes(rng)
        Image.fromarray(world.render_photo(inst, attrs, size=64, seed=i)).save(photos / f"p{i:02d}.png")
        pairs.append((inst, attrs))
    assert run(["index", str(photos), "--out", str(tmp_path / "g"), "--quiet"], capsys)[0] == 0
    hits = 0
    for i in range(0, 40, 4):
        inst, attrs = pairs[i]
        Image.fromarray(world.render_sketch(inst, size=64, seed=99)).save(tmp_path / "q.png")
        rc, out, err = run(["retrieve", "--sketch", str(tmp_path / "q.png"), "--text", world.words(attrs),
                            "--gallery", str(tmp_path / "g"), "-k", "5", "--json"], capsys)  # fmt: skip
        assert rc == 0, err
        hits += any(Path(r["path"]).name == f"p{i:02d}.png" for r in json.loads(out)["results"])
    assert hits >= 7  # Acc@5 >= 0.7 on 10 queries


@pytest.mark.skipif(not HAS_EMBEDDED, reason="needs the embedded encoder (duetgen/embedded/encoder)")
def test_verify_tells_poses_of_one_shape_apart(tmp_path, capsys):
    """Each query's photo among three photos of the same shape and attributes in other poses: --verify re-ranks by
    the sketch's silhouette and finds it at rank 1."""
    rng = np.random.default_rng(7)
    photos = tmp_path / "photos"
    photos.mkdir()
    queries = []
    for q in range(8):
        inst, attrs = world.sample_instance(rng), world.sample_attributes(rng, domain="plain")
        for j, pose in enumerate([inst, *world.pose_variants(inst, 3, rng)]):
            Image.fromarray(world.render_photo(pose, attrs, size=64, seed=q * 4 + j)).save(photos / f"q{q}_{j}.png")
        queries.append((inst, attrs))
    assert run(["index", str(photos), "--out", str(tmp_path / "g"), "--quiet"], capsys)[0] == 0
    top1 = {False: 0, True: 0}
    for q, (inst, attrs) in enumerate(queries):
        Image.fromarray(world.render_sketch(inst, size=64, seed=99)).save(tmp_path / "s.png")
        for verify in (False, True):
            argv = ["retrieve", "--sketch", str(tmp_path / "s.png"), "--text", world.words(attrs), "--gallery",
                    str(tmp_path / "g"), "-k", "3", "--json"] + (["--verify"] if verify else [])  # fmt: skip
            rc, out, err = run(argv, capsys)
            assert rc == 0, err
            res = json.loads(out)
            top1[verify] += Path(res["results"][0]["path"]).name == f"q{q}_0.png"
            assert ("iou" in res["results"][0]) == verify and res["verify_weight"] == (0.3 if verify else None)
    assert top1[True] >= 7 and top1[True] > top1[False], top1
