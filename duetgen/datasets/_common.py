"""Shared helpers of the dataset loaders: image listing, lazy PIL loading, class selection."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from duetgen.errors import DuetgenInputError

# Raster formats PIL decodes; vector sketches (.svg) are not listed (rasterise them first).
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

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
    """Decode an image with PIL; transparent pixels are composited on white (sketches are ink on paper)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            return im.convert(mode)
    except (OSError, ValueError) as e:
        raise DuetgenInputError(f"image '{path}' could not be decoded: {e}") from e


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
