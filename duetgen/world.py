"""The procedural world: duetgen's embedded training and benchmark data.

No dataset can be downloaded where duetgen is built, so the embedded default model learns from a world this module
generates, deterministically from a seed (see DESIGN.md, "The procedural world"):

- An :class:`Instance` is one object of one of :data:`SHAPES` with the detail only a sketch conveys: position, scale,
  rotation and two shape knobs (number of star points, arrow head length, ...).
- :class:`Attributes` are what only words convey: fill colour (:data:`COLOURS`), pattern (:data:`PATTERNS`) and
  domain / style (:data:`DOMAINS`).
- :func:`render_photo` draws the instance with its attributes; :func:`render_sketch` draws a wobbly freehand black
  outline of the same geometry (jitter, gaps, overshoot, varying width, sometimes a double stroke).
- :func:`caption` names everything the embeddings must represent (shape, size, position, orientation, colour,
  pattern, domain), and can drop parts at random; :func:`words` is what a user would type about the attributes.
- :class:`Scene` places 2-4 objects on one canvas; :class:`WorldDataset` serves (photo, sketch, caption) items for
  training, each fully determined by ``(seed, index)``; :func:`write_world` writes a folder with a manifest.

Conventions: canvas coordinates are in [0, 1] with y pointing down; ``rotation`` is in radians, positive is
clockwise on screen (the top of the object leans right). All randomness comes from ``np.random.Generator`` objects
seeded from explicit integers, never from global state.

Speed (CPU time on one core of the 2-core build machine, ``OMP_NUM_THREADS=1``, 300 random items): about 1.4 ms per
(photo, sketch) pair at 64x64 (photo ~0.7 ms: pixel art 0.2, plain/night 0.7, painting 1.1; sketch ~0.8 ms), about
1.9 ms per ``WorldDataset`` item including tensors and caption, and about 3.4 ms per pair at 128x128. Wall-clock time
doubles when the machine's cores are shared.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from duetgen.errors import DuetgenInputError

logger = logging.getLogger(__name__)

# -----------------------------------------------------------------------------
# Shapes. Each function takes two knobs a, b in [0, 1] and returns a closed polygon (N, 2) drawn upright in
# "y up" maths coordinates; _normalise() flips it to y down, centres its bounding box on the origin and scales its
# longer side to 1. Curved outlines are densely sampled, corners are real polygon vertices (the sketcher splits
# strokes there).

_Poly = np.ndarray  # (N, 2) float64


def _arc(cx: float, cy: float, r: float, t0: float, t1: float, n: int) -> list[tuple[float, float]]:
    """Points on a circle of radius r from angle t0 to t1 (radians, inclusive)."""
    return [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in np.linspace(t0, t1, n)]


def _star(a: float, b: float) -> list[tuple[float, float]]:
    n = 5 + min(int(a * 3), 2)  # 5, 6 or 7 points
    inner = 0.38 + 0.18 * b
    pts = []
    for k in range(2 * n):
        r = 1.0 if k % 2 == 0 else inner
        t = math.pi / 2 + k * math.pi / n
        pts.append((r * math.cos(t), r * math.sin(t)))
    return pts


def _heart(a: float, b: float) -> list[tuple[float, float]]:
    sx, sy = 0.85 + 0.3 * a, 0.9 + 0.25 * b
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return list(zip((sx * x).tolist(), (sy * y).tolist(), strict=True))


def _arrow(a: float, b: float) -> list[tuple[float, float]]:
    w = 0.16 + 0.14 * a  # half shaft width
    neck = 0.1 + 0.35 * b  # where the head starts (head length 1 - neck)
    hw = 0.7
    return [(-w, -1.0), (w, -1.0), (w, neck), (hw, neck), (0.0, 1.0), (-hw, neck), (-w, neck)]


def _crescent(a: float, b: float) -> list[tuple[float, float]]:
    # Outer unit circle minus an inner circle of radius r centred d above: a bowl with its tips up.
    d, r = 0.3 + 0.25 * a, 0.8 + 0.15 * b
    s = (1 + d * d - r * r) / (2 * d)
    t1 = math.asin(s)  # right tip on the outer circle
    t2 = math.pi - t1  # left tip
    outer = _arc(0, 0, 1, t1, t2 - 2 * math.pi, 48)  # clockwise through the bottom
    p1 = math.atan2(math.sin(t2) - d, math.cos(t2))
    p2 = math.atan2(math.sin(t1) - d, math.cos(t1))
    if p2 < p1:
        p2 += 2 * math.pi
    inner = _arc(0, d, r, p1, p2, 40)[1:-1]  # counter-clockwise through the bottom, back to the right tip
    return outer + inner


def _triangle(a: float, b: float) -> list[tuple[float, float]]:
    h = 1.3 + 0.6 * a
    apex = (b - 0.5) * 0.5
    return [(-1.0, 0.0), (1.0, 0.0), (apex, h)]


def _cross(a: float, b: float) -> list[tuple[float, float]]:
    # A latin cross: the long arm points down, so "upside down" is visible.
    w = 0.16 + 0.08 * a  # half bar width
    y = 0.35 + 0.25 * b  # crossbar centre, measured down from the top (top at 1, bottom at -1.2)
    top, bottom, arm = 1.0, -1.2, 0.6
    c = top - y
    return [
        (-w, top), (w, top), (w, c + w), (arm, c + w), (arm, c - w), (w, c - w),
        (w, bottom), (-w, bottom), (-w, c - w), (-arm, c - w), (-arm, c + w), (-w, c + w),
    ]  # fmt: skip


def _bolt(a: float, b: float) -> list[tuple[float, float]]:
    z = 0.15 * (a - 0.5)
    sx = 0.8 + 0.4 * b
    pts = [(-0.15, 1.0), (0.55, 1.0), (0.12 + z, 0.22), (0.55, 0.22), (-0.4, -1.1), (-0.02 - z, -0.12),
           (-0.5, -0.12)]  # fmt: skip
    return [(sx * x, y) for x, y in pts]


def _kite(a: float, b: float) -> list[tuple[float, float]]:
    h = 0.25 + 0.25 * a  # crossbar height above the centre: the short end is the top
    w = 0.5 + 0.3 * b
    return [(0.0, 1.0), (w, h), (0.0, -1.2), (-w, h)]


def _house(a: float, b: float) -> list[tuple[float, float]]:
    eave = 0.0 + 0.25 * a  # body top
    over = 0.1 + 0.15 * b  # roof overhang
    return [(-0.7, -1.0), (0.7, -1.0), (0.7, eave), (0.7 + over, eave), (0.45, 0.72), (0.45, 0.95), (0.25, 0.95),
            (0.25, 0.85), (0.0, 1.0), (-0.7 - over, eave), (-0.7, eave)]  # fmt: skip


def _drop(a: float, b: float) -> list[tuple[float, float]]:
    m = 1.0 + 1.5 * a  # tip sharpness
    sx = 0.7 + 0.35 * b
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    x = sx * np.sin(t) * np.abs(np.sin(t / 2)) ** m
    y = np.cos(t)
    return list(zip(x.tolist(), y.tolist(), strict=True))


def _tee(a: float, b: float) -> list[tuple[float, float]]:
    bar = 0.35 + 0.25 * a  # bar thickness
    w = 0.18 + 0.12 * b  # half stem width
    top = 1.0
    return [(-1.0, top), (1.0, top), (1.0, top - bar), (w, top - bar), (w, -1.0), (-w, -1.0), (-w, top - bar),
            (-1.0, top - bar)]  # fmt: skip


def _bell(a: float, b: float) -> list[tuple[float, float]]:
    flare = 0.85 + 0.25 * a
    sy = 0.85 + 0.3 * b
    right = [(0.0, 1.0), (0.25, 0.98), (0.42, 0.88), (0.5, 0.65), (0.53, 0.3), (0.58, 0.0), (0.7, -0.3),
             (flare, -0.55), (flare, -0.68)]  # fmt: skip
    clapper = _arc(0.0, -0.68, 0.2, 0.0, -math.pi, 12)
    left = [(-x, y) for x, y in reversed(right[1:])]
    pts = right + clapper + left
    return [(x, sy * y) for x, y in pts]


_SHAPE_FNS: dict[str, Callable[[float, float], list[tuple[float, float]]]] = {
    "star": _star,
    "heart": _heart,
    "arrow": _arrow,
    "crescent": _crescent,
    "triangle": _triangle,
    "cross": _cross,
    "bolt": _bolt,
    "kite": _kite,
    "house": _house,
    "drop": _drop,
    "tee": _tee,
    "bell": _bell,
}

SHAPES: tuple[str, ...] = tuple(_SHAPE_FNS)
"""Shape category ids, in class-index order."""

SHAPE_NOUNS: dict[str, str] = {s: s for s in SHAPES} | {"bolt": "lightning bolt", "tee": "T shape"}
"""The noun a caption uses for each shape."""


@lru_cache(maxsize=4096)
def _unit_outline(shape: str, a: float, b: float) -> _Poly:
    """Upright polygon, y down, bounding box centred on 0, longer side 1. Cached: knobs repeat in variants."""
    p = np.asarray(_SHAPE_FNS[shape](a, b), dtype=np.float64)
    p[:, 1] = -p[:, 1]
    lo, hi = p.min(0), p.max(0)
    p = (p - (lo + hi) / 2) / (hi - lo).max()
    p.setflags(write=False)
    return p


def _place(unit: _Poly, cx: float, cy: float, scale: float, rotation: float) -> _Poly:
    """Unit outline -> canvas coordinates: rotate clockwise by `rotation`, scale, move to (cx, cy)."""
    c, s = math.cos(rotation), math.sin(rotation)
    rot = np.array([[c, -s], [s, c]])
    return unit @ rot.T * scale + (cx, cy)


# -----------------------------------------------------------------------------
# Instances: the geometry, which only a sketch conveys.

SCALE_RANGE = (0.3, 0.7)  # object size (longer side of the upright bounding box) as a fraction of the canvas
MARGIN = 0.04  # the whole object stays this far inside the canvas


@dataclass(frozen=True)
class Instance:
    """One object's geometry. Canvas coordinates in [0, 1], y down."""

    shape: str  # one of SHAPES
    cx: float  # centre of the upright bounding box, as a fraction of the canvas width
    cy: float  # ... and of its height
    scale: float  # longer side of the upright bounding box, as a fraction of the canvas
    rotation: float  # radians in [0, 2 pi), clockwise on screen
    params: tuple[float, float]  # two shape knobs in [0, 1] (e.g. star: number of points, inner radius)

    def outline(self) -> np.ndarray:
        """The polygon (N, 2) in canvas coordinates [0, 1]."""
        return _place(_unit_outline(self.shape, *self.params), self.cx, self.cy, self.scale, self.rotation)

    def to_dict(self) -> dict:
        """JSON-able plain dict (params as a list)."""
        d = asdict(self)
        d["params"] = list(self.params)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Instance:
        """Inverse of :meth:`to_dict`."""
        return cls(d["shape"], float(d["cx"]), float(d["cy"]), float(d["scale"]), float(d["rotation"]),
                   tuple(float(p) for p in d["params"]))  # fmt: skip


