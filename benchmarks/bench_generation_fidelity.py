"""Generation fidelity: does the generator draw the sketched object with the requested words?

For N held-out world sketches (world seed 777_000+, disjoint from every training seed) with requested attributes, the
pipeline generates ``--samples`` images from (sketch, ``world.words(attrs)``); the independent evaluator
(:func:`duetgen.evaluator.load_evaluator`, trained on seeds 555_000+, never used to train the generator) scores each
image: shape, colour, pattern and domain accuracy against the request, and the silhouette IoU between the generated
object's predicted mask and the sketched instance's mask.

``--real-photos`` scores real world renders of the same requests instead of generated images (four render seeds per
request): the upper bound the evaluator allows, and a way to run the benchmark without a pipeline.

Prints a markdown table with the targets, writes ``--out`` (JSON) and a contact sheet ``--sheet`` (per row: sketch,
words, the samples; a green frame marks a sample whose shape, colour and pattern are all right, red otherwise).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_generation_fidelity.py                       # embedded pipeline
    OMP_NUM_THREADS=1 python benchmarks/bench_generation_fidelity.py --model path/to/pipeline --n 64
    OMP_NUM_THREADS=1 python benchmarks/bench_generation_fidelity.py --real-photos          # evaluator upper bound
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from duetgen import world
from duetgen.errors import run_script
from duetgen.evaluator import HEADS, load_evaluator, summarise
from duetgen.pipelines import resolve_unet_dtype

logger = logging.getLogger("bench_generation_fidelity")

BENCH_SEED = 777_000
"""World seed of the benchmark requests; no training recipe uses seeds at or above it."""

TARGETS = {"colour": 0.9, "shape": 0.8, "pattern": 0.7, "iou": 0.6}
"""Minimum acceptable fidelity of a generator (domain accuracy is reported, without a target)."""


def requests(n: int, seed: int = BENCH_SEED, size: int = 64) -> list[dict]:
    """N held-out requests: ``instance``, ``attrs``, ``sketch`` uint8 (size, size), ``words`` and render seeds."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        inst = world.sample_instance(rng)
        attrs = world.sample_attributes(rng)
        sketch = world.render_sketch(inst, size, seed=int(rng.integers(2**31)))
        photo_seeds = [int(s) for s in rng.integers(2**31, size=8)]
        out.append({"index": i, "instance": inst, "attrs": attrs, "sketch": sketch, "words": world.words(attrs),
                    "photo_seeds": photo_seeds})  # fmt: skip
    return out


def real_photos(reqs: list[dict], samples: int, size: int = 64) -> np.ndarray:
    """Real world renders of each request, ``samples`` render seeds each: (N, samples, size, size, 3) float [0, 1]."""
    return np.stack([
        np.stack([world.render_photo(r["instance"], r["attrs"], size, seed=s) for s in r["photo_seeds"][:samples]])
        for r in reqs
    ]).astype(np.float32) / 255.0  # fmt: skip


def generate(args: argparse.Namespace, reqs: list[dict]) -> np.ndarray:
    """Pipeline samples: (N, samples, H, W, 3) float in [0, 1]. Sample k of every request uses seed ``seed + k``."""
    try:
        from duetgen.pipelines import load_pipeline
    except ImportError as err:
        raise SystemExit(
            f"cannot import duetgen.pipelines.load_pipeline ({err}); run with --real-photos to score real renders"
        ) from err
    pipe = load_pipeline(args.model, unet_dtype=args.unet_dtype)
    if args.scheduler is not None or args.timestep_spacing is not None:
        from duetgen.pipelines import make_scheduler

        extra = {} if args.timestep_spacing is None else {"timestep_spacing": args.timestep_spacing}
        name = args.scheduler or type(pipe.scheduler).__name__
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config, **extra)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_unet_jit()  # same images to float rounding, about 1.2x faster
    sketches = torch.from_numpy(np.stack([r["sketch"] for r in reqs])).float().div(255)  # (N, H, W)
    sketches = sketches[:, None].expand(-1, 3, -1, -1).contiguous()  # (N, 3, H, W)
    texts = [r["words"] for r in reqs]
    per_sample = []
    for k in range(args.samples):
        chunks = []
        for start in range(0, len(reqs), args.batch):
            sl = slice(start, start + args.batch)
            g = torch.Generator().manual_seed(args.seed + 1000 * k + start)
            guidance = {} if args.guidance is None else {"guidance_scale": args.guidance}
            if args.guidance_interval is not None:
                guidance["guidance_interval"] = tuple(args.guidance_interval)
            if args.sketch_guidance is not None:
                guidance["sketch_guidance_scale"] = args.sketch_guidance
            if args.best_of > 1:
                guidance["best_of"] = args.best_of
            out = pipe(sketch=sketches[sl], text=texts[sl], num_inference_steps=args.steps, generator=g,
                       output_type="np", **guidance)  # fmt: skip
            chunks.append(np.asarray(out.images, dtype=np.float32))  # (b, H, W, 3)
        per_sample.append(np.concatenate(chunks))
        logger.info("sample %d/%d generated", k + 1, args.samples)
    return np.stack(per_sample, 1)  # (N, samples, H, W, 3)


