"""Retrieval metrics: mAP@all, mAP@K, P@K (category-level) and Acc@K (fine-grained).

Every metric takes a similarity matrix ``sim`` of shape (Q, G), higher is more similar, as a numpy array
or a torch tensor, and evaluates it in chunks of query rows so memory stays bounded; or use
:func:`retrieval_metrics`, which computes cosine similarities from embeddings chunk by chunk and never
holds the full (Q, G) matrix.

Conventions (the same in every function):

- Ranking: gallery items are ranked by decreasing similarity; ties are broken by gallery index, lower
  index first (a stable sort). Rank 1 is the best.
- Relevance (category-level): a gallery item is relevant to a query when their labels are equal. Labels
  may be ints or strings.
- AP over the full gallery: ``AP = (1/R) * sum over relevant items j of (relevant items ranked at or above j)
  / rank(j)``, with R the number of relevant gallery items. This is scikit-learn's
  ``average_precision_score`` when there are no ties.
- AP@K: ``(1/r_K) * sum over ranks i <= K of P@i * rel(i)``, with r_K the relevant items inside the top K;
  0 when r_K is 0.
- P@K: r_K / K.
- Acc@K: share of queries whose target gallery item (its paired photo, the gallery being de-duplicated
  photos) has rank <= K.
- Queries with no relevant item in the gallery at all (e.g. a class absent from the gallery): with
  ``no_relevant="skip"`` (the default) they are left out of every category-level mean; with
  ``no_relevant="zero"`` they count as 0. If every query is skipped the mean is ``nan``.
- Similarities are compared in their own precision (float32 or float64; other dtypes become float32).
  NaN similarities are an error.
- ``K`` larger than the gallery is an error (nothing is silently clamped).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from duetgen.errors import DuetgenInputError

logger = logging.getLogger(__name__)

__all__ = [
    "acc_at_k",
    "average_precision",
    "bench_metrics",
    "map_at_all",
    "map_at_k",
    "pair_targets",
    "precision_at_k",
    "retrieval_metrics",
]

# Default number of similarity entries handled per chunk (rows x gallery): 4M float32 = 16 MB.
_CHUNK_ELEMENTS = 4_000_000
_NO_RELEVANT = ("skip", "zero")


# ----------------------------------------------------------------------------------------------------------
# input handling


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype not in (torch.float32, torch.float64) and x.is_floating_point():
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_sim(sim: Any) -> np.ndarray:
    sim = _to_numpy(sim, "sim")
    if sim.ndim != 2:
        raise DuetgenInputError(f"sim must be a 2-D (queries, gallery) matrix; got shape {tuple(sim.shape)}")
    if sim.shape[1] == 0:
        raise DuetgenInputError("sim has an empty gallery (shape[1] == 0)")
    if sim.dtype not in (np.float32, np.float64):
        sim = sim.astype(np.float32)
    return sim


def _chunk_rows(n_gallery: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise DuetgenInputError(f"chunk_size must be >= 1; got {chunk_size}")
        return chunk_size
    return max(1, _CHUNK_ELEMENTS // max(1, n_gallery))


def _iter_chunks(sim: np.ndarray, chunk_size: int | None) -> Iterator[tuple[int, np.ndarray]]:
    rows = _chunk_rows(sim.shape[1], chunk_size)
    for start in range(0, sim.shape[0], rows):
        chunk = np.ascontiguousarray(sim[start : start + rows])  # (b, G)
        _check_finite(chunk)
        yield start, chunk


def _check_finite(chunk: np.ndarray) -> None:
    if np.isnan(chunk).any():
        raise DuetgenInputError("sim contains NaN similarities; remove or fix them before ranking")


def _encode_labels(query_labels: Any, gallery_labels: Any, n_queries: int, n_gallery: int) -> tuple:
    ql = _to_numpy(query_labels, "query_labels").reshape(-1)
    gl = _to_numpy(gallery_labels, "gallery_labels").reshape(-1)
    if ql.shape[0] != n_queries:
        raise DuetgenInputError(f"query_labels has {ql.shape[0]} entries; sim has {n_queries} query rows")
    if gl.shape[0] != n_gallery:
        raise DuetgenInputError(f"gallery_labels has {gl.shape[0]} entries; sim has {n_gallery} gallery columns")
    try:
        _, inverse = np.unique(np.concatenate([ql, gl]), return_inverse=True)
    except TypeError as e:
        raise DuetgenInputError(f"query_labels and gallery_labels must be all ints or all str: {e}") from e
    inverse = inverse.reshape(-1)
    return inverse[:n_queries], inverse[n_queries:]


def _check_policy(no_relevant: str) -> None:
    if no_relevant not in _NO_RELEVANT:
        raise DuetgenInputError(f"no_relevant must be one of {_NO_RELEVANT}; got {no_relevant!r}")


def _check_ks(ks: Sequence[int], n_gallery: int, name: str = "k") -> list[int]:
    ks = [int(k) for k in ks]
    for k in ks:
        if k < 1 or k > n_gallery:
            raise DuetgenInputError(f"{name}={k} is outside 1..{n_gallery} (the gallery size)")
    return ks


def _gallery_index(gallery_codes: np.ndarray) -> dict[int, np.ndarray]:
    """Ascending gallery indices of each label code."""
    order = np.argsort(gallery_codes, kind="stable")
    codes, starts = np.unique(gallery_codes[order], return_index=True)
    ends = list(starts[1:]) + [len(order)]
    return {int(c): order[s:e] for c, s, e in zip(codes, starts, ends, strict=True)}


def _mean(values: np.ndarray, valid: np.ndarray, no_relevant: str, what: str) -> float:
    if no_relevant == "zero":
        return float(np.where(valid, values, 0.0).mean()) if len(values) else float("nan")
    if not valid.any():
        logger.warning("%s: no query has a relevant gallery item; returning nan", what)
        return float("nan")
    return float(values[valid].mean())


# ----------------------------------------------------------------------------------------------------------
# per-chunk kernels


def _ap_all_rows(chunk: np.ndarray, qcodes: np.ndarray, index: dict[int, np.ndarray]) -> np.ndarray:
    """AP over the full gallery for each row of ``chunk`` (b, G); nan where the query has no relevant item."""
    n_gallery = chunk.shape[1]
    ascending = np.sort(chunk, axis=1)  # (b, G) values only: fast SIMD sort
    out = np.full(chunk.shape[0], np.nan)
    empty = np.empty(0, dtype=np.int64)
    for r in range(chunk.shape[0]):
        rel = index.get(int(qcodes[r]), empty)  # (R,) ascending gallery indices
        if len(rel) == 0:
            continue
        row = chunk[r]
        v = row[rel]  # (R,)
        n_gt = n_gallery - np.searchsorted(ascending[r], v, side="right")  # items strictly more similar
        n_ge = n_gallery - np.searchsorted(ascending[r], v, side="left")
        for j in np.flatnonzero(n_ge - n_gt > 1):  # ties: equal items with a lower index rank above
            n_gt[j] += np.count_nonzero(row[: rel[j]] == v[j])
        rank_rel = np.empty(len(rel), dtype=np.int64)
        rank_rel[np.lexsort((rel, -v))] = np.arange(1, len(rel) + 1)  # rank among the relevant items
        out[r] = float(np.mean(rank_rel / (n_gt + 1)))
    return out


def _topk_rows(chunk: np.ndarray, k: int) -> np.ndarray:
    """Gallery indices (b, k) of the k best items of each row, best first, ties by lower index."""
    b, n_gallery = chunk.shape
    t = torch.from_numpy(chunk)
    kk = min(k + 1, n_gallery)  # one extra to detect ties across the k-th place
    vals, idx = torch.topk(t, kk, dim=1)  # (b, kk) descending, arbitrary order among ties
    vals, idx = vals.numpy(), idx.numpy()
    boundary = (vals[:, k] == vals[:, k - 1]) if kk > k else np.zeros(b, dtype=bool)
    vals, idx = vals[:, :k], idx[:, :k]
    order = np.lexsort((idx, -vals), axis=-1)  # (b, k) by value desc, then index asc
    idx = np.take_along_axis(idx, order, axis=1)
    for r in np.flatnonzero(boundary):  # rare: the k-th value is shared with items outside the top k
        row = chunk[r]
        kth = row[idx[r, -1]]
        greater = np.flatnonzero(row > kth)
        equal = np.flatnonzero(row == kth)[: k - len(greater)]
        take = np.concatenate([greater, equal])
        idx[r] = take[np.lexsort((take, -row[take]))]
    return idx


def _at_k_rows(rel: np.ndarray, ks: Sequence[int]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """AP@K and P@K per row from the relevance (b, kmax) of the ranked top items."""
    hits = np.cumsum(rel, axis=1)  # (b, kmax)
    prec = hits / np.arange(1, rel.shape[1] + 1)  # P@i
    contrib = np.cumsum(prec * rel, axis=1)
    ap, p = {}, {}
    for k in ks:
        r_k = hits[:, k - 1]
        ap[k] = np.where(r_k > 0, contrib[:, k - 1] / np.maximum(r_k, 1), 0.0)
        p[k] = r_k / k
    return ap, p


def _target_rank_rows(chunk: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank (b,) of each row's target gallery item."""
    rows = np.arange(chunk.shape[0])
    t = chunk[rows, target][:, None]  # (b, 1)
    n_gt = np.count_nonzero(chunk > t, axis=1)
    n_ge = np.count_nonzero(chunk >= t, axis=1)
    for r in np.flatnonzero(n_ge - n_gt > 1):
        n_gt[r] += np.count_nonzero(chunk[r, : target[r]] == t[r, 0])
    return n_gt


