#!/usr/bin/env python
"""Gallery indexing throughput and query latency at scale.

(a) Indexing throughput: ``Gallery.build`` on a folder of PNG world photos (DataLoader decoding, shard writes,
    index and atomic save included) against a bare loop of the same encoder over the same images already decoded
    in memory (``encode_image`` in batches). Median of ``--repeats``; one process. Target ratio >= 0.9.
(b) Query latency p50 / p95 of one composed query, end to end (``encode_query(sketch, words)`` + index search) at
    10k, 100k and 1M items, flat and approximate (IVF everywhere, HNSW where its build fits the time budget);
    recall@10 of approximate against flat; memory per item. The gallery vectors are synthetic: normalised points
    around random centres in the encoder's dimension (uniform random points in high dimension have no neighbours
    and are no model of an embedding gallery). Recall queries are gallery points plus noise (real sketch queries
    against a synthetic gallery would say nothing); latency queries are real encoded sketch + words queries.

    python benchmarks/bench_index.py --out bench_index.json [--model DIR] [--sizes 10000,100000,1000000]

Prints a markdown table and writes JSON to ``--out``. With no ``--model`` it uses the embedded encoder, or a random
``duetgen-world`` encoder (same architecture and cost) if the embedded one is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import duetgen
from duetgen import world
from duetgen.backbones import get_clip_config
from duetgen.embedded import ENCODER_DIR
from duetgen.errors import run_script
from duetgen.gallery import Gallery, decode_image
from duetgen.index import VectorIndex, exact_search, probe_queries, recall_at_k


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="write results as JSON here")
    p.add_argument("--model", default=None, help="encoder folder (default: embedded, else random duetgen-world)")
    p.add_argument("--images", type=int, default=768, help="photos for the throughput benchmark")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=None, help="builder decoding processes (default min(2, cpus))")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", default="10000,100000,1000000", help="gallery sizes for the latency benchmark")
    p.add_argument("--queries", type=int, default=200, help="latency / recall queries per configuration")
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest size to build HNSW for (slow on CPU)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--format", choices=("png", "jpeg"), default="png", help="file format of the throughput photos")
    p.add_argument("--photo-size", type=int, default=128, help="side of the throughput photos in pixels")
    p.add_argument("--random-arch", default=None,
                   help="time this backbone architecture with random weights instead (e.g. ViT-B-32: a model whose "
                   "compute, not decoding, dominates)")  # fmt: skip
    return p.parse_args(argv)


def load_model(model: str | None, random_arch: str | None = None):
    if random_arch is not None:
        torch.manual_seed(0)
        enc = duetgen.ComposedQueryEncoder(get_clip_config(random_arch), backbone=random_arch).eval()
        return enc, f"random {random_arch}"
    if model is not None:
        return duetgen.load_encoder(model), str(model)
    if (ENCODER_DIR / "config.json").is_file():
        return duetgen.load_encoder(), "embedded"
    torch.manual_seed(0)
    enc = duetgen.ComposedQueryEncoder(get_clip_config("duetgen-world"), backbone="duetgen-world").eval()
    return enc, "random duetgen-world (embedded encoder missing)"


# ---------------------------------------------------------------------------------------------------------------
# (a) indexing throughput
# ---------------------------------------------------------------------------------------------------------------


def write_world_photos(folder: Path, n: int, size: int = 128, fmt: str = "png") -> list[str]:
    rng = np.random.default_rng(0)
    ext = "jpg" if fmt == "jpeg" else "png"
    for i in range(n):
        inst, attrs = world.sample_instance(rng), world.sample_attributes(rng)
        im = Image.fromarray(world.render_photo(inst, attrs, size=size, seed=i))
        im.save(folder / f"p{i:05d}.{ext}", **({"quality": 90} if fmt == "jpeg" else {}))
    return sorted(str(p) for p in folder.glob(f"*.{ext}"))


def bench_throughput(encoder, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "photos").mkdir()
        paths = write_world_photos(tmp / "photos", args.images, args.photo_size, args.format)
        t0 = time.perf_counter()
        decoded = torch.stack([decode_image(p, encoder.image_size)[0] for p in paths])  # (N, 3, S, S)
        decode_only = len(paths) / (time.perf_counter() - t0)
        bare, seq, built = [], [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            with torch.inference_mode():
                for i in range(0, len(decoded), args.batch_size):
                    encoder.encode_image(decoded[i : i + args.batch_size])
            bare.append(len(paths) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            with torch.inference_mode():  # the naive script: decode a batch, encode it, in one process
                for i in range(0, len(paths), args.batch_size):
                    x = torch.stack([decode_image(p, encoder.image_size)[0] for p in paths[i : i + args.batch_size]])
                    encoder.encode_image(x)
            seq.append(len(paths) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            Gallery.build(tmp / "photos", encoder, tmp / f"g{r}", batch_size=args.batch_size,
                          num_workers=args.num_workers, progress=False)  # fmt: skip
            built.append(len(paths) / (time.perf_counter() - t0))
        b, sq, g = statistics.median(bare), statistics.median(seq), statistics.median(built)
        return {"images": len(paths), "image_px": args.photo_size, "format": args.format,
                "decode_only_img_s": round(decode_only, 1), "batch_size": args.batch_size,
                "num_workers": args.num_workers, "bare_loop_img_s": round(b, 1),
                "sequential_decode_encode_img_s": round(sq, 1), "gallery_build_img_s": round(g, 1),
                "ratio": round(g / b, 3), "ratio_vs_sequential": round(g / sq, 3),
                "bare_runs": [round(x, 1) for x in bare], "sequential_runs": [round(x, 1) for x in seq],
                "build_runs": [round(x, 1) for x in built]}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# (b) query latency at scale
# ---------------------------------------------------------------------------------------------------------------


def synthetic_gallery(n: int, d: int, clusters: int = 1024, spread: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):  # in chunks: bounded temporary memory
        m = min(100_000, n - s)
        block = centres[rng.integers(clusters, size=m)] + rng.standard_normal((m, d), dtype=np.float32) * (
            spread / np.sqrt(d)
        )
        x[s : s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def query_inputs(encoder, n: int):
    rng = np.random.default_rng(1)
    sketches, words = [], []
    for i in range(n):
        inst, attrs = world.sample_instance(rng), world.sample_attributes(rng)
        sk = torch.from_numpy(world.render_sketch(inst, size=encoder.image_size, seed=i)).float().div(255)
        sketches.append(sk.expand(3, -1, -1))
        words.append(world.words(attrs))
    return sketches, words


def latency(encoder, index: VectorIndex, sketches, words, k: int = 10) -> dict:
    times = []
    with torch.inference_mode():
        for sk, w in zip(sketches, words, strict=True):
            t0 = time.perf_counter()
            q = encoder.encode_query(sk[None], [w]).numpy()
            index.search(q, k)
            times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def bench_latency(encoder, args) -> list[dict]:
    d = encoder.embed_dim
    sketches, words = query_inputs(encoder, args.queries)
    with torch.inference_mode():  # encode-only latency, for reference
        enc_ms = []
        for sk, w in zip(sketches[:50], words[:50], strict=True):
            t0 = time.perf_counter()
            encoder.encode_query(sk[None], [w])
            enc_ms.append((time.perf_counter() - t0) * 1e3)
    rows = [{"size": 0, "kind": "encode only", "p50_ms": round(float(np.median(enc_ms)), 2),
             "p95_ms": round(float(np.percentile(enc_ms, 95)), 2)}]  # fmt: skip
    for n in [int(s) for s in args.sizes.split(",") if s]:
        t0 = time.perf_counter()
        base = synthetic_gallery(n, d)
        probes = probe_queries(base, n=args.queries, seed=3)
        _, exact = exact_search(base, probes, 10)
        print(f"  {n:>9,} items: data + exact ground truth in {time.perf_counter() - t0:.1f} s", flush=True)
        kinds = ["flat", "ivf"] + (["hnsw"] if n <= args.hnsw_max else [])
        for kind in kinds:
            t0 = time.perf_counter()
            index = VectorIndex.build(base, kind)
            build_s = time.perf_counter() - t0
            row = {"size": n, "kind": kind, "build_s": round(build_s, 1), **latency(encoder, index, sketches, words)}
            row["recall@10"] = round(recall_at_k(index.search(probes, 10)[1], exact, 10), 4)
            row["index_bytes_per_item"] = round(index.memory_bytes() / n, 1)
            row["params"] = {k: v for k, v in index.params.items()}
            rows.append(row)
            print(f"  {n:>9,} {kind:5s}: build {build_s:.1f} s, p50 {row['p50_ms']} ms, "
                  f"recall@10 {row['recall@10']}", flush=True)  # fmt: skip
            del index
        del base
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    encoder, source = load_model(args.model, args.random_arch)
    result = {
        "model": source,
        "embed_dim": encoder.embed_dim,
        "image_size": encoder.image_size,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },  # fmt: skip
    }
    if not args.skip_throughput:
        print("(a) indexing throughput", flush=True)
        result["throughput"] = bench_throughput(encoder, args)
    result["latency"] = []
    if not args.skip_latency:
        print("(b) query latency", flush=True)
        result["latency"] = bench_latency(encoder, args)
    result["seconds"] = round(time.perf_counter() - t_start, 1)

    print(f"\nmodel: {source} (dim {encoder.embed_dim}, {encoder.image_size} px)\n")
    if "throughput" in result:
        t = result["throughput"]
        print(f"photos: {t['images']} {t['format']} files of {t['image_px']} px, batch {t['batch_size']}\n")
        print("| indexing | images/s |\n|---|---|")
        print(f"| decode only (one process, no model) | {t['decode_only_img_s']} |")
        print(f"| bare encode loop (pre-decoded) | {t['bare_loop_img_s']} |")
        print(f"| sequential loop (decode + encode, one process) | {t['sequential_decode_encode_img_s']} |")
        print(f"| Gallery.build (DataLoader decode + encode + shards + save) | {t['gallery_build_img_s']} |")
        print(f"| ratio build / bare | {t['ratio']} |")
        print(f"| ratio build / sequential | {t['ratio_vs_sequential']} |\n")
    if result["latency"]:
        print("| items | index | build s | p50 ms | p95 ms | recall@10 vs flat | index B/item |")
        print("|---|---|---|---|---|---|---|")
    for r in result["latency"]:
        if r["size"] == 0:
            print(f"| - | encode only | - | {r['p50_ms']} | {r['p95_ms']} | - | - |")
            continue
        print(f"| {r['size']:,} | {r['kind']} | {r['build_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['recall@10']} | "
              f"{r['index_bytes_per_item']} |")  # fmt: skip
    print(f"\ntotal {result['seconds']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run_script(main, "bench_index")
