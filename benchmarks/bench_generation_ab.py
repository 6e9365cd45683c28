#!/usr/bin/env python
"""Two generator pipelines head to head: seconds per image at 25 steps, interleaved in one process.

Timings on a shared machine drift by a third between runs, so comparing two separate runs of
``bench_generation_speed.py`` says little. Here the two pipelines alternate image by image (same sketch, words,
seeds, traced UNets, 2 threads), and the ratio of their medians is the figure to quote.

    python benchmarks/bench_generation_ab.py runs/gen_w32/pipeline            # against the embedded generator
    python benchmarks/bench_generation_ab.py A_DIR B_DIR --repeats 11 [--eager]
    python benchmarks/bench_generation_ab.py embedded --a-unet-dtype bfloat16   # one generator, two UNet dtypes
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from duetgen.errors import run_script
from duetgen.pipelines import load_pipeline


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="pipeline folder A ('embedded': the embedded generator)")
    p.add_argument("b", nargs="?", default=None, help="pipeline folder B (default: the embedded generator)")
    for side in ("a", "b"):
        p.add_argument(f"--{side}-unet-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                       help=f"dtype of pipeline {side.upper()}'s UNet (load_pipeline(unet_dtype=...))")  # fmt: skip
    p.add_argument("--repeats", type=int, default=11, help="images per pipeline (median reported)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sketch", default="samples/sketches/heart.png")
    p.add_argument("--text", default="red with stripes")
    p.add_argument("--eager", action="store_true", help="do not trace the UNets")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(previous)


def _run(args) -> dict:
    def folder(path):
        return None if path in (None, "embedded") else path

    pipes = {}
    for side in ("a", "b"):
        pipes[side] = load_pipeline(folder(getattr(args, side)), unet_dtype=getattr(args, f"{side}_unet_dtype"))
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        if not args.eager:
            pipe.enable_unet_jit()

    def one(pipe, seed: int) -> float:
        t0 = time.perf_counter()
        pipe(sketch=args.sketch, text=args.text, num_inference_steps=args.steps,
             generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return time.perf_counter() - t0

    for pipe in pipes.values():  # warm-up: tracing and first-call costs stay out of the medians
        for _ in range(2):
            one(pipe, 0)
    times: dict[str, list[float]] = {"a": [], "b": []}
    for r in range(args.repeats):
        for key, pipe in pipes.items():
            times[key].append(one(pipe, r))
    res = {
        "a": args.a,
        "b": args.b or "embedded",
        "jit": not args.eager,
        "unet_dtype_a": str(pipes["a"].unet.dtype).removeprefix("torch."),
        "unet_dtype_b": str(pipes["b"].unet.dtype).removeprefix("torch."),
        "median_s_a": round(statistics.median(times["a"]), 4),
        "median_s_b": round(statistics.median(times["b"]), 4),
    }
    res["ratio_a_over_b"] = round(res["median_s_a"] / res["median_s_b"], 3)
    mode = "traced" if res["jit"] else "eager"
    print(f"A {res['a']} ({res['unet_dtype_a']}): {res['median_s_a']:.3f} s/image; "
          f"B {res['b']} ({res['unet_dtype_b']}): {res['median_s_b']:.3f} s/image; "
          f"A/B {res['ratio_a_over_b']:.2f}x ({mode}, median of {args.repeats})")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    run_script(main, "bench_generation_ab")
