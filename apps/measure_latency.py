"""Warm query latency of the studio: sketch image -> composed query -> gallery search, as the Retrieve view does it.

    OMP_NUM_THREADS=1 python apps/measure_latency.py                      # embedded default + sample gallery
    python apps/measure_latency.py --model DIR --gallery DIR --queries 50 --regions

Prints the median and 90th percentile wall time per query after warm-up, and the process CPU time per query (which
is what the query costs when other jobs share the cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import studio_core as core  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="pipeline or encoder folder (default: embedded)")
    p.add_argument("--gallery", default=None, help="gallery folder (default: the shipped sample gallery)")
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--regions", action="store_true", help="scene retrieval (best region) instead of global search")
    args = p.parse_args()

    t0 = time.perf_counter()
    models = core.load_models(args.model)
    gallery = core.open_gallery(args.gallery or core.sample_gallery_dir(), models.encoder)
    load_s = time.perf_counter() - t0
    sketches = [path.read_bytes() for path in core.sample_sketches().values()]
    words = ["red with stripes", "blue with dots in pixel art", "green at night", ""]

    def one(i: int) -> None:
        sketch = core.read_sketch_source(sketches[i % len(sketches)], models, "sketch")
        query = core.compose_query(models.encoder, sketch, words[i % len(words)])
        core.search(gallery, query, 8, regions=args.regions)

    for i in range(3):  # warm-up
        one(i)
    walls, cpus = [], []
    for i in range(args.queries):
        w, c = time.perf_counter(), time.process_time()
        one(i)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    walls.sort()
    p90 = walls[int(0.9 * (len(walls) - 1))]
    print(f"model {models.source}; gallery {gallery.path} ({len(gallery)} items, regions={args.regions}); "
          f"loaded in {load_s:.1f} s")  # fmt: skip
    print(f"warm query (read sketch + encode + search top-8), {args.queries} queries: median "
          f"{statistics.median(walls) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms wall; "
          f"{statistics.median(cpus) * 1000:.1f} ms CPU")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
