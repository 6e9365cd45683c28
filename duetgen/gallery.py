"""Gallery: a folder of photo embeddings, searchable with composed queries.

Build one from a folder (recursive) or a list of image files, search it, grow or shrink it, and keep it on disk::

    >>> enc = duetgen.load_encoder()
    >>> gallery = Gallery.build("photos/", enc, out="photos.gallery")      # progress bar; resumable
    >>> q = enc.encode_query(sketch[None], "in red")
    >>> gallery.search(q, k=10)[0][0]                                     # SearchResult(score, path, id)
    >>> gallery.add(["new.jpg"], enc); gallery.remove(["old.jpg"]); gallery.save()
    >>> gallery = Gallery.open("photos.gallery", enc)                     # refuses another encoder

On disk (``FORMAT_VERSION`` 1), a gallery is a folder:

* ``manifest.json``: format version, the encoder identity (backbone, dim, weight fingerprint) and where the model
  came from, embedding dim and dtype, counts (items, skipped files), index kind and parameters, region config,
  created / updated times.
* ``embeddings.npy``: (N, D) L2-normalised, float32 or float16 (``dtype="float16"`` halves the file; search runs
  in float32 either way).
* ``items.jsonl``: one JSON object per row of ``embeddings.npy``, in row order: ``{"id", "path", "w", "h"}``.
  JSONL rather than SQLite because a gallery is never updated in place: every save writes a complete new folder
  and swaps it in (below), so SQLite's transactions and in-place updates would buy nothing, while JSONL is
  streamed in row order with no schema, diffs and greps, and has no locking or journal files that a folder swap
  or a network file system could strand. Loading 1M rows takes about a second.
* ``index.faiss``: the FAISS index (:mod:`duetgen.index`: exact flat below 200k items, IVF above, HNSW on request).
* ``regions.npy`` (optional): (N, R, D) float16 region embeddings for scene retrieval
  (:mod:`duetgen.scene_retrieval`); their boxes are in the manifest.

**Atomic writes.** :meth:`Gallery.save` writes a complete temporary sibling folder (``.NAME.tmp-PID-*``), fsyncs it,
then swaps it in with one ``renameat2(RENAME_EXCHANGE)`` (Linux; elsewhere two renames, and :meth:`Gallery.open`
puts a stranded previous version back; :mod:`duetgen.atomic`). Until that swap, readers see the previous gallery; a
killed process leaves the previous gallery intact and, at worst, a stale temp folder that the next save removes.
:meth:`Gallery.open` reads every file through one descriptor of the folder, so a reader racing a writer gets one
whole version, never the manifest of one and the embeddings of the next (``tests/test_crash_safety.py``).

**Limits.** :meth:`Gallery.search` refuses more than ``DUETGEN_MAX_K`` results per query or ``DUETGEN_MAX_QUERIES``
queries, and builds refuse a ``batch_size`` over ``DUETGEN_MAX_BATCH`` (:mod:`duetgen.limits`, ``docs/limits.md``).

**Resumable builds.** :class:`GalleryBuilder` writes embeddings to a work folder beside the output
(``.NAME.work``) as it goes: shard files of raw float32 rows, appended and flushed to the OS after every batch,
a new shard every ``flush_every`` batches. A killed build loses at most the batch in flight; running the same
build again (same files, encoder and options) continues where it stopped. Shards also carry multi-process builds
(``recipes/build_gallery.py``): each rank embeds its contiguous range of the sorted path list, rank 0 merges the
shards in path order.

Images are decoded by a torch DataLoader (``num_workers`` processes, default half the cores, at most 2) so decoding
overlaps the model, which meanwhile runs on the cores the workers leave free; files that cannot be decoded, broken
links and symlink loops are skipped with a warning and counted.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import recover_folder, write_folder_atomic
from .errors import CheckpointError, DuetgenError, DuetgenInputError
from .index import VectorIndex, as_float32
from .scene_retrieval import RegionConfig, crop_windows, encode_regions

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
GALLERY_KIND = "duetgen-gallery"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MANIFEST, EMBEDDINGS, ITEMS, INDEX_FILE, REGIONS = (
    "manifest.json", "embeddings.npy", "items.jsonl", "index.faiss", "regions.npy"
)  # fmt: skip
MAX_SKIPPED_LISTED = 1000
REBUILD_HINT = "rebuild the gallery with 'duetgen index PHOTOS_DIR --out GALLERY --rebuild'"
MAX_NPY_HEADER = 65536  # bytes; numpy writes a few hundred
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_EMBED_DIM = 65536
MAX_INDEX_PARAM = 2**20


# ---------------------------------------------------------------------------------------------------------------
# results, listing and decoding
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """One gallery hit.

    Attributes:
        score: cosine similarity with the query (for scene retrieval: of the best region).
        path: the image file.
        id: the item's stable id in its gallery (ids are never reused after a removal).
        box: scene retrieval only: the best-matching region (x0, y0, x1, y1) in pixels of the image.
        region: scene retrieval only: index of that region in the gallery's region boxes.
        iou: with silhouette verification only (:mod:`duetgen.verify`): IoU of the photo's object silhouette with
            the region the sketch encloses; ``score`` is then the cosine similarity plus ``weight * iou``.
    """

    score: float
    path: str
    id: int
    box: tuple[int, int, int, int] | None = None
    region: int | None = None
    iou: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.iou is None:
            d.pop("iou")
        if self.box is None:
            d.pop("box")
            d.pop("region")
        else:
            d["box"] = list(self.box)
        return d


def scan_images(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[list[str], list[dict]]:
    """Image files under ``root``, recursively, following symlinks once.

    Returns:
        (sorted absolute paths, skipped ``[{"path", "reason"}]``): symlink loops (a folder already visited),
        broken links and unreadable files are skipped with a warning.
    """
    root = Path(os.path.expanduser(str(root)))
    if not root.is_dir():
        raise DuetgenInputError(f"'{root}' is not a folder of images")
    exts = tuple(e.lower() for e in extensions)
    paths: list[str] = []
    skipped: list[dict] = []
    seen: set[tuple[int, int]] = set()

    def on_error(err: OSError) -> None:
        skipped.append({"path": str(err.filename), "reason": f"unreadable folder ({err.strerror})"})

    for dirpath, dirnames, filenames in os.walk(os.path.abspath(root), followlinks=True, onerror=on_error):
        try:
            st = os.stat(dirpath)
        except OSError as err:
            skipped.append({"path": dirpath, "reason": f"unreadable folder ({err.strerror})"})
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            skipped.append({"path": dirpath, "reason": "symlink loop (folder already visited)"})
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(exts):
                continue
            path = os.path.join(dirpath, name)
            if not os.path.isfile(path):
                skipped.append({"path": path, "reason": "broken link or not a regular file"})
            elif not os.access(path, os.R_OK):
                skipped.append({"path": path, "reason": "permission denied"})
            else:
                paths.append(path)
    for s in skipped:
        logger.warning("skipping %s: %s", s["path"], s["reason"])
    return sorted(paths), skipped


def _resolve_images(
    images: str | os.PathLike | Iterable[str | os.PathLike],
) -> tuple[list[str], list[dict], str | None]:
    if isinstance(images, (str, os.PathLike)):
        paths, skipped = scan_images(images)
        return paths, skipped, os.path.abspath(os.path.expanduser(str(images)))
    paths = [os.path.abspath(os.path.expanduser(str(p))) for p in images]
    if len(set(paths)) != len(paths):
        raise DuetgenInputError("the image list names some files more than once")
    return paths, [], None


def decode_image(path: str, size: int, windows: np.ndarray | None = None):
    """Decodes an image file for the encoder.

    Returns:
        (image (3, size, size) float in [0, 1], crops (W, 3, size, size), (width, height)). The resize is the one
        the encoder applies itself (bilinear, antialiased), so a builder and a bare loop see the same pixels.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size * 4, size * 4))  # decode big JPEGs at a reduced scale
        w, h = im.size
        im = im.convert("RGB")
        need = size if windows is None or not len(windows) else size / float((windows[:, 2] - windows[:, 0]).min())
        factor = int(min(im.size) // (2 * need))
        if factor >= 2:  # very large photos: shrink by an integer factor first (cheap and exact box mapping)
            im = im.reduce(factor)
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)  # (3, H, W)
    image = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    crops = crop_windows(x, windows, size) if windows is not None else x.new_zeros(0, 3, size, size)
    return image.clamp_(0, 1), crops, (w, h)


