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
import math
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import torch

from .errors import DuetgenInputError
from .evaluator import mask_iou
from .world import ALL_ATTRIBUTES

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


def _check_weight(weight) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight < 0:
        raise DuetgenInputError(f"verification weight must be a finite number >= 0, got {weight!r}")


def _check_weight_and_depth(weight, depth) -> None:
    _check_weight(weight)
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise DuetgenInputError(f"verification depth must be an integer >= 1, got {depth!r}")


class SilhouetteVerifier:
    """Re-ranks search hits by silhouette agreement with the query's sketch; keeps the photos' silhouettes (by path,
    the ``cache_size`` most recent) so repeated queries on one gallery read each photo once.

    Args:
        weight: how much one unit of IoU adds to the cosine score (>= 0).
        depth: hits re-scored per query (the search asks for ``max(k, depth)``).
        cache_size: photo silhouettes kept.
    """

    def __init__(self, weight: float = DEFAULT_WEIGHT, depth: int = DEFAULT_DEPTH, cache_size: int = 4096):
        _check_weight_and_depth(weight, depth)
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


GENERATION_WEIGHT = 0.1  # benchmarks/bench_best_of.py: best of 4 by cos_q + 0.1 IoU, shape 0.92 (0.87 every sample)


def score_generations(
    encoder, images: torch.Tensor, queries: torch.Tensor, regions: np.ndarray | None, weight: float = GENERATION_WEIGHT
) -> torch.Tensor:
    """How well generated images answer their composed queries: the score best-of-N generation keeps the best by,

        score = cosine(query, image embedding) + weight * IoU(region the sketch encloses, the image's silhouette)

    the re-ranking of :class:`SilhouetteVerifier` applied to candidates instead of gallery photos (as DALL-E
    re-ranked its samples with CLIP). The cosine checks the words (colour, style); the IoU checks the pose.

    Args:
        encoder: the composed-query encoder the queries came from (its image tower embeds the images).
        images: (M, 3, H, W) in [0, 1].
        queries: (M, D) L2-normalised composed queries, one per image.
        regions: bool (M, S, S) sketch regions (:func:`sketch_regions`), or None (no sketch: cosine only). An empty
            region (a blank sketch) adds nothing.
        weight: how much one unit of IoU adds (>= 0).

    Returns:
        float (M,) scores on the CPU.
    """
    from PIL import Image

    from .transfer import photo_silhouette

    _check_weight(weight)
    if images.ndim != 4 or images.shape[1] != 3 or queries.ndim != 2 or len(images) != len(queries):
        raise DuetgenInputError(
            f"score_generations needs images (M, 3, H, W) and queries (M, D), got {tuple(images.shape)} and "
            f"{tuple(queries.shape)}"
        )
    if queries.shape[1] != encoder.embed_dim:
        raise DuetgenInputError(f"queries have width {queries.shape[1]}, but this encoder embeds {encoder.embed_dim}")
    if regions is not None and (np.ndim(regions) != 3 or len(regions) != len(images)):
        raise DuetgenInputError(
            f"regions must be bool (M, S, S), one per image: got {np.shape(regions)} for {len(images)} images"
        )
    with torch.inference_mode():
        embeds = encoder.encode_image(images).float().cpu()
    scores = (embeds * queries.float().cpu()).sum(-1)
    if regions is None or weight == 0:
        return scores
    pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    size = regions.shape[-1]
    for i, (pixel, region) in enumerate(zip(pixels, regions, strict=True)):
        if region.any():
            mask = photo_silhouette(Image.fromarray(pixel), work=size)
            scores[i] += weight * float(mask_iou(region, mask))
    return scores


# ---------------------------------------------------------------------------------------------------------------
# scenes: the objects of a photo, matched to the sketch whatever their rotation
# ---------------------------------------------------------------------------------------------------------------

