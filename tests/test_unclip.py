"""DuetUnCLIPPipeline with tiny random Stable unCLIP components (diffusers test style) and a tiny duet encoder."""

import json
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableUnCLIPImg2ImgPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer  # noqa: E402

import duetgen  # noqa: E402
from duetgen.backbones import get_clip_config  # noqa: E402
from duetgen.errors import WeightsUnavailableError  # noqa: E402
from duetgen.pipelines.pipeline_unclip import DuetUnCLIPPipeline  # noqa: E402


def _tiny_tokenizer(folder):
    """A byte-level CLIP BPE tokenizer with no merges (every character a token), written locally."""
    from open_clip.tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77
    )


@pytest.fixture(scope="module")
def tiny_unclip(tmp_path_factory):
    torch.manual_seed(0)
    d = 32  # = the tiny duet encoder's embed_dim
    tokenizer = _tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            bos_token_id=len(tokenizer) - 2,
            eos_token_id=len(tokenizer) - 1,
            pad_token_id=len(tokenizer) - 1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            projection_dim=32,
            max_position_embeddings=77,
        )
    ).eval()
    image_encoder = transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(
            hidden_size=32,
            projection_dim=d,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            intermediate_size=37,
            patch_size=4,
        )
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4),
        norm_num_groups=4,
        cross_attention_dim=32,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * d,
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    unclip = StableUnCLIPImg2ImgPipeline(
        feature_extractor=transformers.CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=image_encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=d),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        vae=vae,
    )
    unclip.set_progress_bar_config(disable=True)
    encoder = duetgen.ComposedQueryEncoder(
        get_clip_config("duetgen-tiny"), backbone="duetgen-tiny", sketch_fit="canvas"
    )
    return DuetUnCLIPPipeline(encoder.eval(), unclip)


def _sketch(offset=0):
    s = torch.ones(3, 32, 32)
    s[:, 8 + offset : 24 + offset, 12] = 0
    s[:, 8 + offset, 12:24] = 0
    return s


def _run(pipe, **kw):
    kw.setdefault("num_inference_steps", 2)
    return pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **kw)


def test_composed_query_reaches_the_unet_as_image_embeds(tiny_unclip):
    pipe = tiny_unclip
    seen = []
    hook = pipe.unclip.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["class_labels"]), with_kwargs=True
    )
    try:
        out = _run(pipe, sketch=_sketch(), text="in red", guidance_scale=1.0)
    finally:
        hook.remove()
    expected = pipe.image_embeds(pipe.encode_query(_sketch(), "in red"))  # (1, D)
    d = pipe.encoder.embed_dim
    assert seen and seen[0].shape == (1, 2 * d)
    # noise_level=0: the embedding passes unCLIP's normaliser and noising at t=0, i.e. (almost) unchanged
    torch.testing.assert_close(seen[0][:, :d], expected, rtol=0.02, atol=0.02)
    assert torch.allclose(out.query_embeds, pipe.encode_query(_sketch(), "in red"))
    assert out.images.shape == (1, 3, 32, 32)


def test_same_query_same_image_different_query_different_image(tiny_unclip):
    a = _run(tiny_unclip, sketch=_sketch(), text="in red").images
    b = _run(tiny_unclip, sketch=_sketch(), text="in red").images
    c = _run(tiny_unclip, sketch=_sketch(), text="with blue stripes").images
    e = _run(tiny_unclip, query_embeds=tiny_unclip.encode_query(_sketch(4), "in red")).images
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4
    assert (a - e).abs().max() > 1e-4


def test_text_only_sketch_only_and_pil(tiny_unclip):
    assert _run(tiny_unclip, text=["in red", "in blue"]).images.shape[0] == 2
    pil = tiny_unclip(sketch=_sketch(), num_inference_steps=1, output_type="pil").images
    assert pil[0].size == (32, 32)


def test_embedding_width_must_match(tiny_unclip):
    wide = duetgen.ComposedQueryEncoder(get_clip_config("duetgen-world"), backbone="duetgen-world")
    with pytest.raises(ValueError, match="embed_dim"):
        DuetUnCLIPPipeline(wide, tiny_unclip.unclip)


def test_offline_failure_is_fast_and_clear(tiny_unclip, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.delenv("DUETGEN_ALLOW_DOWNLOAD", raising=False)
    t0 = time.time()
    with pytest.raises(WeightsUnavailableError, match="local folder.*allow") as err:
        DuetUnCLIPPipeline.from_pretrained("stabilityai/stable-diffusion-2-1-unclip", encoder=tiny_unclip.encoder)
    assert time.time() - t0 < 5
    assert "stable-diffusion-2-1-unclip" in str(err.value)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        DuetUnCLIPPipeline.from_pretrained(str(tmp_path / "no" / "such" / "folder"), encoder=tiny_unclip.encoder)


def test_local_folder_round_trip(tiny_unclip, tmp_path):
    tiny_unclip.unclip.save_pretrained(tmp_path / "unclip")
    pipe = DuetUnCLIPPipeline.from_pretrained(tmp_path / "unclip", encoder=tiny_unclip.encoder)
    pipe.unclip.set_progress_bar_config(disable=True)
    torch.testing.assert_close(_run(pipe, text="in red").images, _run(tiny_unclip, text="in red").images)
