"""Shared helpers of the dataset loaders: image listing, lazy PIL loading, class selection."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from duetgen.errors import DuetgenInputError

# Raster formats PIL decodes; vector sketches (.svg) are not listed (rasterise them first).
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Decoders open_image may use (no EPS / PostScript, no exotic plugins), and its pixel bound, checked on the header
# before decoding: PIL's own decompression-bomb threshold (about 9,500 x 9,500).
DECODERS = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF", "PPM")
MAX_IMAGE_PIXELS = 89_478_485
MAX_TEXT_BYTES = 10_000_000  # split files and lists of names


def read_text_file(path: Path, what: str, expected: str) -> str:
    """The UTF-8 text of a small listing file (split file, class list), refusing huge or non-text files."""
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise DuetgenInputError(f"{what} '{path}' is {size:,} bytes, over {MAX_TEXT_BYTES:,}; expected {expected}")
        data = path.read_bytes()
    except OSError as e:
        raise DuetgenInputError(f"{what} '{path}' cannot be read ({e.strerror or e}); expected {expected}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DuetgenInputError(f"{what} '{path}' is not UTF-8 text (byte {e.start}); expected {expected}") from e


Transform = Callable[[Any], Any]


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    with os.scandir(folder) as it:
        files = [
            Path(e.path)
            for e in it
            if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS
        ]
    return sorted(files, key=lambda p: p.name)


def list_subdirs(folder: Path) -> list[str]:
    """Names of the sub-folders of ``folder``, sorted (hidden folders skipped)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def require_dir(path: Path, what: str, expected: str) -> Path:
    if not path.is_dir():
        raise DuetgenInputError(f"{what} '{path}' is not a folder; expected {expected}")
    return path


def open_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Decode an image with PIL; transparent pixels are composited on white (sketches are ink on paper).

    The pixel count is read from the header and checked against :data:`MAX_IMAGE_PIXELS` before decoding; only the
    first frame of an animation is decoded.

    Raises:
        DuetgenInputError: the file is missing, not an image, truncated or corrupt, or too large.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=DECODERS) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise _too_large(path, f"{w}x{h} = {w * h:,} pixels")
                if w == 0 or h == 0:
                    raise DuetgenInputError(f"image '{path}' has no pixels ({w}x{h}); replace the file")
                im.load()
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(white, rgba)
                return im.convert(mode)
    except DuetgenInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        declared = re.search(r"\((\d+) pixels\)", str(e))  # PIL: "Image size (N pixels) exceeds limit of ..."
        raise _too_large(path, f"{int(declared.group(1)):,} pixels" if declared else "its declared size") from e
    except FileNotFoundError as e:
        raise DuetgenInputError(f"image '{path}' does not exist; check the dataset folder") from e
    except Image.UnidentifiedImageError as e:
        raise DuetgenInputError(
            f"image '{path}' is not a PNG, JPEG, BMP, WebP, GIF, TIFF or PPM image; replace or remove the file"
        ) from e
    except Exception as e:  # noqa: BLE001 - PIL's decoders raise OSError, SyntaxError, EOFError, struct.error...
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DuetgenInputError(
            f"image '{path}' could not be decoded (truncated or corrupt: {detail}); replace or remove the file"
        ) from e


def _too_large(path: str | os.PathLike, dims: str) -> DuetgenInputError:
    return DuetgenInputError(
        f"image '{path}' is too large: {dims} is over {MAX_IMAGE_PIXELS:,} pixels (a possible decompression bomb); "
        "downscale it first"
    )


def select_classes(available: Sequence[str], classes: Sequence[str] | None, root: Path, what: str) -> list[str]:
    """The requested classes (in the order of ``available``), or all; unknown names are an error."""
    if classes is None:
        return list(available)
    if isinstance(classes, str):
        raise DuetgenInputError(f"classes must be a list of class names, not the string {classes!r}")
    wanted = set(classes)
    missing = sorted(wanted - set(available))
    if missing:
        raise DuetgenInputError(
            f"{what} root '{root}' has no class(es) {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            f"available: {list(available)[:8]}{' ...' if len(available) > 8 else ''}"
        )
    return [c for c in available if c in wanted]