class _ImageFiles(torch.utils.data.Dataset):
    """(row, image, crops, width, height, error) per file; a file that fails to decode yields its error message."""

    def __init__(self, paths: Sequence[str], rows: Sequence[int], size: int, windows: np.ndarray | None):
        self.paths, self.rows, self.size, self.windows = paths, list(rows), size, windows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        n_win = 0 if self.windows is None else len(self.windows)
        try:
            image, crops, (w, h) = decode_image(self.paths[row], self.size, self.windows)
            return row, image, crops, w, h, ""
        except Exception as err:  # noqa: BLE001 - one bad file must not end a million-image build; it is reported
            blank = torch.zeros(3, self.size, self.size)
            return row, blank, torch.zeros(n_win, 3, self.size, self.size), 0, 0, f"{type(err).__name__}: {err}"


def default_num_workers() -> int:
    """Decoding processes: half the cores, at most 2 (1 on a 2-core machine)."""
    return max(1, min(2, (os.cpu_count() or 1) // 2))


def _model_threads(encoder, paths: Sequence[str], num_workers: int, windows) -> int | None:
    """Torch threads for the model while ``num_workers`` processes decode, or None to keep the current setting.

    When decoding costs a noticeable share of the model's time (a small model, as the embedded one), the model gets
    the cores the workers leave free: on 2 cores one decoding process and one model thread side by side beat four
    threads fighting over two cores. When the model dominates (a ViT-B), it keeps every thread. The two costs are
    measured on the first image and a small batch (``benchmarks/bench_index.py`` shows both cases).
    """
    cpus = os.cpu_count() or 1
    if not num_workers or not paths or torch.device(encoder.device).type != "cpu":
        return None
    free = max(1, min(torch.get_num_threads(), cpus - num_workers))
    if free >= torch.get_num_threads():
        return None

    def fastest(fn, repeats: int = 2) -> float:  # the minimum of a few runs: robust to other jobs on the machine
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    try:
        t_decode = fastest(lambda: decode_image(paths[0], encoder.image_size, windows))
    except Exception:  # noqa: BLE001 - a bad first file is reported later, by the loader
        return None
    # two images: the probe is work thrown away, and a large model (where it costs most) is never a close call
    probe = torch.zeros(2, 3, encoder.image_size, encoder.image_size, device=encoder.device, dtype=encoder.dtype)
    with torch.inference_mode():
        encoder.encode_image(probe[:1])  # warm-up
        t_model = fastest(lambda: encoder.encode_image(probe)) / len(probe)
    return free if t_decode > 0.25 * t_model else None


def _iter_embedded(
    encoder,
    paths: Sequence[str],
    rows: Sequence[int],
    *,
    batch_size: int,
    num_workers: int | None,
    region_config: RegionConfig | None,
    progress,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, list[str]]]:
    """Yields (rows, global (B, D) float32 with NaN rows for failures, regions (B, R, D) or None, sizes (B, 2),
    errors) per batch, decoding in DataLoader workers."""
    if batch_size < 1:
        raise DuetgenInputError(f"batch_size must be >= 1, got {batch_size}")
    from . import limits

    limits.check("max_batch", batch_size, "batch_size", limits.current())
    num_workers = default_num_workers() if num_workers is None else num_workers
    if num_workers < 0:
        raise DuetgenInputError(f"num_workers must be >= 0, got {num_workers}")
    windows = region_config.window_boxes() if region_config is not None else None
    data = _ImageFiles(paths, rows, encoder.image_size, windows)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
    )  # fmt: skip
    threads = _model_threads(encoder, [paths[r] for r in rows[:1]], num_workers, windows)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield from _encode_batches(encoder, loader, region_config, progress)
    finally:
        if threads is not None:
            torch.set_num_threads(previous)


def _encode_batches(encoder, loader, region_config, progress):
    with torch.inference_mode():
        for batch_rows, images, crops, ws, hs, errors in loader:
            if region_config is not None:
                glob, regions = encode_regions(encoder, images, crops, region_config)
                regions = regions.cpu().numpy()
            else:
                glob, regions = encoder.encode_image(images).float(), None
            glob = glob.cpu().numpy()
            bad = np.array([bool(e) for e in errors])
            if bad.any():
                glob[bad] = np.nan
                if regions is not None:
                    regions[bad] = np.nan
            progress.update(len(batch_rows))
            yield batch_rows.numpy(), glob, regions, np.stack([ws.numpy(), hs.numpy()], 1), list(errors)


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="img", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------------------------
# atomic folder writes
# ---------------------------------------------------------------------------------------------------------------


def _recover(dest: Path) -> None:
    """After a crash between the two renames of a non-exchange swap, puts the previous version back."""
    if not dest.exists() and list(dest.parent.glob(f".{dest.name}.old-*")):
        logger.warning("restoring gallery '%s' from a copy left by an interrupted save", dest)
    recover_folder(dest, MANIFEST)