SCENE_WEIGHT = 1.0  # weight of shape agreement in SceneVerifier; WORDS_WEIGHT was tuned against it
SCENE_DEPTH = 300  # scenes re-scored per query (of the region search's ranking)
SCENE_WORK = 128  # px at which a scene's objects are segmented
FRAME = 40  # px of a shape frame
FRAME_BLUR = 2.0  # px (of a frame): the sigma of the Gaussian that softens a frame
FRAME_WHITEN = 0.5  # how far a frame undoes its silhouette's elongation (0: not at all, 1: round second moments)
ANGLES = 72  # rotations of the sketch tried (every 5 degrees; 36: scene mAP with a colour word 0.786, 72: 0.791)
MIN_OBJECT = 30  # px (at SCENE_WORK) of the smallest object kept
MAX_OBJECTS = 8  # largest objects kept per scene
CROP_MARGIN = 0.95  # an object's box fills this share of its crop (0.8: mAP 0.543, 0.95: 0.554, 0.65: 0.467)
SPLIT_HUE = 25.0  # degrees between the hues of two touching objects told apart (red and pink are 32 apart)
SPLIT_SHARE = 0.15  # share of a component's coloured pixels a hue needs to count as an object of its own
SPLIT_SATURATION, SPLIT_VALUE = 0.3, 0.2  # pixels with a reliable hue
WORDS_WEIGHT = 0.3  # weight of log(P(words) / WORDS_FREE) below 0 (scene mAP with a colour word, seeds 0 / 1:
# 0.823 / 0.826 at 0.3, 0.823 / 0.828 at 0.1, 0.822 / 0.825 at 1; 0.799 / 0.795 for 0.03 x log P unclipped)
WORDS_FREE = 0.5  # an object the words describe with at least this probability pays nothing for them
WORDS_FLOOR = 0.01  # ... and one they describe with less pays as if it were this: an object surely not striped and
# one very surely not striped pay the same for "with stripes" (without it, how tiny P was outranked the colour)
READ_TEMPERATURE = 0.03  # softmax temperature of the zero-shot attribute reading of an object crop
SCENE_NOISE = 6.0  # scene_foreground: the low threshold in units of the backdrop's variation
SCENE_FLOOR = 10.0  # ... and at least this far from the background colour (RGB units)
SCENE_RING = 8  # px (at SCENE_WORK) around a part where its own threshold is found; objects found with IoU >= 0.7
# on 300 scenes: 0.783 at 3 (contact shadows survive), 0.862 at 4, 0.890 at 6, 0.897 at 8
SCENE_FLAT = 1.0  # a backdrop varying less than this (RGB units, 90th percentile) is flat (pixel art)
SCENE_FLAT_ERODE = 3  # px of the square a flat backdrop's objects are eroded by (1: pixel art found 0.475, 3: 0.858)
SCENE_PASSES = 3  # rounds of looking for fainter objects beside the ones found
_FRAME_FILL = 0.33  # a frame's side is sqrt(area) / _FRAME_FILL: the object sits inside it at any rotation


