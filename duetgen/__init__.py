"""duetgen: a freehand sketch says what and how it is posed; a few words say what colour, texture, style.

The sketch becomes a pseudo-word token spliced into CLIP's text encoder next to the user's words, giving one
composed query that drives retrieval, scene retrieval, attribute transfer and generation.

The public names below are imported lazily (PEP 562), so ``import duetgen`` and ``duetgen --version`` stay fast;
torch, open_clip and diffusers load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import CheckpointError, DuetgenError, DuetgenInputError, WeightsUnavailableError
from .version import __version__

_LAZY = {
    "build_clip": "backbones",
    "list_backbones": "backbones",
    "load_clip": "backbones",
    "register_backbone": "backbones",
    "ComposedQueryEncoder": "composed_query_encoder",
    "PhotoEmbedding": "composed_query_encoder",
    "encoder_from_backbone": "composed_query_encoder",
    "load_encoder": "loading",
    "Gallery": "gallery",
    "GalleryBuilder": "gallery",
    "SearchResult": "gallery",
    "RegionConfig": "scene_retrieval",
    "search_scenes": "scene_retrieval",
    "DuetGenPipeline": "pipelines",
    "load_pipeline": "pipelines",
    "DEFAULT_LIMITS": "sketch_input",
    "SketchLimits": "sketch_input",
    "load_sketch": "sketch_input",
    "read_sketch": "sketch_input",
    "read_photo": "sketch_input",
    "SilhouetteVerifier": "verify",
    "SceneVerifier": "verify",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; re-exported through __all__
    # ruff: noqa: F401
    from .backbones import build_clip, list_backbones, load_clip, register_backbone
    from .composed_query_encoder import ComposedQueryEncoder, PhotoEmbedding, encoder_from_backbone
    from .gallery import Gallery, GalleryBuilder, SearchResult
    from .loading import load_encoder
    from .pipelines import DuetGenPipeline, load_pipeline
    from .scene_retrieval import RegionConfig, search_scenes
    from .sketch_input import DEFAULT_LIMITS, SketchLimits, load_sketch, read_photo, read_sketch
    from .verify import SceneVerifier, SilhouetteVerifier


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:  # a submodule, e.g. duetgen.world or duetgen.backbones
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'duetgen' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "CheckpointError",
    "DuetgenError",
    "DuetgenInputError",
    "WeightsUnavailableError",
    *_LAZY,
]