def _as_targets(target_index: Any, n_queries: int, n_gallery: int) -> np.ndarray:
    target = _to_numpy(target_index, "target_index").reshape(-1)
    if target.shape[0] != n_queries:
        raise DuetgenInputError(f"target_index has {target.shape[0]} entries; expected one per query ({n_queries})")
    if not np.issubdtype(target.dtype, np.integer):
        raise DuetgenInputError(f"target_index must hold integer gallery indices; got dtype {target.dtype}")
    if len(target) and (target.min() < 0 or target.max() >= n_gallery):
        raise DuetgenInputError(f"target_index values must lie in 0..{n_gallery - 1} (the gallery size)")
    return target.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# public functions on a similarity matrix


def average_precision(
    sim: Any, query_labels: Any, gallery_labels: Any, *, chunk_size: int | None = None
) -> np.ndarray:
    """Per-query average precision over the full gallery.

    Args:
        sim: (Q, G) similarities, higher is better.
        query_labels: (Q,) class labels of the queries.
        gallery_labels: (G,) class labels of the gallery items.
        chunk_size: query rows per chunk; default keeps a chunk near 4M entries.

    Returns:
        (Q,) float64 array; ``nan`` for queries with no relevant gallery item.
    """
    sim = _as_sim(sim)
    qc, gc = _encode_labels(query_labels, gallery_labels, *sim.shape)
    index = _gallery_index(gc)
    out = np.empty(sim.shape[0])
    for start, chunk in _iter_chunks(sim, chunk_size):
        out[start : start + len(chunk)] = _ap_all_rows(chunk, qc[start : start + len(chunk)], index)
    return out


