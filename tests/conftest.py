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


def make_tiny_pipeline(seed: int = 0, random_null: bool = True, sketch_fill: bool = True, query_states: bool = False):
    """A tiny real DuetGenPipeline (32 px, random weights), diffusers-test style, shared by the tests.

    ``random_null`` draws a non-zero null query (and null token states) so that guidance changes the result
    measurably; ``query_states``: the conditioner also takes the query's token states.
    """
    from duetgen import ComposedQueryEncoder
    from duetgen.backbones import get_clip_config
    from duetgen.pipelines import DuetGenPipeline

    torch.manual_seed(seed)
    encoder = ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny", sketch_fit="canvas")
    pipe = DuetGenPipeline.from_encoder(
        encoder.eval(),
        sample_size=32,
        block_out_channels=(8, 16),
        attention_levels=1,
        norm_num_groups=4,
        cross_attention_dim=16,
        attention_head_dim=8,
        sketch_fill=sketch_fill,
        query_states=query_states,
    )
    if random_null:
        with torch.no_grad():
            pipe.conditioner.null_query.normal_()
            if query_states:
                pipe.conditioner.null_states.normal_()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embedded_present() -> bool:
    from duetgen.embedded import ENCODER_DIR

    return (ENCODER_DIR / "config.json").is_file()


needs_embedded = pytest.mark.skipif(not embedded_present(), reason="embedded default encoder not shipped yet")