def shape_frames(masks: torch.Tensor | np.ndarray, angles: int = 1) -> torch.Tensor:
    """Each silhouette in a frame of its own: centred on its centroid, scaled by the square root of its area and
    rotated by ``angles`` even steps of a full turn, so two silhouettes of one shape at different positions, sizes
    and rotations coincide in one of the rotations. Frames are soft (sampled bilinearly, then blurred by
    ``FRAME_BLUR`` px), so a slightly different outline of the same shape still overlaps.

    A frame also undoes part of its silhouette's elongation: it samples along the silhouette's principal axes with
    steps in the ratio of their standard deviations to the power ``FRAME_WHITEN`` (area kept), so a slimmer or
    stouter instance of a shape (a narrow kite, a tall triangle) comes closer to its kin while some of the
    elongation that tells shapes apart (a cross is long, a star is round) stays. Fully whitened frames (power 1)
    lose that difference.

    Args:
        masks: bool (B, H, W) silhouettes (an empty one gives empty frames).
        angles: rotations per mask (1: only the upright frame).

    Returns:
        float (B, angles, FRAME, FRAME) in [0, 1].
    """
    m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks).float()
    if m.ndim != 3:
        raise DuetgenInputError(f"shape_frames needs masks (B, H, W) (one mask: mask[None]), got {tuple(m.shape)}")
    b, h, w = m.shape
    ys, xs = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
    area = m.sum((1, 2)).clamp_min(1)  # (B,)
    cy = (m.sum(2) * ys).sum(1) / area
    cx = (m.sum(1) * xs).sum(1) / area
    dy, dx = ys[None, :, None] - cy[:, None, None], xs[None, None, :] - cx[:, None, None]
    cxx, cxy, cyy = ((m * u * v).sum((1, 2)) / area for u, v in ((dx, dx), (dx, dy), (dy, dy)))
    cov = torch.stack([torch.stack([cxx, cxy], -1), torch.stack([cxy, cyy], -1)], -2) + 1e-3 * torch.eye(2)
    var, axes = torch.linalg.eigh(cov)  # (B, 2), (B, 2, 2)
    spread = var.clamp_min(1e-6) ** (FRAME_WHITEN / 2)
    spread = spread / spread.prod(-1, keepdim=True).sqrt()  # area-preserving
    warp = axes @ torch.diag_embed(spread) @ axes.transpose(1, 2)  # (B, 2, 2): frame step -> input step
    step = area.sqrt() / (FRAME * _FRAME_FILL)  # input pixels per frame pixel
    c = torch.arange(FRAME, dtype=torch.float32) - (FRAME - 1) / 2
    gy, gx = torch.meshgrid(c, c, indexing="ij")  # (F, F)
    theta = torch.arange(angles, dtype=torch.float32) * (2 * torch.pi / angles)
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    rx, ry = gx * cos - gy * sin, gx * sin + gy * cos  # (A, F, F)
    w4 = (step[:, None, None] * warp)[:, :, :, None, None, None]  # (B, 2, 2, 1, 1, 1)
    px = cx[:, None, None, None] + w4[:, 0, 0] * rx + w4[:, 0, 1] * ry  # (B, A, F, F) input pixel coordinates
    py = cy[:, None, None, None] + w4[:, 1, 0] * rx + w4[:, 1, 1] * ry
    grid = torch.stack([(px + 0.5) / w * 2 - 1, (py + 0.5) / h * 2 - 1], dim=-1).reshape(b, angles * FRAME, FRAME, 2)
    out = torch.nn.functional.grid_sample(m[:, None], grid, mode="bilinear", align_corners=False)
    out = out.reshape(b * angles, 1, FRAME, FRAME)
    r = max(1, math.ceil(2 * FRAME_BLUR))  # kernel radius: 2 sigma; outside the frame is empty (zero padding)
    k = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(k**2) / (2 * FRAME_BLUR**2))
    g = g / g.sum()
    out = torch.nn.functional.conv2d(torch.nn.functional.pad(out, (r, r, r, r)), g.view(1, 1, 1, -1))
    out = torch.nn.functional.conv2d(out, g.view(1, 1, -1, 1))
    return out.reshape(b, angles, FRAME, FRAME)


def shape_similarity(query_frames: torch.Tensor, object_frames: torch.Tensor) -> torch.Tensor:
    """Rotation-invariant shape agreement: for each object frame, the best correlation (zero-mean, normalised)
    with the query's rotated frames. On 300 world scenes with the true object masks, ranking by it gives scene mAP
    0.890 for a sketch alone (0.872 with frames that keep the elongation, 0.855 for their binary IoU).

    Args:
        query_frames: (A, F, F), one sketch's region at A rotations (:func:`shape_frames`).
        object_frames: (M, F, F), upright frames of M objects.

    Returns:
        float (M,) in [-1, 1]; 0 for an empty frame.
    """

    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), -1).float()
        x = x - x.mean(1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)

    if not len(query_frames):
        return torch.zeros(len(object_frames))
    return (unit(query_frames) @ unit(object_frames).T).amax(0)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a bool (H, W) mask: (int labels (H, W), 0 = background, 1..n by size, n)."""
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    h, w = m.shape
    big = h * w + 1
    lab = torch.where(m, torch.arange(1, h * w + 1, dtype=torch.float32).reshape(h, w), torch.zeros(()))
    while True:  # every pixel takes the largest label among its 4 neighbours until nothing changes
        p = torch.nn.functional.pad(lab, (1, 1, 1, 1))
        new = torch.stack([lab, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]).amax(0) * m
        if torch.equal(new, lab):
            break
        lab = new
    ids, counts = torch.unique(lab[m], return_counts=True)
    order = ids[torch.argsort(counts, descending=True, stable=True)]
    remap = torch.zeros(big, dtype=torch.int64)
    remap[order.long()] = torch.arange(1, len(order) + 1)
    return remap[lab.long()].numpy(), int(len(order))


def _hue_saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) -> hue in degrees [0, 360), saturation and value in [0, 1], each (H, W)."""
    a = rgb.astype(np.float32) / 255
    mx, mn = a.max(-1), a.min(-1)
    d = mx - mn
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    safe = np.maximum(d, 1e-6)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return np.where(d > 1e-6, hue * 60, 0.0), d / np.maximum(mx, 1e-6), mx