def contact_sheet(path: Path, reqs: list[dict], images: np.ndarray, scores: dict, rows: int, cell: int = 128) -> None:
    """Per row: the sketch, the words, then the samples (green frame: shape, colour and pattern right; red: not)."""
    rows = min(rows, len(reqs))
    samples = images.shape[1]
    pad = 4
    width = (2 + samples) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, rows * (cell + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    ok = (scores["shape_ok"] * scores["colour_ok"] * scores["pattern_ok"]).reshape(len(reqs), samples)
    for r in range(rows):
        y = pad + r * (cell + pad)
        sk = Image.fromarray(reqs[r]["sketch"]).convert("RGB").resize((cell, cell), Image.NEAREST)
        sheet.paste(sk, (pad, y))
        words = reqs[r]["words"].split(" ")
        lines, line = [], ""
        for w in words:  # wrap to the cell width
            if line and draw.textlength(f"{line} {w}", font=font) > cell - 8:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}".strip()
        lines.append(line)
        lines.append(f"({world.SHAPE_NOUNS[reqs[r]['instance'].shape]})")
        for j, text in enumerate(lines):
            draw.text((2 * pad + cell, y + 8 + 14 * j), text, fill=(0, 0, 0), font=font)
        for k in range(samples):
            x = pad + (2 + k) * (cell + pad)
            img = Image.fromarray((images[r, k].clip(0, 1) * 255 + 0.5).astype(np.uint8)).resize((cell, cell))
            sheet.paste(img, (x, y))
            colour = (30, 170, 60) if ok[r, k] else (210, 40, 40)
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=colour, width=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def markdown_table(summary: dict) -> str:
    lines = ["| metric | value | target | pass |", "|---|---|---|---|"]
    for key in ("colour", "shape", "pattern", "domain", "iou", "all_three"):
        name = {"iou": "silhouette IoU (mean)", "all_three": "shape+colour+pattern all right"}.get(key, f"{key} acc")
        target = TARGETS.get(key)
        passed = "" if target is None else ("yes" if summary[key] >= target else "NO")
        lines.append(f"| {name} | {summary[key]:.3f} | {'' if target is None else f'>= {target}'} | {passed} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline folder (default: the embedded pipeline)")
    p.add_argument("--evaluator", default=None, help="evaluator folder (default: the shipped one)")
    p.add_argument("--real-photos", action="store_true", help="score real world renders instead of generations")
    p.add_argument("--n", type=int, default=64, help="held-out sketches")
    p.add_argument("--samples", type=int, default=4, help="images per sketch")
    p.add_argument("--steps", type=int, default=25, help="num_inference_steps")
    p.add_argument("--guidance", type=float, default=None, help="guidance_scale (default: the pipeline's)")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("START", "END"),
                   help="guided part of the trajectory (default: the pipeline's)")  # fmt: skip
    p.add_argument("--sketch-guidance", type=float, default=None,
                   help="sketch_guidance_scale: a separate sketch weight (3 UNet passes per guided step)")  # fmt: skip
    p.add_argument(
        "--best-of",
        type=int,
        default=1,
        help="each sample is the best of N candidates (pipe(best_of=N): query cosine + silhouette IoU)",
    )
    p.add_argument("--batch", type=int, default=16, help="sketches per pipeline call")
    p.add_argument("--unet-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="UNet dtype; auto: bfloat16 on CPUs with native bfloat16")  # fmt: skip
    p.add_argument("--scheduler", default=None, choices=("ddpm", "ddim", "dpm", "euler", "euler-ancestral"),
                   help="sampler (default: the pipeline's)")  # fmt: skip
    p.add_argument("--timestep-spacing", default=None, choices=("leading", "trailing", "linspace"),
                   help="the scheduler's timestep spacing (default: the pipeline's)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--world-seed", type=int, default=BENCH_SEED, help="world seed of the requests (777_000+)")
    p.add_argument("--out", default=None, help="write the results here (JSON)")
    p.add_argument("--sheet", default="docs/generation_contact_sheet.png", help="contact sheet PNG ('' to skip)")
    p.add_argument("--sheet-rows", type=int, default=8)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.samples < 1 or args.n < 1 or args.best_of < 1:
        raise SystemExit(f"--n={args.n}, --samples={args.samples} and --best-of={args.best_of} must be >= 1")
    if args.real_photos and args.samples > 8:
        raise SystemExit(f"--samples={args.samples}: --real-photos has 8 render seeds per request")
    t0 = time.time()
    evaluator = load_evaluator(args.evaluator)
    reqs = requests(args.n, args.world_seed)
    images = real_photos(reqs, args.samples) if args.real_photos else generate(args, reqs)  # (N, K, H, W, 3)
    gen_s = time.time() - t0
    n, k = images.shape[:2]
    flat = images.reshape(n * k, *images.shape[2:])
    flat_reqs = [{"instance": r["instance"], "attrs": r["attrs"]} for r in reqs for _ in range(k)]
    scores = evaluator.score(flat, flat_reqs)
    summary = summarise(scores)
    summary["all_three"] = float(np.mean(scores["shape_ok"] * scores["colour_ok"] * scores["pattern_ok"]))
    domains = np.asarray([r["attrs"].domain for r in flat_reqs])
    by_domain = {}
    for d in world.DOMAINS:
        sel = domains == d
        if sel.any():
            by_domain[d] = {h: float(np.mean(scores[f"{h}_ok"][sel])) for h in HEADS}
            by_domain[d]["iou"] = float(np.mean(scores["iou"][sel]))
    # what the evaluator read for each requested pattern: {requested: {read: count}}
    read = scores["predicted"]["pattern"]
    confusion = {want: {got: 0 for got in world.PATTERNS} for want in world.PATTERNS}
    for r, got in zip(flat_reqs, read, strict=True):
        confusion[r["attrs"].pattern][got] += 1
    mode = "real photos (evaluator upper bound)" if args.real_photos else f"pipeline {args.model or 'embedded'}"
    mode += f", each sample the best of {args.best_of}" if args.best_of > 1 and not args.real_photos else ""
    print(f"\n### Generation fidelity: {mode}, {n} sketches x {k} samples\n")
    print(markdown_table(summary))
    print(
        "\npattern requested -> read by the evaluator: "
        + "; ".join(
            f"{want}: " + ", ".join(f"{got} {c}" for got, c in row.items() if c) for want, row in confusion.items()
        )
    )
    result = {
        "mode": "real_photos" if args.real_photos else "generated",
        "model": args.model,
        "evaluator": args.evaluator or "embedded",
        "n_sketches": n,
        "samples_per_sketch": k,
        "num_inference_steps": None if args.real_photos else args.steps,
        "guidance_scale": None if args.real_photos else (args.guidance or "pipeline default"),
        "guidance_interval": None if args.real_photos else (args.guidance_interval or "pipeline default"),
        "sketch_guidance_scale": None if args.real_photos else args.sketch_guidance,
        "best_of": None if args.real_photos else args.best_of,
        "scheduler": None if args.real_photos else (args.scheduler or "pipeline default"),
        "timestep_spacing": None if args.real_photos else (args.timestep_spacing or "pipeline default"),
        "unet_dtype": None if args.real_photos else str(resolve_unet_dtype(args.unet_dtype)).removeprefix("torch."),
        "world_seed": args.world_seed,
        "seed": args.seed,
        "metrics": summary,
        "targets": TARGETS,
        "passed": {key: summary[key] >= t for key, t in TARGETS.items()},
        "by_domain": by_domain,
        "pattern_confusion": confusion,
        "seconds": round(time.time() - t0, 1),
        "generation_seconds": round(gen_s, 1),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        logger.info("wrote %s", args.out)
    if args.sheet:
        contact_sheet(Path(args.sheet), reqs, images, scores, args.sheet_rows)
        logger.info("wrote %s", args.sheet)
    return result


if __name__ == "__main__":
    run_script(main, "bench_generation_fidelity")
