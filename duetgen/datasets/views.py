"""Training and evaluation views over the loaders: paired (fine-grained), category-level, and photo gallery."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from duetgen.errors import DuetgenInputError

from .sketch_photo_dataset import SketchPhotoDataset

_DOMAINS = ("sketch", "photo")


class PairedSketchPhotoDataset(Dataset):
    """(sketch, photo, class index, photo index) per sketch, for training on sketch/photo pairs.

    ``photo index`` indexes ``photos``, the de-duplicated gallery, so it is also the Acc@K target.
    Decoding and transforms are those of ``source`` (a :class:`SketchyDataset` or :class:`QMULDataset`).

    Attributes:
        classes: class names (the class index indexes it).
        photos: unique photo paths (the gallery).
        photo_labels: (P,) class index of each photo.
        photo_ids: unique photo ids.
        sketch_labels: (N,) class index of each sketch.
        targets: (N,) photo index of each sketch.
    """

    def __init__(self, source: SketchPhotoDataset) -> None:
        if not isinstance(source, SketchPhotoDataset):
            raise DuetgenInputError(
                f"PairedSketchPhotoDataset needs a sketch/photo dataset (SketchyDataset, QMULDataset); "
                f"got {type(source).__name__}"
            )
        self.source = source

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    @property
    def photos(self) -> list:
        return self.source.photos

    @property
    def photo_labels(self) -> np.ndarray:
        return self.source.photo_labels

    @property
    def photo_ids(self) -> list[str]:
        return self.source.photo_ids

    @property
    def sketch_labels(self) -> np.ndarray:
        return self.source.sketch_labels

    @property
    def targets(self) -> np.ndarray:
        return self.source.sketch_photo

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Any, Any, int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} sketches")
        index = index % len(self)
        p = int(self.source.sketch_photo[index])
        return self.source.load_sketch(index), self.source.load_photo(p), int(self.source.sketch_labels[index]), p


class CategoryDataset(Dataset):
    """(image, class index) per item of one domain, for category-level training and evaluation.

    Args:
        source: any loader (:class:`SketchyDataset`, :class:`QMULDataset`, :class:`TUBerlinDataset`,
            :class:`QuickDrawDataset`).
        domain: ``"sketch"`` (one item per sketch) or ``"photo"`` (one item per unique photo; the item index is
            the gallery index, so this doubles as the photo gallery for retrieval).

    Attributes:
        classes: class names; labels: (N,) int64 class index of each item.
    """

    def __init__(self, source: Any, domain: str = "sketch") -> None:
        if domain not in _DOMAINS:
            raise DuetgenInputError(f"domain must be one of {_DOMAINS}; got {domain!r}")
        if domain == "photo" and not hasattr(source, "load_photo"):
            raise DuetgenInputError(f"{type(source).__name__} has no photos; use domain='sketch'")
        self.source = source
        self.domain = domain

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    @property
    def labels(self) -> np.ndarray:
        return self.source.photo_labels if self.domain == "photo" else self.source.sketch_labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        load = self.source.load_photo if self.domain == "photo" else self.source.load_sketch
        return load(index), int(self.labels[index])
