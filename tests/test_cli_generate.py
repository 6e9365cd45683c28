"""``duetgen generate`` end to end on a tiny pipeline saved to a folder (and on the shipped model if present)."""

import numpy as np
import PIL.Image
import pytest
import torch

import duetgen
from duetgen.backbones import get_clip_config
from duetgen.cli import main
from duetgen.embedded import PIPELINE_DIR
from duetgen.pipelines import DuetGenPipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    encoder = duetgen.ComposedQueryEncoder(
        get_clip_config("duetgen-tiny"), backbone="duetgen-tiny", sketch_fit="canvas"
    )
    pipe = DuetGenPipeline.from_encoder(
        encoder,
        sample_size=32,
        block_out_channels=(8, 16),
        attention_levels=1,
        norm_num_groups=4,
        cross_attention_dim=16,
        attention_head_dim=8,
    )
    folder = tmp_path_factory.mktemp("model") / "pipe"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sketch_file(tmp_path_factory):
    img = np.full((48, 48), 255, np.uint8)
    img[10:38, 12] = 0
    img[10, 12:36] = 0
    path = tmp_path_factory.mktemp("sk") / "sketch.png"
    PIL.Image.fromarray(img).save(path)
    return path


def test_one_image(model_dir, sketch_file, tmp_path, capsys):
    out = tmp_path / "out.png"
    rc = main(
        [
            "generate",
            "--sketch",
            str(sketch_file),
            "--text",
            "red with stripes",
            "--out",
            str(out),
            "--steps",
            "3",
            "--model",
            str(model_dir),
        ]
    )
    assert rc == 0 and out.is_file()
    assert PIL.Image.open(out).size == (32, 32)
    assert str(out) in capsys.readouterr().out


def test_same_seed_same_file(model_dir, sketch_file, tmp_path):
    for name in ("a.png", "b.png"):
        main(
            [
                "generate",
                "--sketch",
                str(sketch_file),
                "--out",
                str(tmp_path / name),
                "--steps",
                "2",
                "--seed",
                "7",
                "--model",
                str(model_dir),
            ]
        )
    assert np.array_equal(
        np.asarray(PIL.Image.open(tmp_path / "a.png")), np.asarray(PIL.Image.open(tmp_path / "b.png"))
    )


def test_jit_traces_the_unet_and_draws_the_same_image(model_dir, sketch_file, tmp_path, monkeypatch):
    seen = []  # the pipelines --jit switched on (the real method runs; this only records its caller)
    enable = DuetGenPipeline.enable_unet_jit
    monkeypatch.setattr(DuetGenPipeline, "enable_unet_jit", lambda self, *a: (seen.append(self), enable(self, *a))[1])
    common = ["generate", "--sketch", str(sketch_file), "--text", "red", "--steps", "3", "--model", str(model_dir)]
    assert main([*common, "--out", str(tmp_path / "eager.png")]) == 0 and not seen
    assert main([*common, "--out", str(tmp_path / "jit.png"), "--jit"]) == 0 and len(seen) == 1
    assert seen[0]._unet_traces and all(isinstance(f, torch.jit.ScriptModule) for f in seen[0]._unet_traces.values())
    a, b = (np.asarray(PIL.Image.open(tmp_path / n), dtype=int) for n in ("eager.png", "jit.png"))
    assert np.abs(a - b).max() <= 1  # float rounding at most


