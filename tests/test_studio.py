"""The Streamlit studio (apps/studio.py) through streamlit.testing.v1.AppTest, on a tiny random pipeline and gallery.

Every view is driven once: Retrieve (three query modes), Generate (progress, images, download), Attribute transfer
(photo and sketch sources), Scene retrieval (demo scenes built on first use, outlined regions); and bad input shows
an ``st.error`` while the page keeps running: non-image and huge uploads, a blank sketch, folders that are not a model
or a gallery, and paths outside the allowed folders. Also ``duetgen studio`` itself (dry run, missing app).
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

import duetgen  # noqa: E402
from duetgen.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "studio.py"
SAMPLE_SKETCH = REPO / "samples" / "sketches" / "star.png"
TIMEOUT = 60


def make_tiny_assets(root: Path) -> dict[str, Path]:
    """A tiny random DuetGenPipeline, a gallery of the shipped world photos built with its encoder, and a cache
    folder for demo scenes; returns their paths (all under ``root``)."""
    from duetgen.backbones import get_clip_config
    from duetgen.pipelines import DuetGenPipeline

    torch.manual_seed(0)
    encoder = duetgen.ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny",
                                           sketch_fit="canvas").eval()  # fmt: skip
    pipe = DuetGenPipeline.from_encoder(
        encoder, sample_size=32, block_out_channels=(8, 16), attention_levels=1, norm_num_groups=4,
        cross_attention_dim=16, attention_head_dim=8,
    )  # fmt: skip
    model = root / "tiny_pipeline"
    pipe.save_pretrained(model)
    photos = root / "photos"
    photos.mkdir()
    for p in sorted((REPO / "samples" / "world").glob("*_photo.png")):
        Image.open(p).convert("RGB").save(photos / p.name)
    gallery = root / "tiny.gallery"
    duetgen.Gallery.build(photos, pipe.encoder, gallery, num_workers=0, progress=False, model_source=str(model))
    return {"model": model, "gallery": gallery, "cache": root / "cache", "root": root}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_tiny_assets(tmp_path_factory.mktemp("studio"))


@pytest.fixture
def app(assets, monkeypatch):
    monkeypatch.setenv("DUETGEN_STUDIO_MODEL", str(assets["model"]))
    monkeypatch.setenv("DUETGEN_STUDIO_GALLERY", str(assets["gallery"]))
    monkeypatch.setenv("DUETGEN_STUDIO_CACHE", str(assets["cache"]))
    monkeypatch.setenv("DUETGEN_STUDIO_ALLOW_DIRS", os.pathsep.join([str(REPO / "samples"), str(assets["root"])]))
    monkeypatch.setenv("DUETGEN_STUDIO_SCENES", "8")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    return at


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def tab(at, label: str):
    return next(t for t in at.tabs if label in t.label)


def use_sample_sketch(at, name: str = "star"):
    at.radio(key="sketch_source").set_value("Sample").run()
    at.selectbox(key="sketch_sample").set_value(name).run()


def png(size=(48, 48), colour=(255, 255, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------


def test_page_loads_with_model_gallery_and_no_errors(app):
    assert not app.exception, app.exception
    assert errors(app) == []
    assert [t.label.split(": ", 1)[1] for t in app.tabs] == [
        "Retrieve",
        "Generate",
        "Attribute transfer",
        "Scene retrieval",
    ]
    sidebar = " ".join(c.value for c in app.sidebar.caption)
    assert "12 photos" in sidebar and "generator: yes" in sidebar


def test_retrieve_all_three_modes(app):
    use_sample_sketch(app)
    app.text_input(key="words").input("red with stripes").run()
    retrieve = tab(app, "Retrieve")
    for mode in ("Sketch + words", "Sketch only", "Words only"):
        app.radio(key="retrieve_mode").set_value(mode).run()
        assert not app.exception and errors(app) == []
        retrieve = tab(app, "Retrieve")
        captions = [c for im in retrieve.image for c in im.captions]
        assert len(captions) == 8 and all(c.startswith(f"#{i}") for i, c in enumerate(captions, 1)), captions
        assert any(mode.lower() in c.value for c in retrieve.caption)
    app.slider(key="retrieve_k").set_value(4).run()
    assert len([c for im in tab(app, "Retrieve").image for c in im.captions]) == 4


def test_words_only_without_words_is_an_error(app):
    app.radio(key="retrieve_mode").set_value("Words only").run()
    assert any("'Words only' needs words" in e for e in errors(app))


def test_generate_progress_images_and_download(app):
    use_sample_sketch(app, "heart")
    app.text_input(key="words").input("blue with dots").run()
    app.slider(key="gen_steps").set_value(3).run()
    app.slider(key="gen_n").set_value(2).run()
    app.selectbox(key="gen_scheduler").set_value("DDIM").run()
    app.button(key="generate").click().run()
    assert not app.exception and errors(app) == []
    gen = tab(app, "Generate")
    assert len([c for im in gen.image for c in im.captions]) == 2
    assert "Done in" in gen.get("progress")[0].proto.text
    assert len(gen.get("download_button")) == 2
    # the images survive a rerun (e.g. after a download click)
    app.run()
    assert len([c for im in tab(app, "Generate").image for c in im.captions]) == 2


def test_generate_best_of_keeps_one_of_its_candidates(app):
    """'Best of 3' returns one of the three images the same seed draws as three separate images."""
    use_sample_sketch(app, "heart")
    app.text_input(key="words").input("red").run()
    app.slider(key="gen_steps").set_value(2).run()

    def generated(n, best_of):
        app.slider(key="gen_n").set_value(n).run()
        app.slider(key="gen_best_of").set_value(best_of).run()
        app.button(key="generate").click().run()
        assert not app.exception and errors(app) == []
        done = app.session_state["generated"]
        return done, [np.asarray(Image.open(io.BytesIO(b)), dtype=int) for b in done["png"]]

    _, pool = generated(3, 1)
    done, (best,) = generated(1, 3)
    assert done["caption"].endswith("best of 3")
    diffs = [np.abs(best - c).max() for c in pool]
    assert min(diffs) <= 1 and diffs[0] > 1, diffs  # here the first candidate is not the best: a choice was made


def test_generate_with_nothing_is_an_error(app):
    app.button(key="generate").click().run()
    assert any("nothing to generate from" in e for e in errors(app))
    assert not app.exception


def test_attribute_transfer_photo_and_sketch(app):
    app.slider(key="gen_steps").set_value(2).run()
    for sample, read_as in (("star (photo)", "photo"), ("star (world)", "sketch")):
        app.selectbox(key="transfer_sample").set_value(sample).run()
        app.text_input(key="transfer_words").input("green with checks").run()
        app.button(key="transfer").click().run()
        assert not app.exception and errors(app) == [], errors(app)
        transfer = tab(app, "Attribute transfer")
        md = " ".join(m.value for m in transfer.markdown)
        assert f"read as {read_as}" in md and "Retrieved" in md and "Generated" in md
        # a sketch composes the words as typed; a photo's words are completed with the style read from it
        assert ("“green with checks”" in md) == (read_as == "sketch") and "“green with checks" in md, md
        captions = [c for im in transfer.image for c in im.captions]
        assert sum(c.startswith("#") for c in captions) == 4  # retrieved
        assert sum(c.startswith("seed") for c in captions) == 2  # generated


def test_attribute_transfer_keeps_the_photos_look_when_asked(app):
    """'Keep the photo's look': a photo's generation starts from the photo (image-to-image) at the chosen strength."""
    app.radio(key="transfer_origin").set_value("Shipped sample").run()
    app.selectbox(key="transfer_sample").set_value("star (photo)").run()
    app.slider(key="gen_steps").set_value(8).run()
    photo = Image.open(REPO / "samples" / "world" / "00_star_photo.png").convert("RGB")

    def transfer(keep: bool) -> tuple[float, list[str]]:
        app.checkbox(key="transfer_keep_look").set_value(keep).run()
        app.button(key="transfer").click().run()
        assert not app.exception and errors(app) == [], errors(app)
        pngs = app.session_state["transfer_result"]["generated"]
        gen = [np.asarray(Image.open(io.BytesIO(p)).convert("RGB"), dtype=float) for p in pngs]
        ref = np.asarray(photo.resize(Image.open(io.BytesIO(pngs[0])).size), dtype=float)
        captions = [c for im in tab(app, "Attribute transfer").image for c in im.captions if c.startswith("seed")]
        return float(np.mean([np.abs(g - ref).mean() for g in gen])), captions

    app.checkbox(key="transfer_keep_look").set_value(True).run()
    app.slider(key="transfer_strength").set_value(0.3).run()  # enabled once the box is ticked
    kept, kept_captions = transfer(True)
    fresh, captions = transfer(False)
    assert kept < fresh, (kept, fresh)  # closer to the photo it started from
    assert all("from the photo at 0.30" in c for c in kept_captions) and len(kept_captions) == 2
    assert not any("from the photo" in c for c in captions)


def test_attribute_transfer_uploaded_photo(app):
    app.radio(key="transfer_origin").set_value("Upload").run()
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    buf = io.BytesIO()
    photo.save(buf, format="JPEG")
    app.file_uploader(key="transfer_upload").upload("cat.jpg", buf.getvalue(), "image/jpeg").run()
    app.slider(key="gen_steps").set_value(2).run()
    app.button(key="transfer").click().run()
    assert not app.exception and errors(app) == [], errors(app)
    assert "read as photo" in " ".join(m.value for m in tab(app, "Attribute transfer").markdown)


def test_scene_retrieval_builds_demo_scenes_and_outlines(app, assets):
    use_sample_sketch(app, "house")
    app.button(key="build_scenes").click().run()
    assert not app.exception and errors(app) == [], errors(app)
    scenes = tab(app, "Scene retrieval")
    captions = [c for im in scenes.image for c in im.captions]
    assert len(captions) == 8 and all("region (" in c for c in captions), captions
    assert any((assets["cache"]).rglob("manifest.json"))
    # later sessions reuse the built scenes without a button
    again = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    again.run()
    use_sample_sketch(again, "house")
    assert len([c for im in tab(again, "Scene retrieval").image for c in im.captions]) == 8


def test_scene_retrieval_verified_by_objects(app, assets):
    use_sample_sketch(app, "house")
    if any(b.key == "build_scenes" for b in app.button):  # the demo scenes are built once per model
        app.button(key="build_scenes").click().run()
    plain = [c for im in tab(app, "Scene retrieval").image for c in im.captions]
    assert len(plain) == 8 and all("region (" in c for c in plain)
    app.checkbox(key="scene_verify").check().run()
    assert not app.exception and errors(app) == [], errors(app)
    scenes = tab(app, "Scene retrieval")
    captions = [c for im in scenes.image for c in im.captions]
    assert len(captions) == 8 and captions != plain
    assert sum("object (" in c and (" shape 0." in c or " shape 1." in c) for c in captions) >= 4, captions
    assert any("objects verified" in c.value for c in scenes.caption)
    assert app.session_state["scene_verifier"][1].weight == 1.0

    def score_and_shape(caption):  # "#1 · 0.971 · object (64, 46, 84, 84) · shape 0.971"
        parts = caption.split(" · ")
        return float(parts[1]), float(parts[-1].split()[-1])

    # a sketch alone scores each object by its shape; words ("red") can only cost an object (one not read as red),
    # never add to it as the crop cosine of unknown words would
    assert all(a == b for a, b in map(score_and_shape, [c for c in captions if "object (" in c]))
    app.text_input(key="words").input("red").run()
    worded = [score_and_shape(c) for im in tab(app, "Scene retrieval").image for c in im.captions if "object (" in c]
    assert worded and all(a <= b for a, b in worded) and any(a < b for a, b in worded), worded


def test_upload_a_sketch_file(app):
    app.radio(key="sketch_source").set_value("Upload").run()
    app.file_uploader(key="sketch_upload").upload("star.png", SAMPLE_SKETCH.read_bytes(), "image/png").run()
    assert errors(app) == []
    assert len([c for im in tab(app, "Retrieve").image for c in im.captions]) == 8


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("notes.json", b"hello, not json", "notes.json"),
        ("drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg'><text>hi</text></svg>", "drawing.svg"),
        ("fake.png", b"this is not an image at all", "fake.png"),
        ("blank.png", png(), "blank"),
        ("huge.png", png((5000, 5000)), "over the limit"),
        ("big.png", b"\x89PNG\r\n\x1a\n" + b"0" * (11 * 1024 * 1024), "upload limit"),
    ],
)
def test_bad_uploads_show_an_error(app, name, content, expected):
    app.radio(key="sketch_source").set_value("Upload").run()
    app.file_uploader(key="sketch_upload").upload(name, content, "application/octet-stream").run()
    assert not app.exception
    msgs = errors(app)
    assert any(expected in m for m in msgs), msgs
    # the page keeps running: words still search the gallery
    app.text_input(key="words").input("red").run()
    assert len([c for im in tab(app, "Retrieve").image for c in im.captions]) == 8


def test_bad_folders_show_an_error(app, assets, tmp_path):
    app.radio(key="gallery_choice").set_value("Folder").run()
    app.text_input(key="gallery_dir").input(str(assets["model"])).run()  # allowed, but a model, not a gallery
    assert any("is not a gallery" in e for e in errors(app)), errors(app)
    app.text_input(key="gallery_dir").input("/etc").run()
    assert any("outside the folders the studio may read" in e for e in errors(app)), errors(app)
    app.text_input(key="gallery_dir").input(str(assets["root"] / "missing")).run()
    assert any("does not exist" in e for e in errors(app)), errors(app)

    app.radio(key="model_choice").set_value("Folder").run()
    app.text_input(key="model_dir").input(str(assets["gallery"])).run()
    assert any("is not a model folder" in e for e in errors(app)), errors(app)
    app.text_input(key="model_dir").input(str(Path.home())).run()
    assert any("outside the folders" in e for e in errors(app)), errors(app)
    assert not app.exception
    app.text_input(key="model_dir").input(str(assets["model"])).run()  # recovers
    assert not any("Model:" in e for e in errors(app))


def test_gallery_of_another_encoder_is_refused(app, assets, tmp_path_factory):
    other = assets["root"] / "other.gallery"
    if not other.exists():
        torch.manual_seed(1)
        from duetgen.backbones import get_clip_config

        enc = duetgen.ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny").eval()
        duetgen.Gallery.build(assets["root"] / "photos", enc, other, num_workers=0, progress=False)
    app.radio(key="gallery_choice").set_value("Folder").run()
    app.text_input(key="gallery_dir").input(str(other)).run()
    assert any("was built with encoder" in e for e in errors(app)), errors(app)


def test_models_and_galleries_load_once(app):
    from streamlit.runtime.caching import cache_resource_api  # noqa: F401 - the cache is per process

    use_sample_sketch(app)
    start = time.perf_counter()
    for words in ("red", "blue", "green with dots"):
        app.text_input(key="words").input(words).run()
    per_rerun = (time.perf_counter() - start) / 3
    assert errors(app) == []
    assert per_rerun < 5.0, per_rerun


def test_cli_studio_dry_run_and_errors(assets, capsys, tmp_path):
    assert main(["studio", "--dry-run", "--port", "8999", "--model", str(assets["model"]),
                 "--gallery", str(assets["gallery"]), "--allow-dir", str(tmp_path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "streamlit run" in out and str(APP) in out and "--server.port 8999" in out
    assert "--server.address 127.0.0.1" in out
    assert main(["studio", "--dry-run", "--port", "0"]) == 2
    assert "--port must be" in capsys.readouterr().err
    assert main(["studio", "--dry-run", "--model", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_cli_studio_missing_app_is_one_line_error(monkeypatch, capsys):
    from duetgen import cli_studio

    monkeypatch.setattr(cli_studio, "APP_RELATIVE", Path("apps") / "no_such_app.py")
    assert main(["studio", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("duetgen: error: the studio app is not in this install") and "\n" not in err


def test_studio_uses_only_the_public_api():
    import ast

    public = {"duetgen", "duetgen.pipelines", "duetgen.embedded", "duetgen.world", "duetgen.transfer"}
    for f in (REPO / "apps").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("duetgen"):
                assert node.module in public, f"{f.name} imports {node.module}"
    assert sys.modules.get("streamlit_drawable_canvas") is None or True


def test_retrieve_verified_by_silhouette(app):
    use_sample_sketch(app)
    app.text_input(key="words").input("red with stripes").run()
    app.checkbox(key="retrieve_verify").check().run()
    assert not app.exception and errors(app) == []
    retrieve = tab(app, "Retrieve")
    captions = [c for im in retrieve.image for c in im.captions]
    assert len(captions) == 8 and all(" · IoU " in c for c in captions), captions
    assert any("verified" in c.value for c in retrieve.caption)
    scores = [float(c.split(" · ")[1]) for c in captions]
    assert scores == sorted(scores, reverse=True)  # re-ranked by cosine + weight x IoU
    app.radio(key="retrieve_mode").set_value("Words only").run()  # no sketch to verify with: plain search
    assert app.checkbox(key="retrieve_verify").disabled
    assert not any(" · IoU " in c for im in tab(app, "Retrieve").image for c in im.captions)
