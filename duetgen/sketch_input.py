"""Sketch input: read a freehand sketch from any common source into a normalised square image or tensor.

Sources, recognised by their content (not their file extension):

- raster files: PNG, JPEG (EXIF orientation applied), WebP, BMP, GIF and APNG (first frame only), TIFF, PPM;
  any mode (grey, RGB, palette, 16-bit, with alpha: a transparent background becomes white);
- SVG: paths, polylines and basic shapes rasterised, parsed without entity expansion and within size bounds;
- stroke data: QuickDraw ndjson (raw ``[[xs, ys, ts], ...]`` and simplified ``[[xs, ys], ...]`` drawings) and
  sketch-rnn stroke-3 ``.npz`` / ``.npy`` files;
- in memory: bytes of any of the above, a PIL image, a numpy array or a torch tensor.

Every sketch becomes black ink on a white background: light strokes on a dark background are detected and
flipped, then the sketch is cropped to its ink (or kept on its canvas), padded to a centred square and resized.

Every unusable input raises :class:`~duetgen.errors.DuetgenInputError` with a one-line message naming the input
and the problem; no exception from PIL, numpy or the XML parser escapes.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import re
import warnings
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from duetgen.errors import DuetgenInputError

logger = logging.getLogger(__name__)

SketchSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray | torch.Tensor
Fit = Literal["ink", "canvas"]


@dataclass(frozen=True)
class SketchLimits:
    """Bounds that keep a hostile or accidental input from exhausting memory or time.

    Each limit is checked before the work it guards: raster pixel counts come from the file header, before
    any pixel is decoded.
    """

    max_pixels: int = 4096 * 4096  # width * height of a raster image, read from its header before decoding
    max_file_bytes: int = 50 * 1024 * 1024  # bytes of a file or bytes source, and of each array inside an .npz
    max_strokes: int = 10_000  # strokes in one QuickDraw / sketch-rnn drawing, or drawn shapes in one SVG
    max_points: int = 1_000_000  # points in one drawing (SVG curves count their flattened points)
    max_svg_elements: int = 100_000  # XML elements in one SVG, counted while parsing


DEFAULT_LIMITS = SketchLimits()

_INK_LEVEL = 0.75  # a pixel darker than this (0 = black, 1 = white) is ink
_MIN_INK_FRACTION = 1e-4  # a sketch with fewer ink pixels than this fraction of its area is blank
_STROKE_WIDTH = 1 / 96  # stroke width for stroke data, as a fraction of the output size (2.3 px at 224)
_SUPERSAMPLE = 4  # vector sketches are drawn this many times larger, then averaged down (antialiasing)
_CURVE_STEPS = 12  # line segments per Bezier curve in SVG paths
_MAX_SVG_DEPTH = 64  # nesting depth of SVG groups
_RASTER_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM")  # PIL decoders allowed (no EPS etc.)


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def read_sketch(
    source: SketchSource,
    *,
    fit: Fit = "ink",
    size: int = 224,
    margin: float = 0.08,
    limits: SketchLimits = DEFAULT_LIMITS,
    index: int = 0,
) -> Image.Image:
    """Read a sketch from a file, bytes, image, array or tensor into a normalised square greyscale image.

    Args:
        source: A path (``str`` or ``os.PathLike``; the format is sniffed from the content), the bytes of a file,
            a PIL image, a numpy array (``(H, W)``, ``(H, W, 1|3|4)``; ``uint8`` or float in ``[0, 1]``) or a
            torch tensor (``(C, H, W)`` or ``(H, W)``, float in ``[0, 1]`` or ``uint8``).
        fit: ``"ink"`` crops to the ink's bounding box plus ``margin`` and centres it; ``"canvas"`` keeps the whole
            frame (padded to a centred square), so the sketch keeps its position on the canvas. Stroke data
            (QuickDraw, sketch-rnn) has no canvas and is always ink-fit; an SVG without ``viewBox`` or
            ``width``/``height`` is ink-fit too.
        size: Side of the square output, in pixels (8 to 4096).
        margin: With ``fit="ink"``, the blank border on each side, as a fraction of ``size`` (0 <= margin < 0.5).
            Unused with ``fit="canvas"``.
        limits: Size bounds applied before decoding; see :class:`SketchLimits`.
        index: Which drawing to take from a file holding several (ndjson line, JSON list item, sketch-rnn array).

    Returns:
        A PIL image of mode ``"L"``, ``size`` x ``size``, black ink (0) on a white background (255).

    Raises:
        DuetgenInputError: The source is missing, unreadable, empty, not a sketch, truncated, over a limit or
            blank, or an argument is invalid. The message names the source and the problem.
    """
    _check_arguments(fit, size, margin, limits, index)
    if isinstance(source, Image.Image):
        return _normalise_raster(_grey_from_pil(source, "<image>", limits), "<image>", fit, size, margin)
    if isinstance(source, np.ndarray):
        return _normalise_raster(_grey_from_array(source, "<array>", limits), "<array>", fit, size, margin)
    if isinstance(source, torch.Tensor):
        return _normalise_raster(_grey_from_tensor(source, "<tensor>", limits), "<tensor>", fit, size, margin)
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, data = "<bytes>", bytes(source)
        if len(data) > limits.max_file_bytes:
            raise DuetgenInputError(
                f"sketch {name!r} is {len(data):,} bytes, over the limit of {limits.max_file_bytes:,} "
                "(SketchLimits.max_file_bytes)"
            )
    elif isinstance(source, (str, os.PathLike)):
        name, data = str(source), _read_file(Path(source), limits)
    else:
        raise DuetgenInputError(
            "sketch source must be a path, bytes, a PIL image, a numpy array or a torch tensor; "
            f"got {type(source).__name__}"
        )
    return _read_bytes(data, name, fit=fit, size=size, margin=margin, limits=limits, index=index)


def load_sketch(
    source: SketchSource,
    *,
    fit: Fit = "ink",
    size: int = 224,
    margin: float = 0.08,
    limits: SketchLimits = DEFAULT_LIMITS,
    index: int = 0,
) -> torch.Tensor:
    """Load a sketch as a float tensor, ready for an image encoder's own normalisation.

    Takes the same arguments as :func:`read_sketch`.

    Returns:
        A float32 tensor of shape ``(3, size, size)`` in ``[0, 1]``: the grey sketch replicated to three
        channels, white background = 1.0, black ink = 0.0.

    Raises:
        DuetgenInputError: As :func:`read_sketch`.
    """
    image = read_sketch(source, fit=fit, size=size, margin=margin, limits=limits, index=index)
    grey = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # (size, size)
    return grey.unsqueeze(0).repeat(3, 1, 1)  # (3, size, size)


# ----------------------------------------------------------------------------------------------------------
# Arguments, files and format sniffing
# ----------------------------------------------------------------------------------------------------------


PHOTO_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # PIL decoders a photo may use


def read_photo(
    source: bytes | str | os.PathLike | Image.Image, name: str | None = None, limits: SketchLimits | None = None
) -> Image.Image:
    """A photo (file path, file bytes or PIL image) -> RGB PIL image, EXIF rotation applied.

    The byte and pixel limits (``limits``, default :func:`duetgen.limits.sketch_limits`) are checked before any pixel
    is decoded; a missing, unreadable, non-image, over-limit or corrupt file raises a one-line
    :class:`~duetgen.errors.DuetgenInputError` naming it.
    """
    if limits is None:
        from .limits import sketch_limits

        limits = sketch_limits()
    if isinstance(source, Image.Image):
        return _photo_from_pil(source, name or "the image", limits)
    if isinstance(source, (str, os.PathLike)):
        name = name or str(source)
        path = Path(source).expanduser()
        if not path.is_file():
            raise DuetgenInputError(f"photo '{name}' does not exist or is not a file: check the path")
        try:
            data = path.read_bytes() if path.stat().st_size <= limits.max_file_bytes else None
        except OSError as err:
            raise DuetgenInputError(f"photo '{name}' cannot be read: {err.strerror or err}") from err
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name, data = name or "photo", bytes(source)
    else:
        raise DuetgenInputError(f"a photo must be a file path, file bytes or a PIL image, got {type(source).__name__}")
    if data is None or len(data) > limits.max_file_bytes:
        mb, rest = divmod(limits.max_file_bytes, 1024 * 1024)
        cap = f"{mb} MB" if mb and not rest else f"{limits.max_file_bytes:,} bytes"
        raise DuetgenInputError(f"photo '{name}' is over the {cap} limit (SketchLimits.max_file_bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.format not in PHOTO_FORMATS:
                    raise DuetgenInputError(f"photo '{name}' is {im.format}, not one of {', '.join(PHOTO_FORMATS)}")
                return _photo_from_pil(im, name, limits)
    except DuetgenInputError:
        raise
    except Image.UnidentifiedImageError as err:
        raise DuetgenInputError(f"photo '{name}' is not an image: pass a PNG, JPEG or WebP photo") from err
    except Exception as err:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, zlib errors...
        raise DuetgenInputError(f"photo '{name}' is not an image that can be read ({_one_line(err)})") from err


def _photo_from_pil(im: Image.Image, name: str, limits: SketchLimits) -> Image.Image:
    w, h = im.size
    if w * h > limits.max_pixels:
        raise DuetgenInputError(
            f"photo '{name}' is {w} x {h} pixels, over the limit of {limits.max_pixels:,} pixels "
            "(DUETGEN_MAX_PIXELS); make it smaller"
        )
    if w == 0 or h == 0:
        raise DuetgenInputError(f"photo '{name}' has no pixels ({w} x {h})")
    im.seek(0)  # the first frame of an animation
    return ImageOps.exif_transpose(im).convert("RGB")


def _check_arguments(fit: str, size: int, margin: float, limits: SketchLimits, index: int) -> None:
    """Refuse invalid keyword arguments with a message naming the argument and what is valid."""
    if fit not in ("ink", "canvas"):
        raise DuetgenInputError(f"fit must be 'ink' or 'canvas'; got {fit!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
        raise DuetgenInputError(f"size must be an int from 8 to 4096; got {size!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 0.5:
        raise DuetgenInputError(f"margin must be a number with 0 <= margin < 0.5; got {margin!r}")
    if not isinstance(limits, SketchLimits):
        raise DuetgenInputError(f"limits must be a SketchLimits; got {type(limits).__name__}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise DuetgenInputError(f"index must be an int >= 0; got {index!r}")


def _read_file(path: Path, limits: SketchLimits) -> bytes:
    """Read a whole sketch file, refusing missing paths, folders and files over the byte limit."""
    name = str(path)
    try:
        if path.is_dir():
            raise DuetgenInputError(f"sketch {name!r} is a directory, not a file: pass one sketch file inside it")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise DuetgenInputError(
                f"sketch {name!r} is {size:,} bytes, over the limit of {limits.max_file_bytes:,} "
                "(SketchLimits.max_file_bytes)"
            )
        with path.open("rb") as handle:
            data = handle.read(limits.max_file_bytes + 1)  # bounded even for devices that report size 0
    except FileNotFoundError as err:
        raise DuetgenInputError(f"sketch {name!r} does not exist: check the path") from err
    except PermissionError as err:
        raise DuetgenInputError(f"sketch {name!r} cannot be read: permission denied") from err
    except OSError as err:
        raise DuetgenInputError(f"sketch {name!r} cannot be read: {err.strerror or err}") from err
    if len(data) > limits.max_file_bytes:
        raise DuetgenInputError(
            f"sketch {name!r} is over the limit of {limits.max_file_bytes:,} bytes (SketchLimits.max_file_bytes)"
        )
    return data


def _sniff(data: bytes) -> str:
    """Name the kind of sketch in ``data`` from its first bytes: raster, svg, json, npz or npy."""
    if data.startswith(b"PK\x03\x04"):
        return "npz"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    raster_magic = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
    if data.startswith(raster_magic) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return "raster"
    head = _decode_text(data[:4096], strict=False)
    if head is not None:
        head = head.lstrip()
        if head.startswith("<"):
            return "svg"
        if head.startswith(("{", "[")):
            return "json"
    return "raster"  # PIL may still know it (PPM); if not, the error says what was expected


def _one_line(err: BaseException) -> str:
    """The first line of an exception's message (decoders quote file content, newlines included)."""
    text = str(err).strip()
    return text.splitlines()[0].strip()[:300] if text else type(err).__name__


