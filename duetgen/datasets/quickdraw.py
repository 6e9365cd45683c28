"""QuickDrawDataset: Google Quick, Draw! sketches, one file per class, category-level sketch data.

Accepted files, directly inside ``root``:

- ``<class>.ndjson`` (raw or simplified): one JSON object per line with ``"word"`` (the class) and ``"drawing"``,
  a list of strokes; a simplified stroke is ``[xs, ys]`` (0..255), a raw stroke ``[xs, ys, ts]``.
- ``<class>.npy``: the 28x28 bitmaps, an (N, 784) uint8 array (white ink on black, as released).

File-name prefixes of the public buckets and mirrors (``full_simplified_``, ``full_raw_``, ``full_numpy_bitmap_``)
are dropped; the class of an ndjson file is the ``"word"`` of its first record (or the file name).
Records are indexed by byte offset at construction and parsed lazily; ``.npy`` files are memory-mapped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from torch.utils.data import Dataset

from duetgen.errors import DuetgenInputError

from ._common import Transform, select_classes

_PREFIXES = ("full_simplified_", "full_raw_", "full_numpy_bitmap_", "full-simplified-", "full-raw-")
_FORMATS = ("auto", "ndjson", "npy")
_EXPECTED = "<class>.ndjson files (raw or simplified) or <class>.npy 28x28 bitmaps of shape (N, 784)"


def _class_from_filename(path: Path) -> str:
    name = path.stem
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


def render_strokes(
    strokes: Sequence[np.ndarray], size: int = 256, line_width: int = 3, margin: float = 0.05, mode: str = "RGB"
) -> Image.Image:
    """Draw strokes (each an (n, 2+) array of x, y) in black on a white ``size`` x ``size`` canvas.

    The drawing is scaled to fit (aspect kept) with a relative ``margin`` and centred.
    """
    im = Image.new("L", (size, size), 255)
    pts = [np.asarray(s, dtype=np.float64)[:, :2] for s in strokes if len(s)]
    if pts:
        allp = np.concatenate(pts)
        lo, hi = allp.min(0), allp.max(0)
        extent = max(float((hi - lo).max()), 1e-6)
        scale = size * (1 - 2 * margin) / extent
        offset = (size - (hi - lo) * scale) / 2 - lo * scale
        draw = ImageDraw.Draw(im)
        for p in pts:
            xy = [tuple(q) for q in p * scale + offset]
            if len(xy) == 1:
                x, y = xy[0]
                r = line_width / 2
                draw.ellipse([x - r, y - r, x + r, y + r], fill=0)
            else:
                draw.line(xy, fill=0, width=line_width, joint="curve")
    return im.convert(mode)


class QuickDrawDataset(Dataset):
    """Quick, Draw! sketches with class labels; one item per drawing.

    Args:
        root: folder holding the per-class ``.ndjson`` or ``.npy`` files.
        classes: class names to keep; None keeps every class.
        file_format: ``"auto"`` (ndjson if any, else npy), ``"ndjson"`` or ``"npy"``.
        max_per_class: keep at most this many drawings per class (the first ones); None keeps all.
        recognized_only: ndjson only: keep drawings the game recognised (parses every line at construction).
        render: ndjson only: rasterise strokes to a PIL image (True) or return the strokes (False).
        image_size: side of the rendered ndjson image.
        line_width: stroke width of the rendered ndjson image.
        invert_bitmaps: npy only: turn the released white-on-black bitmaps into black ink on white.
        sketch_transform: applied to each sketch (PIL image, or list of strokes with ``render=False``).
        image_mode: PIL mode images are converted to.

    Attributes:
        classes, sketch_labels ((N,) int64), files (one per class).

    Raises:
        DuetgenInputError: the folder is missing or holds no such file, or a file is malformed.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        classes: Sequence[str] | None = None,
        *,
        file_format: str = "auto",
        max_per_class: int | None = None,
        recognized_only: bool = False,
        render: bool = True,
        image_size: int = 256,
        line_width: int = 3,
        invert_bitmaps: bool = True,
        sketch_transform: Transform | None = None,
        image_mode: str = "RGB",
    ) -> None:
        if file_format not in _FORMATS:
            raise DuetgenInputError(f"file_format must be one of {_FORMATS}; got {file_format!r}")
        root = Path(root)
        if not root.is_dir():
            raise DuetgenInputError(f"QuickDraw root '{root}' is not a folder; expected {_EXPECTED}")
        ndjson = sorted(root.glob("*.ndjson"))
        npy = sorted(root.glob("*.npy"))
        if file_format == "auto":
            file_format = "ndjson" if ndjson else "npy"
        files = ndjson if file_format == "ndjson" else npy
        if not files:
            raise DuetgenInputError(f"QuickDraw root '{root}' holds no .{file_format} files; expected {_EXPECTED}")
        self.root = root
        self.file_format = file_format
        self.render = render
        self.image_size = image_size
        self.line_width = line_width
        self.invert_bitmaps = invert_bitmaps
        self.sketch_transform = sketch_transform
        self.image_mode = image_mode

        by_class: dict[str, Path] = {}
        for f in files:
            cls = self._ndjson_word(f) if file_format == "ndjson" else _class_from_filename(f)
            if cls in by_class:
                raise DuetgenInputError(
                    f"QuickDraw root '{root}' has two files for class '{cls}': '{by_class[cls].name}' and '{f.name}'"
                )
            by_class[cls] = f
        self.classes = select_classes(sorted(by_class), classes, root, "QuickDraw")
        self.files = [by_class[c] for c in self.classes]

        # _items[i] = (file index, byte offset for ndjson | row for npy)
        file_idx, positions = [], []
        self._bitmaps: dict[int, np.ndarray] = {}
        for fi, f in enumerate(self.files):
            pos = (
                self._index_ndjson(f, max_per_class, recognized_only)
                if file_format == "ndjson"
                else (self._index_npy(fi, f, max_per_class))
            )
            file_idx += [fi] * len(pos)
            positions += pos
        self._file_idx = np.asarray(file_idx, dtype=np.int64)
        self._positions = np.asarray(positions, dtype=np.int64)
        self.sketch_labels = self._file_idx.copy()  # one file per class, in class order

    @staticmethod
    def _ndjson_word(path: Path) -> str:
        with open(path, "rb") as fh:
            first = fh.readline()
        if not first.strip():
            raise DuetgenInputError(f"QuickDraw file '{path}' is empty; expected one JSON drawing per line")
        try:
            word = json.loads(first).get("word")
        except (json.JSONDecodeError, AttributeError) as e:
            raise DuetgenInputError(f"QuickDraw file '{path}' line 1 is not a JSON object: {e}") from e
        return str(word) if word else _class_from_filename(path)

    @staticmethod
    def _index_ndjson(path: Path, limit: int | None, recognized_only: bool) -> list[int]:
        offsets = []
        with open(path, "rb") as fh:
            pos = 0
            for line in fh:
                if line.strip():
                    if not recognized_only or json.loads(line).get("recognized", True):
                        offsets.append(pos)
                        if limit is not None and len(offsets) >= limit:
                            break
                pos += len(line)
        return offsets

    def _index_npy(self, fi: int, path: Path, limit: int | None) -> list[int]:
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DuetgenInputError(f"QuickDraw file '{path}' is not a readable .npy array: {e}") from e
        if arr.ndim != 2 or arr.shape[1] != 784:
            raise DuetgenInputError(f"QuickDraw file '{path}' has shape {arr.shape}; expected (N, 784) 28x28 bitmaps")
        self._bitmaps[fi] = arr
        n = arr.shape[0] if limit is None else min(limit, arr.shape[0])
        return list(range(n))

    def __len__(self) -> int:
        return len(self._positions)

    def read_record(self, index: int) -> dict[str, Any]:
        """The raw ndjson record of drawing ``index`` (ndjson format only)."""
        if self.file_format != "ndjson":
            raise DuetgenInputError("read_record needs ndjson files; this dataset reads .npy bitmaps")
        path = self.files[self._file_idx[index]]
        with open(path, "rb") as fh:
            fh.seek(int(self._positions[index]))
            line = fh.readline()
        try:
            rec = json.loads(line)
            rec["drawing"]  # noqa: B018 - presence check
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DuetgenInputError(
                f"QuickDraw file '{path}' at byte {int(self._positions[index])} is not a drawing record "
                f"with a 'drawing' list: {e}"
            ) from e
        return rec

    def strokes(self, index: int) -> list[np.ndarray]:
        """Strokes of drawing ``index``: a list of (n_points, 2) arrays (x, y), or (n_points, 3) with time (raw)."""
        return [np.asarray(s, dtype=np.float32).T for s in self.read_record(index)["drawing"]]

    def load_sketch(self, index: int) -> Any:
        if self.file_format == "npy":
            fi = int(self._file_idx[index])
            bitmap = np.asarray(self._bitmaps[fi][int(self._positions[index])], dtype=np.uint8).reshape(28, 28)
            im = Image.fromarray(bitmap)
            item: Any = (ImageOps.invert(im) if self.invert_bitmaps else im).convert(self.image_mode)
        else:
            strokes = self.strokes(index)
            item = (
                render_strokes(strokes, self.image_size, self.line_width, mode=self.image_mode)
                if (self.render)
                else strokes
            )
        return self.sketch_transform(item) if self.sketch_transform is not None else item

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Returns ``{"sketch", "label"}`` (sketch: PIL image, or strokes with ``render=False``)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} drawings")
        index = index % len(self)
        return {"sketch": self.load_sketch(index), "label": int(self.sketch_labels[index])}

    def __repr__(self) -> str:
        return (
            f"QuickDrawDataset(root='{self.root}', format={self.file_format}, classes={len(self.classes)}, "
            f"n={len(self)})"
        )
