"""Domain attribute transfer from a photo: keep the object's shape, pose and the attributes the words do not name.

A photo says everything at once, a sketch only the shape and pose. To change one attribute of a photographed object
("at night") while keeping the rest, duetgen splits the photo into what the method composes:

1. **the pose**, as an outline sketch extracted from the photo (:func:`photo_silhouette`, :func:`outline_sketch`);
   it becomes the pseudo-word and pins the generator's sketch channel;
2. **the attributes**, read from the photo by the same CLIP encoder, zero-shot (:func:`read_attributes`: the photo's
   embedding against the composed query of its outline with every ``world.words`` combination);
3. **the words**: the user's phrase where it names an attribute, the photo's own reading elsewhere
   (:func:`complete_words`: "at night" on a photo read as "solid green in a photo" becomes "solid green at night").

The completed words are what the duet stage and the generator were trained on (a sketch and a full attribute
phrase). Given only "at night" with the photo's embedding as the pseudo-word, the generator drew colourless speckled
objects (the photo's colour does not come through the pseudo-word) and retrieval found the source's pose one time in
four; see ``recipes/README.md`` for the measured comparison.

Phrases are read in the world's attribute vocabulary (:func:`parse_attribute_words`): the eight colour names,
solid / stripes / dots / checks (and "striped", "dotted", "checked", ...), and the domains "in a photo", "in a
painting", "in pixel art", "at night". A phrase with any other word is used as typed (``complete_words`` returns
``None``), so free text still works; it just is not completed.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from . import world

__all__ = [
    "TransferQuery",
    "complete_words",
    "outline_sketch",
    "parse_attribute_words",
    "photo_silhouette",
    "photo_tensor",
    "read_attributes",
    "transfer_query",
]

_PATTERN_SYNONYMS = {
    "solid": "solid", "stripes": "stripes", "stripe": "stripes", "striped": "stripes", "stripy": "stripes",
    "dots": "dots", "dot": "dots", "dotted": "dots", "spots": "dots", "spotted": "dots", "spotty": "dots",
    "checks": "checks", "check": "checks", "checked": "checks", "checkered": "checks", "chequered": "checks",
    "checkerboard": "checks",
}  # fmt: skip
_DOMAIN_SYNONYMS = {
    "photo": "plain", "photograph": "plain", "painting": "painting", "painted": "painting", "night": "night",
    "nighttime": "night", "pixel art": "pixel art", "pixelart": "pixel art", "pixelated": "pixel art",
}  # fmt: skip
_COLOUR_SYNONYMS = {**{c: c for c in world.COLOURS}, "violet": "purple"}
_FILLERS = frozenset({"in", "with", "at", "a", "an", "the", "of", "and", "as", "make", "it", "turn", "colour",
                      "color", "coloured", "colored", "style", "pattern", "made", "now"})  # fmt: skip
_VOCABULARY = (("colour", _COLOUR_SYNONYMS), ("pattern", _PATTERN_SYNONYMS), ("domain", _DOMAIN_SYNONYMS))
_TOKEN = re.compile(r"pixel art|[a-z]+")


def parse_attribute_words(text: str) -> tuple[dict[str, str], list[str]]:
    """The world attributes a phrase names, and the words it could not read.

    Returns:
        ``({"colour": ..., "pattern": ..., "domain": ...} restricted to those named, unknown words)``. A phrase that
        names two values of one attribute ("red and blue") lists the second among the unknown words.

    >>> parse_attribute_words("blue with dots at night")
    ({'colour': 'blue', 'pattern': 'dots', 'domain': 'night'}, [])
    >>> parse_attribute_words("in a fluffy style")
    ({}, ['fluffy'])
    """
    named: dict[str, str] = {}
    unknown: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        for attr, table in _VOCABULARY:
            if token in table:
                if named.setdefault(attr, table[token]) != table[token]:
                    unknown.append(token)
                break
        else:
            if token not in _FILLERS:
                unknown.append(token)
    return named, unknown


def complete_words(phrase: str, source: world.Attributes) -> str | None:
    """The full attribute words for ``phrase`` applied to a source with attributes ``source``, or ``None`` when the
    phrase has words outside the world vocabulary (use it as typed then).

    >>> complete_words("at night", world.Attributes("green", "solid", "plain"))
    'solid green at night'
    >>> complete_words("with dots", world.Attributes("red", "stripes", "painting"))
    'red with dots in a painting'
    """
    named, unknown = parse_attribute_words(phrase)
    if unknown or not named:
        return None
    return world.words(world.Attributes(**{**source.to_dict(), **named}))


_TEXT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _attribute_text_embeds(encoder) -> torch.Tensor:
    """Text embeddings (128, D) of every :func:`duetgen.world.words` phrase, in :data:`duetgen.world.ALL_ATTRIBUTES`
    order, cached per encoder until its weights (any in-place update), device or dtype change."""
    key = (sum(p._version for p in encoder.parameters()), encoder.device, encoder.dtype)
    hit = _TEXT_CACHE.get(encoder)
    if hit is None or hit[0] != key:
        hit = _TEXT_CACHE[encoder] = (key, encoder.encode_text([world.words(a) for a in world.ALL_ATTRIBUTES]))
    return hit[1]


@torch.no_grad()
def read_attributes(
    encoder,
    photos: torch.Tensor | None = None,
    *,
    image_embeds: torch.Tensor | None = None,
    sketch_embeds: torch.Tensor | None = None,
    batch_size: int = 128,
) -> list[world.Attributes]:
    """Zero-shot reading of each photo's colour, pattern and domain with the encoder.

    Every combination of :data:`duetgen.world.ALL_ATTRIBUTES` is written as :func:`duetgen.world.words` ("solid
    green in a photo"), and each photo takes the combination that describes it best:

    * with ``sketch_embeds`` (the embeddings of the photos' outline sketches, :func:`outline_sketch`), the best
      combination is the one whose *composed query* (outline + words) is closest to the photo's embedding: the
      question the duet stage was trained to answer, asked 128 times per photo. :func:`transfer_query` reads this
      way. With the embedded model on 192 held-out world photos (``recipes/attribute_transfer.py`` sources) it reads
      colour 0.995, pattern 0.661, domain 1.000;
    * without, the closest *text* embedding (CLIP zero-shot classification, stage 1's towers): colour 0.979,
      pattern 0.531, domain 0.979 on the same photos. Solid photos read as patterned 12 times in 50 this way, 3
      times through the composed query.

    ``tests/test_transfer.py`` checks the floors of both.

    Args:
        encoder: a :class:`~duetgen.ComposedQueryEncoder`.
        photos: (B, 3, H, W) float in [0, 1]; or pass their ``image_embeds`` (B, D) from ``encoder.encode_image``.
        sketch_embeds: (B, D) ``encoder.encode_sketch`` of each photo's outline sketch, or None.
        batch_size: photos per image-encoder call; composed reading encodes ``128 x`` (at most 8 photos) queries per
            text-encoder call.
    """
    if image_embeds is None:
        if photos is None:
            raise ValueError("read_attributes needs photos or image_embeds")
        image_embeds = torch.cat(
            [encoder.encode_image(photos[i : i + batch_size]) for i in range(0, len(photos), batch_size)]
        )
    if sketch_embeds is None:
        best = (image_embeds @ _attribute_text_embeds(encoder).T).argmax(dim=1)  # (B,)
        return [world.ALL_ATTRIBUTES[int(i)] for i in best]
    if len(sketch_embeds) != len(image_embeds):
        raise ValueError(f"got {len(sketch_embeds)} sketch embeddings for {len(image_embeds)} photos; pass one each")
    words = [world.words(a) for a in world.ALL_ATTRIBUTES]
    n_words, chunk = len(words), 8
    best = []
    for s in range(0, len(image_embeds), chunk):
        sk, im = sketch_embeds[s : s + chunk], image_embeds[s : s + chunk]  # (c, D) each
        q = encoder.encode_query(sketch_embeds=sk.repeat_interleave(n_words, dim=0), words=words * len(sk))
        scores = (q.view(len(sk), n_words, -1).float() * im[:, None].float()).sum(-1)  # (c, 128)
        best.extend(int(i) for i in scores.argmax(dim=1))
    return [world.ALL_ATTRIBUTES[i] for i in best]


# ---------------------------------------------------------------------------------------------------------------
# photo -> outline sketch
# ---------------------------------------------------------------------------------------------------------------


def _morph(mask: np.ndarray, size: int, op: str) -> np.ndarray:
    """Binary dilation / erosion of a bool (H, W) mask with a square of side ``size`` (odd)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    filt = ImageFilter.MaxFilter(size) if op == "dilate" else ImageFilter.MinFilter(size)
    return np.asarray(img.filter(filt)) > 127


def _open(mask: np.ndarray, size: int) -> np.ndarray:
    """Opening (erode, then dilate) by a square of side ``size``: drops specks smaller than it."""
    return _morph(_morph(mask, size, "erode"), size, "dilate")


def _close(mask: np.ndarray, size: int) -> np.ndarray:
    """Closing (dilate, then erode) by a square of side ``size``: bridges gaps narrower than it."""
    return _morph(_morph(mask, size, "dilate"), size, "erode")


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    hist, edges = np.histogram(values, bins=bins)
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m = np.cumsum(p * centres)
    between = (m[-1] * w0 - m) ** 2 / np.maximum(w0 * (1 - w0), 1e-9)
    return float(centres[int(np.argmax(between))])


def photo_silhouette(photo: Image.Image, work: int = 96) -> np.ndarray:
    """The foreground object of a photo on a smooth background: bool (work, work).

    The background colour of each row is interpolated between the median colours of its left and right edge strips
    (uniform, gradient, banded and starry backdrops all fit); pixels far from it (Otsu threshold on the colour
    distance, at least 25 of 255) are foreground. Opening drops specks (stars), closing bridges pattern gaps, holes
    are filled by flooding the background from the border.
    """
    dist = background_distance(photo, work)
    mask = dist > max(_otsu(dist), 25.0)
    return fill_holes(_close(_open(mask, 3), 5))


def background_distance(photo: Image.Image, work: int) -> np.ndarray:
    """How far each pixel's colour lies from the background, float (work, work) in RGB units (0-441).

    The background colour of each row is interpolated between the median colours of its left and right edge strips
    (``work // 24`` px, at least 2), so uniform, gradient, banded and starry backdrops all fit. The photo is resized
    to ``work`` px and blurred slightly (sigma 0.7 px) first."""
    img = photo.convert("RGB").resize((work, work), Image.BILINEAR).filter(ImageFilter.GaussianBlur(0.7))
    a = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    strip = edge_strip(work)
    left, right = np.median(a[:, :strip], axis=1), np.median(a[:, -strip:], axis=1)  # (H, 3) each
    t = np.linspace(0, 1, work, dtype=np.float32)[None, :, None]
    background = left[:, None] * (1 - t) + right[:, None] * t  # (H, W, 3)
    return np.linalg.norm(a - background, axis=-1)


def edge_strip(work: int) -> int:
    """Width in px of the edge strips :func:`background_distance` reads the background from."""
    return max(2, work // 24)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """A bool (H, W) mask with every region the border cannot reach filled."""
    fill = Image.fromarray(np.pad(mask, 1).astype(np.uint8) * 255).copy()
    ImageDraw.floodfill(fill, (0, 0), 128)
    return np.asarray(fill)[1:-1, 1:-1] != 128


def outline_sketch(mask: np.ndarray, size: int, width: float = 0.028) -> torch.Tensor:
    """The boundary of a silhouette drawn as a black stroke on white: (3, size, size) in [0, 1] (a blank page if the
    mask is empty)."""
    s = size * 4
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((s, s), Image.BILINEAR)) > 127
    k = max(3, int(round(width * s)) | 1)
    edge = m & ~_morph(m, k, "erode")
    grey = np.asarray(Image.fromarray(np.where(edge, 0, 255).astype(np.uint8)).reduce(4), dtype=np.float32) / 255
    return torch.from_numpy(grey)[None].repeat(3, 1, 1)


def photo_tensor(photo: Image.Image) -> torch.Tensor:
    """(3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(photo.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------------------------
# the composed query of a transfer
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TransferQuery:
    """A photo + phrase made into a composed query.

    Attributes:
        query: (B, D) composed queries (search a gallery with them).
        states: (B, L, Wt) their token states (the generator's ``query_token_embeds``).
        sketches: (B, 3, S, S) the outline sketches (the generator's sketch channel).
        words: the words composed with each outline: the completed phrase, or the phrase as typed.
        read: the attributes read from each photo (``None`` per row when ``complete=False``).
    """

    query: torch.Tensor
    states: torch.Tensor
    sketches: torch.Tensor
    words: list[str]
    read: list[world.Attributes | None]


@torch.no_grad()
def transfer_query(
    encoder,
    photos: list[Image.Image],
    phrases: list[str],
    size: int | None = None,
    complete: bool = True,
    route: str = "sketch",
) -> TransferQuery:
    """Composed queries for (photo, phrase) pairs.

    Args:
        encoder: a :class:`~duetgen.ComposedQueryEncoder`.
        photos: B PIL images.
        phrases: B phrases ("at night", "in blue", "with dots").
        size: side of the outline sketches (default: the encoder's input size).
        complete: complete each phrase with the photo's own attributes (:func:`complete_words` on
            :func:`read_attributes`); ``False`` composes the phrase as typed.
        route: what stands for the object in the query: ``"sketch"``, the photo's outline (the default), or
            ``"embed"``, the photo's own image embedding in the sketch's place.
    """
    if len(photos) != len(phrases):
        raise ValueError(f"got {len(photos)} photos but {len(phrases)} phrases; pass one phrase per photo")
    if not photos:
        raise ValueError("no photos given; pass at least one (photo, phrase) pair")
    if route not in ("sketch", "embed"):
        raise ValueError(f"route must be 'sketch' or 'embed', got {route!r}")
    size = size or encoder.image_size
    side = encoder.image_size
    # Each distinct photo object is outlined, embedded and read once, however many phrases it is paired with.
    first: dict[int, int] = {}
    for p in photos:
        first.setdefault(id(p), len(first))
    row = torch.tensor([first[id(p)] for p in photos])  # pair -> distinct photo
    unique = list({id(p): p for p in photos}.values())
    sketches = torch.stack([outline_sketch(photo_silhouette(p), size) for p in unique])  # (U, 3, S, S)
    photo_embeds = outline_embeds = None
    if route == "embed" or complete:
        pixels = torch.stack([photo_tensor(p.convert("RGB").resize((side, side), Image.BICUBIC)) for p in unique])
        photo_embeds = encoder.encode_image(pixels)  # (U, D)
    if route == "sketch" or complete:
        outline_embeds = encoder.encode_sketch(sketches)  # (U, D)
    read: list[world.Attributes | None] = [None] * len(photos)
    words = list(phrases)
    if complete:  # read through the composed query of the outline: see read_attributes
        readings = read_attributes(encoder, image_embeds=photo_embeds, sketch_embeds=outline_embeds)
        read = [readings[int(i)] for i in row]
        words = [complete_words(ph, r) or ph for ph, r in zip(phrases, read, strict=True)]
    embeds = outline_embeds if route == "sketch" else photo_embeds
    query, states = encoder.encode_query(sketch_embeds=embeds[row], words=words, return_states=True)
    return TransferQuery(query=query, states=states, sketches=sketches[row], words=words, read=read)
