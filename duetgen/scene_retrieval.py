"""Scene retrieval from object sketches: find the photos that *contain* the sketched object somewhere.

A global photo embedding describes the whole scene, so a sketch of one small object matches it poorly. A gallery
built with ``regions=True`` (or ``duetgen index --regions``) also keeps one embedding per *region* of each photo:

* sliding windows at a few scales (:class:`RegionConfig`: by default square windows of 1/2 and 0.35 of the image
  side, 50% overlap, plus the whole image: 35 regions), each crop resized to the encoder's input and encoded with
  ``encode_image``, like a photo of its own;
* optionally the projected patch tokens of the global pass (``patches=True``, free to compute, but only useful with
  an encoder trained for region matching).

The score of a photo for a composed query q is the best region: ``score(photo) = max_r <q, e_r>``; the arg-max
region's box is returned so a viewer (the studio) can outline the match. Region embeddings are stored as fp16
(``regions.npy``, (N, R, D)): with the embedded model (D = 128) and the default 35 regions that is
35 * 128 * 2 = 8,960 bytes per photo, next to 512 bytes for its global float32 embedding.

Search is exact and chunked over the gallery (``Q x R`` dot products per photo, numpy on the memory-mapped fp16
array), so it needs no second index; at 35 regions it scans ~1M region vectors per second per core.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DuetgenInputError


@dataclass(frozen=True)
class RegionConfig:
    """Which regions of a photo get their own embedding.

    Attributes:
        scales: window side as a fraction of the image side, one sliding-window grid per scale.
        overlap: overlap of neighbouring windows (stride = side * (1 - overlap)); the grid always reaches the far
            edge (positions are spread evenly from 0 to 1 - side).
        whole: also keep the whole image as a region (then a query matching the global view still scores well).
        patches: also keep the encoder's projected patch tokens (one region per grid cell).
    """

    scales: tuple[float, ...] = (0.5, 0.35)
    overlap: float = 0.5
    whole: bool = True
    patches: bool = False

    def __post_init__(self):
        if not all(0 < s <= 1 for s in self.scales):
            raise DuetgenInputError(f"region scales must be in (0, 1], got {self.scales}")
        if not 0 <= self.overlap < 1:
            raise DuetgenInputError(f"region overlap must be in [0, 1), got {self.overlap}")
        if not (self.scales or self.whole or self.patches):
            raise DuetgenInputError("a RegionConfig needs at least one scale, whole=True or patches=True")

    def window_boxes(self) -> np.ndarray:
        """(W, 4) windows (x0, y0, x1, y1) as fractions of the image side; the whole image first if ``whole``."""
        boxes = [(0.0, 0.0, 1.0, 1.0)] if self.whole else []
        for s in self.scales:
            if s >= 1:
                continue
            n = math.ceil(round((1 - s) / (s * (1 - self.overlap)), 6)) + 1
            for y in np.linspace(0, 1 - s, n):
                for x in np.linspace(0, 1 - s, n):
                    boxes.append((float(x), float(y), float(x + s), float(y + s)))
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)

    def boxes(self, grid: int) -> np.ndarray:
        """(R, 4) all region boxes: the windows, then the ``grid x grid`` patch cells if ``patches``."""
        boxes = [self.window_boxes()]
        if self.patches:
            c = np.arange(grid, dtype=np.float32) / grid
            ys, xs = np.meshgrid(c, c, indexing="ij")
            cells = np.stack([xs, ys, xs + 1 / grid, ys + 1 / grid], -1).reshape(-1, 4)
            boxes.append(cells)
        return np.concatenate(boxes).astype(np.float32)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RegionConfig:
        return cls(tuple(d["scales"]), float(d["overlap"]), bool(d["whole"]), bool(d["patches"]))


def crop_windows(image: torch.Tensor, windows: np.ndarray, size: int) -> torch.Tensor:
    """Crops ``windows`` (W, 4 fractions) out of ``image`` (3, H, W), each resized: (W, 3, size, size)."""
    _, h, w = image.shape
    crops = []
    for x0, y0, x1, y1 in windows:
        c0, r0 = int(round(x0 * w)), int(round(y0 * h))
        c1, r1 = max(c0 + 1, int(round(x1 * w))), max(r0 + 1, int(round(y1 * h)))
        crop = image[None, :, r0:r1, c0:c1]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(crops).clamp_(0, 1) if crops else image.new_zeros(0, 3, size, size)


@torch.inference_mode()
def encode_regions(encoder, images: torch.Tensor, crops: torch.Tensor, config: RegionConfig, chunk: int = 512):
    """Global and region embeddings of a batch.

    Args:
        encoder: a ComposedQueryEncoder.
        images: (B, 3, S, S) in [0, 1].
        crops: (B, W, 3, S, S) window crops (W may be 0).
        config: the region config (``patches`` adds the patch tokens of the global pass).

    Returns:
        (global (B, D) float32, regions (B, R, D) float32), all L2-normalised.
    """
    b, w = crops.shape[:2]
    if config.patches:
        out = encoder.encode_photo(images)
        glob, patches = out.embeds, out.patch_embeds  # (B, D), (B, N, D)
    else:
        glob, patches = encoder.encode_image(images), None
    flat = crops.flatten(0, 1)
    parts = [encoder.encode_image(flat[i : i + chunk]) for i in range(0, len(flat), chunk)]
    win = torch.cat(parts).view(b, w, -1) if parts else glob.new_zeros(b, 0, glob.shape[-1])  # (B, W, D)
    regions = torch.cat([win, patches], 1) if patches is not None else win  # (B, R, D)
    return glob.float(), regions.float()


@dataclass
class RegionScores:
    """Best-region scores of every gallery item for every query.

    Attributes:
        scores: (Q, N) max over regions of <q, e_r>.
        best: (Q, N) index of the arg-max region.
    """

    scores: np.ndarray
    best: np.ndarray = field(repr=False)


def region_scores(regions: np.ndarray, queries: np.ndarray, chunk_items: int = 4096) -> RegionScores:
    """score[q, n] = max_r <queries[q], regions[n, r]> (exact, chunked; ``regions`` may be a fp16 memmap (N, R, D))."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n, r, d = regions.shape
    if q.ndim != 2 or q.shape[1] != d:
        raise DuetgenInputError(f"queries must be (Q, {d}), got shape {q.shape}")
    scores = np.empty((len(q), n), np.float32)
    best = np.empty((len(q), n), np.int32)
    for s in range(0, n, chunk_items):
        block = np.asarray(regions[s : s + chunk_items], dtype=np.float32)  # (n_c, R, D)
        sim = np.einsum("qd,nrd->qnr", q, block, optimize=True)  # (Q, n_c, R)
        best[:, s : s + len(block)] = sim.argmax(-1)
        scores[:, s : s + len(block)] = sim.max(-1)
    return RegionScores(scores, best)