def _decode_text(data: bytes, *, strict: bool = True) -> str | None:
    """Decode UTF-8 (or UTF-16 with a byte-order mark) text; None if the bytes are not text."""
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8-sig", errors="strict" if strict else "ignore")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    return text


def _read_bytes(
    data: bytes, name: str, *, fit: str, size: int, margin: float, limits: SketchLimits, index: int
) -> Image.Image:
    """Dispatch the bytes of a sketch file to its reader and normalise the result."""
    if not data:
        raise DuetgenInputError(f"sketch {name!r} is 0 bytes: not an image")
    kind = _sniff(data)
    logger.debug("sketch %r sniffed as %s (%d bytes)", name, kind, len(data))
    if kind == "raster":
        return _normalise_raster(_grey_from_raster_bytes(data, name, limits), name, fit, size, margin)
    if kind == "svg":
        shapes, frame = _svg_shapes(data, name, limits)
        if fit == "canvas" and frame is None:
            logger.info("sketch %r has no viewBox or width/height: fitting it to its ink", name)
        return _render_shapes(shapes, name, size, margin, frame if fit == "canvas" else None)
    if kind == "json":
        strokes = _strokes_from_json(data, name, index, limits)
    else:
        strokes = _strokes_from_numpy(data, name, kind, index, limits)
    shapes = [_Shape(points=stroke) for stroke in strokes]
    return _render_shapes(shapes, name, size, margin, None)  # stroke data has no canvas: always ink-fit


# ----------------------------------------------------------------------------------------------------------
# Raster images -> grey float array (H, W) in [0, 1], 1 = white
# ----------------------------------------------------------------------------------------------------------


def _too_large(
    name: str, width: int | None, height: int | None, limits: SketchLimits, pixels: int | None = None
) -> DuetgenInputError:
    """The error for an image over the pixel limit (a possible decompression bomb)."""
    if width and height:
        dims = f"{width}x{height} = {width * height:,} pixels"
    else:
        dims = f"its declared {pixels:,} pixels" if pixels else "its declared size"
    return DuetgenInputError(
        f"sketch {name!r} is too large: {dims} is over the limit of {limits.max_pixels:,} pixels "
        "(SketchLimits.max_pixels; a possible decompression bomb): downscale it first"
    )


