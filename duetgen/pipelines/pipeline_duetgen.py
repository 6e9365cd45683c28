"""DuetGenPipeline: a freehand sketch and a few words -> an image, through one composed CLIP query.

The composed query ``q = T_t([SOS] P_L s_w T_w(words) [EOS])`` of the ComposedQueryEncoder conditions a small
pixel-space UNet (see ``duetgen/generator.py``) by cross-attention and through its timestep embedding; the sketch
itself is a fourth input channel of the UNet, so the outline is followed pixel for pixel. Text alone and sketch alone
both work. Classifier-free guidance starts from the learned null query with a blank sketch channel.

Example::

    >>> from duetgen.pipelines import load_pipeline
    >>> pipe = load_pipeline()                               # the embedded default, offline
    >>> image = pipe(sketch="star.png", text="red with stripes in pixel art").images[0]
    >>> from duetgen.pipelines import make_scheduler
    >>> pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)  # or any diffusers DDPM-family scheduler
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from ..checkpoints import PICKLE_SUFFIXES
from ..composed_query_encoder import ComposedQueryEncoder
from ..errors import CheckpointError, DuetgenInputError
from ..generator import (
    IMAGE_CHANNELS,
    MASK_PATTERNS,
    SPATIAL_LAYOUTS,
    QueryConditioner,
    blank_sketch,
    build_scheduler,
    build_unet,
    gate_pattern_masks,
    has_pattern_masks,
    sketch_channel,
    spatial_condition,
)
from .pipeline_output import DuetGenPipelineOutput

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")
# Libraries a duetgen pipeline folder may name in model_index.json (diffusers imports what the file names).
ALLOWED_LIBRARIES = ("diffusers", "duetgen")

SketchInput = str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor | bytes


class DuetGenPipeline(DiffusionPipeline):
    """Sketch + words -> image with a composed-query-conditioned pixel-space UNet.

    Components (``model_index.json``):
        encoder: :class:`~duetgen.ComposedQueryEncoder` making the composed query (B, D).
        conditioner: :class:`~duetgen.generator.QueryConditioner`: the query adapter (q -> T tokens) and the
            learned null query for classifier-free guidance.
        unet: ``UNet2DConditionModel`` on (B, 3 + 1, S, S): noisy RGB image + the sketch channel.
        scheduler: any diffusers scheduler of the DDPM family (DDPM, DDIM, DPMSolverMultistep, EulerDiscrete...):
            ``pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)`` (:func:`make_scheduler`).
    """

    model_cpu_offload_seq = "encoder->conditioner->unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self, encoder: ComposedQueryEncoder, conditioner: QueryConditioner, unet: UNet2DConditionModel, scheduler
    ):
        super().__init__()
        self.register_modules(encoder=encoder, conditioner=conditioner, unet=unet, scheduler=scheduler)
        self._unet_traces: dict | None = None  # enable_unet_jit()

    # ----------------------------------------------------------------------------------------------------------
    # speed
    # ----------------------------------------------------------------------------------------------------------

    def enable_unet_jit(self, enabled: bool = True) -> None:
        """Runs the UNet as a frozen TorchScript trace on CPU, one trace per input shape, made on first use.

        For many images in one process (the studio, batch recipes, benchmarks): a UNet call at 64 px takes about a
        quarter less time on 2 cores (``benchmarks/bench_generation_speed.py``), because freezing folds the weights
        into the graph and drops the Python overhead of ~300 small modules; the first call of each shape (batch
        size; guided and unguided steps differ) pays about 1 s to trace. Outputs equal the eager UNet's up to float
        rounding. Traces are dropped by ``enable_unet_jit(False)``; call it again after changing the UNet's
        weights, device or dtype. Gradients and non-CPU devices always run the eager UNet, and a shape that fails
        to trace falls back to it with a warning. (TorchScript is deprecated in favour of ``torch.compile``, which
        here costs 1-2 minutes of compilation per shape.)
        """
        self._unet_traces = {} if enabled else None

    def _run_unet(self, sample: torch.Tensor, t, hidden: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """One UNet prediction (B, 3, S, S): the trace of this shape if tracing is on (:meth:`enable_unet_jit`)."""
        traces = self._unet_traces
        if traces is None or torch.is_grad_enabled() or sample.device.type != "cpu":
            return self.unet(sample, t, encoder_hidden_states=hidden, class_labels=labels).sample
        t = torch.as_tensor(t, device=sample.device)
        args = (sample, t, hidden) if labels is None else (sample, t, hidden, labels)
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        fn = traces.get(key)
        if fn is None:
            fn = traces[key] = _trace_unet(self.unet, args)
        if fn is False:  # this shape failed to trace once: eager from now on
            return self.unet(sample, t, encoder_hidden_states=hidden, class_labels=labels).sample
        return fn(*args)

    # ----------------------------------------------------------------------------------------------------------
    # construction and loading
    # ----------------------------------------------------------------------------------------------------------

    @classmethod
    def from_encoder(
        cls,
        encoder: ComposedQueryEncoder,
        sample_size: int = 64,
        prediction_type: str = "epsilon",
        num_query_tokens: int = 4,
        cross_attention_dim: int = 128,
        query_states: bool = False,
        pattern_gates: bool = False,
        **unet_kwargs,
    ) -> DuetGenPipeline:
        """A new (untrained) pipeline around an encoder: fresh UNet, conditioner and DDPM scheduler.

        ``query_states``: the cross-attention also sees the composed query's per-token states (see
        :class:`~duetgen.generator.QueryConditioner`). ``pattern_gates``: the conditioner picks which pattern's masks
        reach the UNet (needs ``pattern_masks=True``). ``unet_kwargs`` go to :func:`duetgen.generator.build_unet`
        (``block_out_channels``, ``attention_levels``, ``pattern_masks``...).
        """
        if pattern_gates and not unet_kwargs.get("pattern_masks"):
            raise ValueError("pattern_gates=True needs pattern_masks=True (the gates scale the pattern masks)")
        d = encoder.embed_dim
        states = {}
        if query_states:
            states = {"state_dim": encoder.clip.token_embedding.embedding_dim, "state_length": encoder.context_length}
        gates = {"pattern_gates": len(MASK_PATTERNS)} if pattern_gates else {}
        conditioner = QueryConditioner(
            d, num_tokens=num_query_tokens, cross_attention_dim=cross_attention_dim, **states, **gates
        )
        unet = build_unet(d, sample_size=sample_size, cross_attention_dim=cross_attention_dim, **unet_kwargs)
        return cls(encoder=encoder, conditioner=conditioner, unet=unet, scheduler=build_scheduler(prediction_type))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> DuetGenPipeline:
        """Loads a pipeline folder written by ``save_pretrained``; safetensors only, never pickle.

        Local folders are checked first (:func:`check_pipeline_folder`): components may only come from diffusers or
        duetgen, and no pickled weight file may be present. ``use_safetensors`` is forced on.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("use_safetensors=False is not supported: duetgen never unpickles checkpoints")
        kwargs["use_safetensors"] = True
        path = Path(os.path.expanduser(str(pretrained_model_name_or_path)))
        if path.is_dir():
            check_pipeline_folder(path)
        return super().from_pretrained(str(pretrained_model_name_or_path), **kwargs)

    @property
    def sample_size(self) -> int:
        s = self.unet.config.sample_size
        return int(s[0] if isinstance(s, (tuple, list)) else s)

    # ----------------------------------------------------------------------------------------------------------
    # inputs
    # ----------------------------------------------------------------------------------------------------------

    def check_inputs(
        self,
        sketch,
        text,
        query_embeds: torch.Tensor | None,
        num_inference_steps: int,
        guidance_scale: float,
        num_images_per_prompt: int,
        output_type: str,
        generator=None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        best_of: int = 1,
    ) -> int:
        """Validates the arguments of ``__call__`` and returns the batch size (number of prompts).

        Raises:
            ValueError: naming the argument, what was received and what is valid; a
                :class:`~duetgen.errors.DuetgenInputError` (a ValueError) when the request is over a limit of
                :mod:`duetgen.limits` (``DUETGEN_MAX_STEPS``, ``DUETGEN_MAX_BATCH``, ``DUETGEN_MAX_IMAGES``).
        """
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if (
            isinstance(guidance_scale, bool)
            or not isinstance(guidance_scale, (int, float))
            or not math.isfinite(guidance_scale)
            or guidance_scale < 0
        ):
            raise ValueError(f"guidance_scale must be a finite number >= 0 (1 = no guidance), got {guidance_scale!r}")
        if (
            isinstance(num_images_per_prompt, bool)
            or not isinstance(num_images_per_prompt, int)
            or num_images_per_prompt < 1
        ):
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
        if isinstance(best_of, bool) or not isinstance(best_of, int) or best_of < 1:
            raise ValueError(f"best_of must be an integer >= 1 (candidates per image), got {best_of!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        for name in callback_on_step_end_tensor_inputs or ():
            if name not in self._callback_tensor_inputs:
                raise ValueError(
                    f"callback_on_step_end_tensor_inputs may only name {self._callback_tensor_inputs}, got {name!r}"
                )

        n_text = None
        if text is not None:
            if isinstance(text, str):
                n_text = 1
            elif isinstance(text, (list, tuple)) and text and all(isinstance(t, str) for t in text):
                n_text = len(text)
            else:
                raise ValueError(f"text must be a string or a non-empty list of strings, got {text!r:.80}")
        n_sketch = None if sketch is None else _count_sketches(sketch)

        if query_embeds is not None:
            if text is not None:
                raise ValueError("pass either text (to be encoded) or query_embeds (already encoded), not both")
            if not isinstance(query_embeds, torch.Tensor) or query_embeds.ndim not in (1, 2):
                got = (
                    tuple(query_embeds.shape)
                    if isinstance(query_embeds, torch.Tensor)
                    else type(query_embeds).__name__
                )
                raise ValueError(f"query_embeds must be a tensor (B, D) or (D,), got {got}")
            if query_embeds.shape[-1] != self.encoder.embed_dim:
                raise ValueError(
                    f"query_embeds must have width D={self.encoder.embed_dim} (this encoder), "
                    f"got {query_embeds.shape[-1]}"
                )
            batch = 1 if query_embeds.ndim == 1 else query_embeds.shape[0]
            if n_sketch is not None and n_sketch not in (1, batch):
                raise ValueError(f"sketch has {n_sketch} entries but query_embeds has {batch} rows; give 1 or {batch}")
        else:
            if n_text is None and n_sketch is None:
                raise ValueError("give a sketch, text, or both (or query_embeds); got none of them")
            sizes = {n for n in (n_text, n_sketch) if n is not None}
            batch = max(sizes)
            if len(sizes) > 1 and min(sizes) != 1:
                raise ValueError(
                    f"text has {n_text} entries but sketch has {n_sketch}; give lists of the same length (or one of "
                    "either, which is used for every entry of the other)"
                )
        from .. import limits

        lim = limits.current()
        limits.check("max_steps", num_inference_steps, "num_inference_steps", lim)
        limits.check("max_batch", batch, "the number of prompts (sketches or word strings)", lim)
        product = "prompts x num_images_per_prompt" + (" x best_of" if best_of > 1 else "")
        limits.check("max_images", batch * num_images_per_prompt * best_of, product, lim)
        if isinstance(generator, list) and len(generator) != batch * num_images_per_prompt * best_of:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but {product} = "
                f"{batch * num_images_per_prompt * best_of}; pass one generator or exactly that many"
            )
        return batch

    def prepare_sketch(
        self, sketch, batch_size: int, device: torch.device | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Reads the sketch(es) and makes the encoder's input and the UNet's sketch channel.

        Args:
            sketch: ``None``; a path, PIL image, numpy array or bytes (read with
                :func:`duetgen.sketch_input.load_sketch`
                at the encoder's ``sketch_fit``); a tensor (3|1, H, W) / (H, W) / (B, 3|1, H, W) in [0, 1], black ink
                on white, used as given; or a list of any of these.
            batch_size: number of prompts; a single sketch is repeated to it.

        Returns:
            ``(images (B, 3, H, W) in [0, 1] or None, sketch channel (B, 1, S, S) in [-1, 1])``; the channel is blank
            (white) when there is no sketch.
        """
        device = device or self._execution_device
        size = self.sample_size
        if sketch is None:
            return None, blank_sketch(batch_size, size, device=device, dtype=self.unet.dtype)
        load_size = max(size, self.encoder.image_size)
        items = list(sketch) if isinstance(sketch, (list, tuple)) else [sketch]
        images = torch.cat([self._read_sketch(item, load_size) for item in items], dim=0)  # (n, 3, H, W)
        if images.shape[0] == 1 and batch_size > 1:
            images = images.expand(batch_size, -1, -1, -1)
        images = images.to(device=device, dtype=torch.float32)
        return images, sketch_channel(images, size=size).to(self.unet.dtype)

    def _read_sketch(self, item, load_size: int) -> torch.Tensor:
        """One sketch source -> (n, 3, H, W) float in [0, 1]."""
        if isinstance(item, torch.Tensor):
            x = item.detach().float().cpu()
            if x.ndim == 2:
                x = x[None, None]
            elif x.ndim == 3:
                x = x[None]
            if x.ndim != 4 or x.shape[1] not in (1, 3):
                raise ValueError(
                    f"sketch tensors must be (3|1, H, W), (H, W) or (B, 3|1, H, W), got {tuple(item.shape)}"
                )
            if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
                raise ValueError(
                    f"sketch tensors must hold values in [0, 1] (black ink 0 on white 1), got [{float(x.min()):.3g}, "
                    f"{float(x.max()):.3g}]"
                )
            return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        from ..limits import sketch_limits
        from ..sketch_input import load_sketch

        image = load_sketch(item, fit=self.encoder.config.sketch_fit, size=load_size, limits=sketch_limits())
        return image[None]  # (1, 3, H, W)

    @property
    def num_timesteps(self) -> int:
        """Denoising steps the current (or last) call runs: ``num_inference_steps``, or with ``image`` its
        ``strength`` share (diffusers' convention, for step callbacks and progress)."""
        return getattr(self, "_num_timesteps", 0)

    def prepare_image(self, image, n_images: int, device: torch.device | None = None) -> torch.Tensor:
        """Reads the starting image(s) of image-to-image generation (SDEdit).

        Args:
            image: a path, PIL image, numpy array (H, W, 3) (uint8, or float in [0, 1]), tensor (3, H, W) /
                (B, 3, H, W) in [0, 1], or a list of them: one for every prompt or one per prompt. A non-square
                image is centre-cropped to a square, then resized to the generator's side.
            n_images: the number of prompts; a single image is repeated to it.

        Returns:
            (n_images, 3, S, S) float32 in [-1, 1], the generator's pixel space.

        Raises:
            DuetgenInputError: a file is missing, unreadable, not an image or over the pixel limit.
            ValueError: an array or tensor has the wrong shape or range, or the count does not match the prompts.
        """
        device = device or self._execution_device
        items = list(image) if isinstance(image, (list, tuple)) else [image]
        x = torch.cat([self._read_image(item) for item in items], dim=0)  # (n, 3, S, S) in [0, 1]
        if x.shape[0] == 1 and n_images > 1:
            x = x.expand(n_images, -1, -1, -1)
        elif x.shape[0] != n_images:
            raise ValueError(f"got {x.shape[0]} images for {n_images} prompts: pass one image, or one per prompt")
        return (x * 2 - 1).to(device=device, dtype=torch.float32)

    def _read_image(self, item) -> torch.Tensor:
        """One image source -> (n, 3, S, S) float in [0, 1], centre-cropped and resized to ``sample_size``."""
        import torch.nn.functional as F

        if isinstance(item, torch.Tensor):
            x = item.detach().float().cpu()
            x = x[None] if x.ndim == 3 else x
            if x.ndim != 4 or x.shape[1] not in (1, 3):
                raise ValueError(f"image tensors must be (3|1, H, W) or (B, 3|1, H, W), got {tuple(item.shape)}")
            if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
                raise ValueError(
                    f"image tensors must hold values in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]"
                )
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        elif isinstance(item, np.ndarray):
            a = item
            if a.ndim == 2:
                a = a[..., None].repeat(3, axis=2)
            if a.ndim != 3 or a.shape[2] not in (3, 4):
                raise ValueError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
            a = a[..., :3].astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
            if a.size and (float(a.min()) < 0 or float(a.max()) > 1):
                raise ValueError("float image arrays must hold values in [0, 1]")
            x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]
        else:
            x = _photo_tensor(item)
        h, w = x.shape[-2:]
        if h == 0 or w == 0:
            raise ValueError(f"the image has no pixels ({w}x{h})")
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top : top + side, left : left + side]
        size = self.sample_size
        if side != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=side > size, align_corners=False)
        return x.clamp(0, 1)

    @torch.no_grad()
    def encode_query(
        self,
        sketch_images: torch.Tensor | None,
        text: str | list[str] | None,
        batch_size: int,
        num_images_per_prompt: int = 1,
        return_states: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """The composed query of each prompt.

        Args:
            sketch_images: (B, 3, H, W) in [0, 1] or ``None`` (text-only query).
            text: the words, one string or one per prompt, or ``None`` (sketch-only query).
            return_states: also return the query's per-token states (B, L, Wt).

        Returns:
            ``(query (B, D), query repeated (B * num_images_per_prompt, D))``, L2-normalised, and with
            ``return_states`` the states (B, L, Wt) third.
        """
        if isinstance(text, str):
            text = [text] * batch_size
        elif text is not None:
            text = list(text) * (batch_size if len(text) == 1 and batch_size > 1 else 1)
        if not return_states:
            query = self.encoder.encode_query(sketch_images, text)  # (B, D)
            return query, query.repeat_interleave(num_images_per_prompt, dim=0)
        query, states = self.encoder.encode_query(sketch_images, text, return_states=True)
        return query, query.repeat_interleave(num_images_per_prompt, dim=0), states

    def prepare_conditioning(
        self,
        query: torch.Tensor,
        sketch: torch.Tensor,
        do_classifier_free_guidance: bool,
        query_states: torch.Tensor | None = None,
        sketch_branch: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """UNet inputs from queries (N, D), sketch channels (N, 1, S, S) and the queries' token states (N, L, Wt).

        With guidance the unconditional rows (null query, null states, blank sketch) come first; with
        ``sketch_branch`` (two guidance scales) rows with the null query but the real sketch follow them. The states
        are used when the conditioner takes them (``conditioner.uses_states``); missing, they are the null states.

        Returns:
            ``(encoder_hidden_states (M, T, C), class_labels (M, D), sketch (M, 1, S, S))`` with M = N, 2N or 3N,
            the conditional rows last.
        """
        dtype = self.unet.dtype
        query = query.to(device=sketch.device, dtype=self.conditioner.dtype)
        n = query.shape[0]
        drop = None
        if not self.conditioner.uses_states:
            query_states = None
        elif query_states is not None:
            query_states = query_states.to(device=sketch.device, dtype=self.conditioner.dtype)
        if do_classifier_free_guidance:
            blank = blank_sketch(n, sketch.shape[-1], device=sketch.device, dtype=sketch.dtype)
            nulls = [self.conditioner.null(n)] * (2 if sketch_branch else 1)
            query = torch.cat([*nulls, query], dim=0)  # (2N or 3N, D)
            sketch = torch.cat([blank, sketch, sketch] if sketch_branch else [blank, sketch])
            if query_states is not None:
                n_null = n * len(nulls)  # these rows' states are replaced by the null states: dropped below
                query_states = torch.cat([query_states] * (len(nulls) + 1))
                drop = torch.arange(query.shape[0], device=sketch.device) < n_null
        tokens, labels = self.conditioner(query, states=query_states, drop_states=drop)
        return tokens.to(dtype), labels.to(dtype), sketch.to(dtype)

    def prepare_latents(
        self,
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Initial noise (N, 3, S, S) scaled by the scheduler's ``init_noise_sigma`` (pixel space: no VAE)."""
        shape = (batch_size, IMAGE_CHANNELS, self.sample_size, self.sample_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator, eta: float = 0.0) -> dict[str, Any]:
        """Only the keyword arguments the current scheduler's ``step`` takes (``generator``, ``eta``)."""
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    def postprocess(self, images: torch.Tensor, output_type: str):
        """(N, 3, S, S) in [-1, 1] -> PIL list, numpy (N, S, S, 3) or tensor (N, 3, S, S), all in [0, 1]."""
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, S, S, 3)
        if output_type == "np":
            return array
        return [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]

    # ----------------------------------------------------------------------------------------------------------
    # generation
    # ----------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        sketch: SketchInput | list[SketchInput] | None = None,
        text: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        query_embeds: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        guidance_interval: tuple[float, float] = (0.0, 0.7),
        query_token_embeds: torch.Tensor | None = None,
        sketch_guidance_scale: float | None = None,
        image: SketchInput | list[SketchInput] | None = None,
        strength: float | None = None,
        best_of: int = 1,
        best_of_weight: float | None = None,
    ) -> DuetGenPipelineOutput | tuple:
        """Generates images from a sketch, words, or both.

        Args:
            sketch: a path, PIL image, numpy array, bytes, tensor ((3|1, H, W) or (B, 3|1, H, W) in [0, 1], black ink
                on white) or a list of them; ``None`` for text-only generation. File and image inputs are framed as
                the encoder expects (``encoder.config.sketch_fit``).
            text: words about what the sketch cannot show (``"red with stripes in pixel art"``): a string (used for
                every sketch) or one string per sketch; ``None`` for sketch-only generation.
            num_inference_steps: denoising steps (>= 1).
            guidance_scale: classifier-free guidance weight (>= 0); 1 disables guidance (one UNet pass per step),
                0 ignores the condition. Guidance starts from the null query with a blank sketch.
            generator: a ``torch.Generator`` (or one per image) for reproducible noise.
            num_images_per_prompt: images per sketch/text pair.
            output_type: ``"pil"``, ``"np"`` or ``"pt"`` (see :class:`DuetGenPipelineOutput`).
            return_dict: return a :class:`DuetGenPipelineOutput` instead of a tuple ``(images, query_embeds)``.
            callback_on_step_end: called after each step as ``fn(pipe, step, timestep, {"latents": ...})``; may
                return ``{"latents": new}`` to replace them.
            callback_on_step_end_tensor_inputs: which tensors the callback receives (only ``"latents"``).
            query_embeds: precomputed composed queries (B, D) or (D,), skipping the encoder (``text`` must then be
                ``None``); a sketch given with them still fills the sketch channel.
            query_token_embeds: with ``query_embeds``, their per-token states (B, L, Wt) or (L, Wt)
                (``encoder.encode_query(..., return_states=True)`` or a previous output's ``query_token_embeds``),
                for a conditioner that uses them; without them such a conditioner falls back to its null states.
            latents: initial noise (N, 3, S, S) instead of sampling it.
            eta: DDIM's eta (ignored by schedulers without it).
            guidance_interval: ``(start, end)``, the part of the denoising trajectory (0 = first step, 1 = last)
                where guidance is applied; the other steps take one conditional UNet pass (Kynkaanniemi et al.
                2024, "Applying guidance in a limited interval"). The default ``(0.0, 0.7)`` skips the last 30 %
                of the steps, where guidance changes little (see ``benchmarks/bench_generation_fidelity.py``), and
                saves their unconditional passes. ``(0.0, 1.0)`` guides every step.
            sketch_guidance_scale: a separate weight for the sketch (InstructPix2Pix's two-scale guidance, Brooks et
                al. 2023): ``eps(null, blank) + sketch_guidance_scale * (eps(null, sketch) - eps(null, blank)) +
                guidance_scale * (eps(query, sketch) - eps(null, sketch))``, three UNet passes per guided step
                instead of two. ``None`` (the default) guides sketch and query together by ``guidance_scale``.
            image: a starting image for image-to-image generation (SDEdit, Meng et al. 2022): a path, PIL image,
                array or tensor in [0, 1] (see :meth:`prepare_image`), one for all prompts or one per prompt. It is
                noised to the level ``strength`` and denoised from there under the sketch and the query, so its
                layout survives and the words restyle it: attribute transfer from a photo.
            strength: with ``image``, how much of it is redone, in (0, 1]: the last ``strength`` share of the
                ``num_inference_steps`` steps run (default 0.8); 1 starts from pure noise as without an image.
            best_of: candidates drawn per returned image (>= 1); each image is the best of its ``best_of``
                candidates by :func:`duetgen.verify.score_generations`: the cosine between the composed query and
                the candidate's embedding, plus ``best_of_weight`` x the IoU of the region the sketch encloses and
                the candidate's silhouette (the retrieval verifier's check, applied to samples). Costs ``best_of``
                times the work. With a list of generators or ``latents``, give one per candidate (prompt-major,
                then image, then candidate).
            best_of_weight: the IoU's weight in that score (>= 0; default
                :data:`duetgen.verify.GENERATION_WEIGHT`).

        Returns:
            :class:`DuetGenPipelineOutput` (``images``, ``query_embeds``, and with ``best_of`` > 1 ``scores``), or a
            tuple ``(images, query_embeds)`` when ``return_dict=False``.

        Raises:
            ValueError: an argument is invalid (the message names it).
            DuetgenInputError: a sketch file or image is unusable, or the request is over a limit of
                :mod:`duetgen.limits` (steps, prompts, images, characters of words; the message names the
                environment variable that changes it).
        """
        # 1. Check inputs
        if best_of_weight is not None and (
            isinstance(best_of_weight, bool)
            or not isinstance(best_of_weight, (int, float))
            or not math.isfinite(best_of_weight)
            or best_of_weight < 0
        ):
            raise ValueError(f"best_of_weight must be a finite number >= 0, got {best_of_weight!r}")
        batch_size = self.check_inputs(
            sketch,
            text,
            query_embeds,
            num_inference_steps,
            guidance_scale,
            num_images_per_prompt,
            output_type,
            generator,
            callback_on_step_end_tensor_inputs,
            best_of,
        )
        n_returned = batch_size * num_images_per_prompt
        num_images_per_prompt *= best_of  # candidates are generated as extra images per prompt, then picked
        if query_token_embeds is not None:
            if query_embeds is None:
                raise ValueError("query_token_embeds go with query_embeds (the same queries, token by token)")
            if not isinstance(query_token_embeds, torch.Tensor) or query_token_embeds.ndim not in (2, 3):
                raise ValueError("query_token_embeds must be a tensor (B, L, Wt) or (L, Wt)")
            rows = 1 if query_token_embeds.ndim == 2 else query_token_embeds.shape[0]
            if rows != batch_size:
                raise ValueError(f"query_token_embeds has {rows} rows but query_embeds has {batch_size}")
        device = self._execution_device
        do_cfg = guidance_scale != 1.0
        if (
            not isinstance(guidance_interval, (tuple, list))
            or len(guidance_interval) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in guidance_interval)
            or not 0.0 <= guidance_interval[0] <= guidance_interval[1] <= 1.0
        ):
            raise ValueError(
                f"guidance_interval must be (start, end) with 0 <= start <= end <= 1, got {guidance_interval!r}"
            )
        sketch_branch = sketch_guidance_scale is not None
        if sketch_branch and (
            isinstance(sketch_guidance_scale, bool)
            or not isinstance(sketch_guidance_scale, (int, float))
            or not math.isfinite(sketch_guidance_scale)
            or sketch_guidance_scale < 0
        ):
            raise ValueError(
                f"sketch_guidance_scale must be a finite number >= 0 or None, got {sketch_guidance_scale!r}"
            )
        do_cfg = do_cfg or sketch_branch
        if strength is not None and image is None:
            raise ValueError("strength goes with image (image-to-image): pass the starting image too")
        if image is not None:
            strength = 0.8 if strength is None else strength
            if (
                isinstance(strength, bool)
                or not isinstance(strength, (int, float))
                or not math.isfinite(strength)
                or not 0 < strength <= 1
            ):
                raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
            if round(num_inference_steps * strength) < 1:
                raise ValueError(
                    f"strength {strength} of {num_inference_steps} steps runs no step: raise strength or the steps"
                )
        n_images = batch_size * num_images_per_prompt
        init_images = None
        if image is not None:  # read before any model work, so a bad file fails fast
            init_images = self.prepare_image(image, batch_size, torch.device("cpu"))
            init_images = init_images.repeat_interleave(num_images_per_prompt, dim=0)

        # 2. Read the sketch: encoder input and the UNet's sketch channel (blank without a sketch)
        sketch_images, sketch_in = self.prepare_sketch(sketch, batch_size, device)

        # 3. Encode the composed query (or take the given one)
        states = None
        if query_embeds is None and self.conditioner.uses_states:
            query, query_rep, states = self.encode_query(
                sketch_images, text, batch_size, num_images_per_prompt, return_states=True
            )
        elif query_embeds is None:
            query, query_rep = self.encode_query(sketch_images, text, batch_size, num_images_per_prompt)
        else:
            query = query_embeds.reshape(-1, query_embeds.shape[-1]).to(device=device, dtype=self.conditioner.dtype)
            query_rep = query.repeat_interleave(num_images_per_prompt, dim=0)
            if query_token_embeds is not None:
                states = query_token_embeds.reshape(query.shape[0], *query_token_embeds.shape[-2:]).to(device)
        states_rep = None if states is None else states.repeat_interleave(num_images_per_prompt, dim=0)
        sketch_in = sketch_in.repeat_interleave(num_images_per_prompt, dim=0)  # (N, 1, S, S)

        # 4. Conditioning for the UNet (unconditional half first when guiding)
        hidden_states, class_labels, sketch_in = self.prepare_conditioning(
            query_rep, sketch_in, do_cfg, states_rep, sketch_branch
        )
        n_uncond = hidden_states.shape[0] - n_images  # rows before the conditional ones: 0, N or 2N
        sketch_in = spatial_condition(sketch_in, self.unet.config.in_channels)  # (M, in_channels - 3, S, S), once
        if self.conditioner.uses_pattern_gates and has_pattern_masks(self.unet):  # only the asked pattern's masks
            sketch_in = gate_pattern_masks(sketch_in, self.conditioner.pattern_probs(hidden_states, class_labels))
        # A reduced-precision UNet (e.g. ``pipe.unet.to(torch.bfloat16)``) gets its inputs in its dtype; the latents
        # and the scheduler's arithmetic stay in float32.
        unet_dtype = self.unet.dtype
        hidden_states, sketch_in = hidden_states.to(unet_dtype), sketch_in.to(unet_dtype)
        class_labels = class_labels.to(unet_dtype) if class_labels is not None else None

        # 5. Timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if init_images is None:
            latents = self.prepare_latents(n_images, torch.float32, device, generator, latents)
        else:  # SDEdit: the starting image noised to the first step kept (``latents``, if given, is that noise)
            t_start = (num_inference_steps - round(num_inference_steps * strength)) * self.scheduler.order
            timesteps = timesteps[t_start:]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(t_start)
            noise = self.prepare_latents(n_images, torch.float32, device, generator, latents)
            noise = noise / self.scheduler.init_noise_sigma
            latents = self.scheduler.add_noise(init_images.to(device), noise, timesteps[:1].repeat(n_images))
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        self._num_timesteps = len(timesteps)  # what this call runs (fewer than the steps with image-to-image)

        # 6. Denoising loop
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            n_steps = len(timesteps)
            for i, t in enumerate(timesteps):
                guide = do_cfg and guidance_interval[0] <= i / n_steps < guidance_interval[1]
                if guide:
                    model_in, hs, cl, sk = (
                        latents.repeat(3 if sketch_branch else 2, 1, 1, 1),
                        hidden_states,
                        class_labels,
                        sketch_in,
                    )
                elif do_cfg:  # outside the interval: the conditional rows only
                    model_in, hs, sk = latents, hidden_states[n_uncond:], sketch_in[n_uncond:]
                    cl = class_labels[n_uncond:] if class_labels is not None else None
                else:
                    model_in, hs, cl, sk = latents, hidden_states, class_labels, sketch_in
                model_in = self.scheduler.scale_model_input(model_in, t)
                model_in = torch.cat([model_in.to(unet_dtype), sk], dim=1)  # (M, 3 + 1 or 2, S, S)
                pred = self._run_unet(model_in, t, hs, cl).float()
                if guide and sketch_branch:
                    pred_uncond, pred_sketch, pred_cond = pred.chunk(3)
                    pred = (
                        pred_uncond
                        + sketch_guidance_scale * (pred_sketch - pred_uncond)
                        + guidance_scale * (pred_cond - pred_sketch)
                    )
                elif guide:
                    pred_uncond, pred_cond = pred.chunk(2)
                    pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
                latents = self.scheduler.step(pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    local = {"latents": latents}
                    callback_kwargs = {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = outputs.pop("latents", latents)
                progress_bar.update()

        # 7. Best of the candidates, then post-process
        scores = None
        if best_of > 1:
            latents, scores = self.pick_best(latents, query_rep, sketch_images, n_returned, best_of, best_of_weight)
        images = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, query
        return DuetGenPipelineOutput(images=images, query_embeds=query, query_token_embeds=states, scores=scores)

    def pick_best(
        self,
        samples: torch.Tensor,
        queries: torch.Tensor,
        sketch_images: torch.Tensor | None,
        n_returned: int,
        best_of: int,
        weight: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best of each group of ``best_of`` consecutive candidates.

        Args:
            samples: (n_returned * best_of, 3, S, S) final samples in [-1, 1].
            queries: their composed queries (one per sample).
            sketch_images: (B, 3, H, W) the prompts' sketches in [0, 1] (B divides the samples evenly), or None.
            weight: the IoU's weight (default :data:`duetgen.verify.GENERATION_WEIGHT`).

        Returns:
            ``(chosen samples (n_returned, 3, S, S), their scores (n_returned,))``.
        """
        from ..verify import GENERATION_WEIGHT, score_generations, sketch_regions

        regions = None
        if sketch_images is not None:
            regions = sketch_regions(sketch_images)  # (B, S, S), one per prompt
            regions = np.repeat(regions, len(samples) // len(regions), axis=0)
        images = (samples.float() / 2 + 0.5).clamp(0, 1)
        scores = score_generations(
            self.encoder, images, queries, regions, GENERATION_WEIGHT if weight is None else weight
        ).view(n_returned, best_of)
        best = scores.argmax(1)  # (n_returned,)
        rows = torch.arange(n_returned) * best_of + best
        return samples[rows.to(samples.device)], scores[torch.arange(n_returned), best]


CANDIDATE_SEED_STRIDE = 1_000_000
"""Candidate ``j`` of an image seeded ``s`` is drawn with seed ``s + j * CANDIDATE_SEED_STRIDE`` (candidate 0 is the
image ``best_of=1`` would give)."""


def candidate_generators(seeds: Sequence[int], best_of: int = 1) -> list[torch.Generator]:
    """One CPU generator per candidate for ``pipe(..., generator=..., best_of=best_of)``: each row's image depends on
    its own seed alone, whatever the batch it is generated in (prompt-major, then candidate)."""
    return [torch.Generator().manual_seed(int(s) + j * CANDIDATE_SEED_STRIDE) for s in seeds for j in range(best_of)]


def prompts_per_call(batch: int, best_of: int = 1) -> int:
    """How many prompts (one image each) one call may take so that prompts x ``best_of`` candidates stay within
    ``DUETGEN_MAX_IMAGES``: at most ``batch``, at least 1."""
    from ..limits import current

    return max(1, min(int(batch), current().max_images // max(1, int(best_of))))


def _photo_tensor(item) -> torch.Tensor:
    """A path, file bytes or PIL image -> (1, 3, H, W) float in [0, 1] (:func:`duetgen.sketch_input.read_photo`:
    one-line errors for missing, corrupt or over-limit files)."""
    from ..sketch_input import read_photo

    if not isinstance(item, (str, os.PathLike, bytes, PIL.Image.Image)):
        raise ValueError(
            f"image must be a path, PIL image, numpy array or tensor (or a list of them), got {type(item).__name__}"
        )
    rgb = read_photo(item, "the image" if isinstance(item, (bytes, PIL.Image.Image)) else None)
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255).permute(2, 0, 1)[None]


class _UNetCall(torch.nn.Module):
    """The UNet as a function of plain tensors (what ``torch.jit.trace`` needs)."""

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, hidden, labels=None):
        return self.unet(sample, timestep, encoder_hidden_states=hidden, class_labels=labels, return_dict=False)[0]


def _trace_unet(unet: UNet2DConditionModel, args: tuple[torch.Tensor, ...]):
    """A frozen TorchScript trace of ``unet`` for inputs shaped like ``args``, or ``False`` if tracing fails."""
    import warnings

    was_training = unet.training
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on shape checks, TorchScript's deprecation notice
            traced = torch.jit.trace(_UNetCall(unet.eval()), args, check_trace=False)
            return torch.jit.freeze(traced.eval())
    except Exception as err:  # noqa: BLE001 - any tracing failure means: run this shape eagerly
        logger.warning("UNet tracing failed for inputs %s (%s); running it eagerly", [a.shape for a in args], err)
        return False
    finally:
        unet.train(was_training)


def _count_sketches(sketch, nested: bool = False) -> int:
    """Number of sketches in a ``sketch`` argument (a tensor (B, C, H, W) counts B)."""
    if isinstance(sketch, (list, tuple)):
        if nested:
            raise ValueError("sketch lists must be flat (one entry per sketch), got a nested list")
        if not sketch:
            raise ValueError("sketch must not be an empty list")
        return sum(_count_sketches(s, nested=True) for s in sketch)
    if isinstance(sketch, torch.Tensor):
        return sketch.shape[0] if sketch.ndim == 4 else 1
    if isinstance(sketch, (str, os.PathLike, PIL.Image.Image, np.ndarray, bytes, bytearray)):
        return 1
    raise ValueError(
        f"sketch must be a path, PIL image, numpy array, bytes, tensor or a list of them, got {type(sketch).__name__}"
    )


MAX_MODEL_INDEX_BYTES = 1 << 20  # a pipeline's model_index.json is well under 1 KiB


SCHEDULERS: dict[str, str] = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
}
"""Short sampler names (``duetgen generate --scheduler``) -> diffusers scheduler classes of the DDPM family."""


def make_scheduler(name: str, config: dict, **overrides):
    """A diffusers scheduler built from a pipeline's scheduler config (``pipe.scheduler.config``).

    Args:
        name: a key of :data:`SCHEDULERS` (``"ddim"``) or a diffusers class name (``"DDIMScheduler"``).
        config: the scheduler config to start from (betas, prediction type, clipping, timestep spacing).
        **overrides: config entries to replace (``timestep_spacing="leading"``); they win over the rule below.

    DDIM with the "leading" timestep spacing (diffusers' default, and duetgen's training scheduler) starts at
    t = 960 of 1000 at 25 steps, not at 999, and with x0 clipping it drifts off the requested image (shipped
    generator, 8 held-out requests: colour 0.75, domain 0.38, IoU 0.39; trailing: 0.88, 1.00, 0.67). So DDIM gets
    "trailing" spacing from such a config (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
    flawed"), unless ``overrides`` name a spacing.

    Raises:
        ValueError: an unknown name.
    """
    import diffusers

    cls_name = SCHEDULERS.get(str(name).lower(), name)
    if cls_name not in SCHEDULERS.values():
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    spacing = dict(config).get("timestep_spacing", "leading")
    if cls_name == "DDIMScheduler" and spacing == "leading" and "timestep_spacing" not in overrides:
        overrides["timestep_spacing"] = "trailing"
    return getattr(diffusers, cls_name).from_config(config, **overrides)


def check_pipeline_folder(path: str | os.PathLike) -> dict:
    """Validates a local pipeline folder before diffusers imports anything it names; returns model_index.json.

    Raises:
        CheckpointError: no model_index.json, a component from a library other than diffusers/duetgen, a missing
            component folder, or pickled weight files.
    """
    path = Path(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise CheckpointError(f"'{path}' is not a pipeline folder: it has no model_index.json")
    if index_file.stat().st_size > MAX_MODEL_INDEX_BYTES:
        raise CheckpointError(
            f"model_index.json in '{path}' is over {MAX_MODEL_INDEX_BYTES} bytes; it is not a pipeline index: "
            "save the pipeline again with save_pretrained"
        )
    try:
        index = json.loads(index_file.read_bytes())
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        detail = " ".join(str(err).split())[:160]
        raise CheckpointError(
            f"model_index.json in '{path}' is not valid JSON ({detail}); save the pipeline again with save_pretrained"
        ) from None
    if not isinstance(index, dict):
        raise CheckpointError(f"model_index.json in '{path}' is not a JSON object")
    for name, entry in index.items():
        if name.startswith("_") or entry is None or entry == [None, None]:
            continue
        if not name.isidentifier():
            raise CheckpointError(
                f"model_index.json in '{path}': component name {name!r:.80} is not a plain name (a component is a "
                "subfolder of the pipeline folder); fix or remove that entry"
            )
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            raise CheckpointError(f"model_index.json in '{path}': component {name!r} is malformed: {entry!r:.80}")
        library = entry[0].split(".")[0]
        if library not in ALLOWED_LIBRARIES:
            raise CheckpointError(
                f"model_index.json in '{path}': component {name!r} comes from {entry[0]!r}; only "
                f"{', '.join(ALLOWED_LIBRARIES)} components are loaded"
            )
        folder = path / name
        if not folder.is_dir():
            raise CheckpointError(f"pipeline folder '{path}' lacks the {name!r} component folder")
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"'{folder}' contains pickled files {pickles}; duetgen never unpickles checkpoints: convert them to "
                "safetensors and remove them"
            )
    return index


UNET_DTYPES = ("auto", "float32", "bfloat16")
"""Names :func:`load_pipeline` and the tools' ``--unet-dtype`` accept."""


def resolve_unet_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` -> the torch dtype; ``"auto"`` -> bfloat16 on a CPU whose oneDNN has native
    bfloat16 kernels (AVX512-BF16 or AMX), float32 elsewhere (GPUs included: pick their dtype yourself)."""
    if name not in UNET_DTYPES:
        raise DuetgenInputError(f"unet dtype must be one of {', '.join(UNET_DTYPES)}, got {name!r}")
    if name != "auto":
        return getattr(torch, name)
    on_cpu = device is None or torch.device(device).type == "cpu"
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if on_cpu and native else torch.float32


def load_pipeline(
    path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    unet_dtype: torch.dtype | str | None = None,
) -> DuetGenPipeline:
    """Loads a DuetGenPipeline, offline: the embedded default when ``path`` is ``None``.

    Args:
        path: a folder written by ``DuetGenPipeline.save_pretrained`` (or ``recipes/train_generator.py``).
        device: where to put it (default CPU).
        dtype: compute dtype; shipped fp16 weights are loaded as float32 by default.
        unet_dtype: run the UNet alone in this dtype (latents, scheduler and encoder stay in ``dtype``): a torch
            dtype, ``"float32"``, ``"bfloat16"`` or ``"auto"`` (:func:`resolve_unet_dtype`: bfloat16 on a CPU with
            native bfloat16, else ``dtype``). On such a CPU (AVX512-BF16 or AMX) bfloat16 makes an image about 1.2x
            faster at the same fidelity (``benchmarks/bench_generation_ab.py``,
            ``benchmarks/bench_generation_fidelity.py --unet-dtype``); elsewhere it is slower. ``None`` (the default,
            and what training uses) keeps ``dtype``. The user-facing tools (CLI, studio, recipes) pass ``"auto"``.

    Raises:
        CheckpointError: the folder is missing, malformed or unsafe.
    """
    from ..embedded import PIPELINE_DIR

    if path is None:
        if not (PIPELINE_DIR / "model_index.json").is_file():
            raise CheckpointError(
                f"the embedded default generator is missing from this install ({PIPELINE_DIR}); reinstall duetgen, "
                "retrain it with recipes/train_generator.py, or pass a pipeline folder"
            )
        path = PIPELINE_DIR
    path = Path(os.path.expanduser(str(path)))
    if not path.is_dir():
        raise CheckpointError(f"pipeline folder '{path}' does not exist; pass a folder written by save_pretrained")
    from diffusers.utils import logging as diffusers_logging

    bar_was_on = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bar for a few small files
    try:
        pipe = DuetGenPipeline.from_pretrained(str(path), dtype=dtype)
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, AttributeError) as err:
        raise CheckpointError(f"cannot load the pipeline in '{path}': {str(err).splitlines()[0]}") from err
    finally:
        if bar_was_on:
            diffusers_logging.enable_progress_bar()
    if not isinstance(pipe.unet, UNet2DConditionModel) or pipe.unet.config.in_channels not in SPATIAL_LAYOUTS:
        raise CheckpointError(f"'{path}' is not a DuetGenPipeline (its UNet does not take image + sketch channels)")
    unet_dtype = resolve_unet_dtype(unet_dtype, device) if isinstance(unet_dtype, str) else unet_dtype
    if unet_dtype is not None and unet_dtype != pipe.unet.dtype:
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # not the "modules to keep in float32: []" notice
        try:
            pipe.unet.to(dtype=unet_dtype)
        finally:
            diffusers_logging.set_verbosity(level)
    pipe.set_progress_bar_config(disable=None)
    return pipe.to(device) if device is not None else pipe


__all__ = ["UNET_DTYPES", "DuetGenPipeline", "check_pipeline_folder", "load_pipeline", "resolve_unet_dtype"]
