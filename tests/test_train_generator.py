"""Two-step smoke runs of recipes/train_generator.py on a tiny encoder and a few world groups."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import duetgen
from duetgen.backbones import get_clip_config
from duetgen.pipelines import load_pipeline

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "train_generator.py"
TINY = [
    "--batch-size",
    "4",
    "--groups",
    "4",
    "--block-out-channels",
    "8,16",
    "--attention-levels",
    "1",
    "--cross-attention-dim",
    "16",
    "--log-every",
    "1",
    "--save-every",
    "1",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_generator", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    torch.manual_seed(0)
    enc = duetgen.ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny", sketch_fit="canvas")
    folder = tmp_path_factory.mktemp("enc") / "encoder"
    enc.save_pretrained(folder)
    return folder


def test_two_steps_then_resume(recipe, encoder_dir, tmp_path):
    out = tmp_path / "run"
    common = ["--encoder", str(encoder_dir), "--out", str(out), "--cache", str(tmp_path / "groups.npz"), *TINY]
    recipe.main([*common, "--steps", "2"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] > 0 for r in log)
    assert json.loads((out / "args.json").read_text())["batch_size"] == 4
    assert json.loads((out / "state" / "step.json").read_text()) == {"step": 2}
    files = {p.parent.name: p for p in (out / "pipeline").rglob("*.safetensors")}
    assert set(files) == {"encoder", "conditioner", "unet"}
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float16 for t in load_file(files["unet"]).values())  # shipped in fp16

    pipe = load_pipeline(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32 and pipe.sample_size == 64
    images = pipe(text="red", num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 64, 64, 3)
    # the frozen encoder is shipped unchanged
    enc = duetgen.load_encoder(encoder_dir)
    sd = enc.state_dict()
    assert all(torch.allclose(v.float(), sd[k].half().float()) for k, v in pipe.encoder.state_dict().items())

    recipe.main([*common, "--steps", "3", "--resume"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]

    # --init fine-tunes that pipeline: its architecture (not the options') and weights are the starting point
    ft = tmp_path / "ft"
    recipe.main(["--init", str(out / "pipeline"), "--out", str(ft), "--cache", str(tmp_path / "groups.npz"),
                 "--steps", "1", "--ema-decay", "0", "--lr", "0.01", "--block-out-channels", "32,64",
                 *TINY[:4]])  # fmt: skip
    start, tuned = load_pipeline(out / "pipeline"), load_pipeline(ft / "pipeline")
    assert list(tuned.unet.config.block_out_channels) == list(start.unet.config.block_out_channels) == [8, 16]
    w0, w1 = start.unet.conv_in.weight, tuned.unet.conv_in.weight
    assert not torch.equal(w0, w1) and (w1 - w0).abs().max() < 0.1  # one step from the start, not a fresh init

    # --pattern-frame canvas: the same world with canvas-frame patterns, and the UNet given the pattern waves
    cv = tmp_path / "cv"
    recipe.main(["--init", str(out / "pipeline"), "--out", str(cv), "--cache", str(tmp_path / "canvas.npz"),
                 "--pattern-frame", "canvas", "--steps", "1", "--ema-decay", "0", *TINY[:4]])  # fmt: skip
    waved = load_pipeline(cv / "pipeline")
    assert waved.unet.config.in_channels == 15
    w2 = waved.unet.conv_in.weight
    assert (w2[:, :5] - w0).abs().max() < 0.1 and 0 < w2[:, 5:].abs().max() < 0.1  # widened, then one step
    # --pattern-masks: the canvas patterns themselves too; from the 15-channel run, and straight from a 5-channel one
    for init, name in ((cv, "mk"), (out, "mk5")):
        recipe.main(["--init", str(init / "pipeline"), "--out", str(tmp_path / name), "--cache",
                     str(tmp_path / "canvas.npz"), "--pattern-frame", "canvas", "--pattern-masks", "--steps", "1",
                     "--ema-decay", "0", *TINY[:4]])  # fmt: skip
        w3 = load_pipeline(tmp_path / name / "pipeline").unet.conv_in.weight
        assert w3.shape[1] == 21 and 0 < w3[:, 15:].abs().max() < 0.1
    assert (w3[:, :5] - w0).abs().max() < 0.1
    # --pattern-gates: the conditioner learns which pattern's masks to pass (logged as gate_acc)
    recipe.main(["--init", str(tmp_path / "mk" / "pipeline"), "--out", str(tmp_path / "gt"), "--cache",
                 str(tmp_path / "canvas.npz"), "--pattern-frame", "canvas", "--pattern-masks", "--pattern-gates",
                 "--steps", "2", "--log-every", "1", "--ema-decay", "0", *TINY[:4]])  # fmt: skip
    gt = load_pipeline(tmp_path / "gt" / "pipeline")
    assert gt.conditioner.uses_pattern_gates and gt.unet.config.in_channels == 21
    assert gt.conditioner.gate_head.weight.abs().max() > 0  # trained from its zero start
    logged = [json.loads(line) for line in (tmp_path / "gt" / "log.jsonl").read_text().splitlines()]
    assert len(logged) == 2 and all(0 <= r["gate_acc"] <= 1 for r in logged if "gate_acc" in r)
    from duetgen import world_dataset as wd

    obj, canvas = wd.WorldGroups.load(tmp_path / "groups.npz"), wd.WorldGroups.load(tmp_path / "canvas.npz")
    assert (obj.pattern_frame, canvas.pattern_frame) == ("object", "canvas")
    assert obj.records == canvas.records and np.array_equal(obj.sketches, canvas.sketches)
    patterned = [(g, j) for g in range(len(obj)) for j in range(2) if obj.records[g]["attrs"][j]["pattern"] != "solid"]
    assert patterned and all(not np.array_equal(obj.photos[g, :, j], canvas.photos[g, :, j]) for g, j in patterned)


def test_yaml_config_and_encoder_grad(recipe, encoder_dir, tmp_path):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(f"encoder: {encoder_dir}\nsteps: 1\nbatch-size: 2\nema_decay: 0\n")
    out = tmp_path / "run"
    recipe.main(
        [
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "g.npz"),
            "--encoder-grad",
            "--encoder-lr",
            "0.1",
            *TINY[2:],
        ]
    )
    args = json.loads((out / "args.json").read_text())
    assert args["steps"] == 1 and args["batch_size"] == 2 and args["encoder_grad"]
    trained = duetgen.load_encoder(out / "pipeline")
    base = duetgen.load_encoder(encoder_dir)
    assert not torch.allclose(trained.mapper[0].weight, base.mapper[0].weight.half().float())
    assert torch.equal(trained.clip.token_embedding.weight, base.clip.token_embedding.weight.half().float())


def test_photo_query_rows_are_attribute_transfer_requests(recipe, encoder_dir, tmp_path):
    """--p-photo-query rows: the same instance's photo with the other attributes, words naming only the change."""
    from duetgen import world
    from duetgen import world_dataset as wd

    groups = wd.load_or_build(tmp_path / "g.npz", 6, seed=1000, size=64)
    args = recipe.parse_args(["--out", str(tmp_path), "--batch-size", "16", "--p-photo-query", "1.0",
                              "--p-text-only", "0", "--p-sketch-query", "0"])  # fmt: skip
    photos, sketches, words, text_only, sources, rows, patterns = recipe.sample_batch(groups, args, step=3)
    assert rows.all() and not text_only.any()
    rng = np.random.default_rng([args.seed, 3])
    g, i, j = (rng.integers(0, n, 16) for n in (len(groups), 2, 2))
    for k in range(16):
        attrs = [world.Attributes.from_dict(a) for a in groups.records[g[k]]["attrs"]]
        assert words[k] == world.change_words(attrs[1 - j[k]], attrs[j[k]])
        assert torch.equal(sources[k], wd.to_float(groups.photos[g[k], i[k], 1 - j[k]]))
        assert torch.equal(photos[k], wd.to_float(groups.photos[g[k], i[k], j[k]]) * 2 - 1)
        assert world.PATTERNS[patterns[k]] == attrs[j[k]].pattern  # the target's pattern, for the gate loss
    # the query of a photo row is the attribute-transfer query of that source and words
    enc = duetgen.load_encoder(encoder_dir).eval()
    with torch.no_grad():
        q, h = recipe.encode_queries(enc, sketches, words, text_only, sources, rows)
        ref_q, ref_h = enc.encode_query(sketch_embeds=enc.encode_image(sources), words=words, return_states=True)
        sketch_q = enc.encode_query(sketches, words)
    assert torch.allclose(q, ref_q, atol=1e-5) and torch.allclose(h, ref_h, atol=1e-5)
    assert not torch.allclose(q, sketch_q, atol=1e-3)
    # off by default: the same step draws the same batch as before the option existed
    plain = recipe.parse_args(["--out", str(tmp_path), "--batch-size", "16"])
    assert recipe.sample_batch(groups, plain, step=3)[4:6] == (None, None)


