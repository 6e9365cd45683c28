"""duetgen: a freehand sketch says what and how it is posed; a few words say what colour, texture, style.

The sketch becomes a pseudo-word token spliced into CLIP's text encoder next to the user's words, giving one
composed query that drives retrieval, scene retrieval, attribute transfer and generation.
"""

from .version import __version__
from .errors import CheckpointError, DuetgenError, DuetgenInputError, WeightsUnavailableError
from .backbones import build_clip, list_backbones, load_clip, register_backbone
from .composed_query_encoder import ComposedQueryEncoder, PhotoEmbedding, encoder_from_backbone
from .loading import load_encoder
from .gallery import Gallery, GalleryBuilder, SearchResult
from .scene_retrieval import RegionConfig, search_scenes
from .pipelines import DuetGenPipeline, load_pipeline
from .sketch_input import DEFAULT_LIMITS, SketchLimits, load_sketch, read_sketch

__all__ = [
    "__version__",
    "CheckpointError",
    "ComposedQueryEncoder",
    "DuetgenError",
    "DuetgenInputError",
    "PhotoEmbedding",
    "WeightsUnavailableError",
    "build_clip",
    "encoder_from_backbone",
    "load_encoder",
    "Gallery",
    "GalleryBuilder",
    "SearchResult",
    "RegionConfig",
    "search_scenes",
    "DuetGenPipeline",
    "load_pipeline",
    "load_sketch",
    "read_sketch",
    "SketchLimits",
    "DEFAULT_LIMITS",
    "list_backbones",
    "load_clip",
    "register_backbone",
]
