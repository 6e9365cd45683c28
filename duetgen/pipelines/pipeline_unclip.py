"""DuetUnCLIPPipeline: real photos from a sketch and words, by feeding the composed query to Stable unCLIP.

Stable unCLIP (``StableUnCLIPImg2ImgPipeline``) generates from a CLIP *image* embedding, passed as ``image_embeds``
instead of an image. A duet encoder built on the same CLIP as unCLIP's image encoder (OpenCLIP ViT-H/14 for
``stabilityai/stable-diffusion-2-1-unclip``, embedding width 1024) puts the composed query of sketch + words in that
space, so the query takes the image embedding's place: the sketch says what and how it is posed, the words what
colour, texture and style.

Our query is L2-normalised while unCLIP was trained on raw CLIP image embeddings, so it is rescaled to the typical
norm of the embeddings unCLIP's ``image_normalizer`` was fitted on, ``sqrt(|mean|^2 + |std|^2)`` (``query_scale``
overrides it).

Needs a GPU in practice and the unCLIP weights (~5 GB). Nothing is downloaded unless allowed (``allow_download=True``
or ``DUETGEN_ALLOW_DOWNLOAD=1``); offline it fails at once with a :class:`~duetgen.errors.WeightsUnavailableError`.

Example::

    >>> pipe = DuetUnCLIPPipeline.from_pretrained(encoder="runs/duet-vit-h/encoder", allow_download=True)
    >>> pipe.to("cuda")
    >>> image = pipe(sketch="shoe.png", text="in red leather").images[0]
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..backbones import ALLOW_DOWNLOAD_ENV, downloads_allowed
from ..composed_query_encoder import ComposedQueryEncoder
from ..errors import WeightsUnavailableError
from .pipeline_output import DuetGenPipelineOutput

logger = logging.getLogger(__name__)

DEFAULT_UNCLIP = "stabilityai/stable-diffusion-2-1-unclip"  # ViT-H/14 image embeddings (1024); "-small" is ViT-L/14


class DuetUnCLIPPipeline:
    """Composed query of a duet encoder -> ``image_embeds`` of a ``StableUnCLIPImg2ImgPipeline``.

    Args:
        encoder: a :class:`~duetgen.ComposedQueryEncoder` whose ``embed_dim`` equals unCLIP's image-embedding width.
        unclip: the diffusers Stable unCLIP image-variation pipeline.
        query_scale: norm given to the (unit) query before unCLIP; default from ``unclip.image_normalizer``.
    """

    def __init__(self, encoder: ComposedQueryEncoder, unclip, query_scale: float | None = None):
        width = int(unclip.image_normalizer.mean.shape[-1])
        if encoder.embed_dim != width:
            raise ValueError(
                f"the encoder's embed_dim ({encoder.embed_dim}) must equal unCLIP's image-embedding width ({width}); "
                "use a duet encoder built on the CLIP unCLIP was trained with "
                "(ViT-H-14 for stable-diffusion-2-1-unclip)"
            )
        if query_scale is not None and (not math.isfinite(query_scale) or query_scale <= 0):
            raise ValueError(f"query_scale must be a positive number, got {query_scale!r}")
        self.encoder = encoder.eval()
        self.unclip = unclip
        self.query_scale = query_scale

    @classmethod
    def from_pretrained(
        cls,
        unclip_id: str | os.PathLike = DEFAULT_UNCLIP,
        encoder: ComposedQueryEncoder | str | os.PathLike | None = None,
        *,
        allow_download: bool | None = None,
        query_scale: float | None = None,
        **unclip_kwargs,
    ) -> DuetUnCLIPPipeline:
        """Loads Stable unCLIP (local folder, HF cache, or a permitted download) and a duet encoder.

        Args:
            unclip_id: a local folder of ``StableUnCLIPImg2ImgPipeline.save_pretrained`` or a hub id.
            encoder: a ComposedQueryEncoder, or what :func:`duetgen.load_encoder` takes (a folder, a backbone name).
            allow_download: permit downloading what is not cached (default: ``DUETGEN_ALLOW_DOWNLOAD``).
            unclip_kwargs: passed to diffusers' ``from_pretrained`` (``torch_dtype``/``dtype``, ``variant``...).

        Raises:
            WeightsUnavailableError: the unCLIP weights are neither local nor cached and may not (or cannot) be
                downloaded. Raised before any network wait.
        """
        if encoder is None:
            raise ValueError(
                "encoder is required: a duet encoder folder (save_pretrained) built on the CLIP unCLIP uses, e.g. "
                "ViT-H-14 trained with recipes/train_duet.py"
            )
        from diffusers import StableUnCLIPImg2ImgPipeline

        unclip_kwargs.setdefault("use_safetensors", True)
        path = Path(os.path.expanduser(str(unclip_id)))
        if path.is_dir():
            unclip = StableUnCLIPImg2ImgPipeline.from_pretrained(str(path), local_files_only=True, **unclip_kwargs)
        else:
            name = str(unclip_id)
            if name.startswith((".", "/", "~")) or name.count("/") != 1:
                raise WeightsUnavailableError(
                    f"unCLIP folder '{name}' does not exist; pass an existing folder or a hub id 'org/name'"
                )
            try:
                unclip = StableUnCLIPImg2ImgPipeline.from_pretrained(
                    str(unclip_id), local_files_only=True, **unclip_kwargs
                )
            except (OSError, ValueError) as cached_err:
                message = (
                    f"Stable unCLIP weights {str(unclip_id)!r} are not on this machine and cannot be downloaded now; "
                    f"pass a local folder (unclip_id='/path/to/stable-diffusion-2-1-unclip'), or allow the download "
                    f"on a machine with internet (allow_download=True or {ALLOW_DOWNLOAD_ENV}=1)"
                )
                if not downloads_allowed(allow_download):
                    raise WeightsUnavailableError(message) from cached_err
                from ..backbones import _network_reachable

                if not _network_reachable():
                    raise WeightsUnavailableError(message + " (the network is unreachable)") from cached_err
                logger.info("downloading %s", unclip_id)
                unclip = StableUnCLIPImg2ImgPipeline.from_pretrained(str(unclip_id), **unclip_kwargs)
        if not isinstance(encoder, ComposedQueryEncoder):
            from ..loading import load_encoder

            encoder = load_encoder(encoder, allow_download=allow_download)
        return cls(encoder, unclip, query_scale=query_scale)

    def to(self, device: str | torch.device) -> DuetUnCLIPPipeline:
        self.encoder.to(device)
        self.unclip.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.unclip.device

    def image_embeds(self, query: torch.Tensor) -> torch.Tensor:
        """Unit queries (B, D) -> unCLIP image embeddings (B, D) at the typical norm of CLIP image embeddings."""
        scale = self.query_scale
        if scale is None:
            normalizer = self.unclip.image_normalizer
            with torch.no_grad():
                scale = float(
                    torch.sqrt(normalizer.mean.float().square().sum() + normalizer.std.float().square().sum())
                )
        dtype = self.unclip.unet.dtype
        return (torch.nn.functional.normalize(query.float(), dim=-1) * scale).to(device=self.device, dtype=dtype)

    @torch.no_grad()
    def encode_query(self, sketch=None, text: str | list[str] | None = None) -> torch.Tensor:
        """Composed queries (B, D) of sketch(es) and/or words (same inputs as :class:`DuetGenPipeline`)."""
        images = None
        if sketch is not None:
            items = list(sketch) if isinstance(sketch, (list, tuple)) else [sketch]
            images = torch.cat([self._read_sketch(s) for s in items]).to(self.encoder.device)
        if isinstance(text, str) and images is not None:
            text = [text] * images.shape[0]
        elif text is not None and images is not None and len(text) == 1 and images.shape[0] > 1:
            text = list(text) * images.shape[0]
        elif text is not None and images is not None and len(text) != images.shape[0]:
            if images.shape[0] != 1:
                raise ValueError(f"text has {len(text)} entries but sketch has {images.shape[0]}")
            images = images.expand(len(text), -1, -1, -1)
        if images is None and text is None:
            raise ValueError("give a sketch, text, or both (or query_embeds); got none of them")
        return self.encoder.encode_query(images, text)

    def _read_sketch(self, item) -> torch.Tensor:
        if isinstance(item, torch.Tensor):
            x = item.float()
            x = x[None] if x.ndim == 3 else x
            if x.ndim != 4 or x.shape[1] not in (1, 3):
                raise ValueError(f"sketch tensors must be (3|1, H, W) or (B, 3|1, H, W), got {tuple(item.shape)}")
            return x.expand(-1, 3, -1, -1)
        from ..limits import sketch_limits
        from ..sketch_input import load_sketch

        return load_sketch(item, fit=self.encoder.config.sketch_fit, size=self.encoder.image_size,
                           limits=sketch_limits())[None]  # fmt: skip

    @torch.no_grad()
    def __call__(
        self,
        sketch=None,
        text: str | list[str] | None = None,
        prompt: str = "",
        negative_prompt: str | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 10.0,
        noise_level: int = 0,
        generator: torch.Generator | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        return_dict: bool = True,
        query_embeds: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> DuetGenPipelineOutput | tuple:
        """Generates photos from a sketch, words, or both.

        Args:
            sketch, text: as :class:`DuetGenPipeline` (one of them at least, unless ``query_embeds``).
            prompt: an optional unCLIP text prompt added to every image (default empty, as for image variations).
            noise_level: noise added to the query embedding (0 to 999): more gives more varied images.
            query_embeds: precomputed composed queries (B, D), skipping the encoder.
            Other arguments are unCLIP's: ``num_inference_steps``, ``guidance_scale``, ``generator``,
            ``num_images_per_prompt``, ``output_type`` (``"pil"``, ``"np"``, ``"pt"``), ``height``, ``width``.

        Returns:
            :class:`DuetGenPipelineOutput` with the images and the (unit) queries, or ``(images, queries)``.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be one of ('pil', 'np', 'pt'), got {output_type!r}")
        from .. import limits

        lim = limits.current()
        limits.check("max_steps", int(num_inference_steps), "num_inference_steps", lim)
        limits.check("max_images", int(num_images_per_prompt), "num_images_per_prompt", lim)
        # 1. Composed query
        if query_embeds is None:
            query = self.encode_query(sketch, text)  # (B, D)
        else:
            if text is not None:
                raise ValueError("pass either text (to be encoded) or query_embeds (already encoded), not both")
            query = query_embeds.reshape(-1, query_embeds.shape[-1])
        limits.check("max_batch", query.shape[0], "the number of prompts (sketches or word strings)", lim)
        limits.check("max_images", query.shape[0] * int(num_images_per_prompt), "prompts x num_images_per_prompt", lim)
        # 2. The query in unCLIP's image-embedding space
        embeds = self.image_embeds(query)
        batch = embeds.shape[0]
        # 3. Stable unCLIP with image_embeds in place of an image
        out = self.unclip(
            prompt=[prompt] * batch,
            negative_prompt=None if negative_prompt is None else [negative_prompt] * batch,
            image_embeds=embeds,
            noise_level=noise_level,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            num_images_per_prompt=num_images_per_prompt,
            output_type="pt" if output_type == "pt" else "np",
            height=height,
            width=width,
        )
        images = out.images
        if output_type == "pil":
            images = [PIL.Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)) for a in images]
        if not return_dict:
            return images, query
        return DuetGenPipelineOutput(images=images, query_embeds=query)


__all__ = ["DEFAULT_UNCLIP", "DuetUnCLIPPipeline"]
