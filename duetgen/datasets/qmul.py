"""QMULDataset: fine-grained sketch/photo pairs of QMUL-Shoe-V2, QMUL-Chair-V2 (and V1, Handbag, ...).

Accepted layouts (detected automatically):

- ``trainA/`` (sketches), ``trainB/`` (photos), ``testA/``, ``testB/`` (the common FG-SBIR release);
  ``split="train"`` reads ``trainA``/``trainB``, ``"test"`` reads ``testA``/``testB``, None reads both.
- one sketch folder and one photo folder, named ``sketch``/``sketches`` or ``<Name>_sketch`` (e.g.
  ``ShoeV2_sketch``) and ``photo``/``photos`` or ``<Name>_photo`` (e.g. ``ShoeV2_photo``), plus optional split
  files at the root: ``sketch_<split>.txt`` and/or ``photo_<split>.txt`` (one file name per line; a folder prefix
  and the extension are ignored). ``split=None`` (or no split files) reads every file. A custom list can be given
  with ``split_file=`` (names of sketches or of photos; a photo name selects all its sketches).

A sketch ``<photo_stem>_<n>.<ext>`` pairs with the photo ``<photo_stem>.<ext>`` (any raster extension); a sketch
whose stem equals a photo stem pairs with that photo. Vector sketches (``.svg``) are not read.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from duetgen.errors import DuetgenInputError

from ._common import Transform, list_images, list_subdirs, read_text_file
from .sketch_photo_dataset import SketchPhotoDataset

logger = logging.getLogger(__name__)

_SPLITS = ("train", "test", None)
_SKETCH_DIR = re.compile(r"^(?:.+_)?sketch(?:es)?(?:_png)?$", re.IGNORECASE)
_PHOTO_DIR = re.compile(r"^(?:.+_)?photos?(?:_png)?$", re.IGNORECASE)
_EXPECTED = (
    "trainA/ trainB/ testA/ testB/ (sketches <photo_stem>_<n>.png in *A, photos <photo_stem>.png in *B), "
    "or <Name>_sketch/ + <Name>_photo/ with optional sketch_<split>.txt / photo_<split>.txt"
)


def _read_names(path: Path) -> set[str]:
    """Stems listed in a split file (one name per line; folders and extensions dropped)."""
    if not path.is_file():
        raise DuetgenInputError(f"QMUL split file '{path}' does not exist; expected one file name per line")
    names = set()
    for line in read_text_file(path, "QMUL split file", "one file name per line").splitlines():
        line = line.strip().replace("\\", "/")
        if line and not line.startswith("#"):
            names.add(os.path.splitext(line.rsplit("/", 1)[-1])[0])
    return names


def _photo_stem(sketch_stem: str, photos: dict[str, int]) -> str | None:
    if sketch_stem in photos:
        return sketch_stem
    base, sep, n = sketch_stem.rpartition("_")
    if sep and n.isdigit() and base in photos:
        return base
    return None


def _infer_category(root: Path) -> str:
    name = root.resolve().name.lower()
    for cat in ("shoe", "chair", "handbag"):
        if cat in name:
            return cat
    return "object"


class QMULDataset(SketchPhotoDataset):
    """QMUL fine-grained sketch/photo pairs (Shoe-V2, Chair-V2, ...); one item per sketch, one class.

    Args:
        root: the dataset folder (see the module docstring for the accepted layouts).
        split: ``"train"``, ``"test"`` or None (everything).
        split_file: a file listing the sketch or photo names to keep, overriding the split files at the root.
        category: the single class name; None infers "shoe"/"chair"/"handbag" from the folder name.
        strict: a sketch without a photo is an error (True) or skipped with a warning (False).
        load_images: decode images with PIL in ``__getitem__`` (True) or return paths (False).
        sketch_transform: applied to each sketch (PIL image, or path with ``load_images=False``).
        photo_transform: applied to each photo.
        image_mode: PIL mode images are converted to.

    Raises:
        DuetgenInputError: the folder is missing or in none of the accepted layouts, or a sketch has no photo.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        *,
        split_file: str | os.PathLike | None = None,
        category: str | None = None,
        strict: bool = True,
        load_images: bool = True,
        sketch_transform: Transform | None = None,
        photo_transform: Transform | None = None,
        image_mode: str = "RGB",
    ) -> None:
        if split not in _SPLITS:
            raise DuetgenInputError(f"split must be 'train', 'test' or None; got {split!r}")
        root = Path(root)
        if not root.is_dir():
            raise DuetgenInputError(f"QMUL root '{root}' is not a folder; expected {_EXPECTED}")
        pairs = self._folder_pairs(root, split)
        keep = _read_names(Path(split_file)) if split_file is not None else None

        sketches, sketch_photo, photos, photo_ids = [], [], [], []
        n_skipped = 0
        for sketch_dir, photo_dir, split_files in pairs:
            photo_paths = list_images(photo_dir)
            sketch_paths = list_images(sketch_dir)
            if not photo_paths:
                raise DuetgenInputError(f"QMUL photo folder '{photo_dir}' holds no images; expected {_EXPECTED}")
            photo_keep = sketch_keep = None
            if keep is not None:
                photo_keep = sketch_keep = keep
            elif split_files:
                photo_file, sketch_file = split_files
                photo_keep = _read_names(photo_file) if photo_file.is_file() else None
                sketch_keep = _read_names(sketch_file) if sketch_file.is_file() else None
                if photo_keep is None and sketch_keep is None:
                    raise DuetgenInputError(
                        f"QMUL root '{root}' has no split file '{photo_file.name}' or '{sketch_file.name}' for "
                        f"split={split!r}; pass split=None to read every file, or split_file="
                    )
            index: dict[str, int] = {}
            for p in photo_paths:
                if p.stem in index:
                    raise DuetgenInputError(f"QMUL folder '{photo_dir}' holds photo '{p.stem}' twice")
                index[p.stem] = len(photos)
                photos.append(p)
                photo_ids.append(p.stem)
            used = set()
            for s in sketch_paths:
                stem = _photo_stem(s.stem, index)
                if keep is not None:  # a listed name selects a sketch, or every sketch of a listed photo
                    if s.stem not in keep and stem not in keep:
                        continue
                else:
                    if sketch_keep is not None and s.stem not in sketch_keep:
                        continue
                    if photo_keep is not None and stem is not None and stem not in photo_keep:
                        continue
                if stem is None:
                    if strict:
                        raise DuetgenInputError(
                            f"QMUL sketch '{s}' has no photo in '{photo_dir}'; expected <photo_stem>_<n>{s.suffix} "
                            "next to <photo_stem>.<ext> (pass strict=False to skip unpaired sketches)"
                        )
                    n_skipped += 1
                    continue
                sketches.append(s)
                sketch_photo.append(index[stem])
                used.add(index[stem])
            if photo_keep is not None or keep is not None:  # drop photos outside the split
                wanted = photo_keep if keep is None else keep
                drop = {i for s, i in index.items() if s not in wanted and i not in used}
                if drop:
                    remap, new_photos, new_ids = {}, [], []
                    for i, (p, pid) in enumerate(zip(photos, photo_ids, strict=True)):
                        if i not in drop:
                            remap[i] = len(new_photos)
                            new_photos.append(p)
                            new_ids.append(pid)
                    photos, photo_ids = new_photos, new_ids
                    sketch_photo = [remap[i] for i in sketch_photo]
        if n_skipped:
            logger.warning("QMUL '%s': skipped %d sketches without a photo", root, n_skipped)
        if not sketches:
            raise DuetgenInputError(
                f"QMUL root '{root}' holds no paired sketches for split={split!r}; expected {_EXPECTED}"
            )
        if len(set(photo_ids)) != len(photo_ids):
            raise DuetgenInputError(f"QMUL root '{root}': a photo name appears in both train and test folders")
        super().__init__(
            root=root,
            classes=[category or _infer_category(root)],
            sketches=sketches,
            sketch_labels=[0] * len(sketches),
            sketch_photo=sketch_photo,
            photos=photos,
            photo_labels=[0] * len(photos),
            photo_ids=photo_ids,
            load_images=load_images,
            sketch_transform=sketch_transform,
            photo_transform=photo_transform,
            image_mode=image_mode,
        )

    @staticmethod
    def _folder_pairs(root: Path, split: str | None) -> list[tuple[Path, Path, tuple[Path, Path] | None]]:
        """(sketch folder, photo folder, (photo split file, sketch split file) or None) to read."""
        subdirs = list_subdirs(root)
        if any(d in subdirs for d in ("trainA", "trainB", "testA", "testB")):
            pairs = []
            for s in ("train", "test") if split is None else (split,):
                a, b = root / f"{s}A", root / f"{s}B"
                for d, what in ((a, "sketches"), (b, "photos")):
                    if not d.is_dir():
                        raise DuetgenInputError(
                            f"QMUL root '{root}' has no '{d.name}/' folder ({what} of split '{s}'); "
                            f"expected {_EXPECTED}"
                        )
                pairs.append((a, b, None))
            return pairs
        sketch_dirs = [d for d in subdirs if _SKETCH_DIR.match(d)]
        photo_dirs = [d for d in subdirs if _PHOTO_DIR.match(d)]
        if len(sketch_dirs) != 1 or len(photo_dirs) != 1:
            found = sketch_dirs + photo_dirs
            raise DuetgenInputError(
                f"QMUL root '{root}' has no trainA/trainB/testA/testB folders and "
                f"{'no unique sketch and photo folder' if found else 'no sketch or photo folder'}"
                f"{f' (found {found})' if found else ''}; expected {_EXPECTED}"
            )
        files = None if split is None else (root / f"photo_{split}.txt", root / f"sketch_{split}.txt")
        return [(root / sketch_dirs[0], root / photo_dirs[0], files)]
