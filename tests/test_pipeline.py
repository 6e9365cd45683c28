"""DuetGenPipeline with tiny real components: determinism, save/load, batches, schedulers, outputs, errors."""

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_tiny_pipeline
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)

import duetgen
from duetgen.errors import CheckpointError
from duetgen.generator import QueryConditioner, build_scheduler
from duetgen.pipelines import DuetGenPipeline, DuetGenPipelineOutput, load_pipeline, resolve_unet_dtype

STEPS = 3


def tiny_pipeline(seed: int = 0) -> DuetGenPipeline:
    return make_tiny_pipeline(seed)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def sketch(shift: int = 0) -> torch.Tensor:
    s = torch.ones(3, 32, 32)
    s[:, 6 + shift : 26 + shift, 8] = 0
    s[:, 6 + shift, 8:24] = 0
    return s


def run(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("output_type", "pt")
    return pipe(generator=torch.Generator().manual_seed(seed), **kw)


def test_output_shapes_and_range(pipe):
    out = run(pipe, sketch=sketch(), text="red with stripes")
    assert isinstance(out, DuetGenPipelineOutput)
    assert out.images.shape == (1, 3, 32, 32) and out.query_embeds.shape == (1, pipe.encoder.embed_dim)
    assert 0 <= out.images.min() and out.images.max() <= 1


def test_same_seed_same_image(pipe):
    a = run(pipe, sketch=sketch(), text="red").images
    b = run(pipe, sketch=sketch(), text="red").images
    c = run(pipe, seed=1, sketch=sketch(), text="red").images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_condition_changes_the_image(pipe):
    base = run(pipe, sketch=sketch(), text="red").images
    assert (base - run(pipe, sketch=sketch(), text="blue with dots").images).abs().max() > 1e-5
    assert (base - run(pipe, sketch=sketch(4), text="red").images).abs().max() > 1e-5
    assert (base - run(pipe, sketch=sketch(), text="red", guidance_scale=1.0).images).abs().max() > 1e-5


def test_text_only_and_sketch_only(pipe):
    text_only = run(pipe, text="green in pixel art")
    sketch_only = run(pipe, sketch=sketch())
    assert text_only.images.shape == sketch_only.images.shape == (1, 3, 32, 32)
    q = pipe.encoder.encode_query(None, ["green in pixel art"])
    assert torch.allclose(text_only.query_embeds, q, atol=1e-6)


def test_query_embeds_skip_the_encoder(pipe):
    ref = run(pipe, sketch=sketch(), text="red")
    again = run(pipe, sketch=sketch(), query_embeds=ref.query_embeds)
    assert torch.equal(ref.images, again.images)
    one_d = run(pipe, sketch=sketch(), query_embeds=ref.query_embeds[0])
    assert torch.equal(ref.images, one_d.images)


def test_batches(pipe):
    out = run(pipe, sketch=[sketch(), sketch(3)], text=["red", "blue"], num_images_per_prompt=2)
    assert out.images.shape == (4, 3, 32, 32) and out.query_embeds.shape[0] == 2
    # the order is prompt-major: prompt 0's two images first; prompt 1 alone gives the same pair
    single = run(pipe, sketch=sketch(3), text="blue", num_images_per_prompt=2).query_embeds
    assert torch.allclose(out.query_embeds[1], single[0], atol=1e-6)
    broadcast_text = run(pipe, sketch=torch.stack([sketch(), sketch(3)]), text="red")
    broadcast_sketch = run(pipe, sketch=sketch(), text=["red", "blue", "green"])
    assert broadcast_text.images.shape[0] == 2 and broadcast_sketch.images.shape[0] == 3
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    assert pipe(
        text="red", num_images_per_prompt=2, generator=gens, num_inference_steps=2, output_type="np"
    ).images.shape == (2, 32, 32, 3)


def test_sketch_as_pil_and_path(pipe, tmp_path):
    img = PIL.Image.fromarray((sketch()[0].numpy() * 255).astype(np.uint8))
    img.save(tmp_path / "s.png")
    a = run(pipe, sketch=img, text="red").images
    b = run(pipe, sketch=str(tmp_path / "s.png"), text="red").images
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "scheduler_cls", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler]
)
def test_every_scheduler(scheduler_cls):
    pipe = tiny_pipeline()
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    a = run(pipe, sketch=sketch(), text="red", num_inference_steps=4).images
    b = run(pipe, sketch=sketch(), text="red", num_inference_steps=4).images
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_make_scheduler_names_spacing_and_errors():
    from duetgen.pipelines import SCHEDULERS, make_scheduler

    leading = dict(build_scheduler("v_prediction").config, timestep_spacing="leading")  # older pipelines' config
    for name, cls_name in SCHEDULERS.items():
        a, b = make_scheduler(name, leading), make_scheduler(cls_name, leading)
        assert type(a).__name__ == type(b).__name__ == cls_name
        assert a.config.prediction_type == "v_prediction" and a.config.num_train_timesteps == 1000
    ddim = make_scheduler("ddim", leading)  # leading DDIM starts at t=960 and drifts: it is switched to trailing
    ddim.set_timesteps(25)
    assert ddim.config.timestep_spacing == "trailing" and int(ddim.timesteps[0]) == 999
    assert make_scheduler("ddpm", leading).config.timestep_spacing == "leading"  # DDPM is left as it was
    assert make_scheduler("DDIM", leading, timestep_spacing="leading").config.timestep_spacing == "leading"
    with pytest.raises(ValueError, match="unknown scheduler 'heun'"):
        make_scheduler("heun", leading)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt"])
def test_every_output_type(pipe, output_type):
    out = run(pipe, text="red", num_images_per_prompt=2, output_type=output_type)
    if output_type == "pil":
        assert len(out.images) == 2 and all(isinstance(i, PIL.Image.Image) and i.size == (32, 32) for i in out.images)
    elif output_type == "np":
        assert isinstance(out.images, np.ndarray) and out.images.shape == (2, 32, 32, 3)
    else:
        assert isinstance(out.images, torch.Tensor) and out.images.shape == (2, 3, 32, 32)
    images, query = pipe(text="red", num_inference_steps=1, output_type=output_type, return_dict=False)
    assert query.shape == (1, pipe.encoder.embed_dim)