def colour_parts(component: np.ndarray, hue: np.ndarray, coloured: np.ndarray) -> list[np.ndarray]:
    """Splits one foreground component into parts of different hue: touching objects of different colours.

    Hue survives a pattern's darker shade or lighter tint of the same colour, so one object keeps one hue. The hues
    of the component's ``coloured`` pixels are histogrammed (10-degree bins, circular); peaks holding at least
    ``SPLIT_SHARE`` of them and ``SPLIT_HUE`` degrees apart are the parts' colours. Coloured pixels join the nearest
    peak; the rest (outlines, grey) take the label of the nearest coloured pixel. Each part's connected pieces of at
    least ``MIN_OBJECT`` px are returned; a component with one hue comes back whole.

    Args:
        component: bool (H, W), one connected component.
        hue: (H, W) degrees; coloured: bool (H, W), pixels whose hue is reliable (saturated and not dark).
    """
    good = component & coloured
    if good.sum() < 2 * MIN_OBJECT:
        return [component]
    hist = np.bincount((hue[good] // 10).astype(int) % 36, minlength=36).astype(np.float64)
    mass = hist + np.roll(hist, 1) + np.roll(hist, -1)  # a peak's share: its bin and both neighbours
    smooth = hist + 0.5 * (np.roll(hist, 1) + np.roll(hist, -1))
    peaks = [k for k in range(36) if smooth[k] >= smooth[k - 1] and smooth[k] > smooth[(k + 1) % 36]
             and mass[k] >= SPLIT_SHARE * good.sum()]  # fmt: skip
    centres: list[float] = []
    for k in sorted(peaks, key=lambda k: -smooth[k]):
        c = k * 10 + 5.0
        if all(min(abs(c - o), 360 - abs(c - o)) >= SPLIT_HUE for o in centres):
            centres.append(c)
    if len(centres) < 2:
        return [component]
    dist = np.abs(hue[..., None] - np.asarray(centres, np.float32))
    label = np.where(good, np.minimum(dist, 360 - dist).argmin(-1) + 1, 0)
    while (component & (label == 0)).any():  # the rest: grow the coloured labels into them
        p = np.pad(label, 1)
        grown = np.stack([p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]).max(0)
        new = np.where(component & (label == 0), grown, label)
        if np.array_equal(new, label):
            break
        label = new
    parts = []
    for j in range(1, len(centres) + 1):
        pieces, n = label_components(component & (label == j))
        parts += [pieces == q for q in range(1, n + 1) if (pieces == q).sum() >= MIN_OBJECT]
    return parts or [component]


def _as_photo(image):
    """A PIL image as it is; a path or file bytes read by :func:`duetgen.sketch_input.read_photo` (anything else is
    a one-line error naming what it accepts)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    from .sketch_input import read_photo

    return read_photo(image)


def scene_foreground(image, work: int = SCENE_WORK) -> np.ndarray:
    """The objects of a photo on a smooth background, however many and however faint: bool (work, work).

    One threshold on the distance from the background (:func:`duetgen.transfer.background_distance`) cannot serve a
    scene of several objects: Otsu's threshold falls between the background and the *most* contrasting object and
    drops a pale one beside it. So thresholds are found object by object:

    1. a low threshold, ``SCENE_NOISE x`` the background's own variation (the 90th percentile of the distance in
       the edge strips; at least ``SCENE_FLOOR``), marks everything that may be an object (a flat pixel-art backdrop
       has no variation, so faint pattern tints count; opening drops specks such as stars where the backdrop is
       noisy);
    2. each connected part keeps the pixels above Otsu's threshold of its own neighbourhood (the part and a
       ``SCENE_RING`` px ring around it), which cuts off a glow or a contact shadow around the object;
    3. what a part had beyond ``SCENE_RING`` px of the kept pixels (a fainter object touching it) is examined the
       same way, ``SCENE_PASSES`` times at most.

    A flat backdrop (variation at most ``SCENE_FLAT``: pixel art) casts no glow or shadow, so there everything
    above the low threshold is object, pale pattern tints included, shrunk by the 1 px the pre-blur added. Closing
    bridges pattern gaps and holes are filled. On the 300 scenes of ``recipes/scene_retrieval.py``, the share of
    objects found with IoU >= 0.7 against their true masks rises from 0.817 (one Otsu threshold) to 0.928 (plain
    0.948, painting 0.934, pixel art 0.858, night 0.969).
    """
    from .transfer import _close, _morph, _open, _otsu, background_distance, edge_strip, fill_holes

    image = _as_photo(image)
    dist = background_distance(image, work)
    strip = edge_strip(work)
    noise = float(np.percentile(np.concatenate([dist[:, :strip].ravel(), dist[:, -strip:].ravel()]), 90))
    low_threshold = max(SCENE_FLOOR, SCENE_NOISE * noise)
    low = dist > low_threshold
    if noise <= SCENE_FLAT:  # a flat backdrop (pixel art) casts no glow or shadow: whatever differs is an object
        return _morph(fill_holes(_close(low, 5)), SCENE_FLAT_ERODE, "erode")
    low = _open(low, 3)  # a noisy backdrop: drop specks
    ring = 2 * SCENE_RING + 1
    kept = np.zeros_like(low)
    todo = [low]
    for _ in range(SCENE_PASSES):
        rest = []
        for region in todo:
            labels, n = label_components(region)
            for i in range(1, n + 1):
                part = labels == i
                if part.sum() < MIN_OBJECT:
                    break  # sorted by size
                threshold = max(low_threshold, _otsu(dist[_morph(part, ring, "dilate")]))
                core = part & (dist > threshold)
                kept |= core
                beyond = part & ~_morph(core, ring, "dilate")
                if beyond.sum() >= MIN_OBJECT:
                    rest.append(beyond)
        if not rest:
            break
        todo = rest
    return fill_holes(_close(kept, 5))


def scene_objects(image, work: int = SCENE_WORK, split_colours: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The separate objects of a photo on a smooth background.

    The foreground is :func:`scene_foreground` at ``work`` px; its connected components of at least
    ``MIN_OBJECT`` px are the objects, each split by :func:`colour_parts` where it holds touching objects of
    different hues (``split_colours``); the ``MAX_OBJECTS`` largest are kept.

    Returns:
        ``(boxes, masks)``: float (M, 4) boxes (x0, y0, x1, y1) as fractions of the image side, and bool
        (M, work, work) silhouettes, largest first; M may be 0.
    """
    from PIL import Image

    image = _as_photo(image)
    fg = scene_foreground(image, work=work)
    labels, n = label_components(fg)
    if split_colours:
        hue, sat, val = _hue_saturation_value(np.asarray(image.convert("RGB").resize((work, work), Image.BILINEAR)))
        coloured = (sat > SPLIT_SATURATION) & (val > SPLIT_VALUE)
    masks = []
    for i in range(1, n + 1):
        m = labels == i
        if m.sum() < MIN_OBJECT:
            break  # sorted by size
        masks += colour_parts(m, hue, coloured) if split_colours else [m]
    masks = sorted(masks, key=lambda m: -int(m.sum()))[:MAX_OBJECTS]
    if not masks:
        return np.zeros((0, 4), np.float32), np.zeros((0, work, work), bool)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append((xs.min() / work, ys.min() / work, (xs.max() + 1) / work, (ys.max() + 1) / work))
    return np.asarray(boxes, np.float32), np.stack(masks)


