#!/usr/bin/env python
"""What object verification costs a scene query: ``SceneVerifier`` on the recipe's world scenes.

Renders the scenes of ``recipes/scene_retrieval.py`` (same seed, same pixels) and times, in one process:

* **reading a scene** (cold): finding its objects (``scene_objects``), their shape frames and crop embeddings, per
  scene; a gallery pays it once per scene, the first time a query reaches it (the verifier caches it);
* **re-ranking** ``--depth`` scenes for one query, every scene already read, with a sketch alone (``""``), a colour
  word ("red": the attribute reading of each object, itself cached after the first query) and other words
  ("fluffy": the crop cosine).

Each figure is the median over ``--repeats`` runs (re-ranking: over the queries of every run).

    python benchmarks/bench_scene_verify.py [--scenes 300 --queries 20 --repeats 5] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import duetgen
from duetgen import world
from duetgen.errors import run_script
from duetgen.gallery import SearchResult
from duetgen.verify import SceneVerifier, sketch_regions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from scene_retrieval import object_sketch  # noqa: E402  (the recipe's query sketches)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="encoder folder (default: the embedded encoder)")
    p.add_argument("--scenes", type=int, default=300, help="scenes re-ranked per query (all of them)")
    p.add_argument("--queries", type=int, default=20, help="object queries timed per run")
    p.add_argument("--repeats", type=int, default=5, help="runs; each figure is the median")
    p.add_argument("--seed", type=int, default=0, help="the recipe's seed (same scenes)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if min(args.scenes, args.queries, args.repeats) < 1:
        p.error("--scenes, --queries and --repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = duetgen.load_encoder(args.model).eval()
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="duetgen-bench-scenes-"))
    scenes, paths = [], []
    for i in range(args.scenes):  # the recipe's scenes: same rng stream, same render seeds
        scene = world.sample_scene(rng)
        photo, _ = world.render_scene(scene, 128, seed=args.seed * 100_003 + i)
        paths.append(str(work / f"scene{i:05d}.png"))
        Image.fromarray(photo).save(paths[-1])
        scenes.append(scene)
    picks = [(int(rng.integers(args.scenes)), None) for _ in range(args.queries)]
    picks = [(s, int(rng.integers(len(scenes[s].objects)))) for s, _ in picks]
    sketches = torch.stack(
        [torch.from_numpy(object_sketch(scenes[s].objects[o], 128, seed=1000 + q)) for q, (s, o) in enumerate(picks)]
    )
    sketches = sketches.float().div(255)[:, None].expand(-1, 3, -1, -1)
    regions = sketch_regions(sketches, size=128)
    with torch.inference_mode():
        queries = encoder.encode_query(sketches).float()
    hits = [SearchResult(0.0, path, i) for i, path in enumerate(paths)]

    read_ms, rerank_ms = [], {"sketch alone": [], "colour word": [], "other words": []}
    words = {"sketch alone": "", "colour word": "red", "other words": "fluffy"}
    for _ in range(args.repeats):
        verifier = SceneVerifier(encoder, depth=args.scenes)
        t0 = time.perf_counter()
        for path in paths:
            verifier.objects(path)
        read_ms.append((time.perf_counter() - t0) * 1000 / len(paths))
        verifier.rerank(hits, queries[0], regions[0], k=10, words="red")  # the attribute reading, once per scene
        for name, said in words.items():
            for q in range(len(picks)):
                t0 = time.perf_counter()
                verifier.rerank(hits, queries[q], regions[q], k=10, words=said)
                rerank_ms[name].append((time.perf_counter() - t0) * 1000)
    res = {
        "scenes": args.scenes,
        "objects_per_scene": float(np.mean([len(verifier.objects(p)[0]) for p in paths])),
        "read_ms_per_scene": float(np.median(read_ms)),
        "rerank_ms": {name: float(np.median(v)) for name, v in rerank_ms.items()},
        "threads": torch.get_num_threads(),
    }
    print(f"{args.scenes} scenes, {res['objects_per_scene']:.2f} objects found per scene, {res['threads']} threads")
    print("| step | median ms |")
    print("|---|---|")
    print(f"| read one scene (objects, frames, crop embeddings; once per scene) | {res['read_ms_per_scene']:.2f} |")
    for name, ms in res["rerank_ms"].items():
        print(f"| re-rank {args.scenes} read scenes for one query, {name} | {ms:.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    run_script(main, "bench_scene_verify")
