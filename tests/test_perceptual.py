"""LPIPS through duetgen's offline loading path, with a locally written (random) AlexNet weights file."""

import pytest
import torch
import torchvision

from duetgen.errors import WeightsUnavailableError
from duetgen.perceptual import load_lpips, lpips_distance


@pytest.fixture(scope="module")
def alex_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "alexnet-local.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def test_distances_from_local_weights(alex_weights):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 64, 64, generator=g)
    b = torch.rand(3, 3, 64, 64, generator=g)
    same = lpips_distance(a, a.clone(), weights=alex_weights)
    diff = lpips_distance(a, b, weights=alex_weights)
    near = lpips_distance(a, (a + 0.02 * torch.randn(a.shape, generator=g)).clamp(0, 1), weights=alex_weights)
    assert same.shape == (3,) and torch.isfinite(diff).all()
    assert torch.allclose(same, torch.zeros(3), atol=1e-6)
    assert (diff > near).all() and (near > 0).all()


def test_backbone_weights_really_loaded(alex_weights):
    model = load_lpips("alex", weights=alex_weights)
    state = torch.load(alex_weights, weights_only=True)
    assert torch.equal(getattr(model.net.slice1, "0").weight, state["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "10").bias, state["features.10.bias"])


def test_missing_weights_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    with pytest.raises(WeightsUnavailableError, match="weights=PATH"):
        lpips_distance(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_lpips("vgg", weights=tmp_path / "nope.pth")


def test_bad_arguments(alex_weights):
    with pytest.raises(ValueError, match="net must be"):
        load_lpips("resnet", weights=alex_weights)
    with pytest.raises(ValueError, match="same shape"):
        lpips_distance(torch.rand(1, 3, 64, 64), torch.rand(2, 3, 64, 64), weights=alex_weights)