def _check_shape(shape: str) -> None:
    if shape not in _SHAPE_FNS:
        raise DuetgenInputError(f"shape={shape!r} is not a world shape; valid: {', '.join(SHAPES)}")


def sample_instance(
    rng: np.random.Generator,
    shape: str | None = None,
    scale_range: tuple[float, float] = SCALE_RANGE,
) -> Instance:
    """Sample one object's geometry, whole inside the canvas.

    Args:
        rng: the random generator (the only source of randomness).
        shape: force this shape; None samples one of :data:`SHAPES` uniformly.
        scale_range: range of ``scale`` (fraction of the canvas); shrunk if a rotated object would not fit.

    Returns:
        An :class:`Instance`.
    """
    if shape is None:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
    _check_shape(shape)
    params = (float(rng.random()), float(rng.random()))
    scale = float(rng.uniform(*scale_range))
    rotation = float(rng.uniform(0, 2 * math.pi))
    rotated = _place(_unit_outline(shape, *params), 0.0, 0.0, 1.0, rotation)
    lo, hi = rotated.min(0), rotated.max(0)
    scale = min(scale, (1 - 2 * MARGIN) / float((hi - lo).max()))
    # The centre may go wherever the rotated box stays inside [MARGIN, 1 - MARGIN].
    cmin = MARGIN - lo * scale
    cmax = 1 - MARGIN - hi * scale
    cx, cy = (float(rng.uniform(cmin[i], max(cmin[i], cmax[i]))) for i in range(2))
    return Instance(shape, cx, cy, scale, rotation, params)


def pose_variants(instance: Instance, k: int, rng: np.random.Generator) -> list[Instance]:
    """k other instances of the same shape (new position, scale, rotation and knobs): hard negatives that share
    the shape and, rendered with the same attributes, differ only in what a sketch shows."""
    return [sample_instance(rng, instance.shape) for _ in range(k)]