def atomic_write_folder(dest: str | os.PathLike, write) -> Path:
    """Runs ``write(tmp_folder)`` and swaps the result in as ``dest``; the previous ``dest`` stays readable until the
    swap and is removed after it. ``dest`` must be absent, empty or a gallery."""
    dest = Path(os.path.abspath(os.path.expanduser(str(dest))))
    _recover(dest)
    if dest.exists() and not dest.is_dir():
        raise DuetgenInputError(f"gallery path '{dest}' exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MANIFEST).is_file():
        raise DuetgenInputError(f"'{dest}' is a non-empty folder that is not a gallery; refusing to replace it")
    return write_folder_atomic(dest, write, marker=MANIFEST)


# ---------------------------------------------------------------------------------------------------------------
# the gallery
# ---------------------------------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _identity_str(identity: dict) -> str:
    return f"{identity.get('backbone')} (dim {identity.get('embed_dim')}, fingerprint {identity.get('fingerprint')})"


def check_identity(gallery_identity: dict, encoder, where: str = "this gallery") -> None:
    """Raises CheckpointError unless ``encoder`` is the encoder that made the gallery."""
    mine = dict(encoder.identity)
    if {k: gallery_identity.get(k) for k in mine} != mine:
        raise CheckpointError(
            f"{where} was built with encoder {_identity_str(gallery_identity)} but the encoder given is "
            f"{_identity_str(mine)}; search it with the encoder that built it (--model) or rebuild the gallery"
        )


OPEN_ATTEMPTS = 20
"""How often :meth:`Gallery.open` starts again when a concurrent save replaces the folder while it reads it."""


class _VersionReplaced(Exception):
    """The folder being read was replaced by a concurrent save: read the new version instead."""


class _FolderVersion:
    """One version of a gallery folder, for reading.

    A save never changes a gallery folder in place: it swaps a complete new folder in (:mod:`duetgen.atomic`). On
    POSIX, every file is opened relative to a descriptor of the folder taken once, so all files come from the same
    version, and a file gone missing means that version was replaced and removed meanwhile (:class:`_VersionReplaced`:
    read again). Where directory descriptors are not available, the manifest is read again at the end and the read
    restarts if it changed.
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd = None
        if os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY"):
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            self.first_manifest = None
        else:  # pragma: no cover - Windows
            if not path.is_dir():
                raise NotADirectoryError(path)
            self.first_manifest = self._read_plain(MANIFEST, optional=True)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _replaced(self) -> bool:
        if self.fd is None:  # pragma: no cover - Windows
            return self._read_plain(MANIFEST, optional=True) != self.first_manifest
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        mine = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino) or mine.st_nlink == 0

    def check_unchanged(self) -> None:
        if self._replaced():
            raise _VersionReplaced

    def finish(self) -> None:
        """Without directory descriptors, files were read by name: restart if the folder changed meanwhile."""
        if self.fd is None:  # pragma: no cover - Windows
            self.check_unchanged()

    def _read_plain(self, name: str, optional: bool = False):  # pragma: no cover - Windows
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            if optional:
                return None
            raise

    def open(self, name: str, *, missing: str | None = None, optional: bool = False):
        """A binary file object for ``name``, or None (``optional``) when the file does not exist.

        Raises:
            _VersionReplaced: the file is gone because the folder was replaced: read again.
            CheckpointError / DuetgenInputError: the file is missing from this version (``missing`` is the message).
        """
        try:
            if self.fd is None:  # pragma: no cover - Windows
                return open(self.path / name, "rb")
            fd = self.fd
            return open(name, "rb", opener=lambda p, flags: os.open(p, flags, dir_fd=fd))
        except FileNotFoundError:
            self.check_unchanged()
            if optional:
                return None
            if missing is not None:
                raise DuetgenInputError(missing) from None
            raise CheckpointError(f"gallery '{self.path}' has no {name}; rebuild it with 'duetgen index'") from None

    def read_bytes(
        self, name: str, *, missing: str | None = None, optional: bool = False, limit: int | None = None
    ) -> bytes | None:
        """The bytes of ``name``; with ``limit``, a larger file is refused before it is read."""
        fh = self.open(name, missing=missing, optional=optional)
        if fh is None:
            return None
        with fh:
            if limit is not None:
                size = os.fstat(fh.fileno()).st_size
                if size > limit:
                    raise CheckpointError(
                        f"{name} in gallery '{self.path}' is damaged (it is {size} bytes, more than the {limit} a "
                        f"gallery of this size can hold); {REBUILD_HINT}"
                    )
            return fh.read()

    def load_npy(self, name: str, mmap: bool) -> np.ndarray:
        """An .npy array of this version, memory-mapped through the open file or read into memory (no pickles).

        The header is bounded (:data:`MAX_NPY_HEADER` bytes) and the declared shape checked against the file size
        before anything is allocated; any damage is a :class:`CheckpointError` naming the file.
        """
        from numpy.lib import format as npf

        with self.open(name) as fh:
            try:
                version = npf.read_magic(fh)
                if version not in ((1, 0), (2, 0), (3, 0)):
                    raise ValueError(f"unsupported .npy format version {version}")
                start = fh.tell()
                size_field = fh.read(2 if version == (1, 0) else 4)
                if len(size_field) not in (2, 4):
                    raise ValueError("the header is cut short")
                header_len = int.from_bytes(size_field, "little")
                if header_len > MAX_NPY_HEADER:
                    raise ValueError(f"its header declares {header_len} bytes (at most {MAX_NPY_HEADER} allowed)")
                fh.seek(start)
                header = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
                shape, fortran, dtype = header(fh)
                if dtype.hasobject or dtype.kind != "f" or dtype.itemsize not in (2, 4, 8) or dtype.shape:
                    raise ValueError(f"it holds {dtype} values, not floats")
                if not all(isinstance(d, int) and d >= 0 for d in shape):
                    raise ValueError(f"bad shape {shape}")
                count = math.prod(shape)
                offset = fh.tell()
                available = os.fstat(fh.fileno()).st_size - offset
                if count * dtype.itemsize > available:
                    raise ValueError(f"shape {shape} needs {count * dtype.itemsize} bytes, the file holds {available}")
                order = "F" if fortran else "C"
                if mmap and count:
                    return np.memmap(fh, dtype=dtype, mode="r", shape=shape, order=order, offset=offset)
                data = np.fromfile(fh, dtype=dtype, count=count)
                if data.size != count:
                    raise ValueError(f"{data.size} of {count} values present")
                return data.reshape(shape, order=order)
            except (OSError, MemoryError, _VersionReplaced):
                raise
            except Exception as err:  # noqa: BLE001 - numpy's header parser raises TokenError, SyntaxError...
                self.check_unchanged()
                detail = _one_line(err) or type(err).__name__
                raise CheckpointError(
                    f"{name} in gallery '{self.path}' is damaged ({detail}); {REBUILD_HINT}"
                ) from err


class Gallery:
    """Embeddings of a set of images with a FAISS index over them.

    Build with :meth:`build`, load with :meth:`open`, persist with :meth:`save`. Rows of :attr:`embeddings`,
    :attr:`items` and :attr:`regions` correspond; ``items[i] = {"id", "path", "w", "h"}``.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        items: list[dict],
        identity: dict,
        *,
        regions: np.ndarray | None = None,
        region_config: RegionConfig | None = None,
        region_boxes: np.ndarray | None = None,
        index: VectorIndex | None = None,
        index_kind: str = "auto",
        dtype: str = "float32",
        path: str | os.PathLike | None = None,
        manifest: dict | None = None,
    ):
        if dtype not in ("float32", "float16"):
            raise DuetgenInputError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if len(embeddings) != len(items):
            raise DuetgenInputError(f"{len(embeddings)} embeddings but {len(items)} items")
        self.embeddings = embeddings
        self.items = items
        self.identity = dict(identity)
        self.regions = regions
        self.region_config = region_config
        self.region_boxes = region_boxes
        self.dtype = dtype
        self.index_kind = index_kind
        self.path = Path(path) if path is not None else None
        self.manifest = dict(manifest or {})
        self._index = index

    # ------------------------------------------------------------------------------------------------------
    # construction and persistence
    # ------------------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        images: str | os.PathLike | Iterable[str | os.PathLike],
        encoder,
        out: str | os.PathLike | None = None,
        **kwargs,
    ) -> Gallery:
        """Embeds images into a new gallery (saved atomically to ``out`` if given).

        Args:
            images: a folder (searched recursively for :data:`IMAGE_EXTENSIONS`) or a list of image files.
            encoder: the ComposedQueryEncoder (``duetgen.load_encoder()``).
            out: the gallery folder to write; with ``out``, the build is resumable (see :class:`GalleryBuilder`).
            **kwargs: :class:`GalleryBuilder` options: ``batch_size``, ``num_workers``, ``regions``, ``dtype``,
                ``index``, ``flush_every``, ``work_dir``, ``progress``, ``model_source``.

        Returns:
            The gallery; ``gallery.manifest["counts"]`` has the numbers of items and skipped files.
        """
        builder = GalleryBuilder(encoder, images, out, **kwargs)
        builder.prepare()
        builder.embed()
        return builder.finalize()

    @classmethod
    def open(cls, path: str | os.PathLike, encoder=None, *, mmap: bool = True) -> Gallery:
        """Loads a gallery folder.

        Safe while another process saves over the same folder: every file is read from one version of it (see
        :class:`_FolderVersion`); if that version is replaced while it is being read, the read starts again.

        Args:
            path: the folder written by :meth:`save` / :meth:`build`.
            encoder: if given, must be the encoder that built the gallery (else :class:`CheckpointError` naming both).
            mmap: memory-map the embedding arrays instead of reading them.
        """
        path = Path(os.path.abspath(os.path.expanduser(str(path))))
        _recover(path)
        for _attempt in range(OPEN_ATTEMPTS):
            try:
                folder = _FolderVersion(path)
            except (FileNotFoundError, NotADirectoryError):
                raise DuetgenInputError(
                    f"'{path}' is not a gallery (no {MANIFEST}); build one with 'duetgen index'"
                ) from None
            try:
                return cls._open_version(folder, encoder, mmap)
            except _VersionReplaced:
                continue
            finally:
                folder.close()
        raise CheckpointError(
            f"gallery '{path}' was replaced {OPEN_ATTEMPTS} times while it was being read; try again when the "
            "process writing it is done"
        )

    @classmethod
    def _open_version(cls, folder: _FolderVersion, encoder, mmap: bool) -> Gallery:
        path = folder.path
        raw = folder.read_bytes(MANIFEST, missing=f"'{path}' is not a gallery (no {MANIFEST}); build one with "
                                "'duetgen index'", limit=MAX_MANIFEST_BYTES)  # fmt: skip
        try:
            manifest = json.loads(raw)
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            raise CheckpointError(
                f"{MANIFEST} in '{path}' is not valid JSON ({_one_line(err)}); {REBUILD_HINT}"
            ) from None
        if not isinstance(manifest, dict):
            raise CheckpointError(f"{MANIFEST} in '{path}' is not a JSON object; {REBUILD_HINT}")
        if manifest.get("kind") != GALLERY_KIND or manifest.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"'{path}' is not a duetgen gallery of format {FORMAT_VERSION} "
                f"(kind={manifest.get('kind')!r:.60}, format_version={manifest.get('format_version')!r:.60})"
            )
        _check_manifest(manifest, path)
        if encoder is not None:
            check_identity(manifest["encoder"], encoder, f"gallery '{path}'")
        n, dim = manifest["counts"]["items"], manifest["embed_dim"]
        emb = folder.load_npy(EMBEDDINGS, mmap)
        if emb.shape != (n, dim):
            folder.finish()
            raise CheckpointError(
                f"gallery '{path}' is inconsistent: {MANIFEST} says {n} items of dim {dim}, {EMBEDDINGS} has shape "
                f"{emb.shape}; {REBUILD_HINT}"
            )
        text = folder.read_bytes(ITEMS, limit=(n + 1) * MAX_ITEM_BYTES)
        items = _parse_items(text, path)
        if len(items) != n:
            folder.finish()
            raise CheckpointError(
                f"gallery '{path}' is inconsistent: {MANIFEST} says {n} items, {ITEMS} has {len(items)} rows; "
                f"{REBUILD_HINT}"
            )
        if manifest.get("root"):
            manifest["root"] = _from_stored(manifest["root"], path)
        regions = region_config = boxes = None
        if manifest.get("regions"):
            region_config, boxes = _region_meta(manifest["regions"], path)
            regions = folder.load_npy(REGIONS, mmap)
            if regions.shape != (n, len(boxes), dim):
                folder.finish()
                raise CheckpointError(
                    f"gallery '{path}' is inconsistent: {REGIONS} has shape {regions.shape}, expected "
                    f"({n}, {len(boxes)}, {dim}) from {MANIFEST}; {REBUILD_HINT}"
                )
        idx = manifest["index"]
        index = None
        limit = MAX_INDEX_OVERHEAD + n * (4 * dim + MAX_INDEX_BYTES_PER_ITEM)
        data = folder.read_bytes(INDEX_FILE, optional=True, limit=limit)
        if data is not None:
            index = _read_index(data, idx, path)
            if index.ntotal != n or index.dim != dim:
                logger.warning("index of '%s' has %d rows of dim %d for %d items of dim %d; rebuilding it",
                               path, index.ntotal, index.dim, n, dim)  # fmt: skip
                index = None
        folder.finish()
        return cls(emb, items, manifest["encoder"], regions=regions, region_config=region_config,
                   region_boxes=boxes, index=index, index_kind=idx.get("requested") or "auto",
                   dtype=manifest["dtype"], path=path, manifest=manifest)  # fmt: skip

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Writes the gallery atomically to ``path`` (default: where it was opened or built)."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise DuetgenInputError("this gallery has no path yet; pass save(path)")
        index = self.index  # build before writing, outside the swap
        now = _now()
        manifest = {
            "kind": GALLERY_KIND,
            "format_version": FORMAT_VERSION,
            "encoder": self.identity,
            "model_source": self.manifest.get("model_source"),
            "embed_dim": int(self.embed_dim),
            "dtype": self.dtype,
            "image_size": self.manifest.get("image_size"),
            "counts": {"items": len(self), "skipped": int(self.manifest.get("counts", {}).get("skipped", 0))},
            "skipped": self.manifest.get("skipped", [])[:MAX_SKIPPED_LISTED],
            "next_id": self.next_id,
            "root": _to_stored(self.manifest.get("root"), path),
            "index": {"kind": index.kind, "requested": self.index_kind, "params": index.params},
            "regions": None,
            "created": self.manifest.get("created", now),
            "updated": now,
        }
        if self.regions is not None:
            manifest["regions"] = {
                "config": self.region_config.to_dict(),
                "boxes": np.round(self.region_boxes, 6).tolist(),
                "per_item": int(self.regions.shape[1]),
                "dtype": "float16",
            }
        emb = np.asarray(self.embeddings, dtype=np.float16 if self.dtype == "float16" else np.float32)

        def write(tmp: Path) -> None:
            np.save(tmp / EMBEDDINGS, emb)
            with open(tmp / ITEMS, "w") as fh:
                fh.writelines(json.dumps({**it, "path": _to_stored(it["path"], path)}, separators=(",", ":")) + "\n"
                              for it in self.items)  # fmt: skip
            index.save(tmp / INDEX_FILE)
            manifest["index"]["sha256"] = _file_sha256(tmp / INDEX_FILE)
            if self.regions is not None:
                np.save(tmp / REGIONS, np.asarray(self.regions, dtype=np.float16))
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

        self.path = atomic_write_folder(path, write)
        self.manifest = manifest
        # Memory-map the arrays just written (kept in memory if another save replaced the folder meanwhile).
        try:
            folder = _FolderVersion(self.path)
            try:
                if folder.read_bytes(MANIFEST) == json.dumps(manifest, indent=2).encode():
                    self.embeddings = folder.load_npy(EMBEDDINGS, True)
                    if self.regions is not None:
                        self.regions = folder.load_npy(REGIONS, True)
            finally:
                folder.close()
        except (OSError, _VersionReplaced):
            pass
        return self.path

    # ------------------------------------------------------------------------------------------------------
    # properties
    # ------------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (f"Gallery({len(self)} items, dim {self.embed_dim}, index {self.index.kind}, "
                f"regions {None if self.regions is None else self.regions.shape[1]}, path {self.path})")  # fmt: skip

    @property
    def embed_dim(self) -> int:
        return int(self.identity.get("embed_dim") or self.embeddings.shape[1])

    @property
    def paths(self) -> list[str]:
        return [it["path"] for it in self.items]

    @property
    def ids(self) -> list[int]:
        return [int(it["id"]) for it in self.items]

    @property
    def next_id(self) -> int:
        return max(int(self.manifest.get("next_id", 0)), max(self.ids, default=-1) + 1)

    @property
    def index(self) -> VectorIndex:
        """The FAISS index over the rows (built on first use if the gallery has none yet)."""
        if self._index is None or self._index.ntotal != len(self):
            self._index = VectorIndex.build(self.embeddings_f32(), self.index_kind)
        return self._index

    def embeddings_f32(self) -> np.ndarray:
        return as_float32(self.embeddings).reshape(len(self), -1)

    def memory_per_item(self) -> dict[str, float]:
        """Bytes per item on disk / in memory: embedding, index, regions and their total."""
        n = max(len(self), 1)
        emb = self.embed_dim * (2 if self.dtype == "float16" else 4)
        idx = self.index.memory_bytes() / n
        reg = 0 if self.regions is None else int(self.regions.shape[1]) * self.embed_dim * 2
        return {"embedding": float(emb), "index": float(idx), "regions": float(reg), "total": float(emb + idx + reg)}

    # ------------------------------------------------------------------------------------------------------
    # search
    # ------------------------------------------------------------------------------------------------------

    def search(
        self,
        query_embeds,
        k: int = 10,
        *,
        regions: bool = False,
        verify_sketches=None,
        verifier=None,
        verify_words=None,
    ):
        """Top-k gallery items for each query.

        Args:
            query_embeds: (Q, D) L2-normalised queries (``encoder.encode_query(...)``), tensor or array; a single
                (D,) query is allowed.
            k: results per query.
            regions: score each photo by its best region (scene retrieval; needs a gallery built with regions);
                results then carry the region ``box``.
            verify_sketches: the queries' sketches ((Q, 3, H, W) or (3, H, W) in [0, 1], as the encoder took them)
                to re-rank each query's top hits by silhouette agreement (:mod:`duetgen.verify`; photos on plain
                backgrounds); results then carry their ``iou``. With ``regions``, each scene is re-scored by its
                best object instead (shape agreement at any rotation plus what the object's crop says about the
                words; pass a :class:`duetgen.verify.SceneVerifier`).
            verifier: a :class:`duetgen.verify.SilhouetteVerifier` (weight, depth, and its cache of photo
                silhouettes, worth keeping across searches); default: one with the default weight and depth. With
                ``regions``: a :class:`duetgen.verify.SceneVerifier` (it holds the encoder), required.
            verify_words: with ``regions`` and ``verify_sketches``, the words of each query (a list of str, or one
                str for a single query; ``""`` for a sketch alone). World attribute words are read from each
                object's crop, a sketch alone scores by shape only; ``None`` (the default: not known) scores
                each object's crop cosine with the query (:class:`duetgen.verify.SceneVerifier`).

        Returns:
            For (Q, D) queries, Q lists of :class:`SearchResult` (best first); for a (D,) query, one list.

        Raises:
            DuetgenInputError: ``k`` or the number of queries is over its limit (``DUETGEN_MAX_K``,
                ``DUETGEN_MAX_QUERIES``; :mod:`duetgen.limits`), or the queries have the wrong shape.
        """
        from . import limits

        lim = limits.current()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise DuetgenInputError(f"k must be an integer >= 1, got {k!r}")
        limits.check("max_k", int(k), "k", lim)
        if not isinstance(query_embeds, (torch.Tensor, np.ndarray)):
            query_embeds = as_float32(query_embeds)
        n_queries = 1 if query_embeds.ndim == 1 else len(query_embeds)
        limits.check("max_queries", n_queries, "the number of queries", lim)
        if verify_words is not None and not (regions and verify_sketches is not None):
            raise DuetgenInputError("verify_words goes with regions=True and verify_sketches (scene verification)")
        if regions:
            from .scene_retrieval import search_scenes

            if verify_sketches is not None:
                return self._search_scenes_verified(
                    query_embeds, int(k), verify_sketches, verifier, n_queries, verify_words
                )
            return search_scenes(self, query_embeds, k)
        if verify_sketches is not None:
            return self._search_verified(query_embeds, int(k), verify_sketches, verifier, n_queries)
        q = query_embeds.detach().float().cpu().numpy() if isinstance(query_embeds, torch.Tensor) else query_embeds
        q = as_float32(q)
        single = q.ndim == 1
        q = q[None] if single else q
        if q.ndim != 2 or q.shape[1] != self.embed_dim:
            raise DuetgenInputError(f"query embeddings must be (Q, {self.embed_dim}); got shape {tuple(q.shape)}")
        scores, rows = self.index.search(q, k)
        out = []
        for sr, rr in zip(scores, rows, strict=True):
            hits = [(float(s), self.items[r]) for s, r in zip(sr, rr, strict=True) if r >= 0]
            out.append([SearchResult(s, it["path"], int(it["id"])) for s, it in hits])
        return out[0] if single else out

    def _search_verified(self, query_embeds, k: int, sketches, verifier, n_queries: int):
        from .verify import SilhouetteVerifier, sketch_regions

        verifier = verifier if verifier is not None else SilhouetteVerifier()
        masks = sketch_regions(sketches)
        if len(masks) != n_queries:
            raise DuetgenInputError(f"verify_sketches has {len(masks)} sketches for {n_queries} queries")
        single = query_embeds.ndim == 1
        found = self.search(query_embeds[None] if single else query_embeds, max(k, verifier.depth))
        out = [verifier.rerank(hits, mask, k) for hits, mask in zip(found, masks, strict=True)]
        return out[0] if single else out

    def _search_scenes_verified(self, query_embeds, k: int, sketches, verifier, n_queries: int, words=None):
        from .scene_retrieval import search_scenes
        from .verify import SceneVerifier, sketch_regions

        if not isinstance(verifier, SceneVerifier):
            raise DuetgenInputError(
                "scene verification embeds each scene's objects: pass verifier=duetgen.SceneVerifier(encoder)"
            )
        masks = sketch_regions(sketches, size=128)
        if len(masks) != n_queries:
            raise DuetgenInputError(f"verify_sketches has {len(masks)} sketches for {n_queries} queries")
        q = query_embeds.detach().float().cpu() if isinstance(query_embeds, torch.Tensor) else torch.as_tensor(
            as_float32(query_embeds))  # fmt: skip
        single = q.ndim == 1
        q = q[None] if single else q
        words = [words] * n_queries if words is None or isinstance(words, str) else list(words)
        if len(words) != n_queries or not all(w is None or isinstance(w, str) for w in words):
            raise DuetgenInputError(f"verify_words must be one str (or None) per query: {n_queries} queries")
        found = search_scenes(self, q, max(k, verifier.depth))
        out = [verifier.rerank(hits, q[i], masks[i], k, words[i]) for i, hits in enumerate(found)]
        return out[0] if single else out

    # ------------------------------------------------------------------------------------------------------
    # incremental updates
    # ------------------------------------------------------------------------------------------------------

    def add(
        self,
        images: str | os.PathLike | Iterable[str | os.PathLike],
        encoder,
        *,
        batch_size: int = 64,
        num_workers: int | None = None,
        progress: bool = False,
    ) -> list[int]:
        """Embeds new images and appends them (in memory; :meth:`save` persists).

        Files already in the gallery and files that fail to decode are skipped with a warning.

        Returns:
            The ids given to the added items, in the order of the (sorted, for a folder) input.
        """
        check_identity(self.identity, encoder)
        paths, skipped, _ = _resolve_images(images)
        have = set(self.paths)
        dup = [p for p in paths if p in have]
        for p in dup:
            logger.warning("skipping %s: already in the gallery", p)
        paths = [p for p in paths if p not in have]
        if not paths:
            return []
        bar = _progress(len(paths), 0, progress, "adding")
        new_emb, new_reg, new_items, next_id = [], [], [], self.next_id
        with bar:
            for rows, glob, regs, sizes, errors in _iter_embedded(
                encoder, paths, range(len(paths)), batch_size=batch_size, num_workers=num_workers,
                region_config=self.region_config, progress=bar,
            ):  # fmt: skip
                for j, row in enumerate(rows):
                    if errors[j]:
                        skipped.append({"path": paths[row], "reason": errors[j]})
                        logger.warning("skipping %s: %s", paths[row], errors[j])
                        continue
                    new_items.append({"id": next_id, "path": paths[row], "w": int(sizes[j, 0]), "h": int(sizes[j, 1])})
                    next_id += 1
                    new_emb.append(glob[j])
                    if regs is not None:
                        new_reg.append(regs[j])
        self._record_skipped(skipped)
        if not new_items:
            return []
        index = self.index  # existing rows, before appending
        add = np.stack(new_emb).astype(np.float32)
        self.embeddings = np.concatenate([self.embeddings_f32(), add])
        if self.regions is not None:
            self.regions = np.concatenate([np.asarray(self.regions), np.stack(new_reg).astype(np.float16)])
        self.items = self.items + new_items
        self.manifest["next_id"] = next_id
        index.add(add)
        return [it["id"] for it in new_items]

    def remove(self, ids_or_paths: Iterable[int | str | os.PathLike]) -> int:
        """Removes items by id (int) or path (str / Path) (in memory; :meth:`save` persists).

        Raises:
            DuetgenInputError: some ids or paths are not in the gallery (nothing is removed then).

        Returns:
            The number of items removed.
        """
        wanted = list(ids_or_paths)
        by_id = {int(it["id"]): r for r, it in enumerate(self.items)}
        by_path = {it["path"]: r for r, it in enumerate(self.items)}
        rows, missing = set(), []
        for w in wanted:
            if isinstance(w, (int, np.integer)) and not isinstance(w, bool):
                r = by_id.get(int(w))
            else:
                r = by_path.get(os.path.abspath(os.path.expanduser(str(w))))
            (missing.append(w) if r is None else rows.add(r))
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise DuetgenInputError(f"{len(missing)} ids/paths are not in the gallery: {shown}")
        if not rows:
            return 0
        self.manifest["next_id"] = self.next_id
        keep = np.setdiff1d(np.arange(len(self)), np.fromiter(rows, int))
        self.embeddings = self.embeddings_f32()[keep]
        if self.regions is not None:
            self.regions = np.asarray(self.regions)[keep]
        self.items = [self.items[r] for r in keep]
        self._index = self._rebuilt_index()
        return len(rows)

    def sync(self, root: str | os.PathLike, encoder, **kwargs) -> tuple[list[int], int]:
        """Brings the gallery in line with a folder: adds new image files, removes items whose file is gone.

        Returns:
            (ids added, number removed).
        """
        paths, skipped = scan_images(root)
        self.manifest["counts"] = {"items": len(self), "skipped": 0}  # the skipped list describes this scan
        self.manifest["skipped"] = []
        self._record_skipped(skipped)
        present = set(paths)
        root_abs = os.path.abspath(os.path.expanduser(str(root))) + os.sep
        gone = [it["path"] for it in self.items if it["path"].startswith(root_abs) and it["path"] not in present]
        removed = self.remove(gone) if gone else 0
        have = set(self.paths)
        added = self.add([p for p in paths if p not in have], encoder, **kwargs)
        return added, removed

    def _rebuilt_index(self) -> VectorIndex:
        old = self._index
        x = self.embeddings_f32()
        if old is not None and old.kind == "ivf" and len(x):
            import faiss

            idx = faiss.clone_index(old.index)
            idx.reset()  # keeps the trained coarse quantiser
            idx.add(x)
            return VectorIndex(idx, "ivf", old.params)
        kind = old.kind if old is not None else self.index_kind
        return VectorIndex.build(x, kind)

    def _record_skipped(self, skipped: list[dict]) -> None:
        if skipped:
            counts = self.manifest.setdefault("counts", {"items": len(self), "skipped": 0})
            counts["skipped"] = int(counts.get("skipped", 0)) + len(skipped)
            self.manifest["skipped"] = (self.manifest.get("skipped", []) + skipped)[:MAX_SKIPPED_LISTED]