def map_at_all(
    sim: Any, query_labels: Any, gallery_labels: Any, *, no_relevant: str = "skip", chunk_size: int | None = None
) -> float:
    """mAP@all: average precision over the full gallery, averaged over queries (relevant = same label).

    Queries without any relevant gallery item are skipped (``no_relevant="skip"``) or count as 0
    (``"zero"``). Ties rank the lower gallery index first.
    """
    _check_policy(no_relevant)
    ap = average_precision(sim, query_labels, gallery_labels, chunk_size=chunk_size)
    return _mean(np.nan_to_num(ap), ~np.isnan(ap), no_relevant, "map_at_all")


def _category_at_k(sim, query_labels, gallery_labels, ks, no_relevant, chunk_size):
    _check_policy(no_relevant)
    sim = _as_sim(sim)
    ks = _check_ks(ks, sim.shape[1])
    qc, gc = _encode_labels(query_labels, gallery_labels, *sim.shape)
    has_rel = np.isin(qc, gc)
    ap = {k: np.empty(sim.shape[0]) for k in ks}
    p = {k: np.empty(sim.shape[0]) for k in ks}
    for start, chunk in _iter_chunks(sim, chunk_size):
        sl = slice(start, start + len(chunk))
        top = _topk_rows(chunk, max(ks))
        ap_c, p_c = _at_k_rows(gc[top] == qc[sl, None], ks)
        for k in ks:
            ap[k][sl], p[k][sl] = ap_c[k], p_c[k]
    return ap, p, has_rel


def map_at_k(
    sim: Any,
    query_labels: Any,
    gallery_labels: Any,
    k: int,
    *,
    no_relevant: str = "skip",
    chunk_size: int | None = None,
) -> float:
    """mAP@K: AP over the top K normalised by the relevant items inside the top K (0 if none), averaged."""
    ap, _, has_rel = _category_at_k(sim, query_labels, gallery_labels, [k], no_relevant, chunk_size)
    return _mean(ap[int(k)], has_rel, no_relevant, "map_at_k")


def precision_at_k(
    sim: Any,
    query_labels: Any,
    gallery_labels: Any,
    k: int,
    *,
    no_relevant: str = "skip",
    chunk_size: int | None = None,
) -> float:
    """P@K: relevant items in the top K divided by K, averaged over queries."""
    _, p, has_rel = _category_at_k(sim, query_labels, gallery_labels, [k], no_relevant, chunk_size)
    return _mean(p[int(k)], has_rel, no_relevant, "precision_at_k")


