"""TUBerlinDataset: TU-Berlin sketches (Eitz et al. 2012), 250 classes, no photos: category-level sketch data.

Layout: ``<root>/<class>/<n>.png`` (the official ``png/`` folder; a root holding ``png/`` is also accepted).
Any raster image inside a class folder is read; other files (``filelist.txt``, ``.svg``) are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from duetgen.errors import DuetgenInputError

from ._common import Transform, list_images, list_subdirs, open_image, select_classes

_EXPECTED = "<class>/<n>.png class folders of PNG sketches (or png/<class>/<n>.png)"


class TUBerlinDataset(Dataset):
    """TU-Berlin sketches with class labels; one item per sketch.

    Args:
        root: the folder of class folders (or its parent holding ``png/``).
        classes: class names to keep; None keeps every class.
        load_images: decode with PIL in ``__getitem__`` (True) or return paths (False).
        sketch_transform: applied to each sketch (PIL image, or path with ``load_images=False``).
        image_mode: PIL mode images are converted to.

    Attributes:
        classes, sketches (paths), sketch_labels ((N,) int64).

    Raises:
        DuetgenInputError: the folder is missing, has no class folders, or a class folder has no images.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        classes: Sequence[str] | None = None,
        *,
        load_images: bool = True,
        sketch_transform: Transform | None = None,
        image_mode: str = "RGB",
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DuetgenInputError(f"TU-Berlin root '{root}' is not a folder; expected {_EXPECTED}")
        if (root / "png").is_dir():
            root = root / "png"
        available = list_subdirs(root)
        if not available:
            raise DuetgenInputError(f"TU-Berlin root '{root}' has no class folders; expected {_EXPECTED}")
        self.root = root
        self.classes = select_classes(available, classes, root, "TU-Berlin")
        sketches, labels = [], []
        for label, cls in enumerate(self.classes):
            files = list_images(root / cls)
            if not files:
                raise DuetgenInputError(f"TU-Berlin class folder '{root / cls}' holds no images; expected <n>.png")
            files.sort(key=lambda p: (len(p.stem), p.stem))  # 1.png, 2.png, ..., 10.png
            sketches += files
            labels += [label] * len(files)
        self.sketches = sketches
        self.sketch_labels = np.asarray(labels, dtype=np.int64)
        self.load_images = load_images
        self.sketch_transform = sketch_transform
        self.image_mode = image_mode

    def __len__(self) -> int:
        return len(self.sketches)

    def load_sketch(self, index: int) -> Any:
        path = self.sketches[index]
        item: Any = open_image(path, self.image_mode) if self.load_images else str(path)
        return self.sketch_transform(item) if self.sketch_transform is not None else item

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Returns ``{"sketch", "label", "sketch_path"}``."""
        return {
            "sketch": self.load_sketch(index),
            "label": int(self.sketch_labels[index]),
            "sketch_path": str(self.sketches[index]),
        }

    def __repr__(self) -> str:
        return f"TUBerlinDataset(root='{self.root}', classes={len(self.classes)}, sketches={len(self)})"