def _grey_from_raster_bytes(data: bytes, name: str, limits: SketchLimits) -> np.ndarray:
    """Open a raster file, check its header size against the limit, then decode its first frame to grey."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_RASTER_FORMATS)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        declared = re.search(r"\((\d+) pixels\)", str(err))  # PIL: "Image size (N pixels) exceeds limit of ..."
        raise _too_large(name, None, None, limits, int(declared.group(1)) if declared else None) from err
    except Image.UnidentifiedImageError as err:
        raise DuetgenInputError(
            f"sketch {name!r} is not an image: expected PNG, JPEG, WebP, BMP, GIF, TIFF, PPM, SVG, "
            f"QuickDraw ndjson or sketch-rnn .npz (first bytes {data[:8]!r})"
        ) from err
    except Exception as err:  # noqa: BLE001 - PIL raises many types on malformed headers
        raise DuetgenInputError(f"sketch {name!r} could not be read as an image: {_one_line(err)}") from err
    with image:
        return _grey_from_pil(image, name, limits)


def _grey_from_pil(image: Image.Image, name: str, limits: SketchLimits) -> np.ndarray:
    """Decode the current (first) frame of a PIL image to grey, compositing alpha over white."""
    width, height = image.size
    if width * height > limits.max_pixels:
        raise _too_large(name, width, height, limits)
    if width == 0 or height == 0:
        raise DuetgenInputError(f"sketch {name!r} has no pixels ({width}x{height})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()  # the current frame only: GIF / APNG frames are never iterated
            image = ImageOps.exif_transpose(image)  # phone photos of sketches carry an EXIF rotation
            return _pil_to_grey(image, name)
    except DuetgenInputError:
        raise
    except Exception as err:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, zlib errors...
        kind = image.format or "image"
        raise DuetgenInputError(
            f"sketch {name!r} could not be decoded as {kind}: truncated or corrupt ({_one_line(err)})"
        ) from err


def _pil_to_grey(image: Image.Image, name: str) -> np.ndarray:
    """Convert any PIL mode to a grey float array (H, W) in [0, 1]."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image).astype(np.float32)  # (H, W)
        if mode == "F" and values.max(initial=0) <= 1.0:
            peak = 1.0
        elif mode.startswith("I;16") or values.max(initial=0) > 255:
            peak = 65535.0
        else:
            peak = 255.0
        return np.clip(values / peak, 0.0, 1.0)
    if mode in ("P", "PA") or "A" in mode or mode in ("RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")  # palette transparency becomes alpha
        lum = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0  # (H, W)
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0  # (H, W)
        return _composite_over_white(lum, alpha, name)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _composite_over_white(lum: np.ndarray, alpha: np.ndarray, name: str) -> np.ndarray:
    """Composite a grey layer over white; light strokes on a transparent background keep their shape."""
    grey = lum * alpha + (1.0 - alpha)
    if not (grey < _INK_LEVEL).any() and (alpha > 0.5).any() and (alpha < 0.5).any():
        logger.info("sketch %r has light strokes on a transparent background: using its alpha as ink", name)
        return 1.0 - alpha
    return grey


def _grey_from_array(array: np.ndarray, name: str, limits: SketchLimits) -> np.ndarray:
    """Convert a numpy image (H, W) or (H, W, 1|3|4), uint8 / uint16 / bool / float in [0, 1], to grey."""
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4))):
        raise DuetgenInputError(f"sketch {name!r} must have shape (H, W) or (H, W, 1|3|4); got {array.shape}")
    height, width = array.shape[:2]
    if width * height > limits.max_pixels:
        raise _too_large(name, width, height, limits)
    if width == 0 or height == 0:
        raise DuetgenInputError(f"sketch {name!r} has no pixels (shape {array.shape})")
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        values = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise DuetgenInputError(f"sketch {name!r} has NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < -1e-3 or high > 1.0 + 1e-3:
            raise DuetgenInputError(
                f"sketch {name!r} has float values in [{low:g}, {high:g}]; they must lie in [0, 1] "
                "(divide 0-255 data by 255)"
            )
        values = np.clip(values, 0.0, 1.0)
    else:
        raise DuetgenInputError(f"sketch {name!r} has dtype {array.dtype}; use uint8, uint16, bool or float in [0, 1]")
    if values.ndim == 2:
        return values
    channels = values.shape[-1]
    if channels == 1:
        return values[..., 0]
    lum = values[..., 0] * 0.299 + values[..., 1] * 0.587 + values[..., 2] * 0.114  # (H, W), as PIL's "L"
    if channels == 3:
        return lum
    return _composite_over_white(lum, values[..., 3], name)


def _grey_from_tensor(tensor: torch.Tensor, name: str, limits: SketchLimits) -> np.ndarray:
    """Convert a torch image (C, H, W), (1, C, H, W) or (H, W) to grey via numpy."""
    tensor = tensor.detach().cpu()
    if tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]  # (C, H, W)
    if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
        tensor = tensor.permute(1, 2, 0)  # (H, W, C)
    elif tensor.ndim != 2:
        raise DuetgenInputError(
            f"sketch {name!r} must have shape (C, H, W) with C in 1/3/4; got {tuple(tensor.shape)}"
        )
    if tensor.dtype != torch.uint8:
        tensor = tensor.float()
    return _grey_from_array(tensor.contiguous().numpy(), name, limits)


# ----------------------------------------------------------------------------------------------------------
# Raster normalisation: dark-on-light, crop to ink or keep the canvas, pad to a square, resize
# ----------------------------------------------------------------------------------------------------------


def _blank_error(name: str, detail: str) -> DuetgenInputError:
    return DuetgenInputError(
        f"sketch {name!r} is blank: no strokes found ({detail}); draw something or check the file"
    )