def test_unet_dtype_bfloat16(model_dir, sketch_file, tmp_path, monkeypatch):
    dtypes = []  # the UNet dtype of every pipeline the CLI loaded
    load = duetgen.pipelines.load_pipeline
    monkeypatch.setattr(duetgen.pipelines, "load_pipeline", lambda *a, **k: dtypes.append(k) or load(*a, **k))
    common = ["generate", "--sketch", str(sketch_file), "--text", "red", "--steps", "3", "--model", str(model_dir)]
    assert main([*common, "--out", str(tmp_path / "f32.png"), "--unet-dtype", "float32"]) == 0
    assert main([*common, "--out", str(tmp_path / "bf16.png"), "--unet-dtype", "bfloat16"]) == 0
    assert main([*common, "--out", str(tmp_path / "auto.png")]) == 0
    assert [k["unet_dtype"] for k in dtypes] == ["float32", "bfloat16", "auto"]
    a, b = (np.asarray(PIL.Image.open(tmp_path / n), dtype=int) for n in ("f32.png", "bf16.png"))
    assert a.shape == b.shape and 0 < np.abs(a - b).mean() < 8  # the same picture up to bfloat16 rounding


def test_sketch_guidance_is_the_pipelines_two_scale_guidance(model_dir, sketch_file, tmp_path):
    from duetgen.pipelines import load_pipeline

    def cli(name, *extra):
        argv = ["generate", "--sketch", str(sketch_file), "--text", "red", "--out", str(tmp_path / name), "--steps",
                "3", "--guidance", "2", "--model", str(model_dir), "--unet-dtype", "float32", *extra]  # fmt: skip
        assert main(argv) == 0
        return np.asarray(PIL.Image.open(tmp_path / name), dtype=int)

    two = cli("two.png", "--sketch-guidance", "5")
    pipe = load_pipeline(model_dir, unet_dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    api = pipe(sketch=str(sketch_file), text="red", num_inference_steps=3, guidance_scale=2.0,
               sketch_guidance_scale=5.0, generator=gen, output_type="np").images[0]  # fmt: skip
    assert np.abs(two - np.round(api * 255)).max() <= 1  # the CLI passes the flag through
    assert np.abs(two - cli("one.png")).max() > 0  # and it changes the picture


def test_best_of_is_the_pipelines_best_of(model_dir, sketch_file, tmp_path):
    from duetgen.pipelines import load_pipeline

    argv = ["generate", "--sketch", str(sketch_file), "--text", "red", "--out", str(tmp_path / "b.png"), "--steps",
            "2", "--model", str(model_dir), "--unet-dtype", "float32", "--best-of", "3",
            "--num-images", "2"]  # fmt: skip
    assert main(argv) == 0
    pipe = load_pipeline(model_dir, unet_dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    api = pipe(sketch=str(sketch_file), text="red", num_inference_steps=2, num_images_per_prompt=2, best_of=3,
               generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip
    for i in range(2):
        got = np.asarray(PIL.Image.open(tmp_path / f"b-{i}.png"), dtype=int)
        assert np.abs(got - np.round(api[i] * 255)).max() <= 1


def test_image_and_strength_are_the_pipelines_image_to_image(model_dir, sketch_file, tmp_path):
    from duetgen.pipelines import load_pipeline

    start = np.zeros((40, 40, 3), np.uint8)
    start[8:32, 8:32] = (230, 30, 30)
    start_file = tmp_path / "start.png"
    PIL.Image.fromarray(start).save(start_file)

    def cli(name, *extra):
        argv = ["generate", "--sketch", str(sketch_file), "--text", "blue", "--out", str(tmp_path / name), "--steps",
                "4", "--model", str(model_dir), "--unet-dtype", "float32", *extra]  # fmt: skip
        assert main(argv) == 0
        return np.asarray(PIL.Image.open(tmp_path / name), dtype=int)

    kept = cli("kept.png", "--image", str(start_file), "--strength", "0.5")
    pipe = load_pipeline(model_dir, unet_dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    api = pipe(sketch=str(sketch_file), text="blue", num_inference_steps=4, image=str(start_file), strength=0.5,
               generator=torch.Generator().manual_seed(0), output_type="np").images[0]  # fmt: skip
    assert np.abs(kept - np.round(api * 255)).max() <= 1  # the CLI passes both flags through
    assert np.abs(kept - cli("noise.png")).max() > 0
    assert np.abs(cli("default.png", "--image", str(start_file)) - kept).max() > 0  # default strength 0.8


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm", "euler", "euler-ancestral"])
def test_several_images_text_only(model_dir, tmp_path, scheduler, capsys):
    out = tmp_path / "grid.png"
    rc = main(
        [
            "generate",
            "--text",
            "blue in pixel art",
            "--out",
            str(out),
            "--num-images",
            "3",
            "--steps",
            "2",
            "--scheduler",
            scheduler,
            "--guidance",
            "1.5",
            "--model",
            str(model_dir),
        ]
    )
    assert rc == 0
    assert PIL.Image.open(out).size == (64, 64)  # 2 x 2 grid, one cell blank
    assert all((tmp_path / f"grid-{i}.png").is_file() for i in range(3))
    assert "grid-2.png" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--out", "x.png"], "give --sketch, --text, or both"),
        (["--text", "red", "--out", "x.png", "--steps", "0"], "--steps must be >= 1"),
        (["--text", "red", "--out", "x.png", "--num-images", "0"], "--num-images"),
        (["--text", "red", "--out", "x.png", "--guidance", "-2"], "--guidance"),
        (["--text", "red", "--out", "x.png", "--best-of", "0"], "--best-of must be >= 1"),
        (["--text", "red", "--out", "x.png", "--best-of", "40", "--num-images", "2"], "--num-images x --best-of"),
        (["--text", "red", "--out", "x.png", "--sketch-guidance", "nan"], "--sketch-guidance must be"),
        (["--text", "red", "--out", "x.gif"], "--out must end in"),
        (["--text", "red", "--out", "x.png", "--strength", "0.5"], "--strength goes with --image"),
        (["--text", "red", "--out", "x.png", "--image", "no-such-photo.png"], "--image 'no-such-photo.png' is not"),
        (["--sketch", "no-such-file.png", "--out", "x.png"], "is not a file"),
        (["--text", "red", "--out", "x.png", "--model", "no/such/folder"], "does not exist"),
    ],
)
def test_errors_are_one_line_exit_2(model_dir, tmp_path, capsys, argv, match):
    argv = [a if a != "x.png" else str(tmp_path / "x.png") for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(model_dir)]
    assert main(["generate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("duetgen: error:") and match in err and "\n" not in err
    assert not (tmp_path / "x.png").exists()


def test_unreadable_sketch_exit_2(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert main(["generate", "--sketch", str(bad), "--out", str(tmp_path / "o.png"), "--model", str(model_dir)]) == 2
    assert capsys.readouterr().err.startswith("duetgen: error:")


@pytest.mark.skipif(
    not (PIPELINE_DIR / "model_index.json").is_file(), reason="the embedded generator is not shipped yet"
)
def test_shipped_model(sketch_file, tmp_path):
    out = tmp_path / "shipped.png"
    assert (
        main(
            [
                "generate",
                "--sketch",
                str(sketch_file),
                "--text",
                "red with stripes in pixel art",
                "--out",
                str(out),
                "--steps",
                "5",
            ]
        )
        == 0
    )
    assert PIL.Image.open(out).size == (64, 64)


def test_scheduler_flag_changes_the_sampler(model_dir, tmp_path):
    """--scheduler really swaps the sampler: same seed, DDIM twice is identical, DDIM and DDPM differ."""

    def run(name, out):
        argv = ["generate", "--text", "red", "--out", str(out), "--steps", "3", "--seed", "1", "--scheduler", name,
                "--model", str(model_dir)]  # fmt: skip
        assert main(argv) == 0
        return np.asarray(PIL.Image.open(out))

    a, b, c = run("ddim", tmp_path / "a.png"), run("ddim", tmp_path / "b.png"), run("ddpm", tmp_path / "c.png")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_cli_scheduler_names_are_the_pipelines():
    from duetgen.cli_generate import SCHEDULERS as CLI_NAMES
    from duetgen.pipelines import SCHEDULERS

    assert tuple(CLI_NAMES) == tuple(SCHEDULERS)
