#!/usr/bin/env python
"""How far can region matching go with the embedded encoder? Scene retrieval with perfect object crops.

``recipes/scene_retrieval.py`` scores a scene by its best sliding-window region. This benchmark replaces the windows
by an oracle: each scene's regions are exactly its objects (the true box, squared and padded so the object fills
``--fills`` of the crop), on the same scenes and queries as the recipe. It also measures, on single-object world
photos, how well a sketch query finds photos of the *same shape* (category level) at all. Together they bound what
any region proposal could reach with this encoder.

    python benchmarks/bench_scene_ceiling.py [--scenes 300 --queries 150] [--model DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import duetgen
from duetgen import world
from duetgen.errors import run_script

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from scene_retrieval import mean_ap, object_sketch  # noqa: E402  (the recipe's query sketches and mAP)


def oracle_crops(photo: torch.Tensor, boxes, fill: float, size: int) -> torch.Tensor:
    """(n_objects, 3, size, size): square crops centred on each object box, the box's long side = ``fill`` of it."""
    s = photo.shape[-1]
    padded = F.pad(photo[None], (s, s, s, s), mode="replicate")[0]
    crops = []
    for x0, y0, x1, y1 in boxes:
        side = max(x1 - x0, y1 - y0) / fill
        a0, b0 = round((x0 + x1) / 2 - side / 2) + s, round((y0 + y1) / 2 - side / 2) + s
        c = padded[:, b0 : b0 + round(side), a0 : a0 + round(side)]
        crops.append(F.interpolate(c[None], size=(size, size), mode="bilinear", antialias=True)[0])
    return torch.stack(crops)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="encoder folder (default: the embedded encoder)")
    p.add_argument("--scenes", type=int, default=300)
    p.add_argument("--queries", type=int, default=150)
    p.add_argument("--fills", default="0.55,0.85", help="object fill of the oracle crops")
    p.add_argument("--seed", type=int, default=0, help="the recipe's seed (same scenes and queries)")
    args = p.parse_args(argv)
    enc = duetgen.load_encoder(args.model)
    rng = np.random.default_rng(args.seed)
    scenes, boxes, photos = [], [], []
    for i in range(args.scenes):  # the recipe's scenes: same rng stream, same render seeds
        sc = world.sample_scene(rng)
        ph, bx = world.render_scene(sc, 128, seed=args.seed * 100_003 + i)
        scenes.append(sc)
        boxes.append(bx)
        photos.append(torch.from_numpy(ph).permute(2, 0, 1).float() / 255)
    picks = [(int(rng.integers(args.scenes)), None) for _ in range(args.queries)]
    picks = [(s, int(rng.integers(len(scenes[s].objects)))) for s, _ in picks]
    shapes = np.array([[o.shape for o in sc.objects] + [""] * (4 - len(sc.objects)) for sc in scenes])
    colours = np.array([[a.colour for a in sc.attrs] + [""] * (4 - len(sc.attrs)) for sc in scenes])
    shape_q = np.array([scenes[s].objects[o].shape for s, o in picks])
    colour_q = [scenes[s].attrs[o].colour for s, o in picks]
    relevant = {
        "sketch": (shapes[None] == shape_q[:, None, None]).any(-1),
        "sketch+words": (
            (shapes[None] == shape_q[:, None, None]) & (colours[None] == np.array(colour_q)[:, None, None])
        ).any(-1),
    }
    results: dict = {"scenes": args.scenes, "queries": args.queries, "oracle": {}}
    with torch.inference_mode():
        sk = [
            torch.from_numpy(object_sketch(scenes[s].objects[o], 128, seed=1000 + q)) for q, (s, o) in enumerate(picks)
        ]
        sk = torch.stack(sk).float().div(255)[:, None].expand(-1, 3, -1, -1)  # (Q, 3, 128, 128)
        se = enc.encode_sketch(sk)
        queries = {"sketch": enc.encode_query(sketch_embeds=se).float().numpy(),
                   "sketch+words": enc.encode_query(sketch_embeds=se, words=colour_q).float().numpy()}  # fmt: skip
        for fill in (float(f) for f in args.fills.split(",")):
            crops = [oracle_crops(ph, bx, fill, enc.image_size) for ph, bx in zip(photos, boxes, strict=True)]
            emb = enc.encode_image(torch.cat(crops)).float().numpy()
            starts = np.cumsum([0] + [len(c) for c in crops[:-1]])  # each scene's first crop (contiguous rows)
            for name, q in queries.items():
                best = np.maximum.reduceat(q @ emb.T, starts, axis=1)  # (Q, scenes): the best object crop
                results["oracle"][f"{name} fill {fill}"] = round(mean_ap(best, relevant[name]), 4)
        # category level on single objects: a sketch against 600 world photos, relevant = the same shape
        items = [world.world_item(7, i, size=64) for i in range(600)]
        gal = torch.stack([torch.from_numpy(it.photo).permute(2, 0, 1) for it in items]).float() / 255
        qs = torch.stack([torch.from_numpy(it.sketch) for it in items[:150]]).float().div(255)[:, None]
        sim = enc.encode_query(qs.expand(-1, 3, -1, -1)).float().numpy() @ enc.encode_image(gal).float().numpy().T
        item_shapes = np.array([it.instance.shape for it in items])
        results["single_object_same_shape_map"] = round(mean_ap(sim, item_shapes[None] == item_shapes[:150, None]), 4)
        results["single_object_chance"] = round(
            float(np.mean([(item_shapes == s).mean() for s in item_shapes[:150]])), 4
        )
    print("| regions | sketch mAP | sketch + words mAP |\n|---|---|---|")
    for fill in args.fills.split(","):
        print(f"| oracle object crops, object fills {fill} | {results['oracle'][f'sketch fill {float(fill)}']:.3f} | "
              f"{results['oracle'][f'sketch+words fill {float(fill)}']:.3f} |")  # fmt: skip
    print(f"single objects, sketch -> photos of the same shape: mAP {results['single_object_same_shape_map']:.3f} "
          f"(chance about {results['single_object_chance']:.3f})")  # fmt: skip
    return results


if __name__ == "__main__":
    run_script(main, "bench_scene_ceiling")
