#!/usr/bin/env python
"""Forward time of one composed query against open_clip's own encode_image + encode_text of the same inputs.

The composed query runs V on the sketch, C_v2w, and T_t on the spliced sequence; the baseline is open_clip's
``encode_image`` of the same sketch plus ``encode_text`` of a token sequence of the same length. Median of
``--repeats`` runs each, interleaved, in one process; random weights (architecture is what matters).

    python benchmarks/bench_encoder_overhead.py --backbones duetgen-tiny,ViT-B-32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from duetgen import ComposedQueryEncoder
from duetgen.backbones import get_backbone, get_clip_config
from duetgen.errors import run_script


def bench(name: str, repeats: int, words: str) -> dict:
    torch.manual_seed(0)
    enc = ComposedQueryEncoder(get_clip_config(get_backbone(name).arch), backbone=name).eval()
    size = enc.image_size
    sketch = torch.rand(1, 3, size, size)
    n_prefix = enc.prompt_tokens.shape[0] + 1
    ids = torch.zeros(1, enc.context_length, dtype=torch.long)
    w = enc.word_ids(words)
    ids[0, 0] = enc.tokenizer.sot_token_id
    ids[0, 1 : 1 + n_prefix + len(w)] = torch.tensor([320] * n_prefix + w)  # same length as the spliced sequence
    ids[0, 1 + n_prefix + len(w)] = enc.tokenizer.eot_token_id
    ours, base = [], []
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            enc.encode_query(sketch, [words])
            enc.clip.encode_image(enc.normalize_images(sketch)), enc.clip.encode_text(ids)
        for _ in range(repeats):
            t = time.perf_counter()
            enc.encode_query(sketch, [words])
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            enc.clip.encode_image(enc.normalize_images(sketch))
            enc.clip.encode_text(ids)
            base.append(time.perf_counter() - t)
    mo, mb = statistics.median(ours), statistics.median(base)
    return {
        "backbone": name,
        "ours_ms": round(mo * 1e3, 2),
        "open_clip_ms": round(mb * 1e3, 2),
        "ratio": round(mo / mb, 3),
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="duetgen-tiny,duetgen-world,ViT-B-32")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--words", default="red with stripes in pixel art")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = [bench(b, args.repeats, args.words) for b in args.backbones.split(",")]
    print(f"one composed query (sketch + '{args.words}'), median of {args.repeats}, {torch.get_num_threads()} threads")
    print("| backbone | composed query ms | open_clip encode_image + encode_text ms | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['ours_ms']} | {r['open_clip_ms']} | {r['ratio']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    run_script(main, "bench_encoder_overhead")
