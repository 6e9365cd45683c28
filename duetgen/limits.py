"""Request limits: how much one request may ask for, checked where requests come in.

Each limit has a documented default and an environment variable that changes it (read at every check, so it can
be set in the shell, in a service's environment, or with ``os.environ`` in a running program). A request over a
limit fails at once with a one-line :class:`~duetgen.errors.DuetgenInputError` that names the limit and the
variable, before any work is done. ``docs/limits.md`` lists every limit, with the sketch-file limits of
:class:`duetgen.sketch_input.SketchLimits`.

==========================  ===========  ======================================================================
variable                    default      what it bounds
==========================  ===========  ======================================================================
``DUETGEN_MAX_BATCH``       256          prompts (sketches / word strings) in one generation call; images per
                                         forward pass of ``duetgen index --batch-size``; rows per pipeline call
                                         of ``recipes/sketch_text_generation.py --batch``
``DUETGEN_MAX_IMAGES``      64           images one generation call makes (prompts x ``num_images_per_prompt``;
                                         ``duetgen generate --num-images``)
``DUETGEN_MAX_STEPS``       1000         denoising steps of one generation call (``--steps``)
``DUETGEN_MAX_K``           1000         results per query of a gallery search (``duetgen retrieve -k``)
``DUETGEN_MAX_QUERIES``     1024         queries in one gallery search request
``DUETGEN_MAX_TEXT_CHARS``  1000         characters of one word string, checked before it is tokenised; the
                                         model's token context (77 tokens for CLIP) is enforced after
``DUETGEN_MAX_PIXELS``      16777216     pixels (width x height) of a raster sketch, from its header
``DUETGEN_MAX_FILE_MB``     50           megabytes of a sketch file or upload of bytes
``DUETGEN_MAX_STROKES``     10000        strokes of a vector sketch (QuickDraw, stroke-3, SVG shapes)
``DUETGEN_MAX_POINTS``      1000000      points of a vector sketch
``DUETGEN_MAX_SVG_ELEMENTS`` 100000      XML elements of an SVG sketch
==========================  ===========  ======================================================================

The last five build the :class:`~duetgen.sketch_input.SketchLimits` that :func:`sketch_limits` returns and the
command line and the pipelines pass to ``load_sketch``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from .errors import DuetgenInputError

ENV = {
    "max_batch": "DUETGEN_MAX_BATCH",
    "max_images": "DUETGEN_MAX_IMAGES",
    "max_steps": "DUETGEN_MAX_STEPS",
    "max_k": "DUETGEN_MAX_K",
    "max_queries": "DUETGEN_MAX_QUERIES",
    "max_text_chars": "DUETGEN_MAX_TEXT_CHARS",
}
SKETCH_ENV = {
    "max_pixels": "DUETGEN_MAX_PIXELS",
    "max_file_bytes": "DUETGEN_MAX_FILE_MB",  # in megabytes
    "max_strokes": "DUETGEN_MAX_STROKES",
    "max_points": "DUETGEN_MAX_POINTS",
    "max_svg_elements": "DUETGEN_MAX_SVG_ELEMENTS",
}
UNITS = {
    "max_batch": "items in one batch",
    "max_images": "images in one generation call",
    "max_steps": "denoising steps",
    "max_k": "results per query",
    "max_queries": "queries in one search",
    "max_text_chars": "characters",
}


@dataclass(frozen=True)
class Limits:
    """The request limits in force (defaults; :func:`current` applies the environment)."""

    max_batch: int = 256
    max_images: int = 64
    max_steps: int = 1000
    max_k: int = 1000
    max_queries: int = 1024
    max_text_chars: int = 1000


DEFAULTS = Limits()


def _env_int(var: str, default: int) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DuetgenInputError(f"{var}={raw!r} is not a whole number; set it to a limit >= 1 or unset it") from None
    if value < 1:
        raise DuetgenInputError(f"{var}={raw!r} must be >= 1; unset it for the default of {default:,}")
    return value


def current() -> Limits:
    """The limits in force now: the defaults, overridden by the ``DUETGEN_MAX_*`` environment variables.

    Raises:
        DuetgenInputError: a variable is set to something that is not a whole number >= 1.
    """
    return Limits(**{f.name: _env_int(ENV[f.name], getattr(DEFAULTS, f.name)) for f in fields(Limits)})


def sketch_limits():
    """:class:`duetgen.sketch_input.SketchLimits` with the ``DUETGEN_MAX_PIXELS`` / ``_FILE_MB`` / ``_STROKES`` /
    ``_POINTS`` / ``_SVG_ELEMENTS`` overrides applied (the defaults are ``SketchLimits``' own)."""
    from .sketch_input import SketchLimits

    base = SketchLimits()
    values = {}
    for name, var in SKETCH_ENV.items():
        default = getattr(base, name)
        if name == "max_file_bytes":  # configured in megabytes
            values[name] = _env_int(var, 0) * 1024 * 1024 or default
        else:
            values[name] = _env_int(var, default)
    return SketchLimits(**values)


def check(name: str, value: int, what: str, limits: Limits | None = None) -> int:
    """Raises a one-line DuetgenInputError when ``value`` is over the limit ``name`` (a :class:`Limits` field).

    Args:
        name: ``"max_batch"``, ``"max_images"``, ``"max_steps"``, ``"max_k"``, ``"max_queries"`` or
            ``"max_text_chars"``.
        value: what the request asks for.
        what: how the user gave it (``"-k"``, ``"--num-images"``, ``"num_images_per_prompt x prompts"``).
        limits: the limits to apply (default: :func:`current`).

    Returns:
        ``value``.
    """
    limit = getattr(limits or current(), name)
    if value > limit:
        raise DuetgenInputError(
            f"{what}: {value:,} {UNITS[name]}, over the limit of {limit:,}; set {ENV[name]} to change the limit"
        )
    return value


__all__ = ["DEFAULTS", "ENV", "SKETCH_ENV", "Limits", "check", "current", "sketch_limits"]
