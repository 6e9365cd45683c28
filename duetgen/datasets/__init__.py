"""Loaders of real sketch datasets, as map-style torch Datasets with lazy PIL decoding.

- :class:`SketchyDataset` (basic ``tx_*`` and flat layouts), :class:`QMULDataset` (Shoe-V2, Chair-V2):
  sketches paired with a de-duplicated photo gallery, class labels, photo indices.
- :class:`TUBerlinDataset`, :class:`QuickDrawDataset`: category-level sketches (no photos).
- :class:`PairedSketchPhotoDataset`, :class:`CategoryDataset`: training / evaluation views.
- :func:`load_class_split`, :func:`make_class_split`: zero-shot class splits (``duetgen/splits/``).

A missing or malformed folder raises :class:`duetgen.errors.DuetgenInputError` naming the path and the expected
layout.
"""

from .class_split import ClassSplit, list_class_splits, load_class_split, make_class_split, sketchy_classes
from .qmul import QMULDataset
from .quickdraw import QuickDrawDataset, render_strokes
from .sketch_photo_dataset import SketchPhotoDataset
from .sketchy import SketchyDataset
from .tuberlin import TUBerlinDataset
from .views import CategoryDataset, PairedSketchPhotoDataset

__all__ = [
    "CategoryDataset",
    "ClassSplit",
    "PairedSketchPhotoDataset",
    "QMULDataset",
    "QuickDrawDataset",
    "SketchPhotoDataset",
    "SketchyDataset",
    "TUBerlinDataset",
    "list_class_splits",
    "load_class_split",
    "make_class_split",
    "render_strokes",
    "sketchy_classes",
]
