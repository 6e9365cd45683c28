"""SketchPhotoDataset: sketches paired with photos, with class labels. Base of Sketchy and QMUL loaders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ._common import Transform, open_image


class SketchPhotoDataset(Dataset):
    """Map-style dataset of sketches, each paired with one photo; one item per sketch.

    The photos form a de-duplicated gallery (``photos``): several sketches may share one photo, and photos
    without a sketch are kept (they are gallery distractors). ``sketch_photo[i]`` is the gallery index of the
    photo paired with sketch ``i``: the target index for :func:`duetgen.metrics.acc_at_k`.

    Images are decoded lazily, in ``__getitem__``, with PIL. With ``load_images=False`` the items hold paths
    instead. A transform receives whatever the item would hold (PIL image, or path string) and its result
    replaces it.

    Attributes:
        root: the dataset folder.
        classes: class names; a label is an index into this list.
        sketches: (N,) sketch paths.
        sketch_labels: (N,) int64 class index of each sketch.
        sketch_photo: (N,) int64 index into ``photos`` of each sketch's paired photo.
        photos: (P,) unique photo paths.
        photo_labels: (P,) int64 class index of each photo.
        photo_ids: (P,) unique photo ids (e.g. ``"airplane/n02691156_10151"``).
    """

    def __init__(
        self,
        *,
        root: Path,
        classes: Sequence[str],
        sketches: Sequence[Path],
        sketch_labels: Sequence[int],
        sketch_photo: Sequence[int],
        photos: Sequence[Path],
        photo_labels: Sequence[int],
        photo_ids: Sequence[str],
        load_images: bool = True,
        sketch_transform: Transform | None = None,
        photo_transform: Transform | None = None,
        image_mode: str = "RGB",
    ) -> None:
        self.root = Path(root)
        self.classes = list(classes)
        self.sketches = list(sketches)
        self.sketch_labels = np.asarray(sketch_labels, dtype=np.int64).reshape(-1)
        self.sketch_photo = np.asarray(sketch_photo, dtype=np.int64).reshape(-1)
        self.photos = list(photos)
        self.photo_labels = np.asarray(photo_labels, dtype=np.int64).reshape(-1)
        self.photo_ids = list(photo_ids)
        self.load_images = load_images
        self.sketch_transform = sketch_transform
        self.photo_transform = photo_transform
        self.image_mode = image_mode

    def __len__(self) -> int:
        return len(self.sketches)

    @property
    def class_to_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def load_sketch(self, index: int) -> Any:
        """Sketch ``index`` as a PIL image (or its path with ``load_images=False``), transformed."""
        path = self.sketches[index]
        item: Any = open_image(path, self.image_mode) if self.load_images else str(path)
        return self.sketch_transform(item) if self.sketch_transform is not None else item

    def load_photo(self, index: int) -> Any:
        """Gallery photo ``index`` as a PIL image (or its path with ``load_images=False``), transformed."""
        path = self.photos[index]
        item: Any = open_image(path, self.image_mode) if self.load_images else str(path)
        return self.photo_transform(item) if self.photo_transform is not None else item

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sketch ``index`` and its photo.

        Returns:
            ``{"sketch", "photo", "label", "photo_index", "sketch_path", "photo_path"}``.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} sketches")
        index = index % len(self)
        p = int(self.sketch_photo[index])
        return {
            "sketch": self.load_sketch(index),
            "photo": self.load_photo(p),
            "label": int(self.sketch_labels[index]),
            "photo_index": p,
            "sketch_path": str(self.sketches[index]),
            "photo_path": str(self.photos[p]),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root='{self.root}', classes={len(self.classes)}, sketches={len(self.sketches)}, "
            f"photos={len(self.photos)})"
        )