def test_each_pattern_frame_has_its_own_default_cache(recipe, tmp_path):
    """A canvas run must not rebuild (and so overwrite) the object-frame cache that stages 1 and 2 train on."""
    obj = recipe.parse_args(["--out", str(tmp_path)])
    canvas = recipe.parse_args(["--out", str(tmp_path), "--pattern-frame", "canvas"])
    assert obj.cache == "runs/cache/world_train_64.npz" and canvas.cache == "runs/cache/world_train_64_canvas.npz"
    given = recipe.parse_args(["--out", str(tmp_path), "--pattern-frame", "canvas", "--cache", "c.npz"])
    assert given.cache == "c.npz"
    from duetgen import world_dataset as wd

    with pytest.raises(wd.DuetgenInputError, match="pattern_frame must be one of"):
        wd.load_or_build(tmp_path / "x.npz", 1, seed=0, size=16, pattern_frame="tilted")
    assert not (tmp_path / "x.npz").exists()


def test_bad_config_key(recipe, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("stpes: 3\n")
    with pytest.raises(SystemExit):
        recipe.parse_args(["--config", str(cfg), "--out", str(tmp_path)])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--init", "{tmp}/missing"], "--init: "),
        (["--init", "{tmp}"], "is not a pipeline folder"),
        (["--p-photo-query", "1.5"], "--p-photo-query must be a probability"),
        (["--p-drop-states", "-0.1"], "--p-drop-states must be a probability"),
        (["--pattern-frame", "canvas", "--no-sketch-fill"], "--pattern-frame canvas needs the sketch region"),
        (["--pattern-frame", "tilted"], "invalid choice: 'tilted'"),
        (["--pattern-masks"], "--pattern-masks needs --pattern-frame canvas"),
        (["--pattern-frame", "canvas", "--pattern-masks", "--gate-loss-weight", "-1"], "--gate-loss-weight must be"),
        (["--pattern-frame", "canvas", "--pattern-gates"], "--pattern-gates needs --pattern-masks"),
        pytest.param(
            ["--mixed-precision", "fp16"],
            "needs a GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 autocast is allowed on a GPU"),
        ),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(recipe, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        recipe.parse_args(["--out", str(tmp_path), *(a.format(tmp=tmp_path) for a in argv)])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bf16_mixed_precision_autocasts_the_unet(encoder_dir, tmp_path):
    """--mixed-precision bf16: the same seeded step gives a slightly different loss (bf16 matmuls), fp16 weights out.

    Each run is its own process: accelerate fixes the precision once per process.
    """
    losses = {}
    for mp in ("no", "bf16"):
        out = tmp_path / mp
        argv = ["--encoder", str(encoder_dir), "--out", str(out), "--cache", str(tmp_path / "groups.npz"), *TINY,
                "--steps", "1", "--mixed-precision", mp]  # fmt: skip
        subprocess.run([sys.executable, str(RECIPE), *argv], check=True, capture_output=True, timeout=300)
        losses[mp] = json.loads((out / "log.jsonl").read_text().splitlines()[0])["loss"]
        assert json.loads((out / "args.json").read_text())["mixed_precision"] == mp
    assert losses["no"] != losses["bf16"]  # the UNet really ran in bf16 ...
    assert abs(losses["no"] - losses["bf16"]) < 0.05 * losses["no"]  # ... on the same batch, noise and timesteps
    pipe = load_pipeline(tmp_path / "bf16" / "pipeline")
    assert pipe.unet.dtype == torch.float32 and torch.isfinite(pipe.unet.conv_in.weight).all()


def test_a_missing_encoder_is_one_line_not_a_traceback(tmp_path):
    """The recipe's run_script wrapper: a DuetgenError from deep inside main() is one stderr line and exit 2."""
    run = subprocess.run([sys.executable, str(RECIPE), "--out", str(tmp_path / "o"), "--encoder", str(tmp_path / "no"),
                          "--steps", "1"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("train_generator: error: model ")
    assert "Traceback" not in run.stderr