def object_crops(
    image, boxes: np.ndarray, size: int, margin: float = 0.8, masks: np.ndarray | None = None
) -> torch.Tensor:
    """Square crops around each box (the box's longer side is ``margin`` of the crop), clipped to the image and
    resized to ``size``: float (M, 3, size, size) in [0, 1].

    With ``masks`` (bool (M, h, w), any side: :func:`scene_objects`' silhouettes), each crop shows only its own
    object: every pixel outside its silhouette takes the backdrop's colour (the median of the image's border), so a
    neighbour's colour does not leak into what the crop is read as (scene mAP with a colour word 0.791 -> 0.801)."""
    x = torch.from_numpy(np.asarray(_as_photo(image).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    h, w = x.shape[1:]
    if masks is not None:
        if np.ndim(masks) != 3 or len(masks) != len(boxes):
            raise DuetgenInputError(
                f"masks must be (M, h, w), one per box: {len(boxes)} boxes, masks {np.shape(masks)}"
            )
        border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)  # (3, 2w + 2h)
        backdrop = border.median(dim=1).values[:, None, None]
        full = torch.nn.functional.interpolate(torch.as_tensor(np.asarray(masks))[:, None].float(), size=(h, w))
    crops = []
    for j, (x0, y0, x1, y1) in enumerate(boxes):
        cx, cy = (x0 + x1) / 2 * w, (y0 + y1) / 2 * h
        half = max((x1 - x0) * w, (y1 - y0) * h) / margin / 2
        left, top = int(max(0, cx - half)), int(max(0, cy - half))
        right, bottom = int(min(w, np.ceil(cx + half))), int(min(h, np.ceil(cy + half)))
        crop = x[:, top:bottom, left:right]
        if masks is not None:
            crop = torch.where(full[j, :, top:bottom, left:right] > 0.5, crop, backdrop)
        crops.append(
            torch.nn.functional.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True)[0]
        )
    return torch.stack(crops) if crops else torch.zeros(0, 3, size, size)


