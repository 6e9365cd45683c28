"""Retrieval metrics against scikit-learn and plain-Python references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from duetgen.errors import DuetgenInputError
from duetgen.metrics import (
    acc_at_k,
    average_precision,
    bench_metrics,
    map_at_all,
    map_at_k,
    pair_targets,
    precision_at_k,
    retrieval_metrics,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# ---------------------------------------------------------------------------------------------------------
# plain-Python references (stable tie-break: higher similarity first, then lower gallery index)


def _ranking(row) -> list[int]:
    return sorted(range(len(row)), key=lambda j: (-float(row[j]), j))


def _ref_ap_all(row, rel) -> float | None:
    order = _ranking(row)
    hits, total = 0, 0.0
    for rank, j in enumerate(order, start=1):
        if rel[j]:
            hits += 1
            total += hits / rank
    return total / hits if hits else None


def _ref_ap_k(row, rel, k) -> float:
    order = _ranking(row)[:k]
    hits, total = 0, 0.0
    for rank, j in enumerate(order, start=1):
        if rel[j]:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def _ref_p_k(row, rel, k) -> float:
    return sum(bool(rel[j]) for j in _ranking(row)[:k]) / k


def _ref_acc(sim, target, k) -> float:
    return float(np.mean([_ranking(row).index(int(t)) < k for row, t in zip(sim, target, strict=True)]))


def _case(seed, n_q=40, n_g=150, n_classes=6, ties=False, dtype=np.float32):
    rng = np.random.default_rng(seed)
    sim = rng.standard_normal((n_q, n_g)).astype(dtype)
    if ties:
        sim = np.round(sim * 2) / 2  # many exact ties
    ql = rng.integers(0, n_classes + 1, n_q)  # class n_classes never occurs in the gallery
    gl = rng.integers(0, n_classes, n_g)
    return sim, ql, gl


# ---------------------------------------------------------------------------------------------------------
# mAP@all


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_average_precision_matches_sklearn(seed, chunk_size):
    sim, ql, gl = _case(seed)
    ap = average_precision(sim, ql, gl, chunk_size=chunk_size)
    no_rel = ~np.isin(ql, gl)
    assert no_rel.any() and (~no_rel).any()
    assert np.isnan(ap[no_rel]).all()
    for i in np.flatnonzero(~no_rel):
        ref = sklearn_metrics.average_precision_score(gl == ql[i], sim[i])
        assert ap[i] == pytest.approx(ref, abs=1e-12)


def test_map_at_all_no_relevant_policy():
    sim, ql, gl = _case(3)
    has = np.isin(ql, gl)
    refs = np.array([sklearn_metrics.average_precision_score(gl == ql[i], sim[i]) for i in np.flatnonzero(has)])
    assert map_at_all(sim, ql, gl) == pytest.approx(refs.mean())
    assert map_at_all(sim, ql, gl, no_relevant="zero") == pytest.approx(refs.sum() / len(ql))
    with pytest.raises(DuetgenInputError, match="no_relevant"):
        map_at_all(sim, ql, gl, no_relevant="drop")
    assert np.isnan(map_at_all(sim[:2], [99, 98], gl))  # nothing relevant anywhere


def test_average_precision_ties_are_stable_by_index():
    sim, ql, gl = _case(4, ties=True)
    ap = average_precision(sim, ql, gl, chunk_size=5)
    for i in range(len(ql)):
        ref = _ref_ap_all(sim[i], gl == ql[i])
        assert (np.isnan(ap[i]) and ref is None) or ap[i] == pytest.approx(ref, abs=1e-12)


def test_string_labels_torch_input_and_float64():
    sim, ql, gl = _case(5, dtype=np.float64)
    names = np.array(["cat", "dog", "owl", "ant", "bee", "cow", "yak"])
    ap_int = map_at_all(sim, ql, gl)
    assert map_at_all(torch.from_numpy(sim), list(names[ql]), list(names[gl])) == pytest.approx(ap_int)


# ---------------------------------------------------------------------------------------------------------
# mAP@K, P@K


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 10, 150])
def test_map_and_precision_at_k_match_reference(ties, k):
    sim, ql, gl = _case(6, ties=ties)
    has = np.isin(ql, gl)
    ap_ref = [_ref_ap_k(sim[i], gl == ql[i], k) for i in range(len(ql))]
    p_ref = [_ref_p_k(sim[i], gl == ql[i], k) for i in range(len(ql))]
    assert map_at_k(sim, ql, gl, k, chunk_size=9) == pytest.approx(np.mean(np.array(ap_ref)[has]))
    assert precision_at_k(sim, ql, gl, k, chunk_size=9) == pytest.approx(np.mean(np.array(p_ref)[has]))
    assert map_at_k(sim, ql, gl, k, no_relevant="zero") == pytest.approx(np.mean(ap_ref))
    assert precision_at_k(sim, ql, gl, k, no_relevant="zero") == pytest.approx(np.mean(p_ref))


def test_map_at_full_gallery_equals_map_at_all():
    sim, ql, gl = _case(7)
    assert map_at_k(sim, ql, gl, sim.shape[1]) == pytest.approx(map_at_all(sim, ql, gl))


def test_at_k_hand_example():
    # gallery ranked: g2 (rel), g0 (irrel), g1 (rel), g3 (irrel); ties between g1 and g3 -> g1 first
    sim = np.array([[0.5, 0.2, 0.9, 0.2]], dtype=np.float32)
    ql, gl = [1], [0, 1, 1, 0]
    assert precision_at_k(sim, ql, gl, 2) == pytest.approx(0.5)
    assert map_at_k(sim, ql, gl, 2) == pytest.approx(1.0)
    assert map_at_k(sim, ql, gl, 3) == pytest.approx((1 + 2 / 3) / 2)
    assert map_at_all(sim, ql, gl) == pytest.approx((1 + 2 / 3) / 2)
    assert map_at_k(sim, [0], gl, 1) == 0.0  # relevant items exist but none in the top 1


# ---------------------------------------------------------------------------------------------------------
# Acc@K


@pytest.mark.parametrize("ties", [False, True])
def test_acc_at_k_matches_reference(ties):
    sim, _, _ = _case(8, ties=ties)
    target = np.random.default_rng(8).integers(0, sim.shape[1], sim.shape[0])
    out = acc_at_k(sim, target, ks=(1, 5, 10), chunk_size=6)
    assert set(out) == {"Acc@1", "Acc@5", "Acc@10"}
    for k in (1, 5, 10):
        assert out[f"Acc@{k}"] == pytest.approx(_ref_acc(sim, target, k))


def test_acc_at_k_perfect_and_pair_targets():
    photos = ["p0", "p1", "p2", "p3"]
    sketch_photo = ["p2", "p2", "p0", "p3", "p1"]  # several sketches share one photo
    target = pair_targets(sketch_photo, photos)
    assert target.tolist() == [2, 2, 0, 3, 1]
    sim = np.eye(4, dtype=np.float32)[target]
    assert acc_at_k(sim, target, ks=(1,)) == {"Acc@1": 1.0}
    assert acc_at_k(-sim, target, ks=(1, 4)) == {"Acc@1": 0.0, "Acc@4": 1.0}
    with pytest.raises(DuetgenInputError, match="repeats photo id 'p0'"):
        pair_targets(["p0"], ["p0", "p0"])
    with pytest.raises(DuetgenInputError, match="not in the gallery"):
        pair_targets(["p9"], photos)


# ---------------------------------------------------------------------------------------------------------
# embeddings -> everything


def test_retrieval_metrics_matches_individual_functions():
    rng = np.random.default_rng(9)
    q = torch.from_numpy(rng.standard_normal((60, 16)).astype(np.float32))
    g = torch.from_numpy(rng.standard_normal((300, 16)).astype(np.float32))
    ql, gl = rng.integers(0, 5, 60), rng.integers(0, 5, 300)
    target = rng.integers(0, 300, 60)
    out = retrieval_metrics(q, g, ql, gl, target, map_ks=(20,), precision_ks=(10, 20), acc_ks=(1, 5), chunk_size=11)
    qn, gn = q / q.norm(dim=1, keepdim=True), g / g.norm(dim=1, keepdim=True)
    sim = (qn @ gn.T).numpy()
    assert out["mAP@all"] == pytest.approx(map_at_all(sim, ql, gl), abs=1e-6)
    assert out["mAP@20"] == pytest.approx(map_at_k(sim, ql, gl, 20), abs=1e-6)
    assert out["P@10"] == pytest.approx(precision_at_k(sim, ql, gl, 10), abs=1e-6)
    assert out["P@20"] == pytest.approx(precision_at_k(sim, ql, gl, 20), abs=1e-6)
    acc = acc_at_k(sim, target, ks=(1, 5))
    assert out["Acc@1"] == pytest.approx(acc["Acc@1"]) and out["Acc@5"] == pytest.approx(acc["Acc@5"])
    assert out["n_queries"] == 60 and out["n_skipped"] == 0
    # only Acc@K when no labels are given, only category metrics when no target is given
    assert set(retrieval_metrics(q, g, target_index=target, acc_ks=(1,))) == {"n_queries", "Acc@1"}
    assert "Acc@1" not in retrieval_metrics(q, g, ql, gl, map_ks=(), precision_ks=(5,))


def test_retrieval_metrics_cosine_is_scale_invariant():
    rng = np.random.default_rng(10)
    q, g = rng.standard_normal((20, 8)), rng.standard_normal((50, 8))
    ql, gl = rng.integers(0, 3, 20), rng.integers(0, 3, 50)
    a = retrieval_metrics(q, g, ql, gl, map_ks=(5,), precision_ks=(5,))
    b = retrieval_metrics(q * 7.0, g * rng.uniform(0.1, 10, (50, 1)), ql, gl, map_ks=(5,), precision_ks=(5,))
    assert a == pytest.approx(b)


# ---------------------------------------------------------------------------------------------------------
# errors


def test_input_errors():
    sim, ql, gl = _case(11, n_q=5, n_g=20)
    with pytest.raises(DuetgenInputError, match="k=21 is outside 1..20"):
        map_at_k(sim, ql, gl, 21)
    with pytest.raises(DuetgenInputError, match="k=0"):
        precision_at_k(sim, ql, gl, 0)
    bad = sim.copy()
    bad[2, 3] = np.nan
    with pytest.raises(DuetgenInputError, match="NaN"):
        map_at_all(bad, ql, gl)
    with pytest.raises(DuetgenInputError, match="query_labels has 4 entries"):
        map_at_all(sim, ql[:4], gl)
    with pytest.raises(DuetgenInputError, match="2-D"):
        map_at_all(sim[0], ql, gl)
    with pytest.raises(DuetgenInputError, match="target_index values must lie in 0..19"):
        acc_at_k(sim, np.full(5, 20))
    with pytest.raises(DuetgenInputError, match="integer gallery indices"):
        acc_at_k(sim, np.zeros(5))
    with pytest.raises(DuetgenInputError, match="same D"):
        retrieval_metrics(np.ones((2, 3)), np.ones((4, 5)), target_index=[0, 1])
    with pytest.raises(DuetgenInputError, match="both query_labels and gallery_labels"):
        retrieval_metrics(np.ones((2, 3)), np.ones((4, 3)), query_labels=[0, 1])


# ---------------------------------------------------------------------------------------------------------
# speed


def test_speed_2k_by_20k():
    timings = bench_metrics(n_queries=2000, n_gallery=20000, dim=64, n_classes=100)
    assert timings["all_s"] < 6.0, timings  # ~0.8 s on one core of the build machine
