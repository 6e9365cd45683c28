"""Silhouette verification: re-rank a composed query's top hits by how well each photo's object fills the sketch.

Spatial verification for sketches, as instance retrieval re-ranks its shortlist by geometric agreement (Philbin et
al. 2007). The composed query finds the shortlist: it reads the words well but tells similar shapes apart poorly
(the right photo is in its top 5 about 99 % of the time on the world benchmark, at rank 1 only 59 %). The sketch
says exactly where the object's outline runs, so each of the top ``depth`` hits is re-scored as

    score = cosine(query, photo) + weight * IoU(region the sketch encloses, the photo's object silhouette)

and the list is re-sorted. The sketch's region is :func:`duetgen.generator.sketch_fill` (gaps closed, flood-filled
from the border); the photo's silhouette is :func:`duetgen.transfer.photo_silhouette`, which assumes a smooth
background (product shots, the procedural world). On cluttered photos the silhouette is unreliable: leave
verification off there. It compares the sketch and the photo in the same frame, so it suits encoders that keep the
sketch's position on the canvas (``sketch_fit="canvas"``, the embedded default); with ``"ink"`` framing the drawing
fills the frame, which matches photos whose object does (centred product shots).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import torch

from .errors import DuetgenInputError
from .evaluator import mask_iou

logger = logging.getLogger(__name__)

DEFAULT_WEIGHT = 0.3  # bench_world_duet.py --verify: sketch + words Acc@1 0.91 at 0.1, 0.98 at 0.3, 0.97 at 1.0
DEFAULT_DEPTH = 20  # hits re-scored per query (at least k)
MASK_SIZE = 64  # px of the compared masks


def sketch_regions(sketches: torch.Tensor, size: int = MASK_SIZE) -> np.ndarray:
    """The regions sketches enclose: (B, 3 | 1, H, W) or (3 | 1, H, W) in [0, 1] (black ink on white) -> bool
    (B, size, size). A blank sketch encloses nothing."""
    from .generator import sketch_fill

    if not isinstance(sketches, torch.Tensor) or sketches.ndim not in (3, 4) or sketches.shape[-3] not in (1, 3):
        got = tuple(sketches.shape) if isinstance(sketches, torch.Tensor) else type(sketches).__name__
        raise DuetgenInputError(f"sketches to verify with must be a tensor (B, 3 | 1, H, W) in [0, 1], got {got}")
    x = sketches[None] if sketches.ndim == 3 else sketches
    grey = x.float().mean(1, keepdim=True)
    grey = torch.nn.functional.interpolate(grey, size=(size, size), mode="bilinear", antialias=True)
    return (sketch_fill(grey * 2 - 1)[:, 0] > 0).cpu().numpy()


def photo_region(path: str, size: int = MASK_SIZE) -> np.ndarray | None:
    """The object silhouette of an image file, bool (size, size), or ``None`` when it cannot be read."""
    from PIL import Image

    from .transfer import photo_silhouette

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size * 4, size * 4))  # JPEG: decode at a reduced scale
            return photo_silhouette(im.convert("RGB"), work=size)
    except Exception as err:  # noqa: BLE001 - an unreadable hit is not verified; the search itself goes on
        logger.warning("silhouette verification skipped '%s': %s: %s", path, type(err).__name__, err)
        return None


class SilhouetteVerifier:
    """Re-ranks search hits by silhouette agreement with the query's sketch; keeps the photos' silhouettes (by path,
    the ``cache_size`` most recent) so repeated queries on one gallery read each photo once.

    Args:
        weight: how much one unit of IoU adds to the cosine score (>= 0).
        depth: hits re-scored per query (the search asks for ``max(k, depth)``).
        cache_size: photo silhouettes kept.
    """

    def __init__(self, weight: float = DEFAULT_WEIGHT, depth: int = DEFAULT_DEPTH, cache_size: int = 4096):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight < 0:
            raise DuetgenInputError(f"verification weight must be a finite number >= 0, got {weight!r}")
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise DuetgenInputError(f"verification depth must be an integer >= 1, got {depth!r}")
        self.weight, self.depth, self.cache_size = float(weight), int(depth), int(cache_size)
        self._cache: OrderedDict[str, np.ndarray | None] = OrderedDict()

    def silhouette(self, path: str) -> np.ndarray | None:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        mask = self._cache[path] = photo_region(path)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return mask

    def rerank(self, hits: list, region: np.ndarray, k: int) -> list:
        """The best ``k`` of ``hits`` (:class:`~duetgen.gallery.SearchResult`, best first) after re-scoring them
        with ``region`` (bool (S, S), :func:`sketch_regions`); each result carries its ``iou``. A hit whose photo
        cannot be read keeps its cosine score (``iou`` None). An empty region (a blank sketch) changes nothing."""
        if not region.any():
            return hits[:k]
        out = []
        for h in hits:
            mask = self.silhouette(h.path)
            if mask is None:
                out.append(h)
                continue
            iou = float(mask_iou(region, mask))
            out.append(replace(h, score=h.score + self.weight * iou, iou=iou))
        out.sort(key=lambda h: -h.score)  # stable: ties keep the embedding order
        return out[:k]
