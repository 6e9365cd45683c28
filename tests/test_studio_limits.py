"""The studio's limits and confinement, on apps/studio_core.py directly (no browser, no Streamlit).

Paths typed into the studio cannot read outside the allowed folders: not through ``..``, not as an absolute path
elsewhere, not through ``~``, not through a symlink (the folder itself, or any file or folder inside it). Uploads
are limited in size (configurable), extension and content; pixel limits follow ``DUETGEN_MAX_PIXELS``.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from duetgen import world
from duetgen.cli import main
from duetgen.errors import DuetgenInputError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps"))
import studio_core as core  # noqa: E402

OUTSIDE = "outside the folders the studio may read"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("DUETGEN_STUDIO_ALLOW_DIRS", "DUETGEN_STUDIO_MODEL", "DUETGEN_STUDIO_GALLERY",
                "DUETGEN_STUDIO_SCENE_GALLERY", "DUETGEN_STUDIO_CACHE", "DUETGEN_STUDIO_MAX_UPLOAD_MB",
                "DUETGEN_MAX_PIXELS", "DUETGEN_MAX_FILE_MB"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """allowed/ (with a gallery-like folder, a model-like folder and links) and secret/ beside it."""
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    (allowed / "gallery").mkdir(parents=True)
    (allowed / "gallery" / "manifest.json").write_text("{}")
    (allowed / "model" / "unet").mkdir(parents=True)
    (allowed / "model" / "model_index.json").write_text("{}")
    (secret / "stolen").mkdir(parents=True)
    (secret / "weights.safetensors").write_bytes(b"secret")
    (secret / "photo.png").write_bytes(png((8, 8)))
    (allowed / "link_out").symlink_to(secret / "stolen", target_is_directory=True)  # a folder link leading out
    (allowed / "link_in").symlink_to(allowed / "gallery", target_is_directory=True)  # a link staying inside
    monkeypatch.setenv("DUETGEN_STUDIO_ALLOW_DIRS", str(allowed))
    monkeypatch.setenv("DUETGEN_STUDIO_CACHE", str(tmp_path / "cache"))
    return {"allowed": allowed, "secret": secret, "config": core.StudioConfig.from_env()}


def png(size=(16, 16), colour=(255, 255, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# confinement
# ---------------------------------------------------------------------------------------------------------------


def test_configured_allow_list(tree, tmp_path, monkeypatch):
    config = tree["config"]
    assert tree["allowed"].resolve() in config.allow_dirs and (tmp_path / "cache").resolve() in config.allow_dirs
    assert tree["secret"].resolve() not in config.allow_dirs
    # default: the samples and the current directory, plus the configured folders
    monkeypatch.delenv("DUETGEN_STUDIO_ALLOW_DIRS")
    monkeypatch.chdir(tree["allowed"] / "model")
    monkeypatch.setenv("DUETGEN_STUDIO_GALLERY", str(tree["allowed"] / "gallery"))
    default = core.StudioConfig.from_env()
    assert (REPO / "samples").resolve() in default.allow_dirs
    assert (tree["allowed"] / "model").resolve() in default.allow_dirs
    assert (tree["allowed"] / "gallery").resolve() in default.allow_dirs
    assert core.allowed_path("unet", default, "model") == (tree["allowed"] / "model" / "unet").resolve()  # relative
    with pytest.raises(DuetgenInputError, match=OUTSIDE):
        core.allowed_path("..", default, "model")  # the parent of the current directory


def test_inside_is_allowed(tree):
    config, allowed = tree["config"], tree["allowed"]
    assert core.allowed_path(str(allowed / "gallery"), config, "gallery") == (allowed / "gallery").resolve()
    assert core.allowed_path(f"  {allowed}/model/../gallery  ", config, "gallery") == (allowed / "gallery").resolve()
    assert core.allowed_path(str(allowed / "link_in"), config, "gallery") == (allowed / "gallery").resolve()
    with pytest.raises(DuetgenInputError, match="does not exist"):
        core.allowed_path(str(allowed / "missing"), config, "gallery")
    with pytest.raises(DuetgenInputError, match="is a file, not a gallery folder"):
        core.allowed_path(str(allowed / "gallery" / "manifest.json"), config, "gallery")
    with pytest.raises(DuetgenInputError, match="type the path"):
        core.allowed_path("   ", config, "gallery")


def test_dotdot_traversal_is_refused(tree):
    config, allowed = tree["config"], tree["allowed"]
    for text in (f"{allowed}/../secret", f"{allowed}/gallery/../../secret/stolen", f"{allowed}/" + "../" * 30 + "etc",
                 f"{allowed}/../allowed_not/../secret"):  # fmt: skip
        with pytest.raises(DuetgenInputError, match=OUTSIDE):
            core.allowed_path(text, config, "gallery")


def test_absolute_paths_outside_are_refused(tree, monkeypatch):
    config = tree["config"]
    for text in ("/", "/etc", str(tree["secret"]), str(tree["secret"] / "stolen"), "/proc/self/root"):
        with pytest.raises(DuetgenInputError, match=OUTSIDE) as err:
            core.allowed_path(text, config, "model")
        assert "--allow-dir" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv("HOME", str(tree["secret"]))  # ~ expands, then is checked like any path
    with pytest.raises(DuetgenInputError, match=OUTSIDE):
        core.allowed_path("~/stolen", config, "model")
    # an allowed folder's name as a prefix of another folder's name does not let it in
    sibling = tree["allowed"].parent / (tree["allowed"].name + "2")
    sibling.mkdir()
    with pytest.raises(DuetgenInputError, match=OUTSIDE):
        core.allowed_path(str(sibling), config, "model")


def test_symlinks_pointing_outside_are_refused(tree):
    config, allowed, secret = tree["config"], tree["allowed"], tree["secret"]
    # the typed folder is itself a link leading out
    with pytest.raises(DuetgenInputError, match=OUTSIDE):
        core.allowed_path(str(allowed / "link_out"), config, "gallery")
    # a folder inside the allowed one, holding a file link leading out (the model's weights)
    weights = allowed / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.symlink_to(secret / "weights.safetensors")
    with pytest.raises(DuetgenInputError, match=r"holds a link \(unet/diffusion_pytorch_model.safetensors\)"):
        core.allowed_path(str(allowed / "model"), config, "model")
    weights.unlink()
    # ... or a folder link leading out, deeper down
    (allowed / "model" / "unet" / "deeper").symlink_to(secret, target_is_directory=True)
    with pytest.raises(DuetgenInputError, match="holds a link"):
        core.allowed_path(str(allowed / "model"), config, "model")
    (allowed / "model" / "unet" / "deeper").unlink()
    # a gallery whose data file is a link leading out
    (allowed / "gallery" / "embeddings.npy").symlink_to(secret / "weights.safetensors")
    with pytest.raises(DuetgenInputError, match=r"holds a link \(embeddings.npy\)"):
        core.allowed_path(str(allowed / "gallery"), config, "gallery")
    (allowed / "gallery" / "embeddings.npy").unlink()
    # links that stay inside, and dangling links, are fine
    (allowed / "model" / "unet" / "same").symlink_to(allowed / "model" / "model_index.json")
    (allowed / "model" / "unet" / "dangling").symlink_to(allowed / "model" / "gone")
    assert core.allowed_path(str(allowed / "model"), config, "model") == (allowed / "model").resolve()
    # a link loop does not hang the check
    (allowed / "model" / "loop").symlink_to(allowed / "model", target_is_directory=True)
    assert core.allowed_path(str(allowed / "model"), config, "model") == (allowed / "model").resolve()


def test_unusable_path_text_is_refused(tree):
    config = tree["config"]
    with pytest.raises(DuetgenInputError, match="not a usable path"):
        core.allowed_path(str(tree["allowed"]) + "/\x00/etc", config, "gallery")
    with pytest.raises(DuetgenInputError, match="not a usable path"):
        core.allowed_path(str(tree["allowed"]) + "/a" * 3000, config, "gallery")


def test_big_folders_are_refused(tree, monkeypatch):
    config, allowed = tree["config"], tree["allowed"]
    monkeypatch.setattr(core, "MAX_FOLDER_ENTRIES", 5)
    for i in range(6):
        (allowed / "gallery" / f"f{i}").write_text("x")
    with pytest.raises(DuetgenInputError, match="holds over 5 files"):
        core.allowed_path(str(allowed / "gallery"), config, "gallery")


def test_result_images_outside_are_not_shown(tree):
    allowed, secret = tree["allowed"], tree["secret"]
    roots = tree["config"].allow_dirs
    (allowed / "photo.png").write_bytes(png((8, 8)))
    assert core.result_image(str(allowed / "photo.png"), roots) is not None
    assert core.result_image(str(secret / "photo.png"), roots) is None
    assert core.result_image(f"{allowed}/../secret/photo.png", roots) is None
    (allowed / "leak.png").symlink_to(secret / "photo.png")
    assert core.result_image(str(allowed / "leak.png"), roots) is None
    assert core.result_image(str(allowed / "link_out" / ".." / "photo.png"), roots) is None


# ---------------------------------------------------------------------------------------------------------------
# uploads
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, data",
    [("a.png", encoded("PNG")), ("a.JPG", encoded("JPEG")), ("a.jpeg", encoded("JPEG")), ("a.gif", encoded("GIF")),
     ("a.bmp", encoded("BMP")), ("a.webp", encoded("WEBP")), ("a.tif", encoded("TIFF")),
     ("a.svg", b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'><path d='M0 0L5 5'/></svg>"),
     ("a.json", b'[[[0, 5], [0, 5]]]'), ("a.ndjson", b'\xef\xbb\xbf{"drawing": [[[0, 5], [0, 5]]]}\n'),
     ("a.npy", b"\x93NUMPY\x01\x00"), ("a.npz", b"PK\x03\x04rest")],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_accepted_uploads(name, data):
    core.check_upload(name, data, core.SKETCH_TYPES)


@pytest.mark.parametrize(
    "name, data, expected",
    [("a.exe", b"MZ", "not an accepted file type"), ("noext", b"x", "not an accepted file type"),
     ("a.png", b"", "empty"), ("a.png", encoded("JPEG"), "not a PNG file inside"),
     ("a.jpg", b"<html><script>x</script></html>", "not a JPG file inside"),
     ("a.svg", b"<html>no drawing</html>", "not a SVG file inside"), ("a.json", b"hello", "not a JSON file inside"),
     ("a.webp", b"RIFF\x00\x00\x00\x00WAVE", "not a WEBP file inside"), ("a.npz", b"not a zip", "not a NPZ")],
    ids=lambda v: v.split()[-2] if isinstance(v, str) and " " in v else (v if isinstance(v, str) else ""),
)  # fmt: skip
def test_refused_uploads(name, data, expected):
    with pytest.raises(DuetgenInputError, match=expected):
        core.check_upload(name, data, core.SKETCH_TYPES)


def test_photo_uploads_only_take_raster_types():
    with pytest.raises(DuetgenInputError, match="not an accepted file type"):
        core.check_upload("a.svg", b"<svg/>", core.PHOTO_TYPES)


def test_upload_size_limit_is_configurable(monkeypatch):
    data = b"\x89PNG\r\n\x1a\n" + b"0" * (11 * 1024 * 1024)
    with pytest.raises(DuetgenInputError, match="over the 10 MB upload limit") as err:
        core.check_upload("big.png", data, core.SKETCH_TYPES)
    assert "--max-upload-mb" in str(err.value)
    monkeypatch.setenv("DUETGEN_STUDIO_MAX_UPLOAD_MB", "12")
    core.check_upload("big.png", data, core.SKETCH_TYPES)  # now within the limit
    assert core.upload_limits().max_file_bytes == 12 * 1024 * 1024
    monkeypatch.setenv("DUETGEN_STUDIO_MAX_UPLOAD_MB", "1")
    with pytest.raises(DuetgenInputError, match="over the 1 MB upload limit"):
        core.check_upload("a.png", b"\x89PNG\r\n\x1a\n" + b"0" * (2 * 1024 * 1024), core.SKETCH_TYPES)
    with pytest.raises(DuetgenInputError, match="over the 1 MB limit"):
        core.read_photo(b"\x89PNG\r\n\x1a\n" + b"0" * (2 * 1024 * 1024), "big.png")
    monkeypatch.setenv("DUETGEN_STUDIO_MAX_UPLOAD_MB", "nonsense")  # a bad value falls back to the default
    assert core.max_upload_mb() == core.DEFAULT_MAX_UPLOAD_MB


def test_pixel_limit_follows_the_library_setting(monkeypatch):
    photo = png((40, 40), (200, 30, 30))
    assert core.read_photo(photo, "p.png").size == (40, 40)
    monkeypatch.setenv("DUETGEN_MAX_PIXELS", "1000")
    with pytest.raises(DuetgenInputError, match="40 x 40 pixels, over the limit of 1,000 pixels"):
        core.read_photo(photo, "p.png")

    from duetgen.backbones import get_clip_config

    torch.manual_seed(0)
    import duetgen

    enc = duetgen.ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny").eval()
    models = core.Models(enc, None, "tiny")
    sketch = np.full((40, 40), 255, np.uint8)
    sketch[5:35, 20] = 0
    buf = io.BytesIO()
    Image.fromarray(sketch).save(buf, format="PNG")
    with pytest.raises(DuetgenInputError, match="'upload.png'.*over the limit of 1,000 pixels"):
        core.read_sketch_source(buf.getvalue(), models, "upload.png")
    monkeypatch.delenv("DUETGEN_MAX_PIXELS")
    assert core.read_sketch_source(buf.getvalue(), models, "upload.png").shape[0] == 3


def test_studio_command_upload_limit(capsys, monkeypatch, tmp_path):
    assert main(["studio", "--dry-run", "--max-upload-mb", "25", "--allow-dir", str(tmp_path)]) == 0
    assert "--server.maxUploadSize 25" in capsys.readouterr().out
    from duetgen.cli import build_parser
    from duetgen.cli_studio import studio_command

    args = build_parser().parse_args(["studio", "--max-upload-mb", "25", "--allow-dir", str(tmp_path)])
    _, env = studio_command(args)
    assert env["DUETGEN_STUDIO_MAX_UPLOAD_MB"] == "25" and env["DUETGEN_STUDIO_ALLOW_DIRS"] == str(tmp_path.resolve())
    monkeypatch.setenv("DUETGEN_STUDIO_MAX_UPLOAD_MB", "3")
    _, env = studio_command(build_parser().parse_args(["studio"]))
    assert env["DUETGEN_STUDIO_MAX_UPLOAD_MB"] == "3"
    for bad in ("0", "100000"):
        assert main(["studio", "--dry-run", "--max-upload-mb", bad]) == 2
        assert "--max-upload-mb must be from 1 to" in capsys.readouterr().err
    assert main(["studio", "--dry-run", "--allow-dir", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert os.environ.get("DUETGEN_STUDIO_MAX_UPLOAD_MB") == "3"  # the command does not change this process


def test_photo_query_squares_the_photo_and_completes_the_words(tiny_encoder):
    wide = Image.new("RGB", (60, 30), (20, 30, 90))
    wide.paste((250, 200, 0), (25, 10, 35, 20))
    sq = core.square_photo(wide)
    assert sq.size == (60, 60) and sq.getpixel((0, 0)) == (20, 30, 90)  # padded with the border colour
    assert sq.getpixel((30, 30)) == (250, 200, 0) and core.square_photo(sq) is sq
    tq = core.photo_query(tiny_encoder, wide, "  at night ", sketch_size=48)
    assert tq.sketches.shape == (1, 3, 48, 48) and tq.query.shape == (1, tiny_encoder.embed_dim)
    assert tq.words == [world.words(world.Attributes(**{**tq.read[0].to_dict(), "domain": "night"}))]
