import time

import pytest
import torch
from safetensors.torch import save_file

import duetgen
from duetgen.backbones import build_clip, get_backbone, list_backbones, load_clip, resolve_weights
from duetgen.errors import CheckpointError, WeightsUnavailableError


def test_registry_lists_builtin_and_tiny():
    names = list_backbones()
    for n in ("duetgen-tiny", "duetgen-world", "ViT-B-16-openai", "ViT-B-32"):
        assert n in names
    assert get_backbone("ViT-B-16-openai").pretrained == "openai"
    with pytest.raises(KeyError, match="unknown backbone"):
        get_backbone("nope")


@pytest.mark.parametrize("name", ["duetgen-tiny", "duetgen-world"])
def test_build_has_configured_sizes(name):
    clip = build_clip(name)
    cfg = duetgen.backbones.get_clip_config(name)
    assert clip.text_projection.shape[1] == cfg["embed_dim"]
    assert clip.visual.conv1.out_channels == cfg["vision_cfg"]["width"]


def test_offline_pretrained_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty cache
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        load_clip("ViT-B-16-openai")
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "ViT-B-16-openai" in msg and "local weights file" in msg and "DUETGEN_ALLOW_DOWNLOAD" in msg


def test_download_allowed_but_unreachable_fails_fast(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(duetgen.backbones, "_PROBE_HOST", ("127.0.0.1", 9))  # nothing listens: refused at once
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError):
        resolve_weights("ViT-B-32-openai", allow_download=True)
    assert time.monotonic() - start < 5


def test_local_weights_file_round_trip(tmp_path):
    """A user's downloaded weights file goes through the same path: save a tiny CLIP, load it back by path."""
    torch.manual_seed(1)
    clip = build_clip("duetgen-tiny")
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    loaded, _ = load_clip("duetgen-tiny", pretrained=str(path))
    ids = torch.randint(1, 1000, (2, 32))
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(clip.eval().encode_text(ids), loaded.encode_text(ids))
        assert torch.equal(clip.encode_image(img), loaded.encode_image(img))
    # .pt files are read with weights_only=True (no arbitrary pickles)
    pt = tmp_path / "w.pt"
    torch.save(clip.state_dict(), pt)
    loaded_pt, _ = load_clip("duetgen-tiny", pretrained=str(pt))
    with torch.no_grad():
        assert torch.equal(clip.encode_text(ids), loaded_pt.encode_text(ids))


def test_bad_weights_files_are_clear_errors(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_clip("duetgen-tiny", pretrained=str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        load_clip("duetgen-tiny", pretrained=str(junk))
    other = build_clip("duetgen-world")
    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(wrong))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_clip("duetgen-tiny", pretrained=str(wrong))


def _tiny_conv_stem_config() -> dict:
    cfg = duetgen.backbones.get_clip_config("duetgen-tiny")
    cfg["visual_stem"] = "conv"
    return cfg


def test_conv_stem_replaces_the_patch_embedding_with_the_same_token_grid():
    from duetgen.backbones import ConvStem

    patch = build_clip("duetgen-tiny").visual
    conv = build_clip(_tiny_conv_stem_config()).visual
    assert isinstance(conv.conv1, ConvStem) and not isinstance(patch.conv1, ConvStem)
    x = torch.rand(3, 3, 32, 32)
    assert conv.conv1(x).shape == patch.conv1(x).shape == (3, 32, 4, 4)
    assert conv(x).shape == patch(x).shape
    with pytest.raises(ValueError, match="visual_stem"):
        build_clip({**_tiny_conv_stem_config(), "visual_stem": "resnet"})


def test_conv_stem_width_comes_from_the_config():
    wide = build_clip({**_tiny_conv_stem_config(), "visual_stem_channels": 16}).visual.conv1
    assert [m.out_channels for m in wide.stages if isinstance(m, torch.nn.Conv2d)] == [16, 32, 32]  # capped at width
    for bad in (0, "64", 2.5, True):
        with pytest.raises(ValueError, match="visual_stem_channels"):
            build_clip({**_tiny_conv_stem_config(), "visual_stem_channels": bad})


def test_conv_stem_encoder_round_trips_and_frozen_stem_keeps_its_statistics(tmp_path):
    torch.manual_seed(0)
    enc = duetgen.ComposedQueryEncoder(_tiny_conv_stem_config(), backbone="tiny-cs")
    x = torch.rand(4, 3, 32, 32)
    enc.set_trainable("duet")
    enc.train()

    def running_means():
        return [b.clone() for n, b in enc.named_buffers() if "running_mean" in n]

    stats = running_means()
    assert stats
    enc.encode_image(x).sum().backward()  # a duet training step's forward: the frozen stem must not adapt
    assert all(torch.equal(a, b) for a, b in zip(stats, running_means(), strict=True))
    enc.set_trainable("all")
    enc.train()
    enc.encode_image(x)  # stage-1 training: the stem's BatchNorms learn their statistics
    assert not all(torch.equal(a, b) for a, b in zip(stats, running_means(), strict=True))
    enc.eval().save_pretrained(tmp_path)
    back = duetgen.load_encoder(tmp_path)
    assert torch.equal(back.encode_image(x), enc.encode_image(x))
