"""Front doors that load models: the embedded default, a saved folder, or a backbone name."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoints import load_model_folder
from .composed_query_encoder import ComposedQueryEncoder, encoder_from_backbone
from .embedded import ENCODER_DIR
from .errors import CheckpointError


def load_encoder(
    model: str | os.PathLike | None = None,
    *,
    pretrained: str | None = None,
    allow_download: bool | None = None,
    device: str | torch.device | None = None,
) -> ComposedQueryEncoder:
    """Loads a ComposedQueryEncoder, offline by default.

    Args:
        model: ``None`` for the embedded default; a folder written by ``save_pretrained`` (or a pipeline folder
            with an ``encoder/`` subfolder); or a backbone name from ``duetgen.list_backbones()``.
        pretrained: with a backbone name, override its weight source (tag, ``hf-hub:`` id or local file).
        allow_download: with a backbone name, permit downloading weights that are not cached.
        device: where to put the model (default: CPU).

    Returns:
        The encoder in eval mode, float32.

    Example::

        >>> import duetgen
        >>> enc = duetgen.load_encoder()              # the embedded default, offline
        >>> q = enc.encode_query(sketch[None], ["red with stripes"])
    """
    if model is None:
        if not (ENCODER_DIR / "config.json").is_file():
            raise CheckpointError(
                f"the embedded default encoder is missing from this install ({ENCODER_DIR}); reinstall duetgen or "
                "retrain it with recipes/train_embedded.sh"
            )
        model = ENCODER_DIR
    path = Path(os.path.expanduser(str(model)))
    if path.is_dir() and (path / "model_index.json").is_file() and (path / "encoder").is_dir():
        path = path / "encoder"
    if path.is_dir() or str(model).endswith(("/", os.sep)):
        encoder = load_model_folder(path, ComposedQueryEncoder, "encoder", torch_dtype=torch.float32)
    else:
        from .backbones import list_backbones

        name = str(model)
        if name not in list_backbones() and not name.startswith("hf-hub:"):
            raise CheckpointError(
                f"model {name!r} is neither a folder nor a known backbone; pass a folder written by save_pretrained "
                f"or one of: {', '.join(list_backbones())}"
            )
        encoder = encoder_from_backbone(name, pretrained=pretrained, allow_download=allow_download)
    encoder = encoder.float().eval()
    return encoder.to(device) if device is not None else encoder
