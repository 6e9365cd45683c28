"""Request limits (duetgen/limits.py, docs/limits.md): each is enforced where requests come in, with a one-line
DuetgenInputError naming the limit and the variable that changes it, and setting the variable changes it."""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from PIL import Image

import duetgen
from duetgen import limits
from duetgen.backbones import get_clip_config
from duetgen.cli import main
from duetgen.errors import DuetgenInputError
from duetgen.gallery import Gallery

REPO = Path(__file__).resolve().parents[1]
ALL_VARS = [*limits.ENV.values(), *limits.SKETCH_ENV.values()]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ALL_VARS:
        monkeypatch.delenv(var, raising=False)


def one_line_naming(err: pytest.ExceptionInfo, var: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and var in msg and "over the limit" in msg, msg


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return duetgen.ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny",
                                        sketch_fit="canvas").eval()  # fmt: skip


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(random_null=False)


@pytest.fixture(scope="module")
def gallery():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    items = [{"id": i, "path": f"/p/{i}.png", "w": 8, "h": 8} for i in range(30)]
    return Gallery(emb, items, {"backbone": "synthetic", "embed_dim": 16, "fingerprint": "0"})


# ---------------------------------------------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------------------------------------------


def test_defaults_and_configuration(monkeypatch):
    assert limits.current() == limits.DEFAULTS == limits.Limits()
    assert limits.current().max_k == 1000 and limits.current().max_images == 64
    monkeypatch.setenv("DUETGEN_MAX_K", "5000")
    monkeypatch.setenv("DUETGEN_MAX_BATCH", " 8 ")
    assert limits.current().max_k == 5000 and limits.current().max_batch == 8
    for bad in ("lots", "0", "-3", "1.5"):
        monkeypatch.setenv("DUETGEN_MAX_K", bad)
        with pytest.raises(DuetgenInputError, match="DUETGEN_MAX_K"):
            limits.current()
    monkeypatch.setenv("DUETGEN_MAX_K", "")  # empty: the default
    assert limits.current().max_k == 1000
    with pytest.raises(DuetgenInputError) as err:
        limits.check("max_k", 1001, "-k")
    one_line_naming(err, "DUETGEN_MAX_K")
    assert limits.check("max_k", 1000, "-k") == 1000


def test_sketch_limits_are_configurable(monkeypatch):
    from duetgen.sketch_input import SketchLimits

    assert limits.sketch_limits() == SketchLimits()
    monkeypatch.setenv("DUETGEN_MAX_PIXELS", "1000")
    monkeypatch.setenv("DUETGEN_MAX_FILE_MB", "2")
    monkeypatch.setenv("DUETGEN_MAX_STROKES", "7")
    got = limits.sketch_limits()
    assert (got.max_pixels, got.max_file_bytes, got.max_strokes) == (1000, 2 * 1024 * 1024, 7)
    assert got.max_points == SketchLimits().max_points


# ---------------------------------------------------------------------------------------------------------------
# gallery requests
# ---------------------------------------------------------------------------------------------------------------


def test_gallery_search_k_and_queries(gallery, monkeypatch):
    q = gallery.embeddings_f32()[:3]
    assert len(gallery.search(q, k=1000)[0]) == 30  # at the limit: fine (capped at the gallery size)
    with pytest.raises(DuetgenInputError) as err:
        gallery.search(q, k=1001)
    one_line_naming(err, "DUETGEN_MAX_K")
    with pytest.raises(DuetgenInputError, match="k must be an integer >= 1"):
        gallery.search(q, k=0)
    monkeypatch.setenv("DUETGEN_MAX_K", "5")
    with pytest.raises(DuetgenInputError, match="DUETGEN_MAX_K"):
        gallery.search(q, k=6)
    assert [len(r) for r in gallery.search(q, k=5)] == [5, 5, 5]

    many = np.repeat(q[:1], 1025, axis=0)
    with pytest.raises(DuetgenInputError) as err:
        gallery.search(many, k=1)
    one_line_naming(err, "DUETGEN_MAX_QUERIES")
    monkeypatch.setenv("DUETGEN_MAX_QUERIES", "2000")
    assert len(gallery.search(many, k=1)) == 1025
    monkeypatch.setenv("DUETGEN_MAX_QUERIES", "2")
    with pytest.raises(DuetgenInputError, match="DUETGEN_MAX_QUERIES"):
        gallery.search(torch.from_numpy(q), k=1)  # tensors count the same
    assert gallery.search(q[0], k=1)[0].id == 0  # a single (D,) query is one query