# ---------------------------------------------------------------------------------------------------------------
# the resumable builder
# ---------------------------------------------------------------------------------------------------------------


class GalleryBuilder:
    """Builds a gallery in resumable steps: :meth:`prepare`, :meth:`embed` (any row range, any process),
    :meth:`finalize`.

    Args:
        encoder: the ComposedQueryEncoder.
        images: a folder (recursive) or a list of image files.
        out: the gallery folder to write (``None``: build in memory, in a temporary work folder).
        batch_size: images per forward pass.
        num_workers: DataLoader decoding processes (default half the cores, at most 2; 0 decodes in this process).
        regions: ``True`` (default :class:`RegionConfig`) or a RegionConfig to also keep region embeddings.
        dtype: ``"float32"`` or ``"float16"`` for ``embeddings.npy``.
        index: "auto", "flat", "ivf" or "hnsw" (see :mod:`duetgen.index`).
        flush_every: batches per shard file (every batch is appended and flushed as soon as it is embedded).
        work_dir: the shard folder (default: ``.NAME.work`` beside ``out``); removed by :meth:`finalize`.
        progress: show a tqdm progress bar.
        model_source: what to record as the model (a folder path or ``"embedded"``), so ``duetgen retrieve`` can
            reload the encoder without ``--model``.
    """

    def __init__(
        self,
        encoder,
        images: str | os.PathLike | Iterable[str | os.PathLike],
        out: str | os.PathLike | None = None,
        *,
        batch_size: int = 64,
        num_workers: int | None = None,
        regions: bool | RegionConfig = False,
        dtype: str = "float32",
        index: str = "auto",
        flush_every: int = 16,
        work_dir: str | os.PathLike | None = None,
        progress: bool = True,
        model_source: str | None = None,
    ):
        from .index import choose_kind

        choose_kind(0, index)  # validates the name
        if dtype not in ("float32", "float16"):
            raise DuetgenInputError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if flush_every < 1:
            raise DuetgenInputError(f"flush_every must be >= 1, got {flush_every}")
        self.encoder = encoder
        self.images = images
        self.out = Path(os.path.abspath(os.path.expanduser(str(out)))) if out is not None else None
        self.batch_size, self.num_workers = batch_size, num_workers
        self.region_config = RegionConfig() if regions is True else (regions or None)
        self.dtype, self.index_kind, self.flush_every = dtype, index, flush_every
        self.progress, self.model_source = progress, model_source
        if work_dir is not None:
            self.work_dir = Path(work_dir)
        elif self.out is not None:
            self.work_dir = self.out.parent / f".{self.out.name}.work"
        else:
            import tempfile

            self.work_dir = Path(tempfile.mkdtemp(prefix="duetgen-gallery-"))
        self.paths: list[str] = []
        self.skipped: list[dict] = []
        self.root: str | None = None
        self.dim = encoder.embed_dim
        grid = getattr(encoder.clip.visual, "grid_size", (1, 1))[0]
        self.region_boxes = self.region_config.boxes(int(grid)) if self.region_config else None
        self.n_regions = 0 if self.region_boxes is None else len(self.region_boxes)
        self.resumed = 0  # rows found already embedded by an earlier run

    # ------------------------------------------------------------------------------------------------------

    def _plan(self) -> dict:
        h = hashlib.sha256("\n".join(self.paths).encode())
        return {
            "paths_sha256": h.hexdigest(),
            "n": len(self.paths),
            "encoder": self.encoder.identity,
            "image_size": self.encoder.image_size,
            "regions": self.region_config.to_dict() if self.region_config else None,
            "n_regions": self.n_regions,
        }

    def prepare(self, *, write: bool = True) -> list[str]:
        """Lists the images and readies the work folder. A work folder left by an earlier run of the *same* build
        (same files, encoder, options) is kept, so :meth:`embed` continues it; any other one is cleared.

        Args:
            write: create / clear the work folder (multi-process builds: only rank 0 writes, the others read).
        """
        self.paths, self.skipped, self.root = _resolve_images(self.images)
        plan = self._plan()
        plan_file = self.work_dir / "plan.json"
        if write:
            old = json.loads(plan_file.read_text()) if plan_file.is_file() else None
            if old != plan:
                if old is not None:
                    logger.warning("work folder %s belongs to a different build; starting afresh", self.work_dir)
                shutil.rmtree(self.work_dir, ignore_errors=True)
                self.work_dir.mkdir(parents=True)
                tmp = plan_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(plan))
                os.replace(tmp, plan_file)
        elif not plan_file.is_file() or json.loads(plan_file.read_text()) != plan:
            raise DuetgenError(f"work folder {self.work_dir} has no plan for this build; run prepare() on rank 0")
        return self.paths

    def _shards(self) -> list[tuple[int, int, Path]]:
        """(start, rows, file) of every shard, by start. Torn trailing rows (a write cut by a kill) are cut off."""
        out = []
        row_bytes = self.dim * 4
        reg_bytes = self.n_regions * self.dim * 2
        for f in sorted(self.work_dir.glob("shard-*.f32")):
            start = int(f.stem.split("-")[1])
            rows = f.stat().st_size // row_bytes
            if reg_bytes:
                rf = f.with_suffix(".regions.f16")
                rows = min(rows, rf.stat().st_size // reg_bytes if rf.is_file() else 0)
            out.append((start, rows, f))
        return out

    def done_rows(self) -> np.ndarray:
        """Boolean (N,) of rows already embedded in the work folder."""
        done = np.zeros(len(self.paths), bool)
        for start, rows, _ in self._shards():
            done[start : start + rows] = True
        return done

    def embed(self, start: int = 0, end: int | None = None) -> int:
        """Embeds rows ``start:end`` of the sorted path list that no shard holds yet.

        Returns:
            The number of rows embedded by this call.
        """
        end = len(self.paths) if end is None else min(end, len(self.paths))
        done = self.done_rows()
        todo = [r for r in range(start, end) if not done[r]]
        self.resumed = int(done[start:end].sum())
        if self.resumed:
            logger.info("resuming: %d of %d images already embedded in %s", self.resumed, end - start, self.work_dir)
        if not todo:
            return 0
        for _, rows, f in self._shards():  # cut torn rows so appends stay aligned
            self._truncate(f, rows)
        bar = _progress(end - start, self.resumed, self.progress, "indexing")
        writer = _ShardWriter(self.work_dir, self.dim, self.n_regions, self.flush_every)
        try:
            with bar:
                for rows, glob, regs, sizes, errors in _iter_embedded(
                    self.encoder, self.paths, todo, batch_size=self.batch_size, num_workers=self.num_workers,
                    region_config=self.region_config, progress=bar,
                ):  # fmt: skip
                    writer.write(rows, glob, regs, sizes, errors)
        finally:
            writer.close()
        return len(todo)

    def _truncate(self, f: Path, rows: int) -> None:
        with open(f, "r+b") as fh:
            fh.truncate(rows * self.dim * 4)
        if self.n_regions:
            with open(f.with_suffix(".regions.f16"), "r+b") as fh:
                fh.truncate(rows * self.n_regions * self.dim * 2)

    def collect(self):
        """Reads the shards: (embeddings (N, D) float32 with NaN rows for failures, regions (N, R, D) fp16 or None,
        sizes (N, 2), errors {row: reason})."""
        n = len(self.paths)
        emb = np.full((n, self.dim), np.nan, np.float32)
        regs = np.zeros((n, self.n_regions, self.dim), np.float16) if self.n_regions else None
        sizes = np.zeros((n, 2), np.int64)
        done = np.zeros(n, bool)
        errors: dict[int, str] = {}
        for start, rows, f in self._shards():
            emb[start : start + rows] = np.fromfile(f, np.float32, rows * self.dim).reshape(rows, self.dim)
            if regs is not None:
                raw = np.fromfile(f.with_suffix(".regions.f16"), np.float16, rows * self.n_regions * self.dim)
                regs[start : start + rows] = raw.reshape(rows, self.n_regions, self.dim)
            side = f.with_suffix(".meta.jsonl")
            if side.is_file():
                for line in side.read_text().splitlines():
                    try:
                        m = json.loads(line)
                    except ValueError:  # a torn last line
                        continue
                    if start <= m["row"] < start + rows:
                        sizes[m["row"]] = (m["w"], m["h"])
                        if m.get("error"):
                            errors[m["row"]] = m["error"]
            done[start : start + rows] = True
        if not done.all():
            missing = np.flatnonzero(~done)
            raise DuetgenError(
                f"{len(missing)} of {n} images are not embedded yet (first: {self.paths[missing[0]]}); run embed()"
            )
        return emb, regs, sizes, errors

    def finalize(self) -> Gallery:
        """Merges the shards in path order, writes the gallery (atomically, if ``out`` was given) and removes the
        work folder."""
        emb, regs, sizes, errors = self.collect()
        bad = ~np.isfinite(emb).all(1)
        for r in np.flatnonzero(bad):
            reason = errors.get(int(r), "could not be embedded")
            self.skipped.append({"path": self.paths[r], "reason": reason})
            logger.warning("skipping %s: %s", self.paths[r], reason)
        keep = np.flatnonzero(~bad)
        items = [{"id": i, "path": self.paths[r], "w": int(sizes[r, 0]), "h": int(sizes[r, 1])}
                 for i, r in enumerate(keep)]  # fmt: skip
        now = _now()
        manifest = {
            "model_source": self.model_source,
            "image_size": self.encoder.image_size,
            "counts": {"items": len(items), "skipped": len(self.skipped)},
            "skipped": self.skipped[:MAX_SKIPPED_LISTED],
            "next_id": len(items),
            "root": self.root,
            "created": now,
        }
        gallery = Gallery(
            emb[keep], items, self.encoder.identity,
            regions=regs[keep] if regs is not None else None, region_config=self.region_config,
            region_boxes=self.region_boxes, index_kind=self.index_kind, dtype=self.dtype, manifest=manifest,
        )  # fmt: skip
        if self.out is not None:
            gallery.save(self.out)
        shutil.rmtree(self.work_dir, ignore_errors=True)
        return gallery


# ---------------------------------------------------------------------------------------------------------------
# validation of a gallery folder's files (a corrupt or hostile file is a CheckpointError, never another exception)
# ---------------------------------------------------------------------------------------------------------------

MAX_ITEM_BYTES = 64 * 1024  # per items.jsonl row (a path is at most a few KiB)
MAX_INDEX_OVERHEAD = 64 * 2**20  # bytes of index.faiss beyond the vectors (IVF centroids, headers)
MAX_INDEX_BYTES_PER_ITEM = 4096  # HNSW links and ids per item, generously
MAX_IMAGE_SIDE = 2**31 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INDEX_KINDS = ("flat", "ivf", "hnsw")


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _file_sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _damaged(file: str, path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{file} in gallery '{path}' is damaged: {what}; {REBUILD_HINT}")


def _check_manifest(m: dict, path: Path) -> None:
    """Checks the types and ranges of every manifest value that opening, searching or saving uses."""

    def bad(what: str) -> CheckpointError:
        return _damaged(MANIFEST, path, what)

    if not isinstance(m.get("encoder"), dict):
        raise bad("'encoder' is missing or not an object")
    dim = m.get("embed_dim")
    if not _is_int(dim) or not 1 <= dim <= MAX_EMBED_DIM:
        raise bad(f"'embed_dim' must be an integer in [1, {MAX_EMBED_DIM}], got {dim!r:.60}")
    if m.get("dtype") not in ("float32", "float16"):
        raise bad(f"'dtype' must be 'float32' or 'float16', got {m.get('dtype')!r:.60}")
    counts = m.get("counts")
    if not isinstance(counts, dict) or not _is_int(counts.get("items")) or counts["items"] < 0:
        raise bad("'counts.items' is missing or not a non-negative integer")
    if "skipped" in counts and (not _is_int(counts["skipped"]) or counts["skipped"] < 0):
        raise bad("'counts.skipped' is not a non-negative integer")
    if not isinstance(m.get("skipped", []), list):
        raise bad("'skipped' is not a list")
    if m.get("next_id") is not None and (not _is_int(m["next_id"]) or m["next_id"] < 0):
        raise bad("'next_id' is not a non-negative integer")
    for key in ("root", "model_source"):
        if m.get(key) is not None and (not isinstance(m[key], str) or "\0" in m[key]):
            raise bad(f"'{key}' is not a path")
    if m.get("image_size") is not None and (not _is_int(m["image_size"]) or m["image_size"] < 1):
        raise bad("'image_size' is not a positive integer")
    idx = m.get("index")
    if not isinstance(idx, dict) or idx.get("kind") not in _INDEX_KINDS:
        raise bad(f"'index.kind' must be one of {', '.join(_INDEX_KINDS)}")
    if idx.get("requested") not in (None, "auto", *_INDEX_KINDS):
        raise bad(f"'index.requested' is not an index kind: {idx.get('requested')!r:.60}")
    params = idx.get("params")
    if params is not None:
        if not isinstance(params, dict):
            raise bad("'index.params' is not an object")
        for key in ("nlist", "nprobe", "M", "ef_search"):
            if key in params and (not _is_int(params[key]) or not 1 <= params[key] <= MAX_INDEX_PARAM):
                raise bad(f"'index.params.{key}' must be an integer in [1, {MAX_INDEX_PARAM}]")
        if "tuned_recall" in params and not _is_number(params["tuned_recall"]):
            raise bad("'index.params.tuned_recall' is not a number")
    sha = idx.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise bad("'index.sha256' is not a SHA-256 hex digest")


def _region_meta(r, path: Path) -> tuple[RegionConfig, np.ndarray]:
    """The region config and (R, 4) boxes of a manifest's ``regions`` entry, checked."""

    def bad(what: str) -> CheckpointError:
        return _damaged(MANIFEST, path, what)

    if not isinstance(r, dict) or not isinstance(r.get("config"), dict):
        raise bad("'regions.config' is missing or not an object")
    c = r["config"]
    scales = c.get("scales")
    if not isinstance(scales, list) or not all(_is_number(s) for s in scales) or len(scales) > 64:
        raise bad("'regions.config.scales' is not a list of numbers")
    if not _is_number(c.get("overlap")) or not all(isinstance(c.get(k), bool) for k in ("whole", "patches")):
        raise bad("'regions.config' needs a number 'overlap' and booleans 'whole' and 'patches'")
    try:
        config = RegionConfig.from_dict(c)
    except DuetgenInputError as err:
        raise bad(f"'regions.config' is invalid ({_one_line(err)})") from None
    boxes = r.get("boxes")
    if (
        not isinstance(boxes, list)
        or not boxes
        or not all(isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b) for b in boxes)
    ):
        raise bad("'regions.boxes' is not a non-empty list of [x0, y0, x1, y1] numbers")
    arr = np.asarray(boxes, dtype=np.float32)
    if not (np.isfinite(arr).all() and (arr >= 0).all() and (arr <= 1).all()):
        raise bad("'regions.boxes' holds values outside [0, 1]")
    per_item = r.get("per_item", len(boxes))
    if per_item != len(boxes) or not _is_int(per_item):
        raise bad(f"'regions.per_item' is {per_item!r:.40} but there are {len(boxes)} boxes")
    return config, arr


def _parse_items(raw: bytes, path: Path) -> list[dict]:
    """The rows of items.jsonl, each checked to be ``{"id": int >= 0, "path": str, "w": int >= 0, "h": int >= 0}``
    (ids unique), with paths made absolute."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _damaged(ITEMS, path, f"it is not UTF-8 text ({_one_line(err)})") from None
    items, seen = [], set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            it = json.loads(line)
        except (ValueError, RecursionError) as err:
            raise _damaged(ITEMS, path, f"line {lineno} is not valid JSON ({_one_line(err, 80)})") from None
        if not isinstance(it, dict):
            raise _damaged(ITEMS, path, f"line {lineno} is not a JSON object")
        i, p, w, h = it.get("id"), it.get("path"), it.get("w"), it.get("h")
        if not _is_int(i) or i < 0 or i in seen:
            raise _damaged(ITEMS, path, f"line {lineno} has no unique non-negative integer 'id'")
        if not isinstance(p, str) or not p or "\0" in p:
            raise _damaged(ITEMS, path, f"line {lineno} has no 'path' string")
        if not (_is_int(w) and _is_int(h) and 0 <= w <= MAX_IMAGE_SIDE and 0 <= h <= MAX_IMAGE_SIDE):
            raise _damaged(ITEMS, path, f"line {lineno} has no non-negative integer 'w' and 'h'")
        seen.add(i)
        it["path"] = _from_stored(p, path)  # stored relative to the gallery folder (relocatable); absolute in memory
        items.append(it)
    return items


def _read_index(data: bytes, idx: dict, path: Path) -> VectorIndex:
    """The FAISS index from the bytes of index.faiss, checked against the manifest's SHA-256 (when recorded) and
    the index kind; a damaged file is a CheckpointError, never a faiss error."""
    sha = idx.get("sha256")
    if sha is not None and hashlib.sha256(data).hexdigest() != sha:
        raise _damaged(INDEX_FILE, path, f"its SHA-256 does not match the one in {MANIFEST}")
    return VectorIndex.from_bytes(data, idx["kind"], idx.get("params"), source=f"{INDEX_FILE} in gallery '{path}'")


def _to_stored(p: str | None, gallery_dir: Path) -> str | None:
    """Image paths are stored relative to the gallery folder, so a gallery moves (or ships) with its photos."""
    if p is None:
        return None
    try:
        return os.path.relpath(p, os.path.abspath(gallery_dir))
    except ValueError:  # another drive on Windows
        return p


def _from_stored(p: str, gallery_dir: Path) -> str:
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(os.path.abspath(gallery_dir), p))


class _ShardWriter:
    """Appends embedded rows to shard files, flushing after every batch; a new shard every ``flush_every`` batches
    or wherever the rows stop being contiguous."""

    def __init__(self, work_dir: Path, dim: int, n_regions: int, flush_every: int):
        self.work_dir, self.dim, self.n_regions, self.flush_every = work_dir, dim, n_regions, flush_every
        self.files = None
        self.next_row = -1
        self.batches = 0

    def _open(self, start: int) -> None:
        self.close()
        base = self.work_dir / f"shard-{start:010d}"
        self.files = [open(base.with_suffix(".f32"), "ab"), open(base.with_suffix(".meta.jsonl"), "a")]
        if self.n_regions:
            self.files.append(open(base.with_suffix(".regions.f16"), "ab"))
        self.next_row, self.batches = start, 0

    def write(self, rows: np.ndarray, glob: np.ndarray, regs, sizes: np.ndarray, errors: list[str]) -> None:
        i = 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and rows[j] == rows[j - 1] + 1:
                j += 1
            if self.files is None or rows[i] != self.next_row or self.batches >= self.flush_every:
                self._open(int(rows[i]))
            # metadata first, then regions, then the global rows: a row counts as done once its global row is whole
            self.files[1].write("".join(
                json.dumps({"row": int(r), "w": int(sizes[k, 0]), "h": int(sizes[k, 1]), "error": errors[k]}) + "\n"
                for k, r in zip(range(i, j), rows[i:j], strict=True)
            ))  # fmt: skip
            self.files[1].flush()
            if self.n_regions:
                self.files[2].write(np.ascontiguousarray(regs[i:j], dtype=np.float16).tobytes())
                self.files[2].flush()
            self.files[0].write(np.ascontiguousarray(glob[i:j], dtype=np.float32).tobytes())
            self.files[0].flush()
            self.next_row = int(rows[j - 1]) + 1
            i = j
        self.batches += 1

    def close(self) -> None:
        for f in self.files or []:
            f.close()
        self.files = None
