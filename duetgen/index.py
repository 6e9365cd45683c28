"""The index engine: FAISS inner-product search over L2-normalised embeddings (cosine similarity).

Three kinds, one interface (:class:`VectorIndex`):

* ``"flat"``: ``IndexFlatIP``, exact. The default below :data:`AUTO_THRESHOLD` items; memory = 4 * D bytes per item.
* ``"ivf"``: ``IndexIVFFlat`` over an inner-product coarse quantiser, ``nlist ~ sqrt(N)`` lists trained on a
  sample of at most 64 points per list (k-means on 1M x 128 trains in seconds on one core). ``nprobe`` is
  *tuned* at build time: the smallest power of two whose recall@10 against exact search reaches ``target_recall``
  on probe queries drawn from the data itself (gallery vectors plus noise, re-normalised). What ``"auto"`` picks
  from :data:`AUTO_THRESHOLD` items up: it builds an order of magnitude faster than HNSW on CPU, and its memory
  per item stays ~4 * D + 8 bytes.
* ``"hnsw"``: ``IndexHNSWFlat`` (M = 32 links), ``efSearch`` tuned the same way. Lowest query latency, slowest build
  and ~4 * D + 8 * M * 2 bytes per item; opt in with ``kind="hnsw"``.

Rows are positions: search returns row numbers ``0..N-1`` in the order vectors were added; the gallery maps rows to
items. faiss is an optional dependency (``pip install duetgen[index]``); it is imported on first use.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from .errors import CheckpointError, DuetgenInputError

logger = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
AUTO_THRESHOLD = 200_000
"""From this many items on, ``kind="auto"`` builds an approximate (IVF) index instead of an exact flat one."""
AUTO_APPROX_KIND = "ivf"
DEFAULT_TARGET_RECALL = 0.95
HNSW_M = 32
REBUILD_HINT = "rebuild the gallery with 'duetgen index PHOTOS_DIR --out GALLERY --rebuild'"
_INDEX_CLASSES = {"flat": ("IndexFlatIP", "IndexFlat"), "ivf": ("IndexIVFFlat",), "hnsw": ("IndexHNSWFlat",)}


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss is installed where duetgen is tested
        raise DuetgenInputError("gallery search needs faiss: pip install 'duetgen[index]' (faiss-cpu)") from err
    return faiss


def choose_kind(n_items: int, kind: str = "auto") -> str:
    """Resolves ``kind`` ("auto", "flat", "ivf", "hnsw") for a gallery of ``n_items``."""
    if kind not in INDEX_KINDS:
        raise DuetgenInputError(f"index kind must be one of {', '.join(INDEX_KINDS)}; got {kind!r}")
    if kind == "auto":
        return AUTO_APPROX_KIND if n_items >= AUTO_THRESHOLD else "flat"
    return kind


def as_float32(x) -> np.ndarray:
    """(N, D) C-contiguous float32 (what faiss takes)."""
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def exact_search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner product with a temporary flat index: (scores (Q, k), rows (Q, k))."""
    faiss = _faiss()
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(as_float32(base))
    return flat.search(as_float32(queries), min(k, base.shape[0]))


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k rows that the approximate top-k also returns, averaged over queries."""
    a, e = np.asarray(approx_rows)[:, :k], np.asarray(exact_rows)[:, :k]
    hits = [len(set(ar[ar >= 0].tolist()) & set(er[er >= 0].tolist())) for ar, er in zip(a, e, strict=True)]
    denom = sum(int((er >= 0).sum()) for er in e)
    return float(sum(hits) / max(denom, 1))


def probe_queries(base: np.ndarray, n: int = 200, noise: float = 0.5, seed: int = 0) -> np.ndarray:
    """Tuning queries drawn from the data: random gallery vectors plus Gaussian noise of relative norm ``noise``,
    re-normalised (a query is near, but not on, the gallery items it should find)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(base.shape[0], size=min(n, base.shape[0]), replace=False)
    q = base[rows].astype(np.float32) + rng.normal(0, noise / math.sqrt(base.shape[1]), (len(rows), base.shape[1]))
    return as_float32(q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12))


