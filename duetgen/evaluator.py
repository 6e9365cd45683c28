"""The independent evaluator: a small CNN that reads world photos back into words and a silhouette.

Generation fidelity is measured by a model that never took part in training the generator: :class:`WorldEvaluator`
is trained separately (``recipes/train_evaluator.py``) on world photos from a seed range no other part of duetgen
uses, with augmentations that mimic what a generator outputs (blur, noise, small colour jitter, softness). It
predicts, for a 64x64 RGB image in [0, 1]:

- the shape category (:data:`duetgen.world.SHAPES`), colour (:data:`~duetgen.world.COLOURS`), pattern
  (:data:`~duetgen.world.PATTERNS`) and domain (:data:`~duetgen.world.DOMAINS`), one classification head each;
- a per-pixel object mask (64x64 logits from a small U-Net decoder).

:meth:`WorldEvaluator.score` compares those predictions with what was requested (the words' attributes and the
sketch's :class:`~duetgen.world.Instance`): per-image correctness of each attribute and the silhouette IoU between the
predicted mask and :func:`instance_mask` of the sketched instance.

The shipped evaluator lives in ``duetgen/embedded/evaluator/`` (``config.json`` + fp16 ``.safetensors``) and is loaded
with :func:`load_evaluator`; pickled weights are refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from PIL import Image, ImageDraw

from . import world
from .checkpoints import load_model_folder
from .errors import CheckpointError, DuetgenInputError

logger = logging.getLogger(__name__)

EVALUATOR_DIR = Path(__file__).parent / "embedded" / "evaluator"
"""Where the shipped evaluator lives (``config.json`` + fp16 ``diffusion_pytorch_model.safetensors``)."""

HEADS: tuple[str, ...] = ("shape", "colour", "pattern", "domain")
"""The classification heads, in the order of :class:`EvaluatorOutput` fields."""


# -----------------------------------------------------------------------------
# Ground-truth silhouette.


def instance_mask(
    instance: world.Instance | Mapping, size: int = 64, supersample: int = 8, soft: bool = False
) -> np.ndarray:
    """The instance's filled silhouette: bool (size, size), True where the polygon covers at least half a pixel.

    Args:
        instance: a :class:`~duetgen.world.Instance` (or its ``to_dict()``), canvas coordinates in [0, 1].
        size: output side in pixels.
        supersample: the polygon is filled at ``size * supersample`` with PIL and box-reduced, then thresholded at 0.5.
        soft: return the coverage instead: float32 (size, size) in [0, 1] (a training target).

    Returns:
        bool array (size, size), row = y (down), column = x (float32 coverage with ``soft=True``).
    """
    if isinstance(instance, Mapping):
        instance = world.Instance.from_dict(instance)
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise DuetgenInputError(f"size={size!r} must be a positive integer (pixels)")
    s = int(size) * supersample
    img = Image.new("L", (s, s), 0)
    # PIL fills the pixels whose integer corner coordinate lies inside: shift by half a pixel so it samples centres.
    ImageDraw.Draw(img).polygon([tuple(p) for p in (instance.outline() * s - 0.5).tolist()], fill=255)
    if supersample > 1:
        img = img.reduce(supersample)
    if soft:
        return np.asarray(img, dtype=np.float32) * (1 / 255)
    return np.asarray(img) >= 128


def mask_iou(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
    """IoU of boolean masks (..., H, W) -> (...,) float; two empty masks score 1."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    inter = (pred & target).sum((-2, -1))
    union = (pred | target).sum((-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float64)


# -----------------------------------------------------------------------------
# The model.


@dataclass
class EvaluatorOutput(BaseOutput):
    """Raw outputs of :meth:`WorldEvaluator.forward`.

    Attributes:
        shape: (B, len(SHAPES)) logits.
        colour: (B, len(COLOURS)) logits.
        pattern: (B, len(PATTERNS)) logits.
        domain: (B, len(DOMAINS)) logits.
        mask: (B, H, W) object-mask logits at the input resolution.
    """

    shape: torch.Tensor
    colour: torch.Tensor
    pattern: torch.Tensor
    domain: torch.Tensor
    mask: torch.Tensor


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class WorldEvaluator(ModelMixin, ConfigMixin):
    """A small U-Net-shaped CNN: four classification heads on the bottleneck and an object-mask decoder.

    Encoder: one conv at full resolution (``stem_stride=1``) or half (``stem_stride=2``), then ``len(channels) - 1``
    stages that halve the resolution (stride-2 conv + conv). Decoder: bilinear 2x upsampling, concatenation with the
    encoder feature of the same resolution, one conv per level (widths ``decoder_channels``), then a 1x1 conv to one
    mask logit per pixel (bilinearly upsampled to the input size when ``stem_stride=2``). Heads: global average, max
    and object-only (mask-weighted) average pooling of every stage, concatenated -> dropout -> one linear layer per
    head. The shape head adds a rotation-, scale- and position-invariant silhouette path: the predicted mask in polar
    coordinates around its centroid, read by circular 1D convolutions over the angle.

    Args:
        image_size: side of the square input the model was trained on (other sizes are resized in :meth:`predict`).
        channels: encoder widths, full resolution first (5 entries: 64, 32, 16, 8, 4 px for a 64 px input).
        decoder_channels: decoder widths, coarsest first (one per upsampling step).
        stem_stride: 2 halves the cost: the whole network runs at half resolution and the mask logits are upsampled.
        polar_size: (radii, angles) of the polar view of the predicted mask that the silhouette path reads.
        silhouette_channels: width of the silhouette path (circular 1D convolutions over the angle).
        texture_channels: width of an optional full-resolution texture path feeding the heads (0: none).
        spectrum_size: (frequency rings, angles) of the optional polar power-spectrum path of the pattern head
            ((0, 0): none).
        dropout: dropout before the classification heads.
        shapes, colours, patterns, domains: class names of each head, in logit order (stored in the config, so a
            checkpoint names its own classes).
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,
        channels: Sequence[int] = (16, 32, 64, 128, 192),
        decoder_channels: Sequence[int] = (96, 64, 32, 16),
        stem_stride: int = 2,
        polar_size: Sequence[int] = (24, 64),
        silhouette_channels: int = 64,
        texture_channels: int = 0,
        spectrum_size: Sequence[int] = (0, 0),
        dropout: float = 0.1,
        shapes: Sequence[str] = world.SHAPES,
        colours: Sequence[str] = tuple(world.COLOURS),
        patterns: Sequence[str] = world.PATTERNS,
        domains: Sequence[str] = world.DOMAINS,
    ) -> None:
        super().__init__()
        channels, decoder_channels = list(channels), list(decoder_channels)
        if len(decoder_channels) != len(channels) - 1:
            raise DuetgenInputError(
                f"decoder_channels={decoder_channels} needs one width per upsampling step "
                f"({len(channels) - 1} for channels={channels})"
            )
        if stem_stride not in (1, 2):
            raise DuetgenInputError(f"stem_stride={stem_stride} must be 1 or 2")
        if image_size % (stem_stride * 2 ** (len(channels) - 1)):
            raise DuetgenInputError(
                f"image_size={image_size} must be divisible by {stem_stride * 2 ** (len(channels) - 1)}"
            )
        self.stem = _conv(3, channels[0], stride=stem_stride)
        self.down = nn.ModuleList(
            nn.Sequential(_conv(cin, cout, stride=2), _conv(cout, cout))
            for cin, cout in zip(channels[:-1], channels[1:], strict=True)
        )
        skips = channels[-2::-1]  # the encoder feature each decoder level concatenates, coarsest first
        ins = [channels[-1]] + decoder_channels[:-1]
        self.up = nn.ModuleList(
            _conv(cin + skip, cout) for cin, skip, cout in zip(ins, skips, decoder_channels, strict=True)
        )
        self.mask_out = nn.Conv2d(decoder_channels[-1], 1, 1)
        self.head_dropout = nn.Dropout(dropout)
        feat = 3 * sum(channels) + 3 * texture_channels
        # The texture path (optional): three convs at full resolution, pooled like the stages; a stride-2 stem leaves
        # fine patterns (stripes ~5 px apart at 64 px) to a single layer otherwise.
        t = texture_channels
        self.texture = (
            nn.Sequential(
                _conv(3, t),
                _conv(t, t),
                nn.Conv2d(t, t, 3, padding=2, dilation=2, bias=False),
                nn.BatchNorm2d(t),
                nn.ReLU(inplace=True),
            )  # fmt: skip
            if t
            else None
        )
        # The silhouette path: the predicted mask in polar coordinates around its centroid, radius in units of its
        # equivalent radius (so position and scale drop out), then circular 1D convolutions over the angle and a max
        # over it (so rotation drops out). Radii are the channels.
        n_r, n_a = polar_size
        c = silhouette_channels
        self.silhouette = nn.Sequential(
            nn.Conv1d(n_r, c, 5, padding=2, padding_mode="circular", bias=False),
            nn.BatchNorm1d(c),
            nn.ReLU(True),
            nn.Conv1d(c, c, 5, padding=2, padding_mode="circular", bias=False),
            nn.BatchNorm1d(c),
            nn.ReLU(True),
            nn.Conv1d(c, c, 5, padding=4, dilation=2, padding_mode="circular", bias=False),
            nn.BatchNorm1d(c),
            nn.ReLU(True),
        )
        self.silhouette_out = nn.Linear(2 * c, len(shapes))
        # The spectrum path (optional): the power spectrum of the object's luminance (background masked out, mean
        # removed) in polar coordinates; frequency rings are the channels, circular 1D convolutions run over the angle
        # and a max over it makes the pattern head rotation-invariant (stripes: 2 opposite peaks; checks, dots: 4).
        n_f, n_fa = spectrum_size
        self.spectrum = None
        if n_f:
            self.spectrum = nn.Sequential(
                nn.Conv1d(n_f, c, 5, padding=2, padding_mode="circular", bias=False),
                nn.BatchNorm1d(c),
                nn.ReLU(True),
                nn.Conv1d(c, c, 5, padding=2, padding_mode="circular", bias=False),
                nn.BatchNorm1d(c),
                nn.ReLU(True),
            )
            self.spectrum_out = nn.Linear(2 * c, len(patterns))
        self.heads = nn.ModuleDict(
            {
                "shape": nn.Linear(feat, len(shapes)),
                "colour": nn.Linear(feat, len(colours)),
                "pattern": nn.Linear(feat, len(patterns)),
                "domain": nn.Linear(feat, len(domains)),
            }
        )
        self.class_names = {"shape": list(shapes), "colour": list(colours), "pattern": list(patterns),
                            "domain": list(domains)}  # fmt: skip

    def forward(self, images: torch.Tensor) -> EvaluatorOutput:
        """Logits of every head.

        Args:
            images: (B, 3, S, S) float in [0, 1], S = ``config.image_size``.

        Returns:
            :class:`EvaluatorOutput` (class logits (B, n) per head, mask logits (B, S, S)).
        """
        x = (images - 0.5) * 4.0  # (B, 3, S, S), roughly unit scale
        feats = [self.stem(x)]  # (B, c0, S / r, S / r), r = stem_stride
        for stage in self.down:
            feats.append(stage(feats[-1]))  # (B, c_i, S / (r 2^i), S / (r 2^i))
        y = feats[-1]  # (B, c_last, S / (r 2^(n-1)), ...)
        for conv, skip in zip(self.up, feats[-2::-1], strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)  # (B, c, 2h, 2w)
            y = conv(torch.cat([y, skip], 1))  # (B, c_dec, 2h, 2w)
        mask = self.mask_out(y)  # (B, 1, S / r, S / r)
        if mask.shape[-2:] != images.shape[-2:]:
            mask = F.interpolate(mask, size=images.shape[-2:], mode="bilinear", align_corners=False)  # (B, 1, S, S)
        soft = mask.detach().sigmoid()  # (B, 1, S, S): where the object is (the heads do not train the mask)
        # Pooling of every stage: mean, max, and mean over the object only (texture and colour read early, shape
        # deep; the object-only mean keeps a small object's pattern from drowning in background).
        pooled = []
        texture = [self.texture(x)] if self.texture is not None else []  # (B, c_tex, S, S)
        for f in feats + texture:
            w = F.adaptive_avg_pool2d(soft, f.shape[-2:])  # (B, 1, h, w)
            inside = (f * w).sum((2, 3)) / (w.sum((2, 3)) + 1e-3)  # (B, c)
            pooled += [f.mean((2, 3)), f.amax((2, 3)), inside]
        pooled = self.head_dropout(torch.cat(pooled, 1))  # (B, 3 (sum(c) + c_tex))
        logits = {name: head(pooled) for name, head in self.heads.items()}  # (B, n_classes) each
        sil = self.silhouette(self.polar(soft[:, 0]))  # (B, c_sil, n_angles)
        logits["shape"] = logits["shape"] + self.silhouette_out(torch.cat([sil.amax(-1), sil.mean(-1)], 1))
        if self.spectrum is not None:
            spec = self.spectrum(self.polar_spectrum(images, soft[:, 0]))  # (B, c_sil, n_angles)
            logits["pattern"] = logits["pattern"] + self.spectrum_out(torch.cat([spec.amax(-1), spec.mean(-1)], 1))
        return EvaluatorOutput(mask=mask[:, 0], **logits)

    def polar_spectrum(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log power spectrum of the object's luminance in polar coordinates: (B, n_freq, n_angles).

        Frequencies run from 2 cycles per image to Nyquist; the spectrum is normalised by the object's energy.
        """
        n_f, n_a = self.config.spectrum_size
        b, h, w = mask.shape
        lum = images.float().mean(1)  # (B, H, W)
        m = mask.float()
        area = m.sum((1, 2), keepdim=True).clamp_min(1.0)
        g = (lum - (lum * m).sum((1, 2), keepdim=True) / area) * m  # (B, H, W) the object's texture, mean removed
        power = torch.fft.fftshift(torch.fft.fft2(g).abs().square(), dim=(-2, -1))  # (B, H, W), DC at the centre
        power = power / (power.sum((1, 2), keepdim=True) + 1e-6)
        power = torch.log(power * (h * w) + 1e-2)[:, None]  # (B, 1, H, W)
        radii = torch.linspace(2.0 / h * 2, 1.0, n_f, device=mask.device)  # (F,) in [-1, 1] grid units (1 = Nyquist)
        angles = torch.arange(n_a, device=mask.device) * (2 * torch.pi / n_a)  # (A,)
        gx = radii[:, None] * torch.cos(angles)[None]  # (F, A)
        gy = radii[:, None] * torch.sin(angles)[None]
        grid = torch.stack([gx, gy], -1)[None].expand(b, -1, -1, -1)  # (B, F, A, 2)
        return F.grid_sample(power, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0].to(
            images.dtype
        )

    def polar(self, mask: torch.Tensor) -> torch.Tensor:
        """A soft mask (B, S, S) resampled around its centroid: (B, n_radii, n_angles).

        Radii run from 0 to 3x the mask's equivalent radius sqrt(area / pi); angle 0 points right, clockwise.
        """
        n_r, n_a = self.config.polar_size
        b, h, w = mask.shape
        ys = (torch.arange(h, dtype=mask.dtype, device=mask.device) + 0.5) / h * 2 - 1  # (H,) in [-1, 1]
        xs = (torch.arange(w, dtype=mask.dtype, device=mask.device) + 0.5) / w * 2 - 1  # (W,)
        area = mask.sum((1, 2)).clamp_min(1.0)  # (B,) pixels
        cy = (mask.sum(2) * ys).sum(1) / area  # (B,)
        cx = (mask.sum(1) * xs).sum(1) / area  # (B,)
        r0 = torch.sqrt(area / torch.pi) * (2.0 / w)  # (B,) equivalent radius in [-1, 1] units
        radii = torch.linspace(0, 3, n_r, dtype=mask.dtype, device=mask.device)  # (R,) in units of r0
        angles = torch.arange(n_a, dtype=mask.dtype, device=mask.device) * (2 * torch.pi / n_a)  # (A,)
        gx = cx[:, None, None] + r0[:, None, None] * radii[None, :, None] * torch.cos(angles)[None, None]  # (B, R, A)
        gy = cy[:, None, None] + r0[:, None, None] * radii[None, :, None] * torch.sin(angles)[None, None]
        grid = torch.stack([gx, gy], -1)  # (B, R, A, 2)
        return F.grid_sample(mask[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]

    # -------------------------------------------------------------------------
    # Inference helpers.

    def prepare_images(self, images) -> torch.Tensor:
        """Any batch of RGB images -> float (B, 3, S, S) in [0, 1] on the model's device and dtype.

        Accepts a float tensor (B, 3, H, W) or (3, H, W) in [0, 1]; a numpy array (B, H, W, 3) or (H, W, 3), uint8
        (0..255) or float ([0, 1]), as pipelines return with ``output_type="np"``; or a list of PIL images / arrays.
        Images of another size are resized (bilinear, antialiased) to ``config.image_size``.
        """
        if isinstance(images, (list, tuple)):
            if not images:
                raise DuetgenInputError("images=[] is empty; pass at least one image")
            images = [self._one_to_tensor(im) for im in images]
            size = self.config.image_size
            images = torch.stack([_resize(im[None], size)[0] for im in images])
        elif isinstance(images, np.ndarray):
            images = _array_to_tensor(images)
        elif isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[1] != 3:
                raise DuetgenInputError(f"images tensor has shape {tuple(images.shape)}; expected (B, 3, H, W)")
            images = images.float() if images.is_floating_point() else images.float() / 255.0
        else:
            raise DuetgenInputError(
                f"images of type {type(images).__name__} are not supported; pass a tensor (B, 3, H, W), a numpy array "
                "(B, H, W, 3) or a list of PIL images"
            )
        images = _resize(images, self.config.image_size).clamp(0, 1)
        return images.to(device=self.device, dtype=self.dtype)

    @staticmethod
    def _one_to_tensor(im) -> torch.Tensor:
        if isinstance(im, Image.Image):
            im = np.asarray(im.convert("RGB"))
        if isinstance(im, np.ndarray):
            return _array_to_tensor(im)[0]
        if isinstance(im, torch.Tensor) and im.ndim == 3 and im.shape[0] == 3:
            return im.float() if im.is_floating_point() else im.float() / 255.0
        raise DuetgenInputError(
            f"image of type {type(im).__name__} is not supported; pass PIL, (H, W, 3) or (3, H, W)"
        )

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> dict:
        """Class names per head and the object mask.

        Args:
            images: see :meth:`prepare_images` (tensor (B, 3, H, W) in [0, 1], numpy (B, H, W, 3), list of PIL).
            batch_size: images per forward pass.

        Returns:
            dict with ``shape``, ``colour``, ``pattern``, ``domain``: list[str] of length B; ``confidence``: dict of
            (B,) float numpy softmax probabilities of the predicted class per head; ``mask``: bool tensor (B, S, S).
        """
        was_training = self.training
        self.eval()
        x = self.prepare_images(images)
        outs = [self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        self.train(was_training)
        result: dict = {"confidence": {}}
        for head in HEADS:
            logits = torch.cat([getattr(o, head) for o in outs]).float()  # (B, n)
            prob, idx = logits.softmax(-1).max(-1)
            names = self.config[f"{head}s"]
            result[head] = [names[i] for i in idx.tolist()]
            result["confidence"][head] = prob.cpu().numpy()
        result["mask"] = torch.cat([o.mask for o in outs]).float().cpu() > 0  # (B, S, S) bool
        return result

    @torch.no_grad()
    def score(self, images, requests: Sequence, batch_size: int = 256) -> dict:
        """How well each image shows what was requested.

        Args:
            images: B images (see :meth:`prepare_images`).
            requests: B requests, each a mapping (or object with attributes) with any of ``shape``, ``colour``,
                ``pattern``, ``domain`` (class names), ``attrs`` (a :class:`~duetgen.world.Attributes` or its dict,
                filling colour/pattern/domain) and ``instance`` (the sketch's :class:`~duetgen.world.Instance` or its
                dict; also fills ``shape``). A missing field is not scored.

        Returns:
            dict with ``shape_ok``, ``colour_ok``, ``pattern_ok``, ``domain_ok``: (B,) float arrays of 1.0 / 0.0,
            NaN where that field was not requested; ``iou``: (B,) float silhouette IoU between the predicted mask and
            :func:`instance_mask` of the instance (NaN without one); ``predicted``: the :meth:`predict` dict.
        """
        reqs = [_request(r) for r in requests]
        pred = self.predict(images, batch_size)
        if len(reqs) != len(pred["shape"]):
            raise DuetgenInputError(f"got {len(pred['shape'])} images but {len(reqs)} requests; pass one per image")
        out: dict = {}
        for head in HEADS:
            names = self.config[f"{head}s"]
            ok = np.full(len(reqs), np.nan)
            for i, r in enumerate(reqs):
                want = r.get(head)
                if want is None:
                    continue
                if want not in names:
                    raise DuetgenInputError(f"request {i}: {head}={want!r} is not one of {', '.join(names)}")
                ok[i] = float(pred[head][i] == want)
            out[f"{head}_ok"] = ok
        size = pred["mask"].shape[-1]
        iou = np.full(len(reqs), np.nan)
        for i, r in enumerate(reqs):
            if r.get("instance") is not None:
                iou[i] = float(mask_iou(pred["mask"][i].numpy(), instance_mask(r["instance"], size)))
        out["iou"] = iou
        out["predicted"] = pred
        return out


def summarise(scores: dict) -> dict[str, float]:
    """Means of a :meth:`WorldEvaluator.score` dict over the scored images: ``{"shape": acc, ..., "iou": mean}``."""
    out = {}
    for head in HEADS:
        v = scores[f"{head}_ok"]
        out[head] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    v = scores["iou"]
    out["iou"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    return out


def _request(r) -> dict:
    """Normalise one request to a dict with shape/colour/pattern/domain (str or None) and instance (or None)."""
    if not isinstance(r, Mapping):
        r = {k: getattr(r, k) for k in ("shape", "colour", "pattern", "domain", "attrs", "instance") if hasattr(r, k)}
    out = {k: r.get(k) for k in HEADS}
    attrs = r.get("attrs")
    if attrs is not None:
        attrs = world.Attributes.from_dict(attrs) if isinstance(attrs, Mapping) else attrs
        for k in ("colour", "pattern", "domain"):
            out[k] = out[k] if out[k] is not None else getattr(attrs, k)
    inst = r.get("instance")
    if inst is not None:
        inst = world.Instance.from_dict(inst) if isinstance(inst, Mapping) else inst
        out["shape"] = out["shape"] if out["shape"] is not None else inst.shape
    out["instance"] = inst
    return out


def _array_to_tensor(a: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) or (H, W, 3) uint8 / float numpy -> float tensor (B, 3, H, W) in [0, 1]."""
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise DuetgenInputError(f"images array has shape {a.shape}; expected (B, H, W, 3)")
    t = torch.from_numpy(np.array(a, copy=True)).permute(0, 3, 1, 2)  # a copy: input arrays may be read-only
    return t.float() / 255.0 if a.dtype == np.uint8 else t.float()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def load_evaluator(path: str | os.PathLike | None = None, device: str | torch.device | None = None) -> WorldEvaluator:
    """Loads a :class:`WorldEvaluator` (the shipped one by default), float32, eval mode. Safetensors only.

    Args:
        path: a folder written by ``save_pretrained``; None for ``duetgen/embedded/evaluator/``.
        device: where to put it (default CPU).

    Raises:
        CheckpointError: the folder is missing, malformed, or holds pickled weights.
    """
    if path is None:
        if not (EVALUATOR_DIR / "config.json").is_file():
            raise CheckpointError(
                f"the shipped evaluator is missing from this install ({EVALUATOR_DIR}); train it with "
                "recipes/train_evaluator.py"
            )
        path = EVALUATOR_DIR
    path = Path(os.path.expanduser(str(path)))
    model = load_model_folder(path, WorldEvaluator, "evaluator", torch_dtype=torch.float32)
    model = model.float().eval()
    if device is not None:
        model = model.to(device)
    return model