def acc_at_k(
    sim: Any, target_index: Any, ks: Sequence[int] = (1, 5, 10), *, chunk_size: int | None = None
) -> dict[str, float]:
    """Fine-grained Acc@K: share of queries whose target gallery item ranks in the top K.

    Args:
        sim: (Q, G) similarities of sketches (queries) to de-duplicated photos (gallery).
        target_index: (Q,) gallery index of each query's paired photo (see :func:`pair_targets`).
        ks: cut-offs.

    Returns:
        ``{"Acc@1": ..., "Acc@5": ..., ...}``.
    """
    sim = _as_sim(sim)
    ks = _check_ks(ks, sim.shape[1])
    target = _as_targets(target_index, *sim.shape)
    ranks = np.empty(sim.shape[0], dtype=np.int64)
    for start, chunk in _iter_chunks(sim, chunk_size):
        ranks[start : start + len(chunk)] = _target_rank_rows(chunk, target[start : start + len(chunk)])
    return {f"Acc@{k}": float(np.mean(ranks < k)) if len(ranks) else float("nan") for k in ks}


def pair_targets(query_photo_ids: Sequence[Any], gallery_photo_ids: Sequence[Any]) -> np.ndarray:
    """Gallery index of each query's paired photo, for :func:`acc_at_k`.

    Args:
        query_photo_ids: (Q,) photo id paired with each sketch; several sketches may share one photo.
        gallery_photo_ids: (G,) unique photo ids of the gallery.

    Raises:
        DuetgenInputError: the gallery repeats a photo id, or a query's photo is not in the gallery.
    """
    position: dict[Any, int] = {}
    for i, pid in enumerate(gallery_photo_ids):
        if pid in position:
            raise DuetgenInputError(f"gallery_photo_ids repeats photo id {pid!r}; de-duplicate the photo gallery")
        position[pid] = i
    missing = [pid for pid in query_photo_ids if pid not in position]
    if missing:
        raise DuetgenInputError(
            f"{len(missing)} query photo id(s) are not in the gallery, e.g. {missing[0]!r}; "
            "the gallery must contain every paired photo"
        )
    return np.asarray([position[pid] for pid in query_photo_ids], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------
# embeddings -> all metrics


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def retrieval_metrics(
    query_emb: Any,
    gallery_emb: Any,
    query_labels: Any = None,
    gallery_labels: Any = None,
    target_index: Any = None,
    *,
    map_all: bool = True,
    map_ks: Sequence[int] = (200,),
    precision_ks: Sequence[int] = (100, 200),
    acc_ks: Sequence[int] = (1, 5, 10),
    no_relevant: str = "skip",
    normalize: bool = True,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """All retrieval metrics from embeddings, computing cosine similarity chunk by chunk.

    Category-level metrics (``mAP@all``, ``mAP@K``, ``P@K``) need ``query_labels`` and ``gallery_labels``;
    ``Acc@K`` needs ``target_index``. The full (Q, G) similarity matrix is never held in memory.

    Args:
        query_emb: (Q, D) query embeddings (sketches or composed queries).
        gallery_emb: (G, D) gallery embeddings (photos, de-duplicated for Acc@K).
        query_labels: (Q,) labels, or None to skip category-level metrics.
        gallery_labels: (G,) labels, or None.
        target_index: (Q,) gallery index of each query's paired photo, or None to skip Acc@K.
        map_all: compute mAP@all (a full sort per query: the most expensive metric).
        map_ks: cut-offs for mAP@K.
        precision_ks: cut-offs for P@K.
        acc_ks: cut-offs for Acc@K.
        no_relevant: "skip" or "zero" for queries with no relevant gallery item.
        normalize: L2-normalise embeddings first (cosine similarity); False uses raw dot products.
        chunk_size: query rows per chunk.

    Returns:
        Dict with keys such as ``"mAP@all"``, ``"mAP@200"``, ``"P@100"``, ``"Acc@1"``, plus ``"n_queries"``
        and, for category-level metrics, ``"n_skipped"`` (queries with no relevant gallery item).
    """
    _check_policy(no_relevant)
    q = torch.as_tensor(_to_numpy(query_emb, "query_emb")).float()
    g = torch.as_tensor(_to_numpy(gallery_emb, "gallery_emb")).float()
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise DuetgenInputError(
            f"query_emb and gallery_emb must be (Q, D) and (G, D) with the same D; got {tuple(q.shape)} and "
            f"{tuple(g.shape)}"
        )
    if normalize:
        q, g = _normalize(q), _normalize(g)
    n_q, n_g = q.shape[0], g.shape[0]
    category = query_labels is not None or gallery_labels is not None
    if category and (query_labels is None or gallery_labels is None):
        raise DuetgenInputError("category-level metrics need both query_labels and gallery_labels")
    if not category and target_index is None:
        raise DuetgenInputError("pass query_labels + gallery_labels (category-level) and/or target_index (Acc@K)")

    out: dict[str, float] = {"n_queries": n_q}
    ks = _check_ks(list(map_ks) + list(precision_ks), n_g) if category else []
    kmax = max(ks) if ks else 0
    target = _as_targets(target_index, n_q, n_g) if target_index is not None else None
    acc_ks = _check_ks(acc_ks, n_g) if target is not None else []
    if category:
        qc, gc = _encode_labels(query_labels, gallery_labels, n_q, n_g)
        index = _gallery_index(gc)
        has_rel = np.isin(qc, gc)
        ap_all = np.empty(n_q)
        ap_k = {k: np.empty(n_q) for k in ks}
        p_k = {k: np.empty(n_q) for k in ks}
    ranks = np.empty(n_q, dtype=np.int64)

    rows = _chunk_rows(n_g, chunk_size)
    gt = g.T.contiguous()  # (D, G)
    for start in range(0, n_q, rows):
        sl = slice(start, min(start + rows, n_q))
        chunk = (q[sl] @ gt).numpy()  # (b, G) cosine similarities
        _check_finite(chunk)
        if category:
            if map_all:
                ap_all[sl] = _ap_all_rows(chunk, qc[sl], index)
            if kmax:
                ap_c, p_c = _at_k_rows(gc[_topk_rows(chunk, kmax)] == qc[sl, None], ks)
                for k in ks:
                    ap_k[k][sl], p_k[k][sl] = ap_c[k], p_c[k]
        if target is not None:
            ranks[sl] = _target_rank_rows(chunk, target[sl])

    if category:
        if map_all:
            out["mAP@all"] = _mean(np.nan_to_num(ap_all), has_rel, no_relevant, "mAP@all")
        for k in map_ks:
            out[f"mAP@{k}"] = _mean(ap_k[int(k)], has_rel, no_relevant, f"mAP@{k}")
        for k in precision_ks:
            out[f"P@{k}"] = _mean(p_k[int(k)], has_rel, no_relevant, f"P@{k}")
        out["n_skipped"] = int((~has_rel).sum()) if no_relevant == "skip" else 0
    for k in acc_ks:
        out[f"Acc@{k}"] = float(np.mean(ranks < k)) if n_q else float("nan")
    return out


def bench_metrics(
    n_queries: int = 2000,
    n_gallery: int = 20000,
    dim: int = 64,
    n_classes: int = 100,
    *,
    seed: int = 0,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Time :func:`retrieval_metrics` on random embeddings; returns seconds per stage and the sizes.

    Keys: ``"all_s"`` (every metric, embeddings in), ``"map_all_s"``, ``"at_k_s"`` (mAP@200 + P@100/200),
    ``"acc_s"`` (Acc@1/5/10), plus the arguments. Usable from benchmarks and tests.
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n_queries, dim, generator=gen)
    g = torch.randn(n_gallery, dim, generator=gen)
    ql = torch.randint(0, n_classes, (n_queries,), generator=gen)
    gl = torch.randint(0, n_classes, (n_gallery,), generator=gen)
    tgt = torch.randint(0, n_gallery, (n_queries,), generator=gen)
    ks = [k for k in (100, 200) if k <= n_gallery]
    acc_ks = [k for k in (1, 5, 10) if k <= n_gallery]
    common = dict(chunk_size=chunk_size)
    out: dict[str, float] = {"n_queries": n_queries, "n_gallery": n_gallery, "dim": dim, "n_classes": n_classes}

    def timed(**kw) -> float:
        t0 = time.perf_counter()
        retrieval_metrics(q, g, **kw, **common)
        return time.perf_counter() - t0

    out["all_s"] = timed(
        query_labels=ql, gallery_labels=gl, target_index=tgt, map_ks=ks[-1:], precision_ks=ks, acc_ks=acc_ks
    )
    out["map_all_s"] = timed(query_labels=ql, gallery_labels=gl, map_ks=(), precision_ks=())
    out["at_k_s"] = timed(query_labels=ql, gallery_labels=gl, map_all=False, map_ks=ks[-1:], precision_ks=ks)
    out["acc_s"] = timed(target_index=tgt, acc_ks=acc_ks)
    if math.isfinite(out["all_s"]):
        logger.info("bench_metrics %dx%d: %.2fs", n_queries, n_gallery, out["all_s"])
    return out