def box_pixels(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """A fractional (x0, y0, x1, y1) box in pixels of a ``width x height`` image (x1, y1 exclusive)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (int(round(x0 * width)), int(round(y0 * height)), int(round(x1 * width)), int(round(y1 * height)))


def search_scenes(gallery, query_embeds, k: int = 10):
    """Scene retrieval: top-k photos of ``gallery`` by their best-matching region.

    Args:
        gallery: a :class:`duetgen.gallery.Gallery` built with regions.
        query_embeds: (Q, D) or (D,) composed queries (``encoder.encode_query(object_sketch, "in red")``).
        k: results per query.

    Returns:
        One list of :class:`duetgen.gallery.SearchResult` per query (a single list for a (D,) query), best first,
        each with ``box``: the best region in pixels of the original photo, and ``region``: its index.
    """
    from .gallery import SearchResult

    if gallery.regions is None:
        raise DuetgenInputError(
            "this gallery has no region embeddings; rebuild it with regions=True (duetgen index --regions)"
        )
    q = np.asarray(query_embeds.detach().cpu() if isinstance(query_embeds, torch.Tensor) else query_embeds)
    single = q.ndim == 1
    q = q[None] if single else q
    if k < 1:
        raise DuetgenInputError(f"k must be >= 1, got {k}")
    rs = region_scores(gallery.regions, q)
    k = min(k, rs.scores.shape[1])
    out = []
    for qi in range(len(q)):
        top = np.argsort(-rs.scores[qi], kind="stable")[:k]
        results = []
        for row in top:
            item = gallery.items[int(row)]
            region = int(rs.best[qi, row])
            box = box_pixels(gallery.region_boxes[region], item["w"], item["h"])
            results.append(SearchResult(float(rs.scores[qi, row]), item["path"], int(item["id"]), box, region))
        out.append(results)
    return out[0] if single else out