def test_callback_on_step_end_each_step(pipe):
    calls = []

    def cb(p, step, timestep, kwargs):
        calls.append((step, int(timestep)))
        return {"latents": kwargs["latents"] * 0}

    out = run(pipe, text="red", num_inference_steps=4, callback_on_step_end=cb)
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert len({c[1] for c in calls}) == 4
    assert torch.allclose(out.images, torch.full_like(out.images, 0.5))  # the callback's latents were used


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"output_type": "jpg"}, "output_type"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"text": ["a", "b", "c"], "sketch": [sketch(), sketch()]}, "text has 3 entries but sketch has 2"),
        ({"text": None}, "give a sketch, text, or both"),
        ({"text": 5}, "text must be"),
        ({"text": []}, "text must be"),
        ({"sketch": 3}, "sketch must be"),
        ({"sketch": torch.full((3, 32, 32), 2.0)}, r"\[0, 1\]"),
        ({"sketch": torch.ones(5, 32, 32)}, "sketch tensors"),
        ({"query_embeds": torch.zeros(1, 32)}, "either text"),
        ({"text": None, "query_embeds": torch.zeros(1, 7)}, "query_embeds must have width"),
        ({"generator": [torch.Generator()] * 3}, "generator is a list of 3"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(pipe, kwargs, match):
    kwargs = {"text": "red", **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(num_inference_steps=kwargs.pop("num_inference_steps", 1), **kwargs)


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["encoder"] == ["duetgen.composed_query_encoder", "ComposedQueryEncoder"]
    assert index["conditioner"] == ["duetgen.generator", "QueryConditioner"]
    assert not list((tmp_path / "p").rglob("*.bin"))
    loaded = load_pipeline(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    for name in ("encoder", "conditioner", "unet"):  # every weight comes back bit for bit
        saved, back = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved), name
    # the same image (to float rounding: a freshly loaded 5-channel conv_in may take another CPU kernel path)
    a, b = run(pipe, sketch=sketch(), text="red").images, run(loaded, sketch=sketch(), text="red").images
    assert torch.allclose(a, b, atol=1e-5)
    # diffusers' loader found the custom components by the modules named in model_index.json
    assert isinstance(loaded.conditioner, QueryConditioner) and isinstance(
        loaded.encoder, duetgen.ComposedQueryEncoder
    )
    direct = DuetGenPipeline.from_pretrained(tmp_path / "p")
    assert torch.equal(direct.conditioner.null_query, pipe.conditioner.null_query)


def test_fp16_folder_loads_as_float32(pipe, tmp_path):
    half = tiny_pipeline()
    for m in (half.encoder, half.conditioner, half.unet):
        m.half()
    half.save_pretrained(tmp_path / "h")
    loaded = load_pipeline(tmp_path / "h")
    assert loaded.unet.dtype == loaded.encoder.dtype == torch.float32
    loaded.set_progress_bar_config(disable=True)
    a = run(loaded, sketch=sketch(), text="red").images
    b = run(pipe, sketch=sketch(), text="red").images
    assert (a - b).abs().max() < 0.05  # fp16 rounding of the weights only


def test_unsafe_or_foreign_folders_are_refused(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(CheckpointError, match="pickled"):
        load_pipeline(tmp_path / "p")
    pipe.save_pretrained(tmp_path / "q")
    index = json.loads((tmp_path / "q" / "model_index.json").read_text())
    index["encoder"] = ["os", "system"]
    (tmp_path / "q" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="only diffusers, duetgen"):
        load_pipeline(tmp_path / "q")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(ValueError, match="use_safetensors=False"):
        DuetGenPipeline.from_pretrained(tmp_path / "q", use_safetensors=False)


def test_embedded_default_or_clear_error():
    from duetgen.embedded import PIPELINE_DIR

    if (PIPELINE_DIR / "model_index.json").is_file():
        pipe = load_pipeline()
        pipe.set_progress_bar_config(disable=True)
        out = run(pipe, text="red", num_inference_steps=2)
        assert out.images.shape[-1] == pipe.sample_size
    else:
        with pytest.raises(CheckpointError, match="embedded default generator is missing"):
            load_pipeline()


def test_guidance_interval_guides_only_its_part_of_the_trajectory(pipe):
    batches = []
    hook = pipe.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        run(
            pipe, sketch=sketch(), text="red", num_inference_steps=10, guidance_scale=3.0, guidance_interval=(0.2, 0.7)
        )
    finally:
        hook.remove()
    assert batches == [1, 1, 2, 2, 2, 2, 2, 1, 1, 1]  # steps 2..6 guided (cond + uncond), the others conditional
    # no guided step at all is exactly the unguided pipeline; every step guided differs from the default interval
    never = run(pipe, sketch=sketch(), text="red", guidance_scale=3.0, guidance_interval=(0.0, 0.0)).images
    unguided = run(pipe, sketch=sketch(), text="red", guidance_scale=1.0).images
    assert torch.allclose(never, unguided, atol=1e-5)  # the conditioning is computed in a batch of 2 vs 1
    full = run(pipe, sketch=sketch(), text="red", num_inference_steps=10, guidance_scale=3.0, guidance_interval=(0, 1))
    default = run(pipe, sketch=sketch(), text="red", num_inference_steps=10, guidance_scale=3.0)  # (0, 0.7)
    assert (full.images - default.images).abs().max() > 1e-3
    for bad in [(0.7, 0.2), (0.0, 1.5), (0.5,), "all", (True, 1.0)]:
        with pytest.raises(ValueError, match="guidance_interval"):
            run(pipe, sketch=sketch(), text="red", guidance_interval=bad)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize(
    "scheduler_cls", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler]
)
def test_every_prediction_type_samples_with_every_scheduler(prediction_type, scheduler_cls):
    from duetgen.generator import build_scheduler

    pipe = tiny_pipeline()
    pipe.scheduler = scheduler_cls.from_config(build_scheduler(prediction_type).config)
    assert pipe.scheduler.config.prediction_type == prediction_type
    a = run(pipe, sketch=sketch(), text="red", num_inference_steps=4).images
    b = run(pipe, sketch=sketch(), text="red", num_inference_steps=4).images
    assert torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_rec_loss_targets_and_min_snr_weights(prediction_type):
    from duetgen.generator import build_scheduler, rec_loss, snr_weights, spatial_condition

    pipe = tiny_pipeline()
    sched = build_scheduler(prediction_type)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    sk = torch.ones(4, 1, 32, 32)
    tokens, labels = pipe.conditioner(pipe.encoder.encode_query(words=["red"] * 4))

    def loss(**kw):
        return rec_loss(pipe.unet, sched, images, sk, tokens, labels, generator=torch.Generator().manual_seed(3), **kw)

    with torch.no_grad():
        plain, weighted = loss(), loss(snr_gamma=5.0)
        # the plain loss is the MSE against this prediction type's target, on the noise and steps rec_loss draws
        gen = torch.Generator().manual_seed(3)
        noise = torch.randn(images.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (4,), generator=gen)
        target = {"epsilon": noise, "v_prediction": sched.get_velocity(images, noise, t), "sample": images}
        model_in = torch.cat([sched.add_noise(images, noise, t), spatial_condition(sk, 5)], dim=1)
        pred = pipe.unet(model_in, t, encoder_hidden_states=tokens, class_labels=labels).sample
        assert torch.isclose(plain, torch.nn.functional.mse_loss(pred, target[prediction_type]), rtol=1e-5)
    assert torch.isfinite(plain) and torch.isfinite(weighted) and not torch.isclose(plain, weighted)
    # the weights follow Min-SNR-gamma: min(SNR, 5) over SNR (eps), SNR + 1 (v) or 1 (x0)
    t = torch.tensor([0, 500, 999])
    ab = sched.alphas_cumprod[t]
    snr = ab / (1 - ab)
    denom = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[prediction_type]
    assert torch.allclose(snr_weights(sched, t, 5.0), snr.clamp(max=5.0) / denom, rtol=1e-4)
    if prediction_type == "epsilon":  # a gamma above every SNR leaves epsilon's loss unweighted
        with torch.no_grad():
            assert torch.isclose(loss(snr_gamma=1e12), plain, rtol=1e-5)
    with pytest.raises(ValueError, match="snr_gamma"):
        snr_weights(sched, t, -1.0)


def test_sketch_fill_encloses_the_drawn_region_and_feeds_the_unet():
    from duetgen import world
    from duetgen.generator import build_unet, sketch_fill, spatial_condition
    from duetgen.world import _mask

    ring = torch.ones(1, 1, 32, 32)
    ring[..., 8, 8:24] = ring[..., 23, 8:24] = ring[..., 8:24, 8] = ring[..., 8:24, 23] = -1  # a square outline
    fill = sketch_fill(ring)
    assert fill[0, 0, 16, 16] == 1 and fill[0, 0, 2, 2] == -1 and fill[0, 0, 30, 16] == -1
    assert ((fill > 0).sum() - 16 * 16).abs() <= 16  # the square, give or take its strokes
    gap = ring.clone()
    gap[..., 8, 14:17] = 1  # a 3 px gap in the outline is closed
    assert sketch_fill(gap)[0, 0, 16, 16] == 1
    assert (sketch_fill(torch.ones(2, 1, 32, 32)) == -1).all()  # a blank sketch encloses nothing
    ious = []
    for i in range(8):  # world sketches: the region matches the drawn instance
        inst = world.sample_instance(np.random.default_rng(i))
        sk = torch.from_numpy(world.render_sketch(inst, 64, seed=i)).float().div(255)[None, None] * 2 - 1
        region, mask = sketch_fill(sk)[0, 0].numpy() > 0, _mask(inst.outline(), 64) > 0.5
        ious.append((region & mask).sum() / (region | mask).sum())
    assert np.median(ious) > 0.6, ious
    assert spatial_condition(ring, 4) is ring and torch.equal(spatial_condition(ring, 5)[:, 1:], fill)
    with pytest.raises(ValueError, match="takes 4 or 5 or 15 or 21 input channels, this one takes 6"):
        spatial_condition(ring, 6)
    assert build_unet(16, sample_size=32, block_out_channels=(8, 16), attention_levels=1, norm_num_groups=4,
                      cross_attention_dim=16).config.in_channels == 5  # fmt: skip
    assert make_tiny_pipeline().unet.config.in_channels == 5


def test_pattern_waves_are_the_canvas_patterns_phase():
    """The UNet's wave channels are the phase the world's canvas-frame patterns are drawn at, so a pattern is a
    fixed function of them: the checks are the sign of the product of two of its sines."""
    from duetgen import world
    from duetgen.generator import PATTERN_WAVES, pattern_waves

    inst = world.sample_instance(np.random.default_rng(0))
    waves = pattern_waves(2, 64)
    assert waves.shape == (2, 2 * len(PATTERN_WAVES), 64, 64) and torch.equal(waves[0], waves[1])
    k = len(PATTERN_WAVES)
    cos = waves[0, :k].numpy()
    stripes = world._pattern(inst, "stripes", 64, hard=True, frame="canvas") > 0
    assert np.array_equal(stripes, cos[0] > 0.25)  # the diagonal wave's cosine above 0.25
    checks = world._pattern(inst, "checks", 64, hard=True, frame="canvas") > 0
    assert np.array_equal(checks, cos[3] - cos[4] > 0)  # a difference of the two diagonal half-frequency waves
    dots = world._pattern(inst, "dots", 64, hard=False, frame="canvas")  # coverage: dots centred where both are -1
    assert dots[cos[1] + cos[2] < -1.6].min() > 0.9 and dots[cos[1] + cos[2] > 0].max() < 0.1
    assert ((waves[0, :k] ** 2 + waves[0, k:] ** 2) - 1).abs().max() < 1e-5  # cosine and sine of one phase


def _widened_pipeline_round_trips_and_uses_new_channels(pipe, wide, first_new: int, tmp_path):
    """A pipeline with the widened UNet saves, loads and runs; once its new input weights are non-zero (as after
    training), the new channels change the image."""
    with torch.no_grad():
        wide.conv_in.weight[:, first_new:] = 0.5
    pipe.unet = wide
    pipe.save_pretrained(tmp_path / "p")
    back = load_pipeline(tmp_path / "p")
    back.set_progress_bar_config(disable=True)
    assert back.unet.config.in_channels == wide.config.in_channels
    with_new = run(back, sketch=sketch(), text="red").images
    back.unet.conv_in.weight.data[:, first_new:] = 0
    assert not torch.allclose(with_new, run(back, sketch=sketch(), text="red").images, atol=1e-3)


def test_adding_pattern_waves_keeps_the_unet_then_feeds_it(tmp_path):
    """add_pattern_waves: a 15-channel UNet that computes what the 5-channel one did (zero input weights) until
    trained; its pipeline saves, loads and runs, and the waves reach the UNet."""
    from duetgen.generator import add_pattern_waves, has_pattern_waves, pattern_waves, spatial_condition

    pipe = make_tiny_pipeline()
    wide = add_pattern_waves(pipe.unet)
    assert wide.config.in_channels == 15 and has_pattern_waves(wide) and not has_pattern_waves(pipe.unet)
    sk = sketch()[None, :1] * 2 - 1
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    tokens, labels = pipe.conditioner(pipe.encoder.encode_query(sketch()[None], ["red"]))
    with torch.no_grad():
        before = pipe.unet(torch.cat([x, spatial_condition(sk, 5)], 1), t, tokens, class_labels=labels).sample
        after = wide(torch.cat([x, spatial_condition(sk, 15)], 1), t, tokens, class_labels=labels).sample
    assert torch.allclose(before, after, atol=1e-6)
    assert torch.equal(spatial_condition(sk, 15)[:, 2:], pattern_waves(1, 32))
    with pytest.raises(ValueError, match="this UNet takes 15"):
        add_pattern_waves(wide)
    _widened_pipeline_round_trips_and_uses_new_channels(pipe, wide, 5, tmp_path)  # the waves


def test_adding_pattern_masks_keeps_the_unet_then_feeds_it(tmp_path):
    """add_pattern_masks: a 21-channel UNet that computes what the 15-channel one did until trained; the masks are
    the world's canvas-frame patterns; its pipeline saves, loads and runs, and the masks reach the UNet."""
    from duetgen import world
    from duetgen.generator import (
        MASK_CHANNELS,
        add_pattern_masks,
        add_pattern_waves,
        build_unet,
        has_pattern_masks,
        has_pattern_waves,
        pattern_masks,
        spatial_condition,
    )

    pipe = make_tiny_pipeline()
    with pytest.raises(ValueError, match="this UNet takes 5"):
        add_pattern_masks(pipe.unet)  # the waves come first
    waved = add_pattern_waves(pipe.unet)
    with torch.no_grad():
        waved.conv_in.weight[:, 5:] = 0.3
    wide = add_pattern_masks(waved)
    assert wide.config.in_channels == 15 + MASK_CHANNELS == 21
    assert has_pattern_masks(wide) and has_pattern_waves(wide) and not has_pattern_masks(waved)
    masks = pattern_masks(2, 32)
    assert masks.shape == (2, 6, 32, 32) and torch.equal(masks[0], masks[1])
    expected = [
        world.canvas_pattern(p, 32, d) * 2 - 1 for d in ("plain", "pixel art") for p in ("stripes", "dots", "checks")
    ]
    assert np.allclose(masks[0].numpy(), np.stack(expected))
    sk = sketch()[None, :1] * 2 - 1
    assert torch.equal(spatial_condition(sk, 21)[:, 12:], pattern_masks(1, 32))
    assert torch.equal(spatial_condition(sk, 21)[:, :12], spatial_condition(sk, 15))
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    tokens, labels = pipe.conditioner(pipe.encoder.encode_query(sketch()[None], ["red"]))
    with torch.no_grad():
        before = waved(torch.cat([x, spatial_condition(sk, 15)], 1), t, tokens, class_labels=labels).sample
        after = wide(torch.cat([x, spatial_condition(sk, 21)], 1), t, tokens, class_labels=labels).sample
    assert torch.allclose(before, after, atol=1e-6)
    with pytest.raises(ValueError, match="this UNet takes 21"):
        add_pattern_masks(wide)
    _widened_pipeline_round_trips_and_uses_new_channels(pipe, wide, 15, tmp_path)  # the masks
    with pytest.raises(ValueError, match="pattern_masks=True needs pattern_waves=True"):
        build_unet(16, pattern_masks=True)


def test_pattern_gates_pass_only_the_asked_patterns_masks(tmp_path):
    """QueryConditioner pattern gates: probabilities over solid + the masked patterns from the conditioning; only the
    chosen pattern's masks (both domains) reach the UNet; a gated pipeline saves, loads and runs, and its gates
    change the image."""
    from duetgen.generator import (
        add_pattern_gates,
        add_pattern_masks,
        add_pattern_waves,
        gate_pattern_masks,
        pattern_masks,
        spatial_condition,
    )

    pipe = make_tiny_pipeline()
    pipe.unet = add_pattern_masks(add_pattern_waves(pipe.unet))
    with torch.no_grad():
        pipe.unet.conv_in.weight[:, 15:] = 0.5
    assert not pipe.conditioner.uses_pattern_gates
    gated = add_pattern_gates(pipe.conditioner)
    assert gated.uses_pattern_gates and gated.config.pattern_gates == 3
    with pytest.raises(ValueError, match="already has pattern gates"):
        add_pattern_gates(gated)
    with pytest.raises(ValueError, match="no pattern gates"):
        pipe.conditioner.pattern_logits(torch.zeros(1, 4, 16), torch.zeros(1, 16))
    query = pipe.encoder.encode_query(sketch()[None].expand(2, -1, -1, -1), ["red", "blue"])
    hidden, labels = gated(query)
    old_hidden, old_labels = pipe.conditioner(query)
    assert torch.equal(hidden, old_hidden) and torch.equal(labels, old_labels)  # the rest of the conditioner is kept
    probs = gated.pattern_probs(hidden, labels)
    assert probs.shape == (2, 4) and torch.allclose(probs, torch.full_like(probs, 0.25))  # all choices equal at first
    sk = (sketch()[None, :1] * 2 - 1).expand(2, -1, -1, -1)
    spatial = spatial_condition(sk, 21)
    dots = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # row 0 asks for dots, row 1 for solid
    out = gate_pattern_masks(spatial, dots)
    assert torch.equal(out[:, :12], spatial[:, :12])  # sketch, region and waves untouched
    masks = pattern_masks(1, 32)[0]
    assert torch.equal(
        out[0, 12:], torch.stack([masks[k] if k in (1, 4) else torch.zeros_like(masks[k]) for k in range(6)])
    )
    assert not out[1, 12:].any()
    with pytest.raises(ValueError, match="need the pattern masks"):
        gate_pattern_masks(spatial_condition(sk, 15), dots)

    pipe.conditioner = gated
    pipe.save_pretrained(tmp_path / "p")
    back = load_pipeline(tmp_path / "p")
    back.set_progress_bar_config(disable=True)
    assert back.conditioner.uses_pattern_gates and back.unet.config.in_channels == 21
    with torch.no_grad():
        back.conditioner.gate_head.bias.copy_(torch.tensor([0.0, 0.0, 30.0, 0.0]))  # always dots
    always_dots = run(back, sketch=sketch(), text="red").images
    with torch.no_grad():
        back.conditioner.gate_head.bias.copy_(torch.tensor([30.0, 0.0, 0.0, 0.0]))  # always solid: no masks
    always_solid = run(back, sketch=sketch(), text="red").images
    assert not torch.allclose(always_dots, always_solid, atol=1e-3)
    with torch.no_grad():
        back.unet.conv_in.weight[:, 15:] = 0  # with the masks' weights off, the gates change nothing
    assert torch.allclose(run(back, sketch=sketch(), text="red").images, always_solid, atol=1e-5)
    from duetgen.pipelines import DuetGenPipeline

    with pytest.raises(ValueError, match="pattern_gates=True needs pattern_masks=True"):
        DuetGenPipeline.from_encoder(pipe.encoder, pattern_gates=True)


def test_outline_only_pipelines_still_load_and_run(tmp_path):
    pipe = make_tiny_pipeline(sketch_fill=False)
    assert pipe.unet.config.in_channels == 4
    pipe.save_pretrained(tmp_path / "p")
    back = load_pipeline(tmp_path / "p")
    back.set_progress_bar_config(disable=True)
    assert back.unet.config.in_channels == 4 and torch.isfinite(run(back, sketch=sketch(), text="red").images).all()


# ---------------------------------------------------------------------------------------------------------------
# the composed query token by token (QueryConditioner state_dim)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def states_pipe():
    return make_tiny_pipeline(query_states=True)


def test_conditioner_token_states_and_their_null():
    cond = QueryConditioner(8, num_tokens=2, cross_attention_dim=16, state_dim=12, state_length=5)
    with torch.no_grad():
        cond.null_states.normal_()
    q, h = torch.randn(3, 8), torch.randn(3, 5, 12)
    tokens, labels = cond(q, states=h)
    assert tokens.shape == (3, 2 + 5, 16) and torch.equal(labels, q)
    # the states reach the tokens: other states, other tokens; the query tokens stay
    other, _ = cond(q, states=h + 1)
    assert torch.equal(tokens[:, :2], other[:, :2]) and not torch.allclose(tokens[:, 2:], other[:, 2:])
    # dropped rows (query or states) and missing states get the learned null states
    dropped, _ = cond(q, drop=torch.tensor([True, False, False]), states=h, drop_states=torch.tensor([0, 0, 1]).bool())
    null = cond.null_states.detach()
    assert torch.equal(dropped[0, 2:], null) and torch.equal(dropped[2, 2:], null)
    assert torch.equal(dropped[1], tokens[1])
    assert torch.equal(cond(q)[0][:, 2:], null.expand(3, -1, -1))
    with pytest.raises(ValueError, match="token states must have shape"):
        cond(q, states=torch.randn(3, 4, 12))
    with pytest.raises(ValueError, match="go together"):
        QueryConditioner(8, state_dim=12)


def test_states_pipeline_conditions_on_the_words_token_by_token(states_pipe):
    ref = run(states_pipe, sketch=sketch(), text="red with stripes")
    enc_q, enc_h = states_pipe.encoder.encode_query(sketch()[None], ["red with stripes"], return_states=True)
    assert torch.allclose(ref.query_embeds, enc_q, atol=1e-6)
    assert torch.allclose(ref.query_token_embeds, enc_h, atol=1e-5)
    # the same query with its states reproduces the image; without them the null states stand in
    again = run(states_pipe, sketch=sketch(), query_embeds=ref.query_embeds, query_token_embeds=ref.query_token_embeds)
    assert torch.equal(ref.images, again.images)
    one = run(
        states_pipe, sketch=sketch(), query_embeds=ref.query_embeds[0], query_token_embeds=ref.query_token_embeds[0]
    )
    assert torch.equal(ref.images, one.images)
    pooled_only = run(states_pipe, sketch=sketch(), query_embeds=ref.query_embeds)
    assert (pooled_only.images - ref.images).abs().max() > 1e-5
    with pytest.raises(ValueError, match="go with query_embeds"):
        run(states_pipe, sketch=sketch(), text="red", query_token_embeds=ref.query_token_embeds)
    with pytest.raises(ValueError, match="rows"):
        run(states_pipe, query_embeds=ref.query_embeds, query_token_embeds=ref.query_token_embeds.expand(2, -1, -1))


def test_states_pipeline_save_load_round_trip(states_pipe, tmp_path):
    states_pipe.save_pretrained(tmp_path / "p")
    loaded = DuetGenPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.conditioner.uses_states and torch.equal(
        loaded.conditioner.null_states, states_pipe.conditioner.null_states
    )
    saved, back = states_pipe.conditioner.state_dict(), loaded.conditioner.state_dict()
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    a = run(states_pipe, sketch=sketch(), text="blue with dots").images
    assert torch.allclose(a, run(loaded, sketch=sketch(), text="blue with dots").images, atol=1e-5)


@pytest.mark.parametrize("query_states", [False, True])
def test_unet_jit_matches_eager(query_states):
    pipe = make_tiny_pipeline(query_states=query_states)
    kw = {"sketch": [sketch(), sketch(2)], "text": ["red", "blue with dots"], "num_inference_steps": 4}
    eager = run(pipe, **kw).images
    pipe.enable_unet_jit()
    traced = run(pipe, **kw).images
    # one trace per UNet input shape: guided steps (4 rows) and the unguided tail (2 rows)
    assert len(pipe._unet_traces) == 2
    assert all(isinstance(f, torch.jit.ScriptModule) for f in pipe._unet_traces.values())
    assert torch.allclose(eager, traced, atol=1e-4)
    assert torch.allclose(traced, run(pipe, **kw).images, atol=1e-6) and len(pipe._unet_traces) == 2
    pipe.enable_unet_jit(False)
    assert pipe._unet_traces is None and torch.equal(run(pipe, **kw).images, eager)


def test_generation_ab_benchmark_times_both_pipelines(tmp_path):
    """benchmarks/bench_generation_ab.py: two saved pipelines, interleaved, medians and their ratio in the JSON."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "bench_generation_ab", root / "benchmarks" / "bench_generation_ab.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name, seed in (("a", 0), ("b", 1)):
        tiny_pipeline(seed).save_pretrained(tmp_path / name)
    sketch = root / "samples" / "sketches" / "heart.png"
    out = bench.main([str(tmp_path / "a"), str(tmp_path / "b"), "--repeats", "2", "--steps", "2", "--threads", "1",
                      "--sketch", str(sketch), "--out", str(tmp_path / "r.json")])  # fmt: skip
    assert out["median_s_a"] > 0 and out["median_s_b"] > 0 and out["jit"]
    assert out["ratio_a_over_b"] == pytest.approx(out["median_s_a"] / out["median_s_b"], rel=0.01)
    assert json.loads((tmp_path / "r.json").read_text()) == out
    auto = str(resolve_unet_dtype("auto")).removeprefix("torch.")  # the default, as the CLI's
    assert out["unet_dtype_a"] == out["unet_dtype_b"] == auto
    dtypes = ["--a-unet-dtype", "bfloat16", "--b-unet-dtype", "float32"]
    same = bench.main([str(tmp_path / "a"), str(tmp_path / "a"), *dtypes, "--repeats", "1", "--steps", "2",
                       "--threads", "1", "--sketch", str(sketch)])  # fmt: skip
    assert same["unet_dtype_a"] == "bfloat16" and same["unet_dtype_b"] == "float32"


def test_resolve_unet_dtype():
    assert resolve_unet_dtype("float32") == torch.float32 and resolve_unet_dtype("bfloat16") == torch.bfloat16
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_unet_dtype("auto") == (torch.bfloat16 if native else torch.float32)
    assert resolve_unet_dtype("auto", "meta") == torch.float32  # not a CPU: the caller picks
    with pytest.raises(ValueError, match="unet dtype must be one of auto, float32, bfloat16"):
        resolve_unet_dtype("fp8")


def test_bfloat16_unet_keeps_float32_latents(tmp_path):
    """load_pipeline(unet_dtype=torch.bfloat16): the UNet alone runs in bfloat16 (eager and traced), the latents and
    the scheduler stay float32, and the images stay close to the float32 UNet's."""
    from duetgen.pipelines import load_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "p")
    full = load_pipeline(tmp_path / "p")
    half = load_pipeline(tmp_path / "p", unet_dtype=torch.bfloat16)
    assert full.unet.dtype == torch.float32 and half.unet.dtype == torch.bfloat16
    assert half.encoder.dtype == half.conditioner.dtype == torch.float32
    seen = []
    half.unet.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.sample.dtype)))
    kw = {"sketch": sketch(), "text": "red with stripes", "num_inference_steps": 4}
    latents = []

    def record(pipe, i, t, kwargs):
        latents.append(kwargs["latents"].dtype)
        return kwargs

    ref = run(full, **kw).images
    out = run(half, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"], **kw).images
    assert seen and all(d == (torch.bfloat16, torch.bfloat16) for d in seen)
    assert latents == [torch.float32] * 4
    assert out.dtype == torch.float32 and not torch.equal(out, ref)
    assert (out - ref).abs().mean() < 0.02, (out - ref).abs().mean()
    half.enable_unet_jit()
    assert torch.allclose(run(half, **kw).images, out, atol=1e-2)


def test_sketch_guidance_scale_guides_the_sketch_and_the_query_separately(states_pipe):
    """InstructPix2Pix's two scales: rows (null, blank), (null, sketch), (query, sketch) on guided steps only."""
    pipe = states_pipe
    calls = []

    def record(module, args, kwargs, out):
        calls.append(
            (args[0].detach().clone(), kwargs["class_labels"].clone(), kwargs["encoder_hidden_states"].clone())
        )

    hook = pipe.unet.register_forward_hook(record, with_kwargs=True)
    try:
        two = run(pipe, sketch=sketch(), text="red", num_inference_steps=4, guidance_scale=3.0,
                  sketch_guidance_scale=2.0, guidance_interval=(0.0, 0.5)).images  # fmt: skip
    finally:
        hook.remove()
    assert [c[0].shape[0] for c in calls] == [3, 3, 1, 1]  # 2 guided steps of 3 passes, then conditional only
    sample, labels, hidden = calls[0]
    sketch_channel = sample[:, 3]
    assert torch.all(sketch_channel[0] == 1.0)  # blank paper
    assert torch.equal(sketch_channel[1], sketch_channel[2]) and sketch_channel[1].min() < 0  # the drawn sketch
    assert torch.equal(labels[0], labels[1]) and not torch.equal(labels[1], labels[2])  # null, null, the query
    assert torch.equal(hidden[0], hidden[1]) and not torch.equal(hidden[1], hidden[2])  # null states for both
    assert torch.equal(calls[2][0][0, 3], sketch_channel[2])  # unguided steps take the conditional row
    # equal scales are exactly one-scale guidance: u + s (p_sketch - u) + s (p_cond - p_sketch) = u + s (p_cond - u)
    kw = dict(sketch=sketch(), text="red", num_inference_steps=4, guidance_scale=3.0)
    one = run(pipe, **kw).images
    assert torch.allclose(run(pipe, sketch_guidance_scale=3.0, **kw).images, one, atol=1e-5)
    assert (two - one).abs().max() > 1e-3
    # no sketch weight at all: the sketch branch is the baseline, not the blank one
    assert (run(pipe, sketch_guidance_scale=0.0, **kw).images - one).abs().max() > 1e-3
    for bad in (-1.0, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="sketch_guidance_scale"):
            run(pipe, sketch_guidance_scale=bad, **kw)


# ---------------------------------------------------------------------------------------------------------------
# image-to-image (SDEdit): image= and strength=
# ---------------------------------------------------------------------------------------------------------------


def photo(h: int = 32, w: int = 32) -> torch.Tensor:
    """A red square on grey, (3, h, w) in [0, 1]."""
    x = torch.full((3, h, w), 0.6)
    x[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    return x


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm", "euler"])
def test_image_to_image_starts_from_the_image_noised_to_the_first_kept_step(pipe, scheduler):
    """strength s of N steps: the last round(s N) timesteps run, from add_noise(image, noise, first kept t)."""
    from duetgen.pipelines import make_scheduler

    p = DuetGenPipeline(encoder=pipe.encoder, unet=pipe.unet, conditioner=pipe.conditioner,
                        scheduler=make_scheduler(scheduler, pipe.scheduler.config))  # fmt: skip
    p.set_progress_bar_config(disable=True)
    seen = []

    def record(module, args, kwargs, out):
        seen.append((int(args[1].flatten()[0]) if torch.is_tensor(args[1]) else int(args[1]), args[0][:1, :3].clone()))

    hook = p.unet.register_forward_hook(record, with_kwargs=True)
    try:
        run(p, sketch=sketch(), text="red", image=photo(), strength=0.5, num_inference_steps=4, guidance_scale=1.0)
    finally:
        hook.remove()
    p.scheduler.set_timesteps(4)
    kept = [int(t) for t in p.scheduler.timesteps[2:]]
    assert [t for t, _ in seen] == kept  # only the last half of the trajectory
    noise = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    p.scheduler.set_timesteps(4)
    if hasattr(p.scheduler, "set_begin_index"):
        p.scheduler.set_begin_index(2)
    start = p.scheduler.add_noise(photo()[None] * 2 - 1, noise, p.scheduler.timesteps[2:3])
    assert torch.allclose(seen[0][1], p.scheduler.scale_model_input(start, p.scheduler.timesteps[2]), atol=1e-5)


def test_image_to_image_keeps_more_of_the_image_at_lower_strength(pipe):
    kw = dict(sketch=sketch(), text="red", num_inference_steps=8)
    target = photo()
    far = [(run(pipe, image=target, strength=s, **kw).images[0] - target).abs().mean() for s in (0.25, 0.5, 1.0)]
    assert far[0] < far[1] < far[2], far
    plain = run(pipe, **kw).images
    assert not torch.equal(run(pipe, image=target, strength=1.0, **kw).images, plain)  # still starts at the image
    # one image for every prompt, or one per prompt; reproducible per seed
    two = run(pipe, sketch=[sketch(), sketch(2)], text="red", image=target, strength=0.5, num_inference_steps=8)
    again = run(pipe, sketch=[sketch(), sketch(2)], text="red", image=[target, target], strength=0.5,
                num_inference_steps=8)  # fmt: skip
    assert two.images.shape == (2, 3, 32, 32) and torch.equal(two.images, again.images)
    pair = run(pipe, image=target, strength=0.5, num_images_per_prompt=2, **kw).images  # two draws from one start
    assert pair.shape == (2, 3, 32, 32) and not torch.equal(pair[0], pair[1])


def test_image_to_image_reads_files_arrays_and_crops_to_a_square(pipe, tmp_path):
    wide = photo(32, 64)  # centre-cropped to its middle 32 x 32
    path = tmp_path / "wide.png"
    PIL.Image.fromarray((wide.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    from_file = pipe.prepare_image(str(path), 1)
    assert from_file.shape == (1, 3, 32, 32) and from_file.min() >= -1 and from_file.max() <= 1
    expected = wide[:, :, 16:48] * 2 - 1
    assert (from_file[0] - expected).abs().max() < 2 / 255 + 1e-6
    arr = (wide.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert torch.allclose(pipe.prepare_image(arr, 1), from_file, atol=1e-6)
    assert torch.allclose(pipe.prepare_image(PIL.Image.open(path), 1), from_file, atol=1e-6)
    big = pipe.prepare_image(photo(128, 128), 3)  # downscaled, repeated to the prompts
    assert big.shape == (3, 3, 32, 32)


def test_image_to_image_errors_name_the_problem(pipe, tmp_path):
    kw = dict(sketch=sketch(), text="red", num_inference_steps=4)
    with pytest.raises(ValueError, match="strength goes with image"):
        run(pipe, strength=0.5, **kw)
    for bad in (0, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="strength must be"):
            run(pipe, image=photo(), strength=bad, **kw)
    with pytest.raises(ValueError, match="runs no step"):
        run(pipe, image=photo(), strength=0.1, **kw)
    with pytest.raises(duetgen.DuetgenInputError, match="does not exist"):
        run(pipe, image=str(tmp_path / "missing.png"), **kw)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(duetgen.DuetgenInputError, match="corrupt.png"):
        run(pipe, image=str(corrupt), **kw)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(duetgen.DuetgenInputError, match="is not an image"):
        run(pipe, image=str(text), **kw)
    with pytest.raises(ValueError, match="2 images for 3 prompts"):
        run(pipe, sketch=[sketch()] * 3, text="red", image=[photo(), photo()], num_inference_steps=4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run(pipe, image=photo() * 2, **kw)
    with pytest.raises(ValueError, match="image must be a path"):
        run(pipe, image=12, **kw)


def test_image_to_image_refuses_huge_files_before_decoding(pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("DUETGEN_MAX_PIXELS", "1000")
    path = tmp_path / "big.png"
    PIL.Image.new("RGB", (40, 40), "white").save(path)
    with pytest.raises(duetgen.DuetgenInputError, match="over the limit.*DUETGEN_MAX_PIXELS"):
        run(pipe, sketch=sketch(), text="red", image=str(path), num_inference_steps=4)


def test_num_timesteps_is_what_the_call_runs(pipe):
    seen = []

    def record(p, i, t, kwargs):
        seen.append(p.num_timesteps)
        return {}

    run(pipe, sketch=sketch(), text="red", num_inference_steps=8, callback_on_step_end=record)
    assert seen == [8] * 8
    seen.clear()
    run(pipe, sketch=sketch(), text="red", num_inference_steps=8, image=photo(), strength=0.5,
        callback_on_step_end=record)  # fmt: skip
    assert seen == [4] * 4


def test_best_of_keeps_the_best_scoring_candidate_of_each_image(pipe):
    from duetgen.verify import score_generations, sketch_regions

    texts = ["red", "blue with dots"]
    best = run(pipe, sketch=sketch(), text=texts, num_images_per_prompt=2, best_of=3)
    pool = run(pipe, sketch=sketch(), text=texts, num_images_per_prompt=6)  # the same noise: all the candidates
    assert best.images.shape == (4, 3, 32, 32) and best.scores.shape == (4,)
    queries = pool.query_embeds.repeat_interleave(6, dim=0)
    regions = sketch_regions(sketch()[None].expand(12, -1, -1, -1).contiguous())
    scores = score_generations(pipe.encoder, pool.images, queries, regions).view(4, 3)
    want = pool.images.view(4, 3, 3, 32, 32)[torch.arange(4), scores.argmax(1)]
    assert torch.allclose(best.images, want, atol=1e-6)
    assert torch.allclose(best.scores, scores.amax(1), atol=1e-5)
    assert run(pipe, sketch=sketch(), text="red").scores is None  # one sample: nothing was chosen
    # the IoU's weight changes the choice's score by weight x IoU
    heavy = run(pipe, sketch=sketch(), text=texts, num_images_per_prompt=2, best_of=3, best_of_weight=5.0)
    assert (heavy.scores > best.scores).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"best_of": 0}, "best_of must be an integer >= 1"),
        ({"best_of": 1.5}, "best_of must be an integer >= 1"),
        ({"best_of": True}, "best_of must be an integer >= 1"),
        ({"best_of": 2, "best_of_weight": -1.0}, "best_of_weight must be"),
        ({"best_of": 2, "best_of_weight": math.nan}, "best_of_weight must be"),
        ({"best_of": 2, "generator": [torch.Generator()] * 3}, r"list of 3 .* x best_of = 2"),
    ],
)
def test_best_of_bad_arguments(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(text="red", num_inference_steps=1, **kwargs)


def test_best_of_counts_every_candidate_against_the_image_limit(pipe, monkeypatch):
    monkeypatch.setenv("DUETGEN_MAX_IMAGES", "4")
    with pytest.raises(ValueError, match=r"num_images_per_prompt x best_of: 6 images .* over the limit of 4"):
        pipe(text="red", num_inference_steps=1, num_images_per_prompt=2, best_of=3)
    from duetgen.pipelines import prompts_per_call

    assert prompts_per_call(16, 3) == 1 and prompts_per_call(16, 1) == 4 and prompts_per_call(2, 1) == 2
    assert prompts_per_call(16, 8) == 1  # over the limit even for one prompt: the pipeline's error names it


def test_candidate_generators_give_the_pipelines_candidates(pipe):
    """Seeds s and s + 1,000,000 drawn alone are the two candidates of best_of=2 with candidate_generators([s], 2)."""
    from duetgen.pipelines import candidate_generators

    def gen(gens, **kw):
        return pipe(text="red", sketch=sketch(), num_inference_steps=STEPS, generator=gens, output_type="pt", **kw)

    alone = [gen(candidate_generators([7 + j * 1_000_000])).images[0] for j in range(2)]
    best = gen(candidate_generators([7], 2), best_of=2).images[0]
    assert [g.initial_seed() for g in candidate_generators([7], 2)] == [7, 1_000_007]
    assert any(torch.allclose(best, a, atol=1e-5) for a in alone)
