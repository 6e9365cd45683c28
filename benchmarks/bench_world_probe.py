#!/usr/bin/env python
"""Where the world encoder's composed retrieval goes wrong: does its visual encoder know the shapes?

For each encoder given, on held-out world data (seeds disjoint from training):

* **zero-shot shape**: photos classified against "a photo of a {shape}" and sketches against "a sketch of a {shape}"
  (12 classes, chance 0.083);
* **linear probe shape**: logistic regression on the image embeddings of ``--probe-train`` rendered photos (and
  sketches), scored on ``--probe-test`` others: what the embedding holds, whatever the text side does;
* **error breakdown** of sketch + words retrieval on the twin benchmark of ``benchmarks/bench_world_duet.py``: the
  top-1 photo is right, has the wrong shape, has the right shape but the wrong attributes, or is another pose of
  the right shape and attributes.

    python benchmarks/bench_world_probe.py                                   # the embedded encoder
    python benchmarks/bench_world_probe.py runs/stage1b/encoder runs/stage2_cs/encoder --out probe.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch

import duetgen
from duetgen import world
from duetgen.errors import run_script
from duetgen.world_benchmark import BENCHMARK_SEED, build_twin_benchmark
from duetgen.world_dataset import to_float

PROBE_SEED = 424_242


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("encoders", nargs="*", default=["embedded"], help="encoder folders ('embedded': the shipped one)")
    p.add_argument("--queries", type=int, default=150, help="twin-benchmark queries")
    p.add_argument("--probe-train", type=int, default=1200)
    p.add_argument("--probe-test", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def render_probe_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(photos (n, 64, 64, 3), sketches (n, 64, 64), shape labels (n,)) of fresh world instances."""
    photos, sketches, labels = [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        inst, attrs = world.sample_instance(rng), world.sample_attributes(rng)
        photos.append(world.render_photo(inst, attrs, size=64, seed=int(rng.integers(2**31))))
        sketches.append(world.render_sketch(inst, size=64, seed=int(rng.integers(2**31))))
        labels.append(world.SHAPES.index(inst.shape))
    return np.stack(photos), np.stack(sketches), np.asarray(labels)


def twin_metadata(n_queries: int) -> list[tuple[str, str, int]]:
    """(shape, words, query whose geometry it is or -1) of every gallery photo, in build_twin_benchmark's order."""
    meta = []
    for q in range(n_queries):
        rng = np.random.default_rng([BENCHMARK_SEED, q])
        pool = tuple(world.SHAPES)
        inst = world.sample_instance(rng, shape=str(rng.choice(pool)))
        attrs = world.sample_attributes(rng)
        rng.integers(2**31)  # sketch seed
        rng.integers(2**31)  # photo seed
        meta.append((inst.shape, world.words(attrs), q))
        for other in world.attribute_variants(3, rng, exclude=attrs):
            rng.integers(2**31)
            meta.append((inst.shape, world.words(other), q))
        for _ in range(3):
            twin = world.sample_instance(rng, shape=str(rng.choice(pool)))
            rng.integers(2**31)
            meta.append((twin.shape, world.words(attrs), -1))
    return meta


@torch.no_grad()
def embed(encoder, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    return torch.cat([encoder.encode_image(to_float(images[i : i + batch])) for i in range(0, len(images), batch)])


def probe(encoder, data, n_train: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    photos, sketches, y = data
    nouns = [world.SHAPE_NOUNS[s] for s in world.SHAPES]
    out = {}
    with torch.no_grad():
        tp = encoder.encode_text([f"a photo of a {n}" for n in nouns])
        ts = encoder.encode_text([f"a sketch of a {n}" for n in nouns])
    for name, images, text in (("photo", photos, tp), ("sketch", sketches, ts)):
        x = embed(encoder, images)
        out[f"zero-shot shape ({name})"] = float(((x[n_train:] @ text.T).argmax(1).numpy() == y[n_train:]).mean())
        clf = LogisticRegression(max_iter=3000, C=10.0).fit(x[:n_train].numpy(), y[:n_train])
        out[f"linear probe shape ({name})"] = float(clf.score(x[n_train:].numpy(), y[n_train:]))
    return out


def error_breakdown(encoder, bench, meta) -> dict:
    with torch.no_grad():
        gallery = embed(encoder, bench.photos)
        sk = encoder.encode_sketch(to_float(bench.sketches))
        query = encoder.encode_query(sketch_embeds=sk, words=bench.words)
    top = (query @ gallery.T).argmax(1).numpy()
    counts = Counter()
    for q, t in enumerate(top):
        shape, words, geo = meta[t]
        if t == bench.target[q]:
            counts["right photo"] += 1
        elif shape != bench.shapes[q]:
            counts["wrong shape"] += 1
        elif words != bench.words[q]:
            counts["right shape, wrong attributes"] += 1
        else:
            counts["right shape and attributes, other pose"] += 1
    n = len(top)
    keys = ("right photo", "wrong shape", "right shape, wrong attributes", "right shape and attributes, other pose")
    return {k: counts[k] / n for k in keys}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = render_probe_set(args.probe_train + args.probe_test, PROBE_SEED)
    bench = build_twin_benchmark(args.queries)
    meta = twin_metadata(args.queries)
    assert len(meta) == len(bench.photos)
    results = {}
    for name in args.encoders:
        encoder = (duetgen.load_encoder() if name == "embedded" else duetgen.load_encoder(name)).eval()
        results[name] = {**probe(encoder, data, args.probe_train), **error_breakdown(encoder, bench, meta)}
    rows = list(next(iter(results.values())))
    n_cls = len(world.SHAPES)
    print(f"\nshape classes: {n_cls} (chance {1 / n_cls:.3f}); probe: {args.probe_train} train / {args.probe_test}"
          " test;"
          f" twin benchmark: {args.queries} queries, top-1 of sketch + words\n")  # fmt: skip
    print("| measure | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for r in rows:
        print(f"| {r} | " + " | ".join(f"{results[e][r]:.3f}" for e in results) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    run_script(main, "bench_world_probe")
