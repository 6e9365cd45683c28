"""Shared test set-up: offline, deterministic, tiny real models."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SKETCHY = REPO.parent / "shared" / "data" / "sketchy128"


@pytest.fixture
def tiny_encoder():
    """A tiny real ComposedQueryEncoder with random weights (32 px, width 32)."""
    from duetgen import ComposedQueryEncoder
    from duetgen.backbones import get_clip_config

    torch.manual_seed(0)
    return ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny").eval()


def embedded_present() -> bool:
    from duetgen.embedded import ENCODER_DIR

    return (ENCODER_DIR / "config.json").is_file()


needs_embedded = pytest.mark.skipif(not embedded_present(), reason="embedded default encoder not shipped yet")
