#!/usr/bin/env python
"""Scene retrieval from object sketches on the procedural world: region matching vs the global-embedding baseline.

1. Renders ``--scenes`` world scenes (2-4 objects each) to PNG files and builds a gallery with region embeddings.
2. Queries: an object of a scene, sketched alone at its pose (rotation and shape knobs), re-centred and scaled to
   fill the canvas; optionally with words naming its colour (``--words "{colour}"``, e.g. "red").
3. Ranks every scene by (a) the best region (``Gallery.search(..., regions=True)``) and (b) the global embedding,
   and reports mAP@all: relevant = scenes containing an object of the same shape (sketch only) / of the same shape
   and colour (sketch + words). Also reports how often the best region of the query's own scene covers the object
   (box hit: the object's centre lies in the box) and memory per item.
4. Unless ``--no-verify``: ranks every scene by its best *object* (:class:`duetgen.SceneVerifier`): the objects are
   the connected parts of the scene's foreground silhouette, split by hue where objects of different colours touch;
   each scores ``--verify-weight`` x the correlation of its silhouette with the sketch's region at the best of 72
   rotations, each in a frame free of position and size, plus (with words) 0.3 x log(P / 0.5) of the words' colour
   read zero-shot from the object's crop, where that is below 0 (``duetgen.verify.WORDS_FREE``).

    python recipes/scene_retrieval.py --scenes 300 --queries 150 --out scene_retrieval.json --sheet sheet.png

mAP uses ``duetgen.metrics.map_at_all`` per query (a scene's relevance is binary for one query). The target with
the embedded model is mAP >= 0.8 with words, clearly above the global baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import duetgen
from duetgen import world
from duetgen.errors import run_script
from duetgen.gallery import Gallery
from duetgen.metrics import map_at_all
from duetgen.scene_retrieval import RegionConfig


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="encoder folder (default: the embedded encoder)")
    p.add_argument("--scenes", type=int, default=300, help="gallery size (scenes)")
    p.add_argument("--queries", type=int, default=150, help="object queries")
    p.add_argument("--size", type=int, default=128, help="scene side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--words", default="{colour}", help='words template for composed queries (default "{colour}")')
    p.add_argument("--scales", default="0.5,0.35", help="region window scales (fractions of the image side)")
    p.add_argument("--overlap", type=float, default=0.5, help="region window overlap")
    p.add_argument("--work", default=None, help="folder for the scene PNGs and gallery (default: a temp folder)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--verify-weight", type=float, default=1.0,
                   help="weight of the shape agreement in the object-verified ranking (SceneVerifier)")  # fmt: skip
    p.add_argument("--sheet", default=None,
                   help="write a contact sheet PNG here: the first --sheet-rows sketch + words queries and their top "
                        "3 scenes, the matched object (verified) or region boxed")  # fmt: skip
    p.add_argument("--sheet-rows", type=int, default=4, help="queries shown in --sheet")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the object-verified ranking (region and global rankings only)")  # fmt: skip
    args = p.parse_args(argv)
    for name in ("scenes", "queries", "size", "batch_size", "sheet_rows"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.verify_weight) and args.verify_weight >= 0):
        p.error(f"--verify-weight must be a finite number >= 0, got {args.verify_weight}")
    return args


def object_sketch(instance: world.Instance, size: int, seed: int, fill: float = 0.8) -> np.ndarray:
    """The object alone, at its rotation and shape knobs, re-centred and scaled so its rotated box spans ``fill`` of
    the canvas: uint8 (size, size)."""
    unit = world.Instance(instance.shape, 0.5, 0.5, 1.0, instance.rotation, instance.params).outline()
    extent = float((unit.max(0) - unit.min(0)).max())
    centred = world.Instance(instance.shape, 0.5, 0.5, fill / extent, instance.rotation, instance.params)
    outline = centred.outline()
    shift = 0.5 - (outline.min(0) + outline.max(0)) / 2  # centre the rotated box, not the upright one
    centred = world.Instance(instance.shape, 0.5 + shift[0], 0.5 + shift[1], fill / extent, instance.rotation,
                             instance.params)  # fmt: skip
    return world.render_sketch(centred, size, seed)


def contact_sheet(path: Path, rows: list[dict], cell: int = 128, pad: int = 6) -> None:
    """Rows of: the object sketch, its words (and the scene it came from), the top scenes with the matched box
    (yellow when the scene holds the object's shape and colour, grey otherwise) and score."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    n_hits = max(len(r["hits"]) for r in rows)
    label = 16
    width = pad + (cell + pad) * (2 + n_hits)
    sheet = Image.new("RGB", (width, label + pad + (cell + pad) * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), "object sketch", fill="black", font=font)
    draw.text((pad + cell + pad, 2), "words", fill="black", font=font)
    draw.text((pad + 2 * (cell + pad), 2), f"top {n_hits} scenes (box: the matched object or region; yellow = "
              "right shape and colour)", fill="black", font=font)  # fmt: skip
    for i, row in enumerate(rows):
        y = label + pad + i * (cell + pad)
        sheet.paste(row["sketch"].resize((cell, cell)), (pad, y))
        draw.text((pad + cell + pad, y + cell // 2 - 10), f"'{row['words']}'", fill="black", font=font)
        draw.text((pad + cell + pad, y + cell // 2 + 4), f"(from {row['source']})", fill=(110, 110, 110), font=font)
        for j, hit in enumerate(row["hits"]):
            x = pad + (2 + j) * (cell + pad)
            im = Image.open(hit["path"]).convert("RGB")
            scale = cell / im.width
            sheet.paste(im.resize((cell, cell)), (x, y))
            if hit["box"] is not None:
                x0, y0, x1, y1 = (v * scale for v in hit["box"])
                colour = (250, 220, 0) if hit["relevant"] else (150, 150, 150)
                draw.rectangle([x + x0, y + y0, x + x1 - 1, y + y1 - 1], outline=colour, width=2)
            iou = f", shape {hit['iou']:.3f}" if hit.get("iou") is not None else ""
            draw.rectangle([x, y + cell - 27, x + cell - 1, y + cell - 1], fill=(45, 45, 45))
            draw.text((x + 3, y + cell - 25), Path(hit["path"]).stem, fill="white", font=font)
            draw.text((x + 3, y + cell - 13), f"score {hit['score']:.3f}{iou}", fill="white", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)  # a killed run leaves the previous sheet, never half of one


def mean_ap(sim: np.ndarray, relevant: np.ndarray) -> float:
    """mAP@all over queries with at least one relevant scene, via duetgen.metrics.map_at_all row by row."""
    aps = [map_at_all(sim[q : q + 1], [1], relevant[q].astype(int)) for q in range(len(sim)) if relevant[q].any()]
    return float(np.mean(aps)) if aps else float("nan")


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    encoder = duetgen.load_encoder(args.model)
    rng = np.random.default_rng(args.seed)

    # 1. the scene gallery
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="duetgen-scenes-"))
    photo_dir = work / "scenes"
    photo_dir.mkdir(parents=True, exist_ok=True)
    scenes, boxes = [], []
    for i in range(args.scenes):
        scene = world.sample_scene(rng)
        photo, bx = world.render_scene(scene, args.size, seed=args.seed * 100_003 + i)
        Image.fromarray(photo).save(photo_dir / f"scene{i:05d}.png")
        scenes.append(scene)
        boxes.append(bx)
    config = RegionConfig(tuple(float(s) for s in args.scales.split(",") if s), args.overlap)
    gallery = Gallery.build(photo_dir, encoder, work / "gallery", regions=config, batch_size=args.batch_size,
                            progress=False, model_source=args.model or "embedded")  # fmt: skip
    order = {Path(p).name: r for r, p in enumerate(gallery.paths)}
    rows = np.array([order[f"scene{i:05d}.png"] for i in range(args.scenes)])  # scene i -> gallery row

    # 2. object queries
    picks = [(int(rng.integers(args.scenes)), None) for _ in range(args.queries)]
    picks = [(s, int(rng.integers(len(scenes[s].objects)))) for s, _ in picks]
    sketches = (
        torch.stack(
            [
                torch.from_numpy(object_sketch(scenes[s].objects[o], args.size, seed=1000 + q))
                for q, (s, o) in enumerate(picks)
            ]
        )
        .float()
        .div(255)[:, None]
        .expand(-1, 3, -1, -1)
    )  # (Q, 3, S, S)
    words = [args.words.format(colour=scenes[s].attrs[o].colour) for s, o in picks]
    shapes = np.array([[o.shape for o in sc.objects] + [""] * (4 - len(sc.objects)) for sc in scenes])
    colours = np.array([[a.colour for a in sc.attrs] + [""] * (4 - len(sc.attrs)) for sc in scenes])

    results = {"scenes": args.scenes, "queries": args.queries, "regions_per_item": int(gallery.regions.shape[1]),
               "region_config": config.to_dict(), "words_template": args.words,
               "memory_per_item_bytes": gallery.memory_per_item()}  # fmt: skip
    with torch.inference_mode():
        sketch_embeds = torch.cat([encoder.encode_sketch(sketches[i : i + 64]) for i in range(0, len(sketches), 64)])
        queries = {
            "sketch": encoder.encode_query(sketch_embeds=sketch_embeds),
            "sketch+words": encoder.encode_query(sketch_embeds=sketch_embeds, words=words),
        }
    global_emb = gallery.embeddings_f32()
    verifier = duetgen.SceneVerifier(encoder, weight=args.verify_weight, depth=len(gallery)) if args.verify else None
    for name, q in queries.items():
        q = q.float().numpy()
        shape_q = np.array([scenes[s].objects[o].shape for s, o in picks])
        rel_scene = (shapes[:, None, :] == shape_q[None, :, None]).any(-1).T  # (Q, scenes) by scene number
        if name == "sketch+words":
            colour_q = np.array([scenes[s].attrs[o].colour for s, o in picks])
            same = (shapes[None] == shape_q[:, None, None]) & (colours[None] == colour_q[:, None, None])
            rel_scene = same.any(-1)
        relevant = np.zeros((len(q), len(gallery)), bool)
        relevant[:, rows] = rel_scene
        hits = gallery.search(q, k=len(gallery), regions=True)
        region_sim = np.full((len(q), len(gallery)), -np.inf, np.float32)
        box_hit = []
        for qi, res in enumerate(hits):
            for r in res:
                region_sim[qi, r.id] = r.score  # ids are rows here: the gallery was built once, never edited
            s, o = picks[qi]
            own = next(r for r in res if r.id == rows[s])
            x0, y0, x1, y1 = boxes[s][o]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            box_hit.append(own.box[0] <= cx < own.box[2] and own.box[1] <= cy < own.box[3])
        global_sim = q @ global_emb.T
        verified = {}
        if args.verify:  # every scene re-scored by its best object: rotation-free shape + the words read from it
            said = words if name == "sketch+words" else ""  # the words each object's crop is read against
            found = gallery.search(q, k=len(gallery), regions=True, verify_sketches=sketches, verifier=verifier,
                                   verify_words=said)  # fmt: skip
            ver_sim = np.full((len(q), len(gallery)), -np.inf, np.float32)
            for qi, res in enumerate(found):
                for r in res:
                    ver_sim[qi, r.id] = r.score
            verified = {"map_verified": round(mean_ap(ver_sim, relevant), 4)}
        if args.sheet and name == "sketch+words":
            shown = found if args.verify else hits
            by_row = {int(r): i for i, r in enumerate(rows)}  # gallery row -> scene number
            sheet_rows = []
            for qi in range(min(args.sheet_rows, len(q))):
                s, _o = picks[qi]
                sk = Image.fromarray((sketches[qi, 0].numpy() * 255).astype(np.uint8))
                top = [{"path": r.path, "box": r.box, "score": r.score, "iou": r.iou,
                        "relevant": bool(rel_scene[qi, by_row[r.id]])} for r in shown[qi][:3]]  # fmt: skip
                sheet_rows.append({"sketch": sk, "words": words[qi], "source": f"scene{s:05d}", "hits": top})
            contact_sheet(Path(args.sheet), sheet_rows)
            results["sheet"] = str(args.sheet)
        results[name] = {
            **verified,
            "map_regions": round(mean_ap(region_sim, relevant), 4),
            "map_global": round(mean_ap(global_sim, relevant), 4),
            "box_hit_own_scene": round(float(np.mean(box_hit)), 4),
            "relevant_per_query": round(float(relevant.sum(1).mean()), 2),
        }
    results["seconds"] = round(time.perf_counter() - t0, 1)

    ver = f" | mAP objects verified (weight {args.verify_weight:g})" if args.verify else ""
    print(f"| query{ver} | mAP regions (best of {results['regions_per_item']}) | mAP global | box hit (own scene) "
          "| relevant / query |")  # fmt: skip
    print("|---|---|---|---|---|" + ("---|" if args.verify else ""))
    for name in queries:
        r = results[name]
        v = f" | {r['map_verified']:.3f}" if args.verify else ""
        print(f"| {name}{v} | {r['map_regions']:.3f} | {r['map_global']:.3f} | {r['box_hit_own_scene']:.2f} | "
              f"{r['relevant_per_query']:.1f} |")  # fmt: skip
    mem = results["memory_per_item_bytes"]
    print(f"memory per item: {mem['total']:.0f} B (regions {mem['regions']:.0f} B fp16, embedding "
          f"{mem['embedding']:.0f} B, index {mem['index']:.0f} B); {results['seconds']} s")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    assert math.isfinite(results["sketch"]["map_regions"])
    return results


if __name__ == "__main__":
    run_script(main, "scene_retrieval")