# -----------------------------------------------------------------------------
# Attributes: what only words convey.

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 32, 38),
    "orange": (250, 135, 10),
    "yellow": (250, 218, 35),
    "green": (38, 160, 60),
    "blue": (30, 85, 215),
    "purple": (125, 45, 185),
    "pink": (250, 125, 195),
    "brown": (120, 70, 30),
}
"""The named palette, chosen so the eight stay distinguishable in every domain (night included)."""

PATTERNS: tuple[str, ...] = ("solid", "stripes", "dots", "checks")
DOMAINS: tuple[str, ...] = ("plain", "painting", "pixel art", "night")

# The pattern's second tone: a near-white tint on dark colours, a darker shade of the colour on light ones, so the
# fill colour stays dominant and the pattern stays visible.
_TONE_WHITE = {"red", "green", "blue", "purple", "brown"}


@dataclass(frozen=True)
class Attributes:
    """What a sketch cannot show."""

    colour: str  # key of COLOURS
    pattern: str  # one of PATTERNS
    domain: str  # one of DOMAINS

    def to_dict(self) -> dict:
        """JSON-able plain dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Attributes:
        """Inverse of :meth:`to_dict`."""
        return cls(d["colour"], d["pattern"], d["domain"])

    def __post_init__(self) -> None:
        for name, value, valid in (("colour", self.colour, tuple(COLOURS)), ("pattern", self.pattern, PATTERNS),
                                   ("domain", self.domain, DOMAINS)):  # fmt: skip
            if value not in valid:
                raise DuetgenInputError(f"{name}={value!r} is not valid; choose one of {', '.join(valid)}")


ALL_ATTRIBUTES: tuple[Attributes, ...] = tuple(Attributes(c, p, d) for c in COLOURS for p in PATTERNS for d in DOMAINS)
"""Every attribute combination (8 x 4 x 4 = 128), in a fixed order."""


def sample_attributes(rng: np.random.Generator, domain: str | None = None) -> Attributes:
    """Sample colour, pattern and domain uniformly (the domain may be forced)."""
    colour = tuple(COLOURS)[int(rng.integers(len(COLOURS)))]
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    dom = DOMAINS[int(rng.integers(len(DOMAINS)))] if domain is None else domain
    return Attributes(colour, pattern, dom)


def attribute_variants(k: int, rng: np.random.Generator, exclude: Attributes | None = None) -> list[Attributes]:
    """k distinct attribute combinations, none equal to `exclude`: hard negatives for one instance (same geometry,
    different words)."""
    pool = [a for a in ALL_ATTRIBUTES if a != exclude]
    if not 0 <= k <= len(pool):
        raise DuetgenInputError(f"k={k} attribute variants requested; at most {len(pool)} exist")
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


# -----------------------------------------------------------------------------
# Language: captions name everything the embeddings must represent.

SIZE_WORDS = ("small", "medium", "large")
POSITION_WORDS = (
    "at the top left", "at the top", "at the top right",
    "on the left", "in the centre", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
)  # fmt: skip
# Where the object's top points, in 8 bins of 45 degrees, clockwise from upright.
ORIENTATION_WORDS = (
    "upright", "tilted right", "on its right side", "upside down, leaning right",
    "upside down", "upside down, leaning left", "on its left side", "tilted left",
)  # fmt: skip
_DOMAIN_PREFIX = {"plain": "a photo of", "painting": "a painting of", "pixel art": "pixel art of",
                  "night": "a night photo of"}  # fmt: skip
_DOMAIN_WORDS = {"plain": "in a photo", "painting": "in a painting", "pixel art": "in pixel art", "night": "at night"}
_PATTERN_WORDS = {"stripes": "with stripes", "dots": "with dots", "checks": "with checks"}


def size_word(instance: Instance) -> str:
    """small (< 0.4), medium (< 0.55) or large."""
    return SIZE_WORDS[0 if instance.scale < 0.4 else 1 if instance.scale < 0.55 else 2]


def position_word(instance: Instance) -> str:
    """The cell of a 3x3 grid holding the object's centre, e.g. 'at the top left'."""
    col = min(int(instance.cx * 3), 2)
    row = min(int(instance.cy * 3), 2)
    return POSITION_WORDS[3 * row + col]


def symmetry(instance: Instance) -> int:
    """Order of the shape's rotational symmetry (stars: their number of points; every other shape: 1)."""
    return 5 + min(int(instance.params[0] * 3), 2) if instance.shape == "star" else 1


def orientation_word(instance: Instance) -> str:
    """Where the object's top points, one of ORIENTATION_WORDS.

    Rotation is first reduced modulo the shape's symmetry (a 5-point star turned by 72 degrees looks upright), so
    the word always describes what is visible.
    """
    period = 2 * math.pi / symmetry(instance)
    r = (instance.rotation + period / 2) % period - period / 2  # in [-period/2, period/2)
    return ORIENTATION_WORDS[int(round(math.degrees(r) / 45)) % 8]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def geometry_words(instance: Instance) -> str:
    """The pose part of a caption, e.g. 'large, at the top left, tilted right'."""
    return f"{size_word(instance)}, {position_word(instance)}, {orientation_word(instance)}"


def words(attrs: Attributes) -> str:
    """What a user would type about the attributes a sketch cannot show.

    Always names all three so the target is unambiguous: '<colour> with <pattern> <domain>', with 'solid <colour>'
    for the solid pattern. Examples: 'red with stripes in pixel art', 'solid blue in a photo', 'green with dots at
    night', 'pink with checks in a painting'.
    """
    return f"{_colour_pattern_words(attrs)} {_DOMAIN_WORDS[attrs.domain]}"


def _colour_pattern_words(attrs: Attributes) -> str:
    """'red with stripes', 'solid blue'."""
    return f"solid {attrs.colour}" if attrs.pattern == "solid" else f"{attrs.colour} {_PATTERN_WORDS[attrs.pattern]}"


def change_words(source: Attributes, target: Attributes) -> str:
    """What a user would type to turn ``source`` into ``target``: only the attributes that differ.

    The phrases of domain attribute transfer: 'in blue', 'with dots', 'solid', 'at night', joined when several
    change ('in blue at night'; colour and pattern together read as in :func:`words`: 'blue with dots'). Empty when
    nothing changes.
    """
    parts = []
    colour, pattern = source.colour != target.colour, source.pattern != target.pattern
    if colour and pattern:
        parts.append(_colour_pattern_words(target))
    elif colour:
        parts.append(f"in {target.colour}")
    elif pattern:
        parts.append("solid" if target.pattern == "solid" else _PATTERN_WORDS[target.pattern])
    if source.domain != target.domain:
        parts.append(_DOMAIN_WORDS[target.domain])
    return " ".join(parts)


