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
_MAX_LINE_BYTES = 16 * 1024 * 1024  # one ndjson record (the largest raw QuickDraw drawings are well under 1 MB)
_MAX_NPY_HEADER = 65536  # bytes of a .npy header (numpy writes a few hundred)
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _read_line(fh, path: Path, pos: int) -> bytes:
    """One line of an ndjson file, bounded by ``_MAX_LINE_BYTES``."""
    line = fh.readline(_MAX_LINE_BYTES + 1)
    if len(line) > _MAX_LINE_BYTES:
        raise DuetgenInputError(
            f"QuickDraw file '{path}' has a line over {_MAX_LINE_BYTES:,} bytes at byte {pos}; expected one JSON "
            "drawing per line"
        )
    return line


def _parse_record(line: bytes, path: Path, where: str) -> dict:
    """One ndjson record as a dict; anything else is a DuetgenInputError naming the file and ``where`` (line/byte)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise DuetgenInputError(
            f"QuickDraw file '{path}' {where} is not a JSON object ({_first_line(e)}); expected one JSON drawing "
            "per line"
        ) from e
    if not isinstance(record, dict):
        raise DuetgenInputError(
            f"QuickDraw file '{path}' {where} is not a JSON object (a {type(record).__name__}); expected one JSON "
            "drawing per line"
        )
    return record


def _checked_strokes(drawing: object, where: str) -> list[np.ndarray]:
    """Validate a QuickDraw ``drawing`` and return its strokes as float32 (n, 2) or (n, 3) arrays."""
    from duetgen.sketch_input import DEFAULT_LIMITS

    if not isinstance(drawing, list):
        raise DuetgenInputError(f"{where}: 'drawing' must be a list of strokes [[xs, ys], ...]")
    if len(drawing) > DEFAULT_LIMITS.max_strokes:
        raise DuetgenInputError(f"{where}: {len(drawing):,} strokes, over {DEFAULT_LIMITS.max_strokes:,}")
    strokes, total = [], 0
    for k, stroke in enumerate(drawing):
        if (
            not isinstance(stroke, list)
            or len(stroke) not in (2, 3)
            or not all(isinstance(c, list) for c in stroke)
            or len({len(c) for c in stroke}) != 1
        ):
            raise DuetgenInputError(f"{where}: stroke {k} must be [xs, ys] or [xs, ys, ts], lists of equal length")
        total += len(stroke[0])
        if total > DEFAULT_LIMITS.max_points:
            raise DuetgenInputError(f"{where}: over {DEFAULT_LIMITS.max_points:,} points in one drawing")
        try:
            with np.errstate(over="ignore"):
                points = np.array(stroke, dtype=np.float64).astype(np.float32).T  # (n, 2 | 3)
        except (TypeError, ValueError, OverflowError) as e:
            raise DuetgenInputError(f"{where}: stroke {k} has non-numeric coordinates") from e
        if not np.isfinite(points).all():
            raise DuetgenInputError(f"{where}: stroke {k} has NaN, infinite or out-of-range coordinates")
        strokes.append(points)
    return strokes


def _check_npy_header(path: Path) -> None:
    """Refuse a .npy whose header declares an absurd length before numpy reads (and allocates) it."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    if len(head) >= 10 and head[:6] == b"\x93NUMPY":
        major = head[6]
        length = int.from_bytes(head[8:10], "little") if major == 1 else int.from_bytes(head[8:12], "little")
        if length > _MAX_NPY_HEADER:
            raise DuetgenInputError(
                f"QuickDraw file '{path}' declares a .npy header of {length:,} bytes (corrupt); expected {_EXPECTED}"
            )


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
            first = _read_line(fh, path, 0)
        if not first.strip():
            raise DuetgenInputError(f"QuickDraw file '{path}' is empty or starts with a blank line; expected one JSON "
                                    "drawing per line")  # fmt: skip
        record = _parse_record(first, path, "line 1")
        word = record.get("word")
        return str(word) if isinstance(word, (str, int, float)) and word != "" else _class_from_filename(path)

    @staticmethod
    def _index_ndjson(path: Path, limit: int | None, recognized_only: bool) -> list[int]:
        offsets = []
        with open(path, "rb") as fh:
            pos = lineno = 0
            while line := _read_line(fh, path, pos):
                lineno += 1
                if line.strip():
                    if not recognized_only or _parse_record(line, path, f"line {lineno}").get("recognized", True):
                        offsets.append(pos)
                        if limit is not None and len(offsets) >= limit:
                            break
                pos += len(line)
        return offsets

    def _index_npy(self, fi: int, path: Path, limit: int | None) -> list[int]:
        _check_npy_header(path)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - numpy raises ValueError, OSError, SyntaxError, TokenError, EOFError...
            raise DuetgenInputError(
                f"QuickDraw file '{path}' is not a readable .npy array ({_first_line(e)}); expected {_EXPECTED}"
            ) from e
        if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != 784:
            shape = getattr(arr, "shape", "none: it is an .npz archive")
            getattr(arr, "close", lambda: None)()
            raise DuetgenInputError(f"QuickDraw file '{path}' has shape {shape}; expected (N, 784) 28x28 bitmaps")
        if arr.dtype.kind not in "biuf":
            raise DuetgenInputError(f"QuickDraw file '{path}' has dtype {arr.dtype}; expected uint8 28x28 bitmaps")
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
        pos = int(self._positions[index])
        with open(path, "rb") as fh:
            fh.seek(pos)
            line = _read_line(fh, path, pos)
        rec = _parse_record(line, path, f"at byte {pos}")
        if "drawing" not in rec:
            raise DuetgenInputError(
                f"QuickDraw file '{path}' at byte {pos} is not a drawing record: it has no 'drawing' list of "
                "strokes; expected QuickDraw ndjson records"
            )
        return rec

    def strokes(self, index: int) -> list[np.ndarray]:
        """Strokes of drawing ``index``: a list of (n_points, 2) arrays (x, y), or (n_points, 3) with time (raw).

        Raises:
            DuetgenInputError: the record's ``drawing`` is not a list of ``[xs, ys(, ts)]`` number lists of equal
                length, has non-finite values, or is over :class:`duetgen.SketchLimits`' stroke or point bounds.
        """
        path, pos = self.files[self._file_idx[index]], int(self._positions[index])
        return _checked_strokes(self.read_record(index)["drawing"], f"QuickDraw file '{path}' at byte {pos}")

    def load_sketch(self, index: int) -> Any:
        if self.file_format == "npy":
            fi = int(self._file_idx[index])
            row = np.asarray(self._bitmaps[fi][int(self._positions[index])])
            if row.dtype != np.uint8:
                row = np.clip(np.nan_to_num(row.astype(np.float64)), 0, 255)
            bitmap = row.astype(np.uint8).reshape(28, 28)
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