class SceneVerifier:
    """Scene retrieval verified object by object: each of a query's top ``depth`` scenes is re-scored by its best
    object. The objects come from :func:`scene_objects`; each is scored by

        weight * shape agreement(sketch, object) + the words' term

    Shape agreement is :func:`shape_similarity` (the correlation of the sketch's region and the object's silhouette
    at the best of 72 rotations, each in its own position- and size-free frame): the silhouettes find the shape at
    any pose, which the instance-level embedding of a small crop barely tells apart. The words' term depends on
    what the query's words say (the ``words`` of :meth:`rerank`):

    * world attribute words ("red", "blue with dots"; :func:`duetgen.transfer.parse_attribute_words` reads them
      all): for each attribute they name, ``WORDS_WEIGHT x min(0, log(max(P, WORDS_FLOOR) / WORDS_FREE))`` with
      P = P(that attribute | object),
      read zero-shot from the object crop's embedding against the 128 attribute phrases (softmax at
      ``READ_TEMPERATURE``; the probability sums over every phrase that agrees with the attribute). An object the
      words more likely describe than not pays nothing, so among objects of the asked colour shape alone ranks; how
      sure the reading is (P 0.6 or 0.99) says nothing about the shape, and adding all of ``log P`` let that noise
      outrank the shape. Each attribute pays apart: with "red with stripes", a red dotted star pays for its dots
      only, and a brown striped blob for its colour, which the reading is far surer of than of a pattern;
    * a sketch alone (``""``): none;
    * other words, or words not given (``None``): the cosine of the query and the object crop's embedding.

    On 300 world scenes (``recipes/scene_retrieval.py``, objects from one Otsu threshold and binary IoU shapes) the
    attribute reading gave mAP 0.70 where the crop cosine gave 0.61, and shape alone 0.75 for a sketch where the
    cosine added to it gave 0.64. With :func:`scene_foreground`, the soft shape frames at 72 rotations and crops
    that show only their object: 0.801 with a colour word, 0.827 for a sketch alone; with frames that undo half the
    elongation and the words paid for only below ``WORDS_FREE``: 0.823 and 0.843 (seeds 1 and 2: 0.826 / 0.854,
    0.844 / 0.861).
    Results carry the object's box and its shape agreement (``iou``). Objects must stand out from a smooth
    background (product shots, the world's scenes); touching objects are told apart only by their hue
    (:func:`colour_parts`). A scene where none are found keeps its region score.

    Args:
        encoder: the gallery's encoder (it embeds the object crops).
        weight: how much one unit of shape agreement adds to the score (>= 0).
        depth: scenes re-scored per query.
        cache_size: scenes whose objects are kept (by path).
    """

    def __init__(self, encoder, weight: float = SCENE_WEIGHT, depth: int = SCENE_DEPTH, cache_size: int = 4096):
        _check_weight_and_depth(weight, depth)
        if not callable(getattr(encoder, "encode_image", None)):
            raise DuetgenInputError(
                f"SceneVerifier needs the gallery's encoder (duetgen.load_encoder(...)), got {type(encoder).__name__}"
            )
        self.encoder = encoder
        self.weight, self.depth, self.cache_size = float(weight), int(depth), int(cache_size)
        self._cache: OrderedDict[str, tuple | None] = OrderedDict()
        self._reads: dict[str, torch.Tensor] = {}  # path -> (M, 128) attribute log-probabilities of its objects

    def objects(self, path: str) -> tuple[np.ndarray, torch.Tensor, torch.Tensor] | None:
        """``(boxes (M, 4) int (x0, y0, x1, y1) in pixels of the file, upright frames (M, F, F), crop embeddings
        (M, D))`` of one scene, or None when the file cannot be read."""
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        from PIL import Image

        try:
            with Image.open(path) as im:
                w, h = im.size  # of the file, before a JPEG draft shrinks the decode
                im.draft("RGB", (512, 512))
                image = im.convert("RGB")
            boxes, masks = scene_objects(image)
            frames = shape_frames(masks)[:, 0]
            with torch.inference_mode():
                crops = object_crops(image, boxes, self.encoder.image_size, CROP_MARGIN, masks=masks)
                embeds = self.encoder.encode_image(crops).float() if len(crops) else torch.zeros(0, 1)
            scale = np.array([w, h, w, h], np.float64)
            pixels = np.concatenate([np.floor(boxes[:, :2] * scale[:2]), np.ceil(boxes[:, 2:] * scale[2:])], 1)
            found = (pixels.astype(int), frames, embeds)
        except Exception as err:  # noqa: BLE001 - an unreadable scene is not verified; the search goes on
            logger.warning("scene verification skipped '%s': %s: %s", path, type(err).__name__, err)
            found = None
        self._cache[path] = found
        if len(self._cache) > self.cache_size:
            self._reads.pop(self._cache.popitem(last=False)[0], None)
        return found

    def rerank(self, hits: list, query: torch.Tensor, region: np.ndarray, k: int, words: str | None = None) -> list:
        """The best ``k`` of ``hits`` (scene-retrieval results, best first) after re-scoring each by its best object
        for ``query`` (D,), the sketch's ``region`` (bool (S, S)) and the query's ``words`` (``""`` for a sketch
        alone, ``None`` when unknown: see the class). An empty region (a blank sketch) changes nothing."""
        if words is not None and not isinstance(words, str):
            raise DuetgenInputError(f"words must be a str ('' for a sketch alone) or None, got {type(words).__name__}")
        if not region.any():
            return hits[:k]
        qframes = shape_frames(region[None], ANGLES)[0]
        q = torch.as_tensor(query, dtype=torch.float32)
        agree = None  # (A, 128) bool: per attribute the words name, the phrases that agree with it
        alone = words is not None and not words.strip()  # a sketch alone
        if not alone and words is not None:
            from .transfer import parse_attribute_words

            named, unknown = parse_attribute_words(words)
            if named and not unknown:
                agree = torch.tensor([[getattr(a, key) == v for a in ALL_ATTRIBUTES] for key, v in named.items()])
                text = self._attribute_text()  # (128, D), once per query
        out = []
        for h in hits:
            found = self.objects(h.path)
            if found is None or not len(found[0]):
                out.append(h)
                continue
            boxes, frames, embeds = found
            shape = shape_similarity(qframes, frames)
            if agree is not None:
                log_probs = self._reads.get(h.path)
                if log_probs is None:  # read once per scene, whatever the query's words
                    log_probs = self._reads[h.path] = torch.log_softmax(embeds @ text.T / READ_TEMPERATURE, dim=1)
                ratio = torch.stack([log_probs[:, a].logsumexp(1) for a in agree]) - math.log(WORDS_FREE)  # (A, M)
                cost = ratio.clamp(math.log(WORDS_FLOOR / WORDS_FREE), 0)
                scores = self.weight * shape + WORDS_WEIGHT * cost.sum(0)
            elif alone:
                scores = self.weight * shape
            else:
                scores = embeds @ q + self.weight * shape
            best = int(scores.argmax())
            box = tuple(int(v) for v in boxes[best])
            out.append(replace(h, score=float(scores[best]), box=box, region=None, iou=float(shape[best])))
        out.sort(key=lambda h: -h.score)
        return out[:k]

    def _attribute_text(self) -> torch.Tensor:
        """(128, D) float text embeddings of the world attribute phrases (cached per encoder)."""
        from .transfer import _attribute_text_embeds

        with torch.inference_mode():
            return _attribute_text_embeds(self.encoder).float()