def caption(
    instance: Instance, attrs: Attributes, rng: np.random.Generator | None = None, drop_prob: float = 0.0
) -> str:
    """A caption naming shape, size, colour, pattern, position, orientation and domain.

    Example: 'a photo of a large red star with stripes at the top left, tilted right' ('solid' comes before the
    colour: 'a painting of a small solid blue heart in the centre, upright').

    Args:
        instance: the geometry.
        attrs: the attributes.
        rng: generator for the drops; required when ``drop_prob > 0``.
        drop_prob: each part except the shape noun (domain, size, colour, pattern, position, orientation) is left
            out independently with this probability, so a CLIP trained on the captions learns that a missing word
            means "any".

    Returns:
        The caption string.
    """
    if not 0.0 <= drop_prob <= 1.0:
        raise DuetgenInputError(f"drop_prob={drop_prob} must be in [0, 1]")
    if drop_prob > 0 and rng is None:
        raise DuetgenInputError("caption(drop_prob > 0) needs rng, a numpy Generator, to choose what to drop")

    def keep() -> bool:
        return drop_prob == 0 or rng.random() >= drop_prob  # type: ignore[union-attr]

    domain, size, colour, pattern, position, orient = (keep() for _ in range(6))
    adjectives = []
    if size:
        adjectives.append(size_word(instance))
    if pattern and attrs.pattern == "solid":
        adjectives.append("solid")
    if colour:
        adjectives.append(attrs.colour)
    noun = " ".join(adjectives + [SHAPE_NOUNS[instance.shape]])
    text = f"{_article(noun)} {noun}"
    if domain:
        text = f"{_DOMAIN_PREFIX[attrs.domain]} {text}"
    if pattern and attrs.pattern != "solid":
        text += f" {_PATTERN_WORDS[attrs.pattern]}"
    if position:
        text += f" {position_word(instance)}"
    if orient:
        text += f", {orientation_word(instance)}"
    return text


# -----------------------------------------------------------------------------
# Photo rendering. Everything is drawn on float32 (H, W, 3) arrays in 0..255; object masks are polygons drawn at
# 4x with PIL and reduced (antialiasing); patterns are computed analytically in the object's own frame.

SUPERSAMPLE = 4
PIXEL_GRID = 24  # pixel art is drawn on a grid of this many cells per canvas side (per 64 px for scenes)
# Patterns lie in the object's own frame (centred on it, turned with it, repeating at a period that grows with its
# scale), or with ``pattern_frame="canvas"`` in the canvas frame: anchored at the canvas's top-left corner, never
# turned, at this fixed period (canvas units; the object frame's period at scale 0.5). The generator trains on the
# canvas frame: there a pattern's phase is a function of the pixel's position, which it is given, instead of the
# object's centre and rotation, which it would have to read off a freehand outline (see duetgen.generator).
CANVAS_PATTERN_PERIOD = 0.095
PATTERN_FRAMES = ("object", "canvas")
_PHOTO_STREAM, _SKETCH_STREAM, _SCENE_STREAM = 0x50484F, 0x534B54, 0x53434E  # keep photo/sketch noise independent


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (u, v) in canvas units, each (size, size) float32."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _mask(poly: np.ndarray, size: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Coverage of a canvas-unit polygon on a size x size grid, float32 in [0, 1], antialiased by supersampling."""
    s = size * supersample
    img = Image.new("L", (s, s), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in (poly * s).tolist()], fill=255)
    if supersample > 1:
        img = img.reduce(supersample)
    return np.asarray(img, dtype=np.float32) * (1 / 255)


