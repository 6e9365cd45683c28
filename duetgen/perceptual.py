"""Perceptual distance (LPIPS) between images, offline.

LPIPS = a torchvision backbone (AlexNet or VGG16, ImageNet weights) + small learned linear heads. The heads ship inside
the ``lpips`` package; the backbone weights are a torchvision download, which duetgen never starts. They are read from
a file the user names (``weights=PATH``) or from the user's torch hub cache (``torch.hub.get_dir()/checkpoints``,
where ``torchvision.models.alexnet(weights="DEFAULT")`` puts them on a machine with internet); otherwise
:class:`~duetgen.errors.WeightsUnavailableError` says how to get them.

Example::

    >>> from duetgen.perceptual import lpips_distance
    >>> d = lpips_distance(generated, target)            # (B,) ; images (B, 3, H, W) in [0, 1]
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

from .errors import CheckpointError, WeightsUnavailableError

logger = logging.getLogger(__name__)

# torchvision's file names for the ImageNet weights LPIPS was calibrated with.
TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def default_weights_path(net: str = "alex") -> Path:
    """Where torchvision caches the backbone weights of ``net`` (``"alex"`` or ``"vgg"``)."""
    _check_net(net)
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[net]


def _check_net(net: str) -> None:
    if net not in TORCHVISION_FILES:
        raise ValueError(f"net must be one of {sorted(TORCHVISION_FILES)}, got {net!r}")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)  # refuses arbitrary pickles
    except Exception as err:  # noqa: BLE001 - any failure is a bad weights file for the user
        raise CheckpointError(
            f"cannot read LPIPS backbone weights '{path}': {type(err).__name__}: {err}".splitlines()[0]
        ) from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"LPIPS backbone weights '{path}' do not hold a state dict")
    return state


def load_lpips(net: str = "alex", weights: str | os.PathLike | None = None, device: str | torch.device | None = None):
    """Builds ``lpips.LPIPS`` with its backbone weights from a local file; never downloads.

    Args:
        net: ``"alex"`` (AlexNet, the LPIPS default) or ``"vgg"`` (VGG16).
        weights: a torchvision state dict of that backbone (``.pth`` read with ``weights_only=True``, or
            ``.safetensors``); default: the torch hub cache (:func:`default_weights_path`).
        device: where to put the model.

    Returns:
        The LPIPS module in eval mode with gradients off.

    Raises:
        WeightsUnavailableError: no weights file given and none in the torch hub cache.
        CheckpointError: the file cannot be read or does not fit the backbone.
    """
    _check_net(net)
    path = Path(os.path.expanduser(str(weights))) if weights is not None else default_weights_path(net)
    if not path.is_file():
        where = (
            f"'{path}' does not exist" if weights is not None else f"they are not in the torch hub cache ('{path}')"
        )
        raise WeightsUnavailableError(
            f"LPIPS needs the ImageNet weights of torchvision's {'AlexNet' if net == 'alex' else 'VGG16'} "
            f"and {where}; "
            f"pass weights=PATH (a torchvision state dict), or on a machine with internet run "
            f"torchvision.models.{'alexnet' if net == 'alex' else 'vgg16'}(weights='DEFAULT') once to fill the cache"
        )
    state = _read_state_dict(path)
    return _build(net, str(path), device, state)


def _build(net: str, path: str, device, state: dict[str, torch.Tensor]):
    import lpips

    # pnet_rand=True: build the torchvision backbone without its download; the linear heads (pretrained=True) are
    # read from the lpips package itself.
    model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    targets = dict(model.net.named_parameters())
    mapped = {}
    for name in targets:  # "slice2.3.weight" -> torchvision "features.3.weight"
        _, index, kind = name.split(".")
        key = f"features.{index}.{kind}"
        if key not in state:
            raise CheckpointError(f"LPIPS backbone weights '{path}' do not fit {net}: key {key!r} missing")
        if state[key].shape != targets[name].shape:
            raise CheckpointError(
                f"LPIPS backbone weights '{path}' do not fit {net}: {key} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(targets[name].shape)}"
            )
        mapped[name] = state[key]
    with torch.no_grad():
        for name, value in mapped.items():
            targets[name].copy_(value.to(targets[name].dtype))
    model = model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model


@functools.lru_cache(maxsize=4)
def _cached(net: str, path: str, mtime: float):
    return load_lpips(net, path)


def lpips_distance(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    net: str = "alex",
    weights: str | os.PathLike | None = None,
    model=None,
) -> torch.Tensor:
    """LPIPS distance between two batches of images.

    Args:
        a, b: float tensors (B, 3, H, W) (or (3, H, W)) in [0, 1], same shape; H, W >= 32.
        net: backbone (``"alex"`` or ``"vgg"``).
        weights: backbone weights file (see :func:`load_lpips`); ignored when ``model`` is given.
        model: a module from :func:`load_lpips`, to skip the (cached) lookup.

    Returns:
        (B,) distances, 0 for identical images, larger for perceptually more different ones.
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError("a and b must be float tensors (B, 3, H, W) in [0, 1]")
    if a.ndim == 3 and b.ndim == 3:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"a and b must have the same shape (B, 3, H, W), got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < 32:
        raise ValueError(f"LPIPS needs images of at least 32 x 32 pixels, got {tuple(a.shape[-2:])}")
    if model is None:
        path = Path(os.path.expanduser(str(weights))) if weights is not None else default_weights_path(net)
        model = _cached(net, str(path), path.stat().st_mtime if path.is_file() else 0.0)
    device = next(model.parameters()).device
    with torch.no_grad():
        d = model(a.to(device, torch.float32), b.to(device, torch.float32), normalize=True)  # (B, 1, 1, 1)
    return d.flatten()


__all__ = ["default_weights_path", "load_lpips", "lpips_distance"]