def _as_dark_on_light(grey: np.ndarray, name: str) -> np.ndarray:
    """Flip light-on-dark sketches and stretch off-white paper to white."""
    if float(grey.max()) - float(grey.min()) < 0.1:
        raise _blank_error(name, "every pixel has the same shade")
    height, width = grey.shape
    step = max(1, int(math.sqrt(grey.size / 1_000_000)))
    sample = grey[::step, ::step]  # enough pixels for the statistics, fast on large images
    band = max(1, min(height, width) // 50)
    border = np.concatenate(
        [grey[:band].ravel(), grey[-band:].ravel(), grey[:, :band].ravel(), grey[:, -band:].ravel()]
    )
    if np.median(border) < 0.5 and np.median(sample) < 0.5:
        logger.info("sketch %r looks inverted (light strokes on a dark background): flipping it", name)
        grey, sample = 1.0 - grey, 1.0 - sample
    paper = float(np.percentile(sample, 95))
    if 0.5 <= paper < 1.0:
        grey = np.minimum(grey / paper, 1.0)  # grey paper -> white, ink keeps its contrast
    return grey


def _stroke_width(ink: np.ndarray) -> float:
    """Estimate the typical stroke width in pixels: twice the ink area over its boundary length."""
    padded = np.pad(ink, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & ink
    boundary = int(ink.sum() - interior.sum())
    return 2.0 * float(ink.sum()) / max(boundary, 1)


def _min_filter(image: np.ndarray, kernel: int) -> np.ndarray:
    """Square minimum filter (thickens dark strokes) on a uint8 array, separable so large kernels stay fast."""
    radius = kernel // 2
    height, width = image.shape
    padded = np.pad(image, radius, constant_values=255)
    rows = padded[:, :width].copy()  # (H + 2r, W)
    for shift in range(1, kernel):
        np.minimum(rows, padded[:, shift : shift + width], out=rows)
    out = rows[:height].copy()  # (H, W)
    for shift in range(1, kernel):
        np.minimum(out, rows[shift : shift + height], out=out)
    return out


def _normalise_raster(grey: np.ndarray, name: str, fit: str, size: int, margin: float) -> Image.Image:
    """Turn a grey array (H, W) into the square ``size`` image: ink check, crop or keep canvas, pad, resize."""
    grey = _as_dark_on_light(grey, name)
    ink = grey < _INK_LEVEL  # (H, W) bool
    ink_pixels = int(ink.sum())
    if ink_pixels < max(1.0, _MIN_INK_FRACTION * ink.size):
        raise _blank_error(name, f"{ink_pixels} ink pixels out of {ink.size:,}")
    if fit == "ink":
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        grey, ink = grey[top:bottom, left:right], ink[top:bottom, left:right]
        side = math.ceil(max(grey.shape) / (1.0 - 2.0 * margin))
    else:
        side = max(grey.shape)
    height, width = grey.shape
    square = np.full((side, side), 255, dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = np.round(grey * 255.0).astype(np.uint8)
    factor = side / size
    if factor > 1.0:
        # Thin strokes would fade to light grey when averaged down: thicken them to 1-1.5 output pixels.
        need = 1.5 * factor - _stroke_width(ink)
        if need >= 2.0:
            kernel = min(2 * round(need / 2) + 1, 31)
            logger.debug("sketch %r: thickening strokes with a %dx%d min filter before resizing", name, kernel, kernel)
            square = _min_filter(square, kernel)
    resample = Image.Resampling.BOX if factor > 1.0 else Image.Resampling.BICUBIC
    return Image.fromarray(square, mode="L").resize((size, size), resample)


# ----------------------------------------------------------------------------------------------------------
# Vector rendering, shared by SVG and stroke data
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Shape:
    """One polyline to draw: points in source units, its stroke width (None: the default pixel width)."""

    points: np.ndarray  # (N, 2) x, y; y grows downwards
    width: float | None = None  # stroke width in source units
    stroke: bool = True
    fill: bool = False


def _render_shapes(
    shapes: list[_Shape], name: str, size: int, margin: float, frame: tuple[float, float, float, float] | None
) -> Image.Image:
    """Draw shapes black on white at ``_SUPERSAMPLE`` times ``size`` and average down.

    With ``frame`` (x0, y0, x1, y1) the frame is fit into the square (centred, aspect kept); without it the
    shapes' bounding box plus their stroke width is fit inside ``margin``.
    """
    if not shapes:
        raise _blank_error(name, "no strokes or shapes to draw")
    big = size * _SUPERSAMPLE
    # Widths in supersampled pixels. A 2 px stroke always covers one output pixel fully; SVG hairlines are
    # widened to 1.5 px so that they stay dark however they fall on the pixel grid.
    default_px = max(2.0, size * _STROKE_WIDTH) * _SUPERSAMPLE  # stroke data (QuickDraw, sketch-rnn)
    min_px = max(1.5, 1.5 * size / 224) * _SUPERSAMPLE  # thinnest SVG stroke
    points = np.concatenate([shape.points for shape in shapes])  # (P, 2)
    if frame is None:
        low, high = points.min(axis=0), points.max(axis=0)
        with np.errstate(over="ignore"):
            extent = float((high - low).max())
        source_width = max((s.width for s in shapes if s.width is not None and s.stroke), default=0.0)
        if not math.isfinite(extent + source_width):
            raise DuetgenInputError(
                f"sketch {name!r} spans coordinates too far apart to draw (beyond float range); fix the numbers in "
                "the file"
            )
        fixed_px = default_px if any(s.width is None for s in shapes) else 0.0
        room = max(big * (1.0 - 2.0 * margin) - fixed_px, 1.0)
        scale = room / (extent + source_width) if extent + source_width > 0 else 1.0
        centre = (low + high) / 2.0
    else:
        x0, y0, x1, y1 = frame
        scale = big / max(x1 - x0, y1 - y0)
        centre = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    offset = big / 2.0 - centre * scale
    canvas = Image.new("L", (big, big), 255)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        xy = [tuple(p) for p in (shape.points * scale + offset).tolist()]
        if shape.fill and len(xy) >= 3:
            draw.polygon(xy, fill=0)
        if not shape.stroke:
            continue
        width_px = default_px if shape.width is None else max(min_px, shape.width * scale)
        radius = width_px / 2.0
        if len(xy) >= 2:
            draw.line(xy, fill=0, width=max(1, round(width_px)), joint="curve")
        for x, y in (xy[0], xy[-1]):  # round caps, and single-point strokes become dots
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=0)
    image = canvas.resize((size, size), Image.Resampling.BOX)
    if not (np.asarray(image) < _INK_LEVEL * 255).any():
        raise _blank_error(name, "every shape is invisible or outside the canvas")
    return image


# ----------------------------------------------------------------------------------------------------------
# QuickDraw ndjson / JSON strokes
# ----------------------------------------------------------------------------------------------------------


def _strokes_from_json(data: bytes, name: str, index: int, limits: SketchLimits) -> list[np.ndarray]:
    """Pick drawing ``index`` from QuickDraw ndjson, a JSON list of drawings, or one bare drawing."""
    text = _decode_text(data)
    if text is None:
        raise DuetgenInputError(f"sketch {name!r} looks like JSON but is not UTF-8 text")
    try:
        if text.lstrip().startswith("["):
            document = json.loads(text)
            if document and all(isinstance(item, dict) for item in document):
                drawing = _pick(document, name, index, "drawings in the JSON list")
            else:
                _pick([document], name, index, "drawing (a bare JSON list of strokes)")
                drawing = document
        else:
            lines = [line for line in text.splitlines() if line.strip()]
            try:
                record = json.loads(_pick(lines, name, index, "ndjson lines"))
            except json.JSONDecodeError:
                record = _pick([json.loads(text)], name, index, "JSON object")  # one pretty-printed object
            drawing = record.get("drawing") if isinstance(record, dict) else None
            if drawing is None:
                raise DuetgenInputError(
                    f"sketch {name!r}: drawing {index} has no 'drawing' key (expected QuickDraw ndjson records)"
                )
    except json.JSONDecodeError as err:
        raise DuetgenInputError(f"sketch {name!r} is not valid JSON / ndjson: {_one_line(err)}") from err
    except RecursionError as err:
        raise DuetgenInputError(
            f"sketch {name!r} is JSON nested too deeply to be a drawing; expected QuickDraw strokes [[xs, ys], ...]"
        ) from err
    if isinstance(drawing, dict) and "drawing" in drawing:
        drawing = drawing["drawing"]
    return _strokes_from_drawing(drawing, name, limits)


def _pick(items: list, name: str, index: int, what: str):
    """Item ``index`` of ``items``, or an error saying how many there are."""
    if index >= len(items):
        raise DuetgenInputError(f"sketch {name!r} has {len(items)} {what}; index {index} is out of range")
    return items[index]


def _strokes_from_drawing(drawing: object, name: str, limits: SketchLimits) -> list[np.ndarray]:
    """Validate a QuickDraw drawing ``[[xs, ys(, ts)], ...]`` and return its strokes as (N, 2) arrays."""
    if not isinstance(drawing, list):
        raise DuetgenInputError(f"sketch {name!r}: 'drawing' must be a list of strokes [[xs, ys], ...]")
    if len(drawing) > limits.max_strokes:
        raise DuetgenInputError(
            f"sketch {name!r} has {len(drawing):,} strokes, over the limit of {limits.max_strokes:,} "
            "(SketchLimits.max_strokes)"
        )
    strokes, total = [], 0
    for number, stroke in enumerate(drawing):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            raise DuetgenInputError(f"sketch {name!r}: stroke {number} must be [xs, ys] or [xs, ys, ts]")
        xs, ys = stroke[0], stroke[1]
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
            raise DuetgenInputError(f"sketch {name!r}: stroke {number} must hold two lists xs, ys of equal length")
        total += len(xs)
        if total > limits.max_points:
            raise DuetgenInputError(f"sketch {name!r} has over {limits.max_points:,} points (SketchLimits.max_points)")
        try:
            points = np.array([xs, ys], dtype=np.float64).T  # (N, 2)
        except (TypeError, ValueError, OverflowError) as err:  # OverflowError: an integer beyond float range
            raise DuetgenInputError(f"sketch {name!r}: stroke {number} has non-numeric coordinates") from err
        if not np.isfinite(points).all():
            raise DuetgenInputError(f"sketch {name!r}: stroke {number} has NaN or infinite coordinates")
        if len(points):
            strokes.append(points)
    if not strokes:
        raise _blank_error(name, "the drawing has no points")
    return strokes


# ----------------------------------------------------------------------------------------------------------
# sketch-rnn stroke-3 .npz / .npy
# ----------------------------------------------------------------------------------------------------------


class _PickledArrayError(ValueError):
    """A pickled array whose structure is not a plain numeric or object array."""


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle that names a callable other than numpy's array reconstruction (possibly malicious)."""


_MAX_PICKLED_ELEMENTS = 50_000_000  # elements of one pickled array (the byte limit bounds the data anyway)


def _pickle_bytes(data: object) -> bytes:
    """Array data of a pickle: bytes, or a Python 2 str decoded as latin-1 by the unpickler."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("latin-1")
    raise _PickledArrayError(f"array data is a {type(data).__name__}, not bytes")


class _SafeDtype:
    """Stands in for ``numpy.dtype`` while unpickling: only simple numeric or object dtypes, flags ignored.

    numpy's own ``dtype.__setstate__`` trusts the flags it is given (a numeric dtype flagged as holding objects
    makes numpy read raw bytes as object pointers), so the pickled state is never passed to it.
    """

    def __init__(self, spec: object = None, align: object = False, copy: object = True) -> None:
        if not isinstance(spec, str) or not re.fullmatch(r"[biufO][0-9]{1,2}", spec):
            raise _PickledArrayError(f"dtype {spec!r:.40} is not a plain numeric or object dtype")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) < 8:
            raise _PickledArrayError("malformed dtype state")
        order, subarray, names, fields = state[1], state[2], state[3], state[4]
        if subarray is not None or names is not None or fields is not None:
            raise _PickledArrayError("structured dtypes are not allowed")
        if order not in ("<", ">", "|", "="):
            raise _PickledArrayError(f"dtype byte order {order!r:.10} is invalid")
        if order in ("<", ">") and self.dtype.kind != "O":
            self.dtype = self.dtype.newbyteorder(order)


class _SafeArray:
    """Stands in for an ``ndarray`` while unpickling and builds the real one from validated state.

    numpy's ``ndarray.__setstate__`` does not check an object array's list against its shape (a shorter list
    segfaults), so the state is checked here and the array built with ``np.frombuffer`` or element by element.
    """

    array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _PickledArrayError("malformed array state")
        shape, dtype, _fortran, data = state[-4:]
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and 0 <= d for d in shape) or len(shape) > 8:
            raise _PickledArrayError(f"array shape {shape!r:.60} is invalid")
        if not isinstance(dtype, _SafeDtype):
            raise _PickledArrayError("array dtype is not a plain dtype")
        count = math.prod(shape)
        if count > _MAX_PICKLED_ELEMENTS:
            raise _PickledArrayError(f"array of {count:,} elements is too large")
        if dtype.dtype.kind == "O":
            if not isinstance(data, list) or len(data) != count:
                held = f"{len(data)} items" if isinstance(data, list) else f"a {type(data).__name__}"
                raise _PickledArrayError(f"object array of shape {shape} holds {held}")
            out = np.empty(count, dtype=object)
            for i, item in enumerate(data):
                if not isinstance(item, _SafeArray) or item.array is None:
                    raise _PickledArrayError(f"object array holds a {type(item).__name__}, not an array")
                out[i] = item.array
            self.array = out.reshape(shape)
            return
        raw = _pickle_bytes(data)
        if len(raw) != count * dtype.dtype.itemsize:
            raise _PickledArrayError(f"array of shape {shape} has {len(raw)} bytes of data")
        self.array = np.frombuffer(raw, dtype=dtype.dtype).reshape(shape).copy()


class _NdarrayType:
    """Stands in for the ``numpy.ndarray`` class argument of ``_reconstruct``."""


def _safe_reconstruct(cls: object, shape: object = (0,), dtype_code: object = b"b") -> _SafeArray:
    if cls is not _NdarrayType:
        raise _PickledArrayError("only numpy.ndarray may be reconstructed")
    return _SafeArray()


def _safe_scalar(dtype: object, data: object = b"") -> object:
    if not isinstance(dtype, _SafeDtype) or dtype.dtype.kind == "O":
        raise _PickledArrayError("only numeric numpy scalars are allowed")
    raw = _pickle_bytes(data)
    if len(raw) != dtype.dtype.itemsize:
        raise _PickledArrayError("malformed numpy scalar")
    return np.frombuffer(raw, dtype=dtype.dtype)[0]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy object arrays (sketch-rnn's .npz hold lists of arrays) and refuses every other class.

    The numpy callables a pickle names are replaced by the safe stand-ins above, so no untrusted state ever
    reaches numpy's C ``__setstate__`` (which can be made to read arbitrary memory).
    """

    _SAFE = {
        ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy.core.multiarray", "scalar"): _safe_scalar,
        ("numpy._core.multiarray", "scalar"): _safe_scalar,
        ("numpy", "ndarray"): _NdarrayType,
        ("numpy", "dtype"): _SafeDtype,
    }

    def find_class(self, module: str, name: str) -> object:
        safe = self._SAFE.get((module, name))
        if safe is None:
            shown = f"{module}.{name}".encode("unicode_escape").decode("ascii")[:100]  # names come from the file
            raise _RefusedGlobal(f"refusing to unpickle {shown}: only numpy arrays are allowed")
        return safe


def _read_npy(raw: bytes, name: str) -> np.ndarray:
    """Read one .npy payload; object arrays go through the numpy-only unpickler."""
    handle = io.BytesIO(raw)
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        _, _, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        _, _, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise DuetgenInputError(f"sketch {name!r} uses .npy format version {version}, which is not supported")
    if dtype.hasobject:
        try:
            loaded = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
        except _PickledArrayError as err:
            raise DuetgenInputError(f"sketch {name!r} holds a malformed pickled array ({err}); re-save it") from err
        except _RefusedGlobal as err:
            raise DuetgenInputError(
                f"sketch {name!r} holds a pickle that is not a numpy array ({err}); duetgen never runs pickled code: "
                "save the strokes as numpy arrays with numpy.savez"
            ) from err
        if not isinstance(loaded, _SafeArray) or loaded.array is None:
            raise DuetgenInputError(f"sketch {name!r} holds a pickled {type(loaded).__name__}, not an array")
        return loaded.array
    handle.seek(0)
    return np.lib.format.read_array(handle, allow_pickle=False)


def _strokes_from_numpy(data: bytes, name: str, kind: str, index: int, limits: SketchLimits) -> list[np.ndarray]:
    """Read sketch-rnn stroke-3 data from an .npz (train/test/valid arrays) or a bare .npy array."""
    key = "array"
    try:
        if kind == "npy":
            array = _read_npy(data, name)
        else:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = {member[: -len(".npy")]: member for member in archive.namelist() if member.endswith(".npy")}
                if not members:
                    raise DuetgenInputError(
                        f"sketch {name!r} is a zip file with no .npy arrays: not a sketch-rnn .npz"
                    )
                key = next((k for k in ("train", "test", "valid") if k in members), None)
                if key is None and len(members) == 1:
                    key = next(iter(members))
                if key is None:
                    raise DuetgenInputError(
                        f"sketch {name!r} holds arrays {sorted(members)}; expected 'train', 'test' or 'valid' "
                        "(sketch-rnn stroke-3), or a single array"
                    )
                info = archive.getinfo(members[key])
                if info.file_size > limits.max_file_bytes:
                    raise DuetgenInputError(
                        f"sketch {name!r}: array {key!r} is {info.file_size:,} bytes uncompressed, over the limit of "
                        f"{limits.max_file_bytes:,} (SketchLimits.max_file_bytes)"
                    )
                with archive.open(info) as member:
                    array = _read_npy(member.read(limits.max_file_bytes + 1), name)
    except DuetgenInputError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile, zlib, pickle and numpy raise many types
        raise DuetgenInputError(
            f"sketch {name!r} could not be read as a sketch-rnn .npz/.npy: {_one_line(err)} (corrupt or truncated; "
            "re-save it with numpy.savez)"
        ) from err
    return _strokes_from_stroke3(_select_drawing(array, name, key, index), name, limits)


def _select_drawing(array: np.ndarray, name: str, key: str, index: int) -> np.ndarray:
    """Drawing ``index`` of an object array of (N, 3) arrays, a (M, N, 3) array, or a single (N, 3) array."""
    if array.dtype == object:
        if array.ndim != 1:
            raise DuetgenInputError(
                f"sketch {name!r}: array {key!r} has shape {array.shape}; expected a list of drawings"
            )
        return np.asarray(_pick(list(array), name, index, f"drawings in {key!r}"))
    if array.ndim == 3:
        return _pick(list(array), name, index, f"drawings in {key!r}")
    _pick([array], name, index, f"drawing in {key!r}")
    return array


def _strokes_from_stroke3(stroke3: np.ndarray, name: str, limits: SketchLimits) -> list[np.ndarray]:
    """Split stroke-3 rows [dx, dy, pen_lifted] into strokes of absolute points."""
    if stroke3.ndim != 2 or stroke3.shape[1] != 3 or not np.issubdtype(stroke3.dtype, np.number):
        raise DuetgenInputError(
            f"sketch {name!r}: drawing has shape {stroke3.shape} and dtype {stroke3.dtype}; "
            "expected numeric (N, 3) rows [dx, dy, pen_lifted]"
        )
    if len(stroke3) > limits.max_points:
        raise DuetgenInputError(f"sketch {name!r} has over {limits.max_points:,} points (SketchLimits.max_points)")
    if len(stroke3) == 0:
        raise _blank_error(name, "the drawing has no points")
    if not np.isfinite(stroke3.astype(np.float64)).all():
        raise DuetgenInputError(f"sketch {name!r} has NaN or infinite offsets")
    points = np.cumsum(stroke3[:, :2].astype(np.float64), axis=0)  # (N, 2) absolute x, y
    ends = np.flatnonzero(stroke3[:, 2] > 0.5) + 1  # the pen lifts after these rows
    bounds = [0, *ends.tolist(), len(points)]
    strokes = [points[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    if len(strokes) > limits.max_strokes:
        raise DuetgenInputError(
            f"sketch {name!r} has {len(strokes):,} strokes, over the limit of {limits.max_strokes:,} "
            "(SketchLimits.max_strokes)"
        )
    return strokes


# ----------------------------------------------------------------------------------------------------------
# SVG
# ----------------------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_LENGTH_RE = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(px|pt|pc|mm|cm|in|em|%)?\s*$")
_UNITS = {None: 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0, "em": 16.0}
_TRANSFORM_RE = re.compile(r"(matrix|translate|scale|rotate|skewX|skewY)\s*\(([^)]*)\)")
_SVG_CONTAINERS = {"svg", "g", "a", "switch"}
_SVG_SHAPES = {"path", "polyline", "polygon", "line", "rect", "circle", "ellipse"}
_PAINT_KEYS = ("stroke", "fill", "stroke-width", "display", "visibility")


def _local(tag: str) -> str:
    """Tag name without its XML namespace."""
    return tag.rsplit("}", 1)[-1]


def _parse_svg(data: bytes, name: str, limits: SketchLimits) -> ET.Element:
    """Parse SVG text safely: no entity declarations, at most ``max_svg_elements`` elements."""
    text = _decode_text(data)
    if text is None:
        try:
            text = data.decode("latin-1")
        except UnicodeDecodeError as err:  # pragma: no cover - latin-1 decodes every byte
            raise DuetgenInputError(f"sketch {name!r} is not text") from err
    if re.search(r"<!ENTITY", text, re.IGNORECASE) or re.search(r"<!DOCTYPE[^>]*\[", text, re.IGNORECASE):
        raise DuetgenInputError(
            f"sketch {name!r} declares XML entities (<!DOCTYPE [...]> / <!ENTITY>), which duetgen refuses "
            "for safety: remove the DOCTYPE"
        )
    parser = ET.XMLPullParser(events=("start",))
    root, count = None, 0
    try:
        for start in range(0, len(text), 65536):
            parser.feed(text[start : start + 65536])
            for _, element in parser.read_events():
                root = element if root is None else root
                count += 1
                if count > limits.max_svg_elements:
                    raise DuetgenInputError(
                        f"sketch {name!r} has over {limits.max_svg_elements:,} SVG elements "
                        "(SketchLimits.max_svg_elements)"
                    )
        parser.close()
    except ET.ParseError as err:
        raise DuetgenInputError(f"sketch {name!r} is not valid SVG/XML: {_one_line(err)}") from err
    if root is None or _local(root.tag) != "svg":
        tag = "none" if root is None else _local(root.tag)
        raise DuetgenInputError(f"sketch {name!r} is XML but not SVG (root element <{tag}>)")
    return root


def _length(value: str | None, reference: float | None = None) -> float | None:
    """An SVG length in user units (px); percentages need ``reference``. None if absent or unparsable."""
    if value is None:
        return None
    match = _LENGTH_RE.match(value)
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2)
    if unit == "%":
        return None if reference is None else number * reference / 100.0
    return number * _UNITS[unit]


def _svg_frame(root: ET.Element) -> tuple[float, float, float, float] | None:
    """The canvas (x0, y0, x1, y1) in user units, from viewBox or else width/height; None if undeclared."""
    view_box = [float(v) for v in _NUMBER_RE.findall(root.get("viewBox", ""))]
    if len(view_box) == 4 and view_box[2] > 0 and view_box[3] > 0 and all(map(math.isfinite, view_box)):
        x, y, width, height = view_box
        return x, y, x + width, y + height
    width, height = _length(root.get("width")), _length(root.get("height"))
    if width and height and 0 < width < math.inf and 0 < height < math.inf:
        return 0.0, 0.0, width, height
    return None


def _parse_transform(value: str | None, name: str) -> np.ndarray:
    """An SVG ``transform`` attribute as a 3x3 matrix acting on column vectors (x, y, 1)."""
    matrix = np.eye(3)
    if not value or not value.strip():
        return matrix
    consumed = _TRANSFORM_RE.sub("", value).replace(",", " ").strip()
    if consumed:
        raise DuetgenInputError(f"sketch {name!r} has an unsupported transform {value!r}")
    for kind, raw_args in _TRANSFORM_RE.findall(value):
        args = [float(a) for a in _NUMBER_RE.findall(raw_args)]
        step = np.eye(3)
        if kind == "matrix" and len(args) == 6:
            a, b, c, d, e, f = args
            step = np.array([[a, c, e], [b, d, f], [0, 0, 1]])
        elif kind == "translate" and len(args) in (1, 2):
            step[0, 2], step[1, 2] = args[0], args[1] if len(args) == 2 else 0.0
        elif kind == "scale" and len(args) in (1, 2):
            step[0, 0], step[1, 1] = args[0], args[-1]
        elif kind == "rotate" and len(args) in (1, 3):
            angle = math.radians(args[0])
            cos, sin = math.cos(angle), math.sin(angle)
            step = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])
            if len(args) == 3:
                cx, cy = args[1], args[2]
                step = _translation(cx, cy) @ step @ _translation(-cx, -cy)
        elif kind == "skewX" and len(args) == 1:
            step[0, 1] = math.tan(math.radians(args[0]))
        elif kind == "skewY" and len(args) == 1:
            step[1, 0] = math.tan(math.radians(args[0]))
        else:
            raise DuetgenInputError(f"sketch {name!r} has a malformed transform {kind}({raw_args.strip()})")
        matrix = matrix @ step
    return matrix


