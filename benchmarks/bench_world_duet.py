#!/usr/bin/env python
"""Composed retrieval on the held-out world twin benchmark: sketch only, words only, sketch + words.

The gallery (150 queries x 7 photos = 1,050) holds for each query its photo, 3 geometry twins (same instance, other
attributes) and 3 attribute twins (same attributes, other instances), so neither modality alone suffices.

    python benchmarks/bench_world_duet.py                              # the embedded default
    python benchmarks/bench_world_duet.py --model runs/stage2/encoder --out results.json
    python benchmarks/bench_world_duet.py --shapes bell,drop,kite      # zero-shot: only held-out shapes
    python benchmarks/bench_world_duet.py --sheet docs/world_retrieval_sheet.png
    python benchmarks/bench_world_duet.py --verify 0.1 0.3 1.0   # also: silhouette verification of the top 20

``--verify W ...`` writes the gallery photos as PNG files, builds a real :class:`duetgen.Gallery` from them and
searches it with ``verify_sketches`` (:mod:`duetgen.verify`: the top 20 re-scored by cosine + W x silhouette IoU),
once per weight; the rows "sketch + words, verified (W)" and "sketch, verified (W)" are added. Words alone have no
sketch to verify with.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

import duetgen
from duetgen.errors import run_script
from duetgen.world_benchmark import build_twin_benchmark, evaluate_twin_benchmark
from duetgen.world_dataset import to_float


def contact_sheet(encoder, bench, path: str, n_rows: int = 6, k: int = 5, cell: int = 96) -> None:
    """Rows of: sketch | words | top-k photos for sketch + words (the right photo outlined in green)."""
    from PIL import Image, ImageDraw

    with torch.no_grad():
        gallery = torch.cat([encoder.encode_image(to_float(bench.photos[i : i + 256]))
                             for i in range(0, len(bench.photos), 256)])  # fmt: skip
        rows = np.linspace(0, len(bench.sketches) - 1, n_rows).astype(int)
        q = encoder.encode_query(to_float(bench.sketches[rows]), [bench.words[r] for r in rows])
        top = (q @ gallery.T).topk(k, dim=1).indices.numpy()
    text_w = 170
    sheet = Image.new("RGB", (cell * (k + 1) + text_w + 8, cell * n_rows + 24), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), "sketch", fill="black")
    draw.text((cell + 8, 4), "words", fill="black")
    draw.text((cell + text_w + 8, 4), f"top-{k} for sketch + words (green = the right photo)", fill="black")
    for r, qi in enumerate(rows):
        y = 24 + r * cell
        sheet.paste(Image.fromarray(bench.sketches[qi]).convert("RGB").resize((cell - 4, cell - 4)), (2, y + 2))
        words = bench.words[qi].split(" ")
        lines, line = [], ""
        for w in words:
            if len(line) + len(w) > 20:
                lines.append(line)
                line = ""
            line += w + " "
        lines.append(line)
        for li, txt in enumerate(lines):
            draw.text((cell + 8, y + 30 + 14 * li), txt, fill="black")
        for j, gi in enumerate(top[r]):
            x = cell + text_w + 8 + j * cell
            sheet.paste(Image.fromarray(bench.photos[gi]).resize((cell - 8, cell - 8)), (x + 4, y + 4))
            if gi == bench.target[qi]:
                draw.rectangle([x + 1, y + 1, x + cell - 3, y + cell - 3], outline=(0, 170, 0), width=3)
    sheet.save(path)


def verified_accuracy(encoder, bench, weights, tmp: str) -> dict:
    """Acc@1 / Acc@5 through a real gallery of the benchmark photos, searched with silhouette verification."""
    from pathlib import Path

    from PIL import Image

    from duetgen.gallery import Gallery
    from duetgen.verify import SilhouetteVerifier

    paths = []
    for i, photo in enumerate(bench.photos):
        paths.append(str(Path(tmp) / f"{i:05d}.png"))
        Image.fromarray(photo).save(paths[-1])
    gallery = Gallery.build(paths, encoder)
    row_of = {p: i for i, p in enumerate(paths)}
    sketches = to_float(bench.sketches)
    with torch.no_grad():
        sk = encoder.encode_sketch(sketches)
        queries = {"sketch": encoder.encode_query(sketch_embeds=sk),
                   "sketch+words": encoder.encode_query(sketch_embeds=sk, words=bench.words)}  # fmt: skip
    out = {}
    for w in weights:
        verifier = SilhouetteVerifier(weight=w)  # one per weight: each re-reads the photos (fair timing)
        for name, q in queries.items():
            t0 = time.time()
            hits = gallery.search(q, k=5, verify_sketches=sketches, verifier=verifier)
            ranks = [[row_of[os.path.realpath(h.path)] for h in hs] for hs in hits]
            out[f"{name}, verified ({w:g})"] = {
                "acc@1": float(np.mean([r[0] == t for r, t in zip(ranks, bench.target, strict=True)])),
                "acc@5": float(np.mean([t in r for r, t in zip(ranks, bench.target, strict=True)])),
                "ms_per_query": round(1000 * (time.time() - t0) / len(q), 2),
            }
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="encoder folder (default: the embedded default)")
    p.add_argument("--queries", type=int, default=150)
    p.add_argument("--shapes", default="", help="comma-separated shapes to restrict the queries to (zero-shot)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--sheet", default=None, help="write a contact sheet PNG here")
    p.add_argument("--verify", type=float, nargs="*", default=[], metavar="W",
                   help="also search with silhouette verification at these weights")  # fmt: skip
    args = p.parse_args(argv)

    torch.manual_seed(0)
    shapes = tuple(s for s in args.shapes.split(",") if s) or None
    t0 = time.time()
    encoder = duetgen.load_encoder(args.model)  # a bad --model fails before the gallery is rendered
    bench = build_twin_benchmark(args.queries, shapes=shapes)
    res = evaluate_twin_benchmark(encoder, bench)
    if args.verify:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            res.update(verified_accuracy(encoder, bench, args.verify, tmp))
    res["gallery_size"] = len(bench.photos)
    res["queries"] = len(bench.sketches)
    res["seconds"] = round(time.time() - t0, 1)
    print(f"model: {args.model or 'embedded default'}   "
          f"gallery: {len(bench.photos)} photos, {len(bench.sketches)} queries"
          + (f"   shapes: {','.join(shapes)}" if shapes else ""))  # fmt: skip
    print("| query | Acc@1 | Acc@5 |\n|---|---|---|")
    for key in [k for k in res if isinstance(res[k], dict)]:
        print(f"| {key} | {res[key]['acc@1']:.3f} | {res[key]['acc@5']:.3f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    if args.sheet:
        contact_sheet(encoder, bench, args.sheet)
        print(f"contact sheet: {args.sheet}")
    return res


if __name__ == "__main__":
    run_script(main, "bench_world_duet")
