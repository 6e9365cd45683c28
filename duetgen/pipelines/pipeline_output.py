"""Output of the duetgen generation pipelines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class DuetGenPipelineOutput(BaseOutput):
    """Output of :class:`~duetgen.pipelines.DuetGenPipeline` and :class:`~duetgen.pipelines.DuetUnCLIPPipeline`.

    Attributes:
        images: N = batch x ``num_images_per_prompt`` images, in the order (prompt 0: image 0, 1, ...; prompt 1...):
            ``output_type="pil"``: a list of N RGB ``PIL.Image`` of S x S pixels;
            ``"np"``: float32 array (N, S, S, 3) in [0, 1];
            ``"pt"``: float32 tensor (N, 3, S, S) in [0, 1].
        query_embeds: (batch, D) the composed queries the images were generated from (one per prompt, before
            repetition by ``num_images_per_prompt``), on the pipeline's device.
        query_token_embeds: (batch, L, Wt) the same queries token by token, when the pipeline's conditioner uses
            them (``conditioner.uses_states``); pass both back as ``query_embeds=`` / ``query_token_embeds=``.
        scores: with ``best_of`` > 1, (N,) each returned image's score among its candidates
            (:func:`duetgen.verify.score_generations`: query cosine + weight x silhouette IoU); else None.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    query_embeds: torch.Tensor | None = None
    query_token_embeds: torch.Tensor | None = None
    scores: torch.Tensor | None = None