class VectorIndex:
    """A FAISS index of one kind with its search parameters.

    Args:
        index: the faiss index.
        kind: "flat", "ivf" or "hnsw".
        params: search/build parameters (``nlist``, ``nprobe``, ``M``, ``ef_search``, ``tuned_recall``).
    """

    def __init__(self, index, kind: str, params: dict | None = None):
        self.index = index
        self.kind = kind
        self.params = dict(params or {})
        self._apply_params()

    # ------------------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        embeds: np.ndarray,
        kind: str = "auto",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        target_recall: float = DEFAULT_TARGET_RECALL,
        seed: int = 0,
    ) -> VectorIndex:
        """Builds an index over ``embeds`` (N, D), L2-normalised rows.

        Args:
            embeds: the gallery embeddings; row i is searchable as row i.
            kind: "auto" (flat below :data:`AUTO_THRESHOLD` items, else IVF), "flat", "ivf" or "hnsw".
            nlist: IVF lists (default ``clip(sqrt(N), 1, N / 39)``).
            nprobe: IVF lists probed per query; ``None`` tunes it to ``target_recall``.
            ef_search: HNSW search breadth; ``None`` tunes it to ``target_recall``.
            target_recall: recall@10 against exact search that tuning aims for.
            seed: seeds k-means and the tuning queries.
        """
        faiss = _faiss()
        x = as_float32(embeds)
        if x.ndim != 2 or x.shape[1] == 0:
            raise DuetgenInputError(f"embeddings must be (N, D) with D > 0, got shape {x.shape}")
        n, d = x.shape
        kind = choose_kind(n, kind)
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
            index.add(x)
            return cls(index, "flat")
        if kind == "ivf":
            nlist = nlist or int(np.clip(math.sqrt(max(n, 1)), 1, max(1, n // 39)))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            rng = np.random.default_rng(seed)
            train = x if n <= 64 * nlist else x[np.sort(rng.choice(n, 64 * nlist, replace=False))]
            index.train(train)
            index.add(x)
            out = cls(index, "ivf", {"nlist": nlist, "nprobe": nprobe or 1})
            if nprobe is None:
                out.tune(x, target_recall, seed=seed)
            return out
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.add(x)
            out = cls(index, "hnsw", {"M": HNSW_M, "ef_search": ef_search or 16})
            if ef_search is None:
                out.tune(x, target_recall, seed=seed)
            return out
        raise AssertionError(kind)  # pragma: no cover

    def tune(self, base: np.ndarray, target_recall: float = DEFAULT_TARGET_RECALL, *, k: int = 10, seed: int = 0):
        """Sets the smallest nprobe / efSearch (powers of two) whose recall@k against exact search on probe queries
        reaches ``target_recall``; records the reached recall in ``params["tuned_recall"]``."""
        if self.kind == "flat":
            return self
        queries = probe_queries(base, seed=seed)
        _, exact = exact_search(base, queries, k)
        key, limit = ("nprobe", self.params["nlist"]) if self.kind == "ivf" else ("ef_search", 1024)
        value, recall = 1 if self.kind == "ivf" else 16, 0.0
        while True:
            self.params[key] = min(value, limit)
            self._apply_params()
            recall = recall_at_k(self.search(queries, k)[1], exact, k)
            if recall >= target_recall or value >= limit:
                break
            value *= 2
        self.params["tuned_recall"] = round(recall, 4)
        logger.info("tuned %s %s=%d: recall@%d %.3f", self.kind, key, self.params[key], k, recall)
        return self

    def _apply_params(self) -> None:
        if self.kind == "ivf":
            self.index.nprobe = int(self.params.get("nprobe", 1))
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = int(self.params.get("ef_search", 16))

    # ------------------------------------------------------------------------------------------------------
    # use
    # ------------------------------------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def add(self, embeds: np.ndarray) -> None:
        """Appends rows (they get the next row numbers)."""
        self.index.add(as_float32(embeds))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores (Q, k) float32, rows (Q, k) int64; -1 where fewer than k exist)."""
        q = as_float32(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DuetgenInputError(f"queries must be (Q, {self.dim}), got shape {q.shape}")
        if k < 1:
            raise DuetgenInputError(f"k must be >= 1, got {k}")
        if self.ntotal == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return self.index.search(q, min(k, self.ntotal))

    def memory_bytes(self) -> int:
        """Size of the serialised index (a close proxy for its resident memory)."""
        return int(_faiss().serialize_index(self.index).nbytes)

    def save(self, path: str | os.PathLike) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike, kind: str, params: dict | None = None) -> VectorIndex:
        """An index from a file written by :meth:`save`.

        Raises:
            DuetgenInputError: the file is missing.
            CheckpointError: the file is damaged or holds another kind of index.
        """
        path = Path(path)
        if not path.is_file():
            raise DuetgenInputError(f"index file '{path}' is missing")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DuetgenInputError(f"index file '{path}' cannot be read ({err.strerror})") from None
        return cls.from_bytes(data, kind, params, source=f"index file '{path}'")

    @classmethod
    def from_bytes(
        cls, data: bytes, kind: str, params: dict | None = None, *, source: str = "the index file"
    ) -> VectorIndex:
        """An index from the bytes of a file written by :meth:`save` (read through an already open file, so a
        gallery is read from one consistent version of its folder).

        Raises:
            CheckpointError: the bytes are not a FAISS index of ``kind`` (faiss' own errors, including allocation
                failures from a damaged header, never escape).
        """
        if not data:
            raise CheckpointError(f"{source} is empty; {REBUILD_HINT}")
        faiss = _faiss()
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (RuntimeError, MemoryError, ValueError, TypeError, OverflowError) as err:
            detail = " ".join(str(err).split()) or type(err).__name__
            detail = detail if len(detail) <= 160 else detail[:157] + "..."
            raise CheckpointError(f"{source} is damaged ({detail}); {REBUILD_HINT}") from None
        expected = _INDEX_CLASSES.get(kind)
        if expected is None:
            raise CheckpointError(f"{source}: unknown index kind {kind!r:.40}; {REBUILD_HINT}")
        if not isinstance(index, tuple(getattr(faiss, c) for c in expected)):
            raise CheckpointError(f"{source} holds a {type(index).__name__}, not a {kind} index; {REBUILD_HINT}")
        return cls(index, kind, params)

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self.kind!r}, ntotal={self.ntotal}, dim={self.dim}, params={self.params})"