def test_scene_search_is_limited_too(gallery, monkeypatch):
    monkeypatch.setenv("DUETGEN_MAX_K", "3")
    with pytest.raises(DuetgenInputError, match="DUETGEN_MAX_K"):  # checked before the regions are looked at
        gallery.search(gallery.embeddings_f32()[:1], k=4, regions=True)


def test_cli_retrieve_and_index_limits(tmp_path, encoder, capsys, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(photos / f"{i}.png")
    enc_dir = tmp_path / "enc"
    encoder.save_pretrained(enc_dir)
    out = tmp_path / "g"
    assert main(["index", str(photos), "--out", str(out), "--model", str(enc_dir), "--num-workers", "0",
                 "--batch-size", "257", "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--batch-size: 257" in err and "DUETGEN_MAX_BATCH" in err
    monkeypatch.setenv("DUETGEN_MAX_BATCH", "512")
    assert main(["index", str(photos), "--out", str(out), "--model", str(enc_dir), "--num-workers", "0",
                 "--batch-size", "257", "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()

    assert main(["retrieve", "--text", "red", "--gallery", str(out), "-k", "1001"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "-k: 1,001 results per query" in err and "DUETGEN_MAX_K" in err
    assert main(["retrieve", "--text", "red " * 400, "--gallery", str(out), "-k", "2"]) == 2
    assert "DUETGEN_MAX_TEXT_CHARS" in capsys.readouterr().err
    assert main(["retrieve", "--text", "red", "--gallery", str(out), "-k", "2", "--json"]) == 0
    capsys.readouterr()

    # sketch limits apply to the sketch file
    sketch = tmp_path / "sketch.png"
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(sketch)
    monkeypatch.setenv("DUETGEN_MAX_PIXELS", "1000")
    assert main(["retrieve", "--sketch", str(sketch), "--gallery", str(out)]) == 2
    err = capsys.readouterr().err
    assert "over the limit of 1,000 pixels" in err, err


# ---------------------------------------------------------------------------------------------------------------
# generation requests
# ---------------------------------------------------------------------------------------------------------------


def test_cli_generate_limits_fail_before_loading_a_model(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "x.png")
    start = time.perf_counter()
    for argv, var in (
        (["--num-images", "65"], "DUETGEN_MAX_IMAGES"),
        (["--steps", "1001"], "DUETGEN_MAX_STEPS"),
        (["--text", "x" * 1001], "DUETGEN_MAX_TEXT_CHARS"),
    ):
        args = ["generate", "--out", out, "--model", str(tmp_path / "no-such-model"), *argv]
        if "--text" not in argv:
            args += ["--text", "red"]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("duetgen: error:") and err.count("\n") == 0 and var in err, err
    assert time.perf_counter() - start < 5  # refused up front, no model loaded
    monkeypatch.setenv("DUETGEN_MAX_IMAGES", "2")
    assert main(["generate", "--text", "red", "--out", out, "--num-images", "3"]) == 2
    assert "--num-images: 3 images in one generation call, over the limit of 2" in capsys.readouterr().err


def test_pipeline_call_limits(pipe, monkeypatch):
    with pytest.raises(DuetgenInputError) as err:
        pipe(text="red", num_images_per_prompt=65, num_inference_steps=1)
    one_line_naming(err, "DUETGEN_MAX_IMAGES")
    with pytest.raises(DuetgenInputError) as err:
        pipe(text=["red"] * 20, num_images_per_prompt=4, num_inference_steps=1)  # 80 images in all
    one_line_naming(err, "DUETGEN_MAX_IMAGES")
    with pytest.raises(DuetgenInputError) as err:
        pipe(text="red", num_inference_steps=1001)
    one_line_naming(err, "DUETGEN_MAX_STEPS")
    with pytest.raises(ValueError):  # a DuetgenInputError is a ValueError, as the pipeline documents
        pipe(text="red", num_inference_steps=1001)
    monkeypatch.setenv("DUETGEN_MAX_BATCH", "2")
    with pytest.raises(DuetgenInputError) as err:
        pipe(text=["red", "blue", "green"], num_inference_steps=1)
    one_line_naming(err, "DUETGEN_MAX_BATCH")
    monkeypatch.setenv("DUETGEN_MAX_BATCH", "3")
    monkeypatch.setenv("DUETGEN_MAX_IMAGES", "6")
    images = pipe(text=["red", "blue", "green"], num_images_per_prompt=2, num_inference_steps=1, output_type="np")
    assert images.images.shape[0] == 6


def test_words_limits(encoder, monkeypatch):
    huge = "red " * 2_500_000  # 10 MB of words: refused before tokenising, at once
    start = time.perf_counter()
    with pytest.raises(DuetgenInputError) as err:
        encoder.encode_query(words=[huge])
    assert time.perf_counter() - start < 1.0
    one_line_naming(err, "DUETGEN_MAX_TEXT_CHARS")
    assert len(str(err.value)) < 300  # the words are not echoed in full
    # within the characters limit but over the model's token context: says how many tokens fit
    with pytest.raises(DuetgenInputError) as err:
        encoder.encode_query(torch.rand(1, 3, 32, 32), ["very " * 100 + "red"])
    msg = str(err.value)
    fit = int(re.search(r"only (\d+) fit", msg).group(1))
    assert "too long for this model" in msg and "101 word tokens" in msg and "use fewer words" in msg
    encoder.encode_query(torch.rand(1, 3, 32, 32), [" ".join(["red"] * fit)])  # exactly what fits is fine
    with pytest.raises(DuetgenInputError, match="too long"):
        encoder.encode_query(torch.rand(1, 3, 32, 32), [" ".join(["red"] * (fit + 1))])
    monkeypatch.setenv("DUETGEN_MAX_TEXT_CHARS", "10")
    with pytest.raises(DuetgenInputError, match="DUETGEN_MAX_TEXT_CHARS"):
        encoder.encode_text(["red with stripes"])
    assert encoder.encode_text(["red"]).shape == (1, encoder.embed_dim)


def test_batch_recipe_batch_limit(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("stg_limits", REPO / "recipes" / "sketch_text_generation.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    with pytest.raises(SystemExit) as ex:
        recipe.parse_args(["rows.csv", "--out", str(tmp_path), "--batch", "300"])
    assert ex.value.code == 2 and "DUETGEN_MAX_BATCH" in capsys.readouterr().err
    monkeypatch.setenv("DUETGEN_MAX_BATCH", "300")
    assert recipe.parse_args(["rows.csv", "--out", str(tmp_path), "--batch", "300"]).batch == 300


def test_every_limit_is_documented():
    doc = (REPO / "docs" / "limits.md").read_text()
    from duetgen.sketch_input import SketchLimits

    for var in [*ALL_VARS, "DUETGEN_STUDIO_MAX_UPLOAD_MB", "DUETGEN_STUDIO_ALLOW_DIRS"]:
        assert var in doc, var
    for name in ("max_pixels", "max_file_bytes", "max_strokes", "max_points", "max_svg_elements"):
        assert hasattr(SketchLimits(), name) and name in doc, name
    for value in (f"{getattr(limits.DEFAULTS, n):,}" for n in limits.ENV):  # the defaults as the doc states them
        assert value in doc, value
