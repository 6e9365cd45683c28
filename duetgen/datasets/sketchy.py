"""SketchyDataset: the Sketchy database (Sangkloy et al. 2016) and its extension, in Sketchy's own layouts.

Accepted layouts (detected automatically):

- basic (the rendered 256x256 release): ``sketch/tx_000000000000/<class>/<photo_id>-<n>.png`` and
  ``photo/tx_000000000000/<class>/<photo_id>.jpg``; other augmentation folders (``tx_...``) are chosen with
  ``sketch_augmentation`` / ``photo_augmentation``. A root holding ``256x256/sketch`` is also accepted.
- flat (the extended Sketchy and duetgen's ``sketchy128`` sample): ``sketch/<class>/<photo_id>-<n>.png`` and
  ``photo/<class>/<photo_id>.jpg``.

Sketch ``<photo_id>-<n>.<ext>`` pairs with photo ``<photo_id>.<ext>`` of the same class. Photos without a sketch
(e.g. the extension's extra photos) stay in the gallery.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from duetgen.errors import DuetgenInputError

from ._common import Transform, list_images, list_subdirs, select_classes
from .sketch_photo_dataset import SketchPhotoDataset

logger = logging.getLogger(__name__)

_EXPECTED = "sketch/<class>/<photo_id>-<n>.png or sketch/tx_000000000000/<class>/<photo_id>-<n>.png"
_LAYOUTS = ("auto", "basic", "flat")


def _resolve_root(root: Path) -> Path:
    if not root.is_dir():
        raise DuetgenInputError(f"Sketchy root '{root}' is not a folder; expected a folder holding sketch/ and photo/")
    if not (root / "sketch").is_dir() and (root / "256x256" / "sketch").is_dir():
        return root / "256x256"
    return root


def _parse_sketch_name(path: Path) -> tuple[str, int]:
    stem = path.stem
    photo_id, sep, n = stem.rpartition("-")
    if not sep or not photo_id or not n.isdigit():
        raise DuetgenInputError(
            f"Sketchy sketch '{path}' is not named <photo_id>-<n>{path.suffix} (e.g. n02691156_10151-1.png)"
        )
    return photo_id, int(n)


class SketchyDataset(SketchPhotoDataset):
    """Sketchy sketch/photo pairs with class labels; one item per sketch.

    Args:
        root: the Sketchy folder (holding ``sketch/`` and ``photo/``).
        classes: class names to keep (e.g. ``load_class_split(...).train``); None keeps every class.
        layout: ``"auto"``, ``"basic"`` (``tx_*`` augmentation folders) or ``"flat"``.
        sketch_augmentation: the ``sketch/tx_*`` folder of the basic layout.
        photo_augmentation: the ``photo/tx_*`` folder of the basic layout.
        strict: a sketch without a photo is an error (True) or skipped with a warning (False).
        load_images: decode images with PIL in ``__getitem__`` (True) or return paths (False).
        sketch_transform: applied to each sketch (PIL image, or path with ``load_images=False``).
        photo_transform: applied to each photo.
        image_mode: PIL mode images are converted to.

    Raises:
        DuetgenInputError: the folder is missing, not in one of the layouts above, or a name is malformed.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        classes: Sequence[str] | None = None,
        *,
        layout: str = "auto",
        sketch_augmentation: str = "tx_000000000000",
        photo_augmentation: str = "tx_000000000000",
        strict: bool = True,
        load_images: bool = True,
        sketch_transform: Transform | None = None,
        photo_transform: Transform | None = None,
        image_mode: str = "RGB",
    ) -> None:
        if layout not in _LAYOUTS:
            raise DuetgenInputError(f"layout must be one of {_LAYOUTS}; got {layout!r}")
        root = _resolve_root(Path(root))
        sketch_root, photo_root = root / "sketch", root / "photo"
        if not sketch_root.is_dir():
            raise DuetgenInputError(f"Sketchy root '{root}' has no 'sketch/' folder; expected {_EXPECTED}")
        if not photo_root.is_dir():
            raise DuetgenInputError(
                f"Sketchy root '{root}' has no 'photo/' folder; expected photo/<class>/<photo_id>.jpg "
                "or photo/tx_000000000000/<class>/<photo_id>.jpg"
            )
        sub = list_subdirs(sketch_root)
        if not sub:
            raise DuetgenInputError(f"Sketchy folder '{sketch_root}' has no class folders; expected {_EXPECTED}")
        if layout == "auto":
            layout = "basic" if all(s.startswith("tx_") for s in sub) else "flat"
        if layout == "basic":
            sketch_root = self._augmentation_dir(sketch_root, sketch_augmentation, "sketch_augmentation")
            photo_root = self._augmentation_dir(photo_root, photo_augmentation, "photo_augmentation")
        self.layout = layout

        available = list_subdirs(sketch_root)
        if not available:
            raise DuetgenInputError(f"Sketchy folder '{sketch_root}' has no class folders; expected {_EXPECTED}")
        chosen = select_classes(available, classes, root, "Sketchy")

        sketches, sketch_labels, sketch_photo = [], [], []
        photos, photo_labels, photo_ids = [], [], []
        n_skipped = 0
        for label, cls in enumerate(chosen):
            photo_dir = photo_root / cls
            if not photo_dir.is_dir():
                raise DuetgenInputError(
                    f"Sketchy root '{root}' has sketches of class '{cls}' but no folder '{photo_dir}'; "
                    f"expected {photo_root.name}/{cls}/<photo_id>.jpg"
                )
            index = {}
            for p in list_images(photo_dir):
                if p.stem in index:
                    raise DuetgenInputError(f"Sketchy folder '{photo_dir}' holds photo '{p.stem}' twice")
                index[p.stem] = len(photos)
                photos.append(p)
                photo_labels.append(label)
                photo_ids.append(f"{cls}/{p.stem}")
            class_sketches = [(_parse_sketch_name(s), s) for s in list_images(sketch_root / cls)]
            for (photo_id, _), path in sorted(class_sketches, key=lambda t: t[0]):
                if photo_id not in index:
                    if strict:
                        raise DuetgenInputError(
                            f"Sketchy sketch '{path}' has no photo '{photo_dir}/{photo_id}.*'; "
                            "pass strict=False to skip unpaired sketches"
                        )
                    n_skipped += 1
                    continue
                sketches.append(path)
                sketch_labels.append(label)
                sketch_photo.append(index[photo_id])
        if n_skipped:
            logger.warning("Sketchy '%s': skipped %d sketches without a photo", root, n_skipped)
        if not sketches:
            raise DuetgenInputError(f"Sketchy root '{root}' holds no sketches; expected {_EXPECTED}")
        super().__init__(
            root=root,
            classes=chosen,
            sketches=sketches,
            sketch_labels=sketch_labels,
            sketch_photo=sketch_photo,
            photos=photos,
            photo_labels=photo_labels,
            photo_ids=photo_ids,
            load_images=load_images,
            sketch_transform=sketch_transform,
            photo_transform=photo_transform,
            image_mode=image_mode,
        )

    @staticmethod
    def _augmentation_dir(folder: Path, name: str, arg: str) -> Path:
        path = folder / name
        if not path.is_dir():
            raise DuetgenInputError(
                f"Sketchy folder '{folder}' has no augmentation folder '{name}' ({arg}); "
                f"available: {[s for s in list_subdirs(folder) if s.startswith('tx_')]}"
            )
        return path
