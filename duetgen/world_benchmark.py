"""The held-out composed-retrieval benchmark of the procedural world, built so neither modality alone suffices.

For each query (the sketch of instance I, and the words of attributes A) the gallery holds:

* its photo (I rendered with A): the one right answer;
* ``geometry_twins`` photos of I with other attributes: a sketch alone cannot tell them from the answer;
* ``attribute_twins`` photos of other instances with attributes A: words alone cannot tell them from the answer.

The gallery is the union of every query's photos (150 queries x 7 photos = 1,050 photos by default). Everything is
deterministic from the seed, which is disjoint from the training seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import world
from .metrics import acc_at_k
from .world_dataset import to_float

BENCHMARK_SEED = 987_654


@dataclass
class TwinBenchmark:
    """A rendered benchmark.

    Attributes:
        sketches: (Q, H, W) uint8 query sketches.
        words: Q attribute phrases (what a user types).
        photos: (N, H, W, 3) uint8 gallery.
        target: (Q,) index of each query's photo in the gallery.
        shapes: (Q,) shape names of the queries.
    """

    sketches: np.ndarray
    words: list[str]
    photos: np.ndarray
    target: np.ndarray
    shapes: list[str]


def build_twin_benchmark(
    n_queries: int = 150,
    geometry_twins: int = 3,
    attribute_twins: int = 3,
    seed: int = BENCHMARK_SEED,
    size: int = 64,
    shapes: tuple[str, ...] | None = None,
) -> TwinBenchmark:
    """Renders the benchmark (about 1 s per 100 queries)."""
    pool = tuple(shapes) if shapes else tuple(world.SHAPES)
    sketches, words_, photos, target, names = [], [], [], [], []
    for q in range(n_queries):
        rng = np.random.default_rng([seed, q])
        inst = world.sample_instance(rng, shape=str(rng.choice(pool)))
        attrs = world.sample_attributes(rng)
        sketches.append(world.render_sketch(inst, size=size, seed=int(rng.integers(2**31))))
        words_.append(world.words(attrs))
        names.append(inst.shape)
        target.append(len(photos))
        photos.append(world.render_photo(inst, attrs, size=size, seed=int(rng.integers(2**31))))
        for other in world.attribute_variants(geometry_twins, rng, exclude=attrs):
            photos.append(world.render_photo(inst, other, size=size, seed=int(rng.integers(2**31))))
        for _ in range(attribute_twins):
            twin = world.sample_instance(rng, shape=str(rng.choice(pool)))
            photos.append(world.render_photo(twin, attrs, size=size, seed=int(rng.integers(2**31))))
    return TwinBenchmark(
        sketches=np.stack(sketches),
        words=words_,
        photos=np.stack(photos),
        target=np.asarray(target),
        shapes=names,
    )


def _acc(sim: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Acc@K through :func:`duetgen.metrics.acc_at_k` (ties broken by gallery index), keyed ``acc@K``."""
    res = acc_at_k(sim.cpu().numpy(), target.cpu().numpy(), ks=ks)
    return {f"acc@{k}": float(res[f"Acc@{k}"]) for k in ks}


@torch.no_grad()
def evaluate_twin_benchmark(encoder, bench: TwinBenchmark, batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Acc@1 / Acc@5 for sketch only, words only (words through the plain text encoder) and sketch + words."""
    encoder.eval()
    device = encoder.device
    gallery = torch.cat(
        [
            encoder.encode_image(to_float(bench.photos[i : i + batch_size]).to(device))
            for i in range(0, len(bench.photos), batch_size)
        ]  # fmt: skip
    )
    target = torch.as_tensor(bench.target, device=device)
    sk_q, both_q, words_q = [], [], []
    for i in range(0, len(bench.sketches), batch_size):
        sk = encoder.encode_sketch(to_float(bench.sketches[i : i + batch_size]).to(device))
        w = bench.words[i : i + batch_size]
        sk_q.append(encoder.encode_query(sketch_embeds=sk))
        both_q.append(encoder.encode_query(sketch_embeds=sk, words=w))
        words_q.append(encoder.encode_text(w))
    return {
        "sketch": _acc(torch.cat(sk_q) @ gallery.T, target),
        "words": _acc(torch.cat(words_q) @ gallery.T, target),
        "sketch+words": _acc(torch.cat(both_q) @ gallery.T, target),
    }