def _blur(x: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a float [0, 1] (H, W) map through PIL (8 bit, plenty for masks)."""
    img = Image.fromarray(np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) * (1 / 255)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int | tuple[int, int], channels: int = 1) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid bilinearly upsampled to (size, size[, channels])."""
    ch, cw = (cells, cells) if isinstance(cells, int) else cells
    out = []
    for _ in range(channels):
        coarse = Image.fromarray(rng.uniform(-1, 1, (ch, cw)).astype(np.float32), mode="F")
        out.append(np.asarray(coarse.resize((size, size), Image.BILINEAR)))
    return out[0] if channels == 1 else np.stack(out, -1)


def _pattern(instance: Instance, pattern: str, size: int, hard: bool, frame: str = "object") -> np.ndarray:
    """Coverage (size, size) of the pattern's second tone, in the object's own (rotated) frame or the canvas's."""
    if pattern == "solid":
        return np.zeros((size, size), np.float32)
    u, v = _grid(size)
    if frame == "canvas":
        lx, ly, period = u, v, CANVAS_PATTERN_PERIOD
    else:
        c, s = math.cos(instance.rotation), math.sin(instance.rotation)
        du, dv = u - instance.cx, v - instance.cy
        lx, ly = c * du + s * dv, -s * du + c * dv  # object frame, upright
        period = 0.045 + 0.1 * instance.scale  # canvas units, a few repeats across any object
    if hard:  # pixel art: at least 4 cells per repeat, or the pattern turns to noise
        period = max(period, 4.0 / size)
    px = period * size  # period in pixels: sets the antialiasing slope
    k = 0.35 * px
    if pattern == "stripes":  # diagonal stripes, ~40% coverage
        w = np.cos((lx + ly) * (2 * np.pi / (period * 1.3)))
        cov = (w - 0.25) * k
    elif pattern == "dots":  # dots on a grid, radius 0.28 period
        fx = lx / period - np.floor(lx / period) - 0.5
        fy = ly / period - np.floor(ly / period) - 0.5
        cov = (0.28 - np.sqrt(fx * fx + fy * fy)) * px
    else:  # checks
        cov = np.sin(lx * (np.pi / period)) * np.sin(ly * (np.pi / period)) * k * 2
    if hard:
        return (cov > 0).astype(np.float32)
    return np.clip(cov + 0.5, 0.0, 1.0)


def canvas_pattern(pattern: str, size: int = 64, domain: str = "plain") -> np.ndarray:
    """Where a canvas-frame pattern puts its second tone on a ``size`` photo of ``domain``: coverage (size, size)
    float32 in [0, 1], exactly as :func:`render_photo` with ``pattern_frame="canvas"`` lays it under any object.

    Plain, painting and night photos share one antialiased field. Pixel art draws the pattern hard on its coarse
    grid, at a period of at least 4 cells, and upsamples it, so its field differs (see :func:`_paint`).
    """
    if pattern not in PATTERNS:
        raise DuetgenInputError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if domain not in DOMAINS:
        raise DuetgenInputError(f"domain must be one of {DOMAINS}, got {domain!r}")
    anywhere = Instance(SHAPES[0], 0.5, 0.5, 0.5, 0.0, (0.5, 0.5))  # the canvas frame ignores the instance
    if domain != "pixel art":
        return _pattern(anywhere, pattern, size, hard=False, frame="canvas")
    low = min(size, PIXEL_GRID)
    cov = _pattern(anywhere, pattern, low, hard=True, frame="canvas")
    return np.array(Image.fromarray(cov, mode="F").resize((size, size), Image.NEAREST))


def _fill(
    instance: Instance, attrs: Attributes, size: int, rng: np.random.Generator, hard: bool, frame: str = "object"
) -> np.ndarray:
    """The object's colour field (size, size, 3): fill colour, pattern in a second tone, slight colour jitter."""
    base = np.asarray(COLOURS[attrs.colour], np.float32)
    base = np.clip(base + rng.normal(0, 6, 3), 0, 255) if not hard else base
    tone = base * 0.3 + 175 if attrs.colour in _TONE_WHITE else base * 0.55  # light tint / dark shade
    strength = {"solid": 0.0, "stripes": 0.9, "dots": 0.95, "checks": 0.7}[attrs.pattern]
    cov = _pattern(instance, attrs.pattern, size, hard, frame)[..., None] * strength
    return base * (1 - cov) + tone * cov


def _background(domain: str, size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _grid(size)
    if domain == "plain":  # light studio: pale backdrop, vertical gradient, vignette
        base = np.asarray([232, 230, 226], np.float32) + rng.uniform(-14, 10, 3)
        shade = 1.0 + 0.06 * (0.5 - v) - 0.1 * ((u - 0.5) ** 2 + (v - 0.5) ** 2)
        return base * shade[..., None]
    if domain == "painting":  # warm canvas with a woven texture and loose washes of colour
        base = np.asarray([228, 214, 188], np.float32) + rng.uniform(-10, 10, 3)
        weave = 5 * np.sin(u * size * 2.2) * np.sin(v * size * 2.2)
        wash = _smooth_noise(rng, size, 3, 3) * 14
        return base + weave[..., None] + wash
    if domain == "pixel art":  # flat light backdrop, maybe a ground band
        choices = np.asarray([[170, 215, 245], [235, 235, 235], [240, 225, 190], [200, 235, 200]], np.float32)
        bg = np.broadcast_to(choices[int(rng.integers(len(choices)))], (size, size, 3)).copy()
        if rng.random() < 0.5:
            bg[int(size * 0.8) :] *= 0.85
        return bg
    # night: dark blue sky, darker at the top, a few stars
    top, bottom = np.asarray([8, 12, 38], np.float32), np.asarray([28, 36, 78], np.float32)
    bg = top + (bottom - top) * v[..., None]
    n = max(2, size * size // 300)
    ys, xs = rng.integers(0, size, n), rng.integers(0, size, n)
    bg[ys, xs] = rng.uniform(120, 230, (n, 1))
    return bg


def _paint(
    objects: Sequence[tuple[Instance, Attributes]],
    domain: str,
    size: int,
    rng: np.random.Generator,
    grid: int,
    frame: str = "object",
) -> np.ndarray:
    """Draw objects (back to front) with their attributes on one background of `domain`. Returns uint8 HxWx3."""
    if domain == "pixel art":  # draw on a coarse grid with hard edges and flat colours; then upsample
        low = min(size, grid)
        img = _background(domain, low, rng)
        for inst, attrs in objects:
            m = _mask(inst.outline(), low, supersample=2) > 0.45
            img[m] = _fill(inst, attrs, low, rng, hard=True, frame=frame)[m]
        img = (np.round(img / 32) * 32).clip(0, 255)  # posterise
        out = Image.fromarray(img.astype(np.uint8)).resize((size, size), Image.NEAREST)
        return np.array(out)  # a writable copy

    img = _background(domain, size, rng)
    u, v = _grid(size)
    for inst, attrs in objects:
        poly = inst.outline()
        if domain == "painting":  # brushy, uneven edges: wobble the outline before filling
            poly = poly + _wobble(poly, rng, amp=0.006, wavelength=(0.08, 0.2))
        alpha = _mask(poly, size)
        fill = _fill(inst, attrs, size, rng, hard=False, frame=frame)
        # Soft light from a random side of the top, so the object reads as a solid thing.
        t = rng.uniform(-2.4, -0.7)
        light = 1.0 + 0.22 * ((u - inst.cx) * math.cos(t) + (v - inst.cy) * math.sin(t)) / inst.scale
        if domain == "plain":  # soft contact shadow on the backdrop
            dx, dy = int(round(size * 0.03)), int(round(size * 0.04))
            shadow = _blur(np.roll(alpha, (dy, dx), (0, 1)), size / 40)
            img *= 1 - 0.3 * shadow[..., None]
            fill = fill * light[..., None]
        elif domain == "painting":  # brush streaks in one direction, colour drifting across the object
            streak_cells = (max(2, size // 6), 3) if rng.random() < 0.5 else (3, max(2, size // 6))
            streaks = _smooth_noise(rng, size, streak_cells)
            fill = fill * (light * (1 + 0.12 * streaks))[..., None] + _smooth_noise(rng, size, 3, 3) * 12
            alpha = _blur(alpha, size / 90)
        else:  # night: darkened object with a glow of its own colour around it
            glow = _blur(alpha, size / 18)[..., None]
            colour = np.asarray(COLOURS[attrs.colour], np.float32)
            img += glow * (colour * 0.55 - img * 0.3)
            fill = fill * 0.72 * light[..., None] + np.asarray([0, 4, 18], np.float32)
        img = img * (1 - alpha[..., None]) + fill * alpha[..., None]

    sigma = {"plain": 3.0, "painting": 4.0, "night": 5.0}[domain]
    img += rng.normal(0, sigma, (size, size, 1)).astype(np.float32)  # luminance grain
    return np.clip(img, 0, 255).astype(np.uint8)


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise DuetgenInputError(f"size={size!r} must be an integer >= 16 (pixels)")


def render_photo(
    instance: Instance, attrs: Attributes, size: int = 64, seed: int = 0, pattern_frame: str = "object"
) -> np.ndarray:
    """Render the object with its colour, pattern and domain.

    Args:
        instance: the geometry.
        attrs: colour, pattern, domain.
        size: output side in pixels.
        seed: seeds the per-render variation (noise, lighting, backdrop tint); geometry and attributes are fixed.
        pattern_frame: "object" (the world's photos: the pattern turns and scales with the object) or "canvas"
            (the generator's training photos: :data:`CANVAS_PATTERN_PERIOD`, anchored at the canvas corner).

    Returns:
        uint8 array (size, size, 3).
    """
    _check_size(size)
    if pattern_frame not in PATTERN_FRAMES:
        raise DuetgenInputError(f"pattern_frame must be one of {PATTERN_FRAMES}, got {pattern_frame!r}")
    rng = np.random.default_rng([seed, _PHOTO_STREAM])
    return _paint([(instance, attrs)], attrs.domain, size, rng, PIXEL_GRID, pattern_frame)


# -----------------------------------------------------------------------------
# Sketch rendering: a freehand black outline of the same geometry.


def _wobble(points: np.ndarray, rng: np.random.Generator, amp: float, wavelength: tuple[float, float]) -> np.ndarray:
    """A smooth 2D displacement (N, 2) along a polyline: a sum of three sinusoids of its arc length."""
    seg = np.sqrt((np.diff(points, axis=0) ** 2).sum(1))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    r = rng.random((3, 4))  # per sinusoid: wavelength, amplitude, x phase, y phase
    lam = wavelength[0] + (wavelength[1] - wavelength[0]) * r[:, 0]
    a = amp * (0.3 + 0.7 * r[:, 1])
    phase = 2 * np.pi * r[:, 2:]  # (3, 2)
    return np.einsum("k,nkc->nc", a, np.sin(2 * np.pi * s[:, None, None] / lam[None, :, None] + phase))  # (N, 2)


def _resample(points: np.ndarray, step: float) -> np.ndarray:
    """Points along an open polyline every `step` canvas units (the last vertex kept)."""
    seg = np.sqrt((np.diff(points, axis=0) ** 2).sum(1))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(math.ceil(s[-1] / step)) + 1)
    t = np.linspace(0, s[-1], n)
    return np.stack([np.interp(t, s, points[:, 0]), np.interp(t, s, points[:, 1])], 1)


def _corners(poly: np.ndarray, min_turn_deg: float = 35.0) -> np.ndarray:
    """Indices of the vertices of a closed polygon where the outline turns sharply."""
    d_in = poly - np.roll(poly, 1, 0)
    d_out = np.roll(poly, -1, 0) - poly
    a_in = np.arctan2(d_in[:, 1], d_in[:, 0])
    a_out = np.arctan2(d_out[:, 1], d_out[:, 0])
    turn = np.abs((a_out - a_in + np.pi) % (2 * np.pi) - np.pi)
    return np.flatnonzero(turn > math.radians(min_turn_deg))


def _strokes(poly: np.ndarray, rng: np.random.Generator, size: int) -> list[np.ndarray]:
    """Split a closed canvas-unit polygon into freehand strokes (list of (M, 2) polylines)."""
    n = len(poly)
    corners = _corners(poly)
    if len(corners) == 0:
        corners = np.sort(rng.choice(n, size=min(n, int(rng.integers(1, 3))), replace=False))
    # The pen lifts at some corners only; at least one.
    lifts = corners[rng.random(len(corners)) < 0.55]
    if len(lifts) == 0:
        lifts = corners[[int(rng.integers(len(corners)))]]
    step = 2.0 / size  # ~2 px between samples
    strokes = []
    for i, start in enumerate(lifts):
        end = lifts[(i + 1) % len(lifts)]
        idx = np.arange(start, start + ((end - start) % n or n) + 1) % n
        pts = _resample(poly[idx], step)
        pts = pts + _wobble(pts, rng, amp=0.009, wavelength=(0.12, 0.45)) + rng.normal(0, 0.004, 2)
        # Ends: overshoot past the corner along the tangent (often), stop short leaving a gap (sometimes).
        for end_i, nb in ((0, 1), (-1, -2)):
            r = rng.random()
            tangent = pts[end_i] - pts[nb]
            tangent /= np.linalg.norm(tangent) + 1e-9
            if r < 0.55:
                tip = pts[end_i] + tangent * rng.uniform(0.008, 0.035)
                pts = np.vstack([tip[None], pts]) if end_i == 0 else np.vstack([pts, tip[None]])
            elif r < 0.75 and len(pts) > 8:
                cut = int(rng.integers(1, max(2, int(0.02 / step))))
                pts = pts[cut:] if end_i == 0 else pts[:-cut]
        # An occasional gap in the middle of a long stroke.
        if len(pts) > 30 and rng.random() < 0.2:
            g0 = int(rng.integers(8, len(pts) - 14))
            g1 = g0 + int(rng.integers(2, max(3, int(0.04 / step))))
            strokes += [pts[: g0 + 1], pts[g1:]]
        else:
            strokes.append(pts)
    return strokes


def _draw_stroke(draw: ImageDraw.ImageDraw, pts: np.ndarray, width: float, rng: np.random.Generator) -> None:
    """Draw a polyline (pixel coordinates) with a slowly varying width, in chunks with round joins."""
    chunk = 8
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.2)
    flat = pts.tolist()
    for j in range(0, len(flat) - 1, chunk):
        w = width * (0.8 + 0.35 * math.sin(phase + freq * j))
        r = w / 2
        draw.line([tuple(p) for p in flat[j : j + chunk + 1]], fill=0, width=max(1, int(round(w))), joint="curve")
        x, y = flat[j]
        draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    x, y = flat[-1]
    r = width * 0.4
    draw.ellipse((x - r, y - r, x + r, y + r), fill=0)


def _sketch_strokes(instance: Instance, rng: np.random.Generator, size: int) -> list[np.ndarray]:
    poly = instance.outline()
    # Slightly wrong proportions and placement, as a hand makes them.
    centre = np.asarray([instance.cx, instance.cy])
    affine = np.eye(2) + rng.normal(0, 0.025, (2, 2))
    poly = (poly - centre) @ affine.T + centre + rng.normal(0, 0.005, 2)
    return _strokes(poly, rng, size)


def render_sketch(instance: Instance, size: int = 64, seed: int = 0) -> np.ndarray:
    """Render a wobbly freehand black outline of the instance on white (same position, scale and rotation).

    Strokes wobble at low frequency, often overshoot corners, sometimes stop short or leave a gap, vary in width,
    and are occasionally drawn twice. Never a clean edge map.

    Args:
        instance: the geometry.
        size: output side in pixels.
        seed: seeds the hand (jitter, gaps, width).

    Returns:
        uint8 array (size, size), 255 = paper, 0 = ink.
    """
    _check_size(size)
    rng = np.random.default_rng([seed, _SKETCH_STREAM])
    s = size * SUPERSAMPLE
    img = Image.new("L", (s, s), 255)
    draw = ImageDraw.Draw(img)
    width = s * 0.022 * rng.uniform(0.75, 1.3)  # in supersampled pixels: ~1.4 px at 64
    strokes = _sketch_strokes(instance, rng, size)
    for pts in strokes:
        _draw_stroke(draw, pts * s, width, rng)
    if rng.random() < 0.3:  # go over part of the outline again, a little off
        for pts in strokes[: int(rng.integers(1, len(strokes) + 1))]:
            again = pts + _wobble(pts, rng, amp=0.008, wavelength=(0.1, 0.3))
            _draw_stroke(draw, again * s, width * 0.7, rng)
    return np.array(img.reduce(SUPERSAMPLE))  # a writable copy


def render_pair(instance: Instance, attrs: Attributes, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(photo uint8 (size, size, 3), sketch uint8 (size, size)) of one instance, both from `seed`."""
    return render_photo(instance, attrs, size, seed), render_sketch(instance, size, seed)


# -----------------------------------------------------------------------------
# Scenes: several objects on one canvas, one shared domain.

SCENE_SCALE_RANGE = (0.18, 0.32)


@dataclass(frozen=True)
class Scene:
    """2-4 objects on one canvas. All share ``domain``; each has its own colour and pattern."""

    objects: tuple[Instance, ...]
    attrs: tuple[Attributes, ...]  # one per object, all with the same domain

    @property
    def domain(self) -> str:
        return self.attrs[0].domain

    def to_dict(self) -> dict:
        """JSON-able plain dict."""
        return {"objects": [o.to_dict() for o in self.objects], "attrs": [a.to_dict() for a in self.attrs]}


def _box(instance: Instance) -> np.ndarray:
    poly = instance.outline()
    return np.concatenate([poly.min(0), poly.max(0)])


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection area over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(w * h / small)


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, max_tries: int = 60) -> Scene:
    """Sample a scene of `n_objects` (2-4, random if None) mostly non-overlapping objects, each of a distinct colour.

    Boxes of different objects overlap by at most 10% of the smaller box when placement allows within `max_tries`.
    """
    if n_objects is None:
        n_objects = int(rng.integers(2, 5))
    if not 2 <= n_objects <= 4:
        raise DuetgenInputError(f"n_objects={n_objects} must be 2, 3 or 4")
    domain = DOMAINS[int(rng.integers(len(DOMAINS)))]
    colours = rng.choice(len(COLOURS), size=n_objects, replace=False)
    objects: list[Instance] = []
    boxes: list[np.ndarray] = []
    for _ in range(n_objects):
        best, best_overlap = None, math.inf
        for _ in range(max_tries):
            inst = sample_instance(rng, scale_range=SCENE_SCALE_RANGE)
            box = _box(inst)
            worst = max((_overlap(box, b) for b in boxes), default=0.0)
            if worst < best_overlap:
                best, best_overlap = inst, worst
            if worst <= 0.1:
                break
        objects.append(best)  # type: ignore[arg-type]
        boxes.append(_box(best))  # type: ignore[arg-type]
    attrs = tuple(Attributes(tuple(COLOURS)[int(c)], PATTERNS[int(rng.integers(len(PATTERNS)))], domain)
                  for c in colours)  # fmt: skip
    return Scene(tuple(objects), attrs)


def render_scene(scene: Scene, size: int = 128, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Render a scene.

    Returns:
        (photo uint8 (size, size, 3), boxes): one (x0, y0, x1, y1) pixel box per object, in the order of
        ``scene.objects``, clipped to the canvas (x1, y1 exclusive).
    """
    _check_size(size)
    rng = np.random.default_rng([seed, _SCENE_STREAM])
    grid = max(PIXEL_GRID, size * PIXEL_GRID // 64)  # scenes hold smaller objects: a finer pixel-art grid
    photo = _paint(list(zip(scene.objects, scene.attrs, strict=True)), scene.domain, size, rng, grid)
    boxes = []
    for inst in scene.objects:
        x0, y0, x1, y1 = _box(inst) * size
        boxes.append((max(0, int(math.floor(x0))), max(0, int(math.floor(y0))), min(size, int(math.ceil(x1))),
                      min(size, int(math.ceil(y1)))))  # fmt: skip
    return photo, boxes


def scene_caption(scene: Scene) -> str:
    """E.g. 'a photo of a red star with stripes at the top left and a solid blue heart on the right'."""
    parts = []
    for inst, attrs in zip(scene.objects, scene.attrs, strict=True):
        colour = f"solid {attrs.colour}" if attrs.pattern == "solid" else attrs.colour
        noun = f"{colour} {SHAPE_NOUNS[inst.shape]}"
        pattern = f" {_PATTERN_WORDS[attrs.pattern]}" if attrs.pattern != "solid" else ""
        parts.append(f"{_article(noun)} {noun}{pattern} {position_word(inst)}")
    return f"{_DOMAIN_PREFIX[scene.domain]} {', '.join(parts[:-1])} and {parts[-1]}"


# -----------------------------------------------------------------------------
# Dataset and export.


@dataclass(frozen=True)
class WorldItem:
    """One (photo, sketch) pair with its language, as plain numpy/str data."""

    index: int
    instance: Instance
    attrs: Attributes
    photo: np.ndarray  # uint8 (H, W, 3)
    sketch: np.ndarray  # uint8 (H, W)
    caption: str
    words: str


def world_item(seed: int, index: int, size: int = 64, shapes: Sequence[str] | None = None, variants: int = 1,
               caption_drop_prob: float = 0.0) -> WorldItem:  # fmt: skip
    """Item `index` of the world seeded by `seed`, fully determined by (seed, index) and the arguments.

    With ``variants=k``, items ``k*j .. k*j + k-1`` share one instance (same geometry, same sketch seed) with
    k distinct attribute combinations: ready-made hard negatives inside a batch.
    """
    k = variants
    group, slot = divmod(index, k)
    geo_rng = np.random.default_rng([seed, group, 0])
    shape = None if shapes is None else shapes[int(geo_rng.integers(len(shapes)))]
    instance = sample_instance(geo_rng, shape)
    attr_rng = np.random.default_rng([seed, group, 1])
    attrs = sample_attributes(attr_rng) if k == 1 else attribute_variants(k, attr_rng)[slot]
    photo = render_photo(instance, attrs, size, seed=int(np.random.default_rng([seed, index, 2]).integers(2**31)))
    sketch = render_sketch(instance, size, seed=int(np.random.default_rng([seed, group, 3]).integers(2**31)))
    cap_rng = np.random.default_rng([seed, index, 4]) if caption_drop_prob > 0 else None
    text = caption(instance, attrs, cap_rng, caption_drop_prob)
    return WorldItem(index, instance, attrs, photo, sketch, text, words(attrs))


try:  # the dataset is optional: the rest of the module needs only numpy and PIL
    import torch
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]
    _TorchDataset = object  # type: ignore[assignment,misc]


class WorldDataset(_TorchDataset):  # type: ignore[misc]
    """Map-style dataset of (photo, sketch, caption) items generated on the fly.

    Item i is fully determined by (seed, i): no global random state, so any number of workers gives the same data.

    Args:
        n: number of items.
        seed: world seed.
        size: image side in pixels.
        shapes: restrict to these shapes (e.g. a zero-shot split); None for all of :data:`SHAPES`.
        attribute_variants: k > 1 makes each run of k consecutive items one instance in k distinct attribute
            combinations (hard negatives for the words).
        caption_drop_prob: passed to :func:`caption` (stage-1 training uses > 0).

    Each item is a dict: ``photo`` float32 (3, H, W) in [0, 1]; ``sketch`` float32 (3, H, W) in [0, 1] (grey
    replicated); ``caption``, ``words`` (str); ``shape`` (int index into :data:`SHAPES`); ``instance`` and ``attrs``
    (plain JSON-able dicts, collatable: ``params`` always has two floats).
    """

    def __init__(self, n: int, seed: int = 0, size: int = 64, shapes: Sequence[str] | None = None,
                 attribute_variants: int = 1, caption_drop_prob: float = 0.0) -> None:  # fmt: skip
        if n < 0:
            raise DuetgenInputError(f"n={n} must be >= 0")
        _check_size(size)
        if shapes is not None:
            shapes = tuple(shapes)
            if not shapes:
                raise DuetgenInputError("shapes=() is empty; pass None for all shapes")
            for s in shapes:
                _check_shape(s)
        if not 1 <= attribute_variants <= len(ALL_ATTRIBUTES):
            raise DuetgenInputError(f"attribute_variants={attribute_variants} must be in 1..{len(ALL_ATTRIBUTES)}")
        self.n, self.seed, self.size, self.shapes = n, seed, size, shapes
        self.attribute_variants, self.caption_drop_prob = attribute_variants, caption_drop_prob

    def __len__(self) -> int:
        return self.n

    def item(self, i: int) -> WorldItem:
        """The raw :class:`WorldItem` (uint8 arrays, dataclasses)."""
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for WorldDataset of length {self.n}")
        return world_item(self.seed, i, self.size, self.shapes, self.attribute_variants, self.caption_drop_prob)

    def __getitem__(self, i: int) -> dict:
        it = self.item(i)
        photo = torch.from_numpy(it.photo).permute(2, 0, 1).float().div_(255)  # (3, H, W)
        sketch = torch.from_numpy(it.sketch).float().div_(255).expand(3, -1, -1).contiguous()  # (3, H, W)
        return {
            "photo": photo,
            "sketch": sketch,
            "caption": it.caption,
            "words": it.words,
            "shape": SHAPES.index(it.instance.shape),
            "instance": it.instance.to_dict(),
            "attrs": it.attrs.to_dict(),
        }


def write_world(out_dir: str | os.PathLike, n: int, seed: int = 0, size: int = 64, scenes: int = 0) -> Path:
    """Write a world to disk.

    Layout: ``photos/NNNNN.png``, ``sketches/NNNNN.png``, ``scenes/NNNNN.png`` (when ``scenes > 0``) and
    ``manifest.jsonl``: one JSON object per line. Pairs: ``{"kind": "pair", "id", "photo", "sketch", "caption",
    "words", "instance", "attrs"}``; scenes: ``{"kind": "scene", "id", "photo", "caption", "domain", "objects":
    [{"instance", "attrs", "box"}]}`` with pixel boxes (x0, y0, x1, y1). Paths are relative to `out_dir`. Pair i is
    item i of ``WorldDataset(n, seed, size)``. The manifest is written to a temporary file and moved into place last.

    Args:
        out_dir: output folder (created).
        n: number of (photo, sketch) pairs.
        seed: world seed.
        size: image side in pixels (scenes are drawn at twice this).
        scenes: number of multi-object scenes.

    Returns:
        The path of ``manifest.jsonl``.
    """
    if n < 0 or scenes < 0:
        raise DuetgenInputError(f"n={n} and scenes={scenes} must be >= 0")
    _check_size(size)
    out = Path(out_dir)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    (out / "sketches").mkdir(parents=True, exist_ok=True)
    if scenes:
        (out / "scenes").mkdir(parents=True, exist_ok=True)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover

        def tqdm(x, **_):  # type: ignore[no-redef]
            return x

    lines = []
    for i in tqdm(range(n), desc="world pairs", disable=n < 100):
        it = world_item(seed, i, size)
        name = f"{i:05d}.png"
        Image.fromarray(it.photo).save(out / "photos" / name)
        Image.fromarray(it.sketch).save(out / "sketches" / name)
        lines.append({"kind": "pair", "id": i, "photo": f"photos/{name}", "sketch": f"sketches/{name}",
                      "caption": it.caption, "words": it.words, "instance": it.instance.to_dict(),
                      "attrs": it.attrs.to_dict()})  # fmt: skip
    for j in tqdm(range(scenes), desc="world scenes", disable=scenes < 100):
        rng = np.random.default_rng([seed, j, 5])
        scene = sample_scene(rng)
        photo, boxes = render_scene(scene, size * 2, seed=int(rng.integers(2**31)))
        name = f"{j:05d}.png"
        Image.fromarray(photo).save(out / "scenes" / name)
        objects = [{"instance": o.to_dict(), "attrs": a.to_dict(), "box": list(b)}
                   for o, a, b in zip(scene.objects, scene.attrs, boxes, strict=True)]  # fmt: skip
        lines.append({"kind": "scene", "id": j, "photo": f"scenes/{name}", "caption": scene_caption(scene),
                      "domain": scene.domain, "objects": objects})  # fmt: skip
    manifest = out / "manifest.jsonl"
    tmp = out / "manifest.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    os.replace(tmp, manifest)
    logger.info("wrote %d pairs and %d scenes to %s", n, scenes, out)
    return manifest
