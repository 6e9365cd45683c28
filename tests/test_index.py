"""The index engine: exact flat search, IVF / HNSW recall@10 against flat, the automatic choice, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from duetgen.errors import DuetgenInputError
from duetgen.gallery import Gallery
from duetgen.index import AUTO_THRESHOLD, VectorIndex, choose_kind, exact_search, recall_at_k


def clustered(n: int, d: int = 32, clusters: int = 64, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Normalised points around random centres: the shape real embedding galleries have (uniform random points in
    high dimension have no neighbours to find)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(clusters, size=n)] + rng.normal(0, spread / np.sqrt(d), (n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    base = clustered(12_000)
    rng = np.random.default_rng(1)
    q = base[rng.choice(len(base), 300, replace=False)] + rng.normal(0, 0.1, (300, base.shape[1]))
    return base, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def test_flat_is_exact(data):
    base, q = data
    index = VectorIndex.build(base, "flat")
    scores, rows = index.search(q[:20], 10)
    sims = q[:20] @ base.T
    np.testing.assert_array_equal(rows, np.argsort(-sims, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1][:, :10], atol=1e-5)
    assert index.kind == "flat" and index.ntotal == len(base)
    assert index.memory_bytes() >= base.nbytes


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_against_flat(data, kind):
    base, q = data
    index = VectorIndex.build(base, kind)  # nprobe / efSearch tuned for recall@10 >= 0.95
    key = "nprobe" if kind == "ivf" else "ef_search"
    assert index.params[key] >= 1 and index.params["tuned_recall"] >= 0.95
    _, exact = exact_search(base, q, 10)
    _, approx = index.search(q, 10)
    assert recall_at_k(approx, exact, 10) >= 0.95
    if kind == "ivf":  # the tuning matters: probing one list loses recall
        index.params["nprobe"] = 1
        index._apply_params()
        assert recall_at_k(index.search(q, 10)[1], exact, 10) < 0.95


def test_auto_threshold_and_validation():
    assert choose_kind(AUTO_THRESHOLD - 1) == "flat"
    assert choose_kind(AUTO_THRESHOLD) in ("ivf", "hnsw")
    assert choose_kind(10, "hnsw") == "hnsw"
    with pytest.raises(DuetgenInputError, match="index kind"):
        choose_kind(10, "annoy")
    index = VectorIndex.build(clustered(100), "flat")
    with pytest.raises(DuetgenInputError, match="queries must be"):
        index.search(np.zeros((1, 5), np.float32), 3)
    with pytest.raises(DuetgenInputError, match="k must be"):
        index.search(np.zeros((1, 32), np.float32), 0)
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 2, 9]]), 3) == pytest.approx(2 / 3)


def test_gallery_persists_an_ivf_index(tmp_path, data):
    base, q = data
    items = [{"id": i, "path": f"/photos/{i:05d}.png", "w": 64, "h": 64} for i in range(len(base))]
    identity = {"backbone": "synthetic", "embed_dim": 32, "fingerprint": "0"}
    g = Gallery(base, items, identity, index_kind="ivf")
    g.save(tmp_path / "g")
    opened = Gallery.open(tmp_path / "g")
    assert opened.index.kind == "ivf" and opened.manifest["index"]["params"]["nprobe"] == g.index.params["nprobe"]
    assert opened.index.index.nprobe == g.index.params["nprobe"]
    _, exact = exact_search(base, q, 10)
    got = opened.search(q, 10)
    rows = np.array([[r.id for r in res] for res in got])
    assert recall_at_k(rows, exact, 10) >= 0.95
    # removing keeps the trained IVF quantiser and the tuned nprobe
    opened.remove(list(range(100)))
    assert opened.index.kind == "ivf" and opened.index.ntotal == len(base) - 100
    assert all(r.id >= 100 for res in opened.search(q[:20], 10) for r in res)