def _translation(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def _own_style(element: ET.Element) -> dict[str, str]:
    """Presentation attributes of one element, with its ``style`` declarations taking precedence."""
    style = {key: element.get(key) for key in _PAINT_KEYS if element.get(key) is not None}
    for declaration in element.get("style", "").split(";"):
        key, _, value = declaration.partition(":")
        if key.strip() in _PAINT_KEYS and value.strip():
            style[key.strip()] = value.strip()
    return style


def _paint(value: str | None) -> str | None:
    """Classify a paint value: None (unspecified), 'none', 'white' or 'ink' (any other colour)."""
    if value is None or value.strip().lower() == "inherit":
        return None
    value = value.strip().lower().replace(" ", "")
    if value in ("none", "transparent"):
        return "none"
    if value in ("white", "#fff", "#ffffff", "rgb(255,255,255)"):
        return "white"
    return "ink"


def _overflow_error(name: str, tag: str) -> DuetgenInputError:
    return DuetgenInputError(
        f"sketch {name!r} has a <{tag}> whose coordinates or stroke width are infinite or overflow after its "
        "transforms; fix the numbers in the file (e.g. 1e999 or scale(1e300))"
    )


def _svg_shapes(data: bytes, name: str, limits: SketchLimits) -> tuple[list[_Shape], tuple | None]:
    """Parse an SVG into shapes in user units, and its canvas frame (None if it declares none)."""
    root = _parse_svg(data, name, limits)
    frame = _svg_frame(root)
    shapes: list[_Shape] = []
    budget = [limits.max_points]

    def walk(element: ET.Element, ctm: np.ndarray, style: dict[str, str], depth: int) -> None:
        if depth > _MAX_SVG_DEPTH:
            raise DuetgenInputError(
                f"sketch {name!r} nests SVG elements over {_MAX_SVG_DEPTH} deep; flatten its groups (ungroup them in "
                "the drawing program) and save it again"
            )
        tag = _local(element.tag)
        if tag not in _SVG_CONTAINERS and tag not in _SVG_SHAPES:
            logger.debug("sketch %r: skipping unsupported SVG element <%s>", name, tag)
            return
        style = {**style, **_own_style(element)}
        if style.get("display") == "none" or style.get("visibility") in ("hidden", "collapse"):
            return
        ctm = ctm @ _parse_transform(element.get("transform"), name)
        if tag in _SVG_CONTAINERS:
            for child in element:
                walk(child, ctm, style, depth + 1)
            return
        stroke, fill = _paint(style.get("stroke")), _paint(style.get("fill"))
        # Sketches are line drawings: an element with neither stroke nor fill set is drawn as an outline.
        draw_stroke = stroke == "ink" or (stroke is None and fill in (None, "none"))
        draw_fill = fill == "ink" or (fill is None and stroke in ("none", "white"))
        if not (draw_stroke or draw_fill):
            return
        width = _length(style.get("stroke-width"))
        width = 1.0 if width is None or width < 0 else width
        width *= math.sqrt(abs(np.linalg.det(ctm[:2, :2])))  # user units of the root
        try:
            subpaths = _element_geometry(element, tag, frame, budget)
        except ValueError as err:
            raise DuetgenInputError(f"sketch {name!r} has a malformed <{tag}>: {_one_line(err)}") from err
        except ArithmeticError as err:  # a float overflow in arc geometry
            raise _overflow_error(name, tag) from err
        if not math.isfinite(width):
            raise _overflow_error(name, tag)
        for points, closed in subpaths:
            if len(points) < 2:
                continue  # a lone moveto draws nothing
            if closed and len(points) > 1 and points[0] != points[-1]:
                points = [*points, points[0]]
            xy = np.asarray(points, dtype=np.float64)  # (N, 2)
            xy = xy @ ctm[:2, :2].T + ctm[:2, 2]
            if not np.isfinite(xy).all():
                raise _overflow_error(name, tag)
            shapes.append(_Shape(points=xy, width=width, stroke=draw_stroke, fill=draw_fill))
            if len(shapes) > limits.max_strokes:
                raise DuetgenInputError(
                    f"sketch {name!r} has over {limits.max_strokes:,} shapes (SketchLimits.max_strokes)"
                )

    with np.errstate(all="ignore"):  # overflows become inf / NaN, refused by _overflow_error
        walk(root, np.eye(3), {}, 0)
    if not shapes:
        raise _blank_error(name, "no path, polyline, polygon, line, rect, circle or ellipse to draw")
    return shapes, frame


def _element_geometry(
    element: ET.Element, tag: str, frame: tuple | None, budget: list[int]
) -> list[tuple[list[tuple[float, float]], bool]]:
    """Subpaths (points, closed) of one SVG shape element, in its own user units."""
    frame_width = None if frame is None else frame[2] - frame[0]
    frame_height = None if frame is None else frame[3] - frame[1]

    def length(key: str, reference: float | None) -> float:
        value = _length(element.get(key), reference)
        return 0.0 if value is None else value

    if tag == "path":
        return _path_subpaths(element.get("d", ""), budget)  # counts its points against the budget itself
    if tag in ("polyline", "polygon"):
        numbers = [float(v) for v in _NUMBER_RE.findall(element.get("points", ""))]
        points = list(zip(numbers[0::2], numbers[1::2], strict=False))
        subpaths = [(points, tag == "polygon")] if points else []
    elif tag == "line":
        start = (length("x1", frame_width), length("y1", frame_height))
        end = (length("x2", frame_width), length("y2", frame_height))
        subpaths = [([start, end], False)]
    elif tag == "rect":
        x, y = length("x", frame_width), length("y", frame_height)
        width, height = length("width", frame_width), length("height", frame_height)
        corners = [(x, y), (x + width, y), (x + width, y + height), (x, y + height)]
        subpaths = [(corners, True)] if width > 0 and height > 0 else []
    else:  # circle, ellipse
        cx, cy = length("cx", frame_width), length("cy", frame_height)
        if tag == "circle":
            rx = ry = length("r", None if frame is None else math.hypot(frame_width, frame_height) / math.sqrt(2))
        else:
            rx, ry = length("rx", frame_width), length("ry", frame_height)
        angles = np.linspace(0.0, 2.0 * math.pi, 49)[:-1]
        ring = list(zip((cx + rx * np.cos(angles)).tolist(), (cy + ry * np.sin(angles)).tolist(), strict=True))
        subpaths = [(ring, True)] if rx > 0 and ry > 0 else []
    budget[0] -= sum(len(points) for points, _ in subpaths)
    if budget[0] < 0:
        raise ValueError("too many points (SketchLimits.max_points)")
    return subpaths


class _PathScanner:
    """Reads commands, numbers and arc flags from SVG path data."""

    def __init__(self, data: str) -> None:
        self.data, self.pos = data, 0

    def _skip(self) -> None:
        while self.pos < len(self.data) and self.data[self.pos] in " \t\r\n,":
            self.pos += 1

    def at_end(self) -> bool:
        self._skip()
        return self.pos >= len(self.data)

    def command(self) -> str | None:
        self._skip()
        if self.pos < len(self.data) and self.data[self.pos] in "MmLlHhVvCcSsQqTtAaZz":
            self.pos += 1
            return self.data[self.pos - 1]
        return None

    def number(self) -> float:
        self._skip()
        match = _NUMBER_RE.match(self.data, self.pos)
        if not match:
            raise ValueError(f"expected a number at position {self.pos} of the path data")
        self.pos = match.end()
        return float(match.group())

    def flag(self) -> bool:
        self._skip()
        if self.pos < len(self.data) and self.data[self.pos] in "01":
            self.pos += 1
            return self.data[self.pos - 1] == "1"
        raise ValueError(f"expected an arc flag 0 or 1 at position {self.pos} of the path data")


def _bezier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Flatten a quadratic (3 points) or cubic (4 points) Bezier curve, without its start point."""
    t = np.linspace(0.0, 1.0, _CURVE_STEPS + 1)[1:, None]  # (S, 1)
    p = [np.asarray(point) for point in points]
    if len(p) == 3:
        curve = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
    else:
        curve = (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]
    return [tuple(q) for q in curve.tolist()]


def _arc(
    start: tuple[float, float],
    rx: float,
    ry: float,
    rotation: float,
    large: bool,
    sweep: bool,
    end: tuple[float, float],
) -> list[tuple[float, float]]:
    """Flatten an SVG elliptical arc (endpoint parameterisation, SVG 1.1 appendix F.6), without its start."""
    if start == end:
        return []
    rx, ry = abs(rx), abs(ry)
    if rx == 0 or ry == 0:
        return [end]
    phi = math.radians(rotation)
    cos, sin = math.cos(phi), math.sin(phi)
    dx, dy = (start[0] - end[0]) / 2.0, (start[1] - end[1]) / 2.0
    x1, y1 = cos * dx + sin * dy, -sin * dx + cos * dy
    scale = x1**2 / rx**2 + y1**2 / ry**2
    if scale > 1:  # radii too small to reach the end point: scale them up
        rx, ry = rx * math.sqrt(scale), ry * math.sqrt(scale)
    numerator = rx**2 * ry**2 - rx**2 * y1**2 - ry**2 * x1**2
    denominator = rx**2 * y1**2 + ry**2 * x1**2
    coef = math.sqrt(max(0.0, numerator / denominator)) * (-1.0 if large == sweep else 1.0)
    cx1, cy1 = coef * rx * y1 / ry, -coef * ry * x1 / rx
    cx = cos * cx1 - sin * cy1 + (start[0] + end[0]) / 2.0
    cy = sin * cx1 + cos * cy1 + (start[1] + end[1]) / 2.0
    theta = math.atan2((y1 - cy1) / ry, (x1 - cx1) / rx)
    delta = math.atan2((-y1 - cy1) / ry, (-x1 - cx1) / rx) - theta
    if sweep and delta < 0:
        delta += 2 * math.pi
    elif not sweep and delta > 0:
        delta -= 2 * math.pi
    steps = max(4, math.ceil(abs(delta) / (2 * math.pi) * 48))
    angles = theta + delta * np.linspace(0.0, 1.0, steps + 1)[1:]
    xs = cx + rx * np.cos(angles) * cos - ry * np.sin(angles) * sin
    ys = cy + rx * np.cos(angles) * sin + ry * np.sin(angles) * cos
    points = list(zip(xs.tolist(), ys.tolist(), strict=True))
    points[-1] = end
    return points


def _point(scanner: _PathScanner, ox: float, oy: float) -> tuple[float, float]:
    """Read one coordinate pair, offset by (ox, oy) for relative commands."""
    x = scanner.number() + ox
    return x, scanner.number() + oy


def _path_subpaths(data: str, budget: list[int]) -> list[tuple[list[tuple[float, float]], bool]]:
    """Flatten SVG path data into subpaths (points, closed); curves and arcs become polylines."""
    scanner = _PathScanner(data)
    subpaths: list[tuple[list[tuple[float, float]], bool]] = []
    current: list[tuple[float, float]] | None = None
    x = y = 0.0
    start = (0.0, 0.0)
    command = last = ""
    control: tuple[float, float] | None = None  # last cubic (C/S) or quadratic (Q/T) control point
    while not scanner.at_end():
        explicit = scanner.command()
        if explicit is None:
            if not command or command in "Zz":
                raise ValueError(f"expected a command at position {scanner.pos} of the path data")
            explicit = {"M": "L", "m": "l"}.get(command, command)  # numbers after M/m are implicit lines
        command = explicit
        relative, kind = command.islower(), command.upper()
        ox, oy = (x, y) if relative else (0.0, 0.0)
        pair = partial(_point, scanner, ox, oy)
        if kind == "M":
            x, y = pair()
            start, current = (x, y), [(x, y)]
            subpaths.append((current, False))
            last, control = kind, None
            continue
        if kind == "Z":
            if current is not None:
                subpaths[-1] = (current, True)
            x, y = start
            current, last, control = None, kind, None
            continue
        if current is None:  # drawing after Z (or without M) starts a new subpath at the current point
            current = [(x, y)]
            subpaths.append((current, False))
        if kind == "L":
            x, y = pair()
            new = [(x, y)]
        elif kind == "H":
            x = scanner.number() + ox
            new = [(x, y)]
        elif kind == "V":
            y = scanner.number() + oy
            new = [(x, y)]
        elif kind in "CS":
            if kind == "C":
                first = pair()
            else:
                first = (2 * x - control[0], 2 * y - control[1]) if last in ("C", "S") and control else (x, y)
            control = pair()
            end = pair()
            new = _bezier([(x, y), first, control, end])
            x, y = end
        elif kind in "QT":
            if kind == "Q":
                control = pair()
            else:
                control = (2 * x - control[0], 2 * y - control[1]) if last in ("Q", "T") and control else (x, y)
            end = pair()
            new = _bezier([(x, y), control, end])
            x, y = end
        else:  # "A"
            rx, ry, rotation = scanner.number(), scanner.number(), scanner.number()
            large, sweep = scanner.flag(), scanner.flag()
            end = pair()
            new = _arc((x, y), rx, ry, rotation, large, sweep, end)
            x, y = end
        if kind not in "CSQT":
            control = None
        current.extend(new)
        last = kind
        budget[0] -= len(new)
        if budget[0] < 0:
            raise ValueError("too many points (SketchLimits.max_points)")
    return subpaths
