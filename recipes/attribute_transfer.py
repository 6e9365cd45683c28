#!/usr/bin/env python
"""Domain attribute transfer: keep what an input shows (shape and pose), change one attribute with a few words.

For every (input, phrase) pair ("in pixel art", "at night", "with stripes", "in blue"), the recipe makes one composed
query, retrieves the top-k photos of a gallery with it and generates an image from it (the query plus a sketch channel
that pins the pose). It writes ``sheet.png`` (rows: input | phrase | top retrieved | generated), ``results.json`` and
the generated images under ``--out``.

Inputs are sketches (``--sketches``) or photos (``--photos``); without either, a few held-out world sketches and
photos are rendered into ``OUT/inputs/``. The gallery is ``--gallery`` (a folder written by ``duetgen index`` with
the same encoder) or, by default, a small world gallery built once per encoder in a cache folder
(``$DUETGEN_CACHE`` or ``~/.cache/duetgen``).

How a photo enters (``--photo-route``, both measured in ``recipes/README.md``):

* ``sketch`` (the default): an outline is extracted from the photo (:func:`duetgen.transfer.photo_silhouette`:
  background colour interpolated between the left and right edge of each row, colour distance thresholded with Otsu,
  opened, closed, holes filled, its boundary drawn as a stroke) and composes with the words as a drawn sketch would:
  ``q = encoder.encode_query(outline, [words])``.
* ``embed``: the photo goes through the visual encoder and the pseudo-word mapper C_v2w in the sketch's place:
  ``q = encoder.encode_query(sketch_embeds=encoder.encode_image(photo), words=[words])``. C_v2w was trained on
  sketch embeddings, and the generator never saw a photo there: given "at night" alone it drew colourless, speckled
  objects.

The words (``--complete``, on by default for photos): a phrase names only what changes, so the recipe completes it
with what the photo keeps. The encoder reads the photo's colour, pattern and domain zero-shot
(:func:`duetgen.transfer.read_attributes`) and the phrase overrides what it names: "at night" on a photo read as
"solid green in a photo" becomes "solid green at night" (:func:`duetgen.transfer.complete_words`; a phrase with words
outside the world vocabulary is used as typed). That is the query the duet stage and the generator were trained on,
and against the bare phrase it keeps the source's pose in retrieval three times as often and the unchanged attributes
in generation 0.76 of the time instead of 0.31. ``--no-complete`` uses the phrase alone.

Either way the generator's sketch channel receives the extracted outline, so the generated object keeps the photo's
pose; a sketch input is used as its own sketch channel, with the phrase as typed (a sketch has no colour to keep).
``--strength S`` starts a photo's generation from the photo itself, noised to level S (image-to-image): it keeps
shape and background better but the old style too, so it suits recolouring, not domain changes (measured in
``recipes/README.md``).

``--evaluate`` measures attribute transfer on held-out world items (world seed 888_000+, disjoint from training
(< 10_000), the evaluator (555_000+), the generation benchmark (777_000+) and the twin benchmark (987_654)): source
``i`` is an instance with attributes A; the request changes exactly one attribute of A (colour, pattern or domain in
turn) and names only that one in the phrase ("in blue", "with dots", "solid", "at night", ...). The evaluation
gallery holds, per source, the instance with the requested attributes (the right answer), the instance with its own
attributes and two other poses of the same shape with the requested attributes (distractors). The independent
evaluator (``duetgen.evaluator``, never used in training) reads the top retrieved photo and the generated image:

* attribute success: the changed attribute is the requested one;
* shape kept: the shape class is the source's and the silhouette IoU with the source instance's mask is >= 0.5;
* success: both; plus the share of the two unchanged attributes that survived, and LPIPS(source photo, result) when
  LPIPS backbone weights are on this machine (otherwise reported as unavailable, with the reason).

Usage::

    python recipes/attribute_transfer.py --out runs/attribute_transfer                     # demo inputs
    python recipes/attribute_transfer.py --photos a.png b.jpg --sketches s.png --phrases "at night" "in blue"
    python recipes/attribute_transfer.py --evaluate --n 96 --out runs/attribute_transfer_eval
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from duetgen import limits, load_sketch, world
from duetgen.errors import DuetgenError, WeightsUnavailableError, run_script
from duetgen.gallery import Gallery
from duetgen.pipelines import candidate_generators, load_pipeline, prompts_per_call
from duetgen.transfer import photo_tensor, transfer_query

logger = logging.getLogger("attribute_transfer")

EVAL_SEED = 888_000
"""World seed of the evaluation sources; disjoint from every other seed range duetgen uses."""
DEMO_SEED = 888_900
"""World seed of the demo inputs and the default gallery."""

DEFAULT_PHRASES = ("in pixel art", "at night", "with stripes", "in blue")
KINDS = ("colour", "pattern", "domain")
TARGETS = {"attribute": 0.8, "shape_kept": 0.9}
IOU_KEPT = 0.5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline folder (default: the embedded pipeline)")
    p.add_argument("--sketches", nargs="*", default=[], help="sketch files")
    p.add_argument("--photos", nargs="*", default=[], help="photo files")
    p.add_argument("--phrases", nargs="+", default=list(DEFAULT_PHRASES), help="attribute phrases")
    p.add_argument(
        "--photo-route", choices=("sketch", "embed"), default="sketch",
        help="how a photo makes the pseudo-word: its extracted outline (sketch) or its image embedding",
    )  # fmt: skip
    p.add_argument(
        "--complete", action=argparse.BooleanOptionalAction, default=True,
        help="complete each phrase with the photo's own attributes, read zero-shot (photos only)",
    )  # fmt: skip
    p.add_argument("--gallery", default=None, help="gallery folder (default: a world gallery in the cache)")
    p.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, default=True,
        help="re-rank retrieval by silhouette agreement with the source's outline (duetgen.verify; photos on plain "
             "backgrounds such as the world's; --no-verify for cluttered galleries)",
    )  # fmt: skip
    p.add_argument("--gallery-size", type=int, default=256, help="photos in the default world gallery")
    p.add_argument("--cache", default=None, help="cache folder (default: $DUETGEN_CACHE or ~/.cache/duetgen)")
    p.add_argument("--k", type=int, default=3, help="retrieved photos shown per pair")
    p.add_argument("--steps", type=int, default=25, help="num_inference_steps")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance_scale")
    p.add_argument("--sketch-guidance", type=float, default=5.0,
                   help="sketch_guidance_scale: a separate weight for the outline (default 5: on --evaluate, shape "
                        "kept 0.906 against 0.875 without; 0 uses --guidance for both)")  # fmt: skip
    p.add_argument("--strength", type=float, default=None,
                   help="photo inputs: start generation from the photo itself, noised to this level in (0, 1] "
                        "(image-to-image, SDEdit); default: from pure noise")  # fmt: skip
    p.add_argument(
        "--best-of",
        type=int,
        default=4,
        help="each generated image is the best of N candidates by query cosine + silhouette IoU with the "
        "input's outline (pipe(best_of=N)); 1 takes the first sample, N costs N times the time",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="pair i is generated with seed + i (its other candidates with seed + i + j * 1,000,000)",
    )
    p.add_argument("--batch", type=int, default=16, help="pairs per pipeline call")
    p.add_argument("--out", default="attribute_transfer", help="output folder")
    p.add_argument("--evaluate", action="store_true", help="measure on held-out world items (see the docstring)")
    p.add_argument("--n", type=int, default=96, help="--evaluate: number of sources")
    p.add_argument("--eval-input", choices=("photo", "sketch"), default="photo", help="--evaluate: source kind")
    p.add_argument("--evaluator", default=None, help="--evaluate: evaluator folder (default: the shipped one)")
    p.add_argument("--lpips-weights", default=None, help="LPIPS backbone weights file (default: torch hub cache)")
    p.add_argument("--sheet-rows", type=int, default=12, help="--evaluate: rows in the contact sheet")
    args = p.parse_args(argv)
    for name in ("k", "steps", "batch", "n", "gallery_size", "best_of"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(not ph.strip() for ph in args.phrases):
        p.error("--phrases must not contain empty phrases")
    if args.strength is not None and not 0 < args.strength <= 1:
        p.error(f"--strength must be in (0, 1], got {args.strength}")
    try:
        limits.check("max_images", args.best_of, "--best-of")
    except DuetgenError as err:
        p.error(str(err))
    return args


# ---------------------------------------------------------------------------------------------------------------
# inputs, queries, retrieval, generation
# ---------------------------------------------------------------------------------------------------------------


def sketch_size(pipe) -> int:
    """Side of the sketch channel images: the larger of the generator's and the encoder's input."""
    return max(pipe.sample_size, pipe.encoder.image_size)


def prepare_input(kind: str, source, pipe) -> dict:
    """One input -> ``{"kind", "source", "display"}`` plus, for a sketch, ``"sketch"`` (3, S, S) framed as the
    pipeline frames it (a photo's outline is made with its query, :func:`compose_queries`).

    ``source`` is a path or, for world items, a PIL image.
    """
    if kind == "sketch":
        sketch = load_sketch(source, fit=pipe.encoder.config.sketch_fit, size=sketch_size(pipe))
        display = Image.fromarray((sketch[0].numpy() * 255).astype(np.uint8)).convert("RGB")
        return {"kind": kind, "source": source, "sketch": sketch, "display": display}
    photo = source if isinstance(source, Image.Image) else Image.open(source)
    return {"kind": kind, "source": source, "display": photo.convert("RGB")}


def to_inset(sketch: torch.Tensor) -> Image.Image:
    """A (3, S, S) sketch channel image as a small greyscale picture (the outline under a photo's phrase)."""
    return Image.fromarray((sketch[0].numpy() * 255).astype(np.uint8))


@torch.no_grad()
def compose_queries(
    encoder, inputs: list[dict], phrases: list[str], route: str, complete: bool = True, size: int | None = None
) -> dict:
    """One composed query per (input, phrase) pair, in the order of ``inputs``/``phrases`` (an input repeated across
    phrases is the same dict, and is outlined, encoded and read once).

    Photos go through :func:`duetgen.transfer.transfer_query` (their outline or image embedding, the phrase completed
    with their own attributes unless ``complete`` is off; outlines of side ``size``); sketches compose with the
    phrase as typed.

    Returns:
        ``{"query": (B, D), "states": (B, L, Wt), "sketches": (B, 3, S, S) the generator's sketch channel, "words":
        the words composed per pair, "read": the attributes read from each photo (None for sketches)}``.
    """
    rows = {"photo": [], "sketch": []}
    for i, item in enumerate(inputs):
        rows[item["kind"]].append(i)
    n = len(inputs)
    words: list[str] = list(phrases)
    read: list = [None] * n
    parts = []
    if rows["photo"]:
        idx = rows["photo"]
        tq = transfer_query(encoder, [inputs[i]["display"] for i in idx], [phrases[i] for i in idx], size=size,
                            complete=complete, route=route)  # fmt: skip
        parts.append((idx, tq.query, tq.states, tq.sketches))
        for k, i in enumerate(idx):
            words[i], read[i] = tq.words[k], tq.read[k]
    if rows["sketch"]:
        idx = rows["sketch"]
        first: dict[int, int] = {}
        for i in idx:
            first.setdefault(id(inputs[i]), len(first))
        unique = list({id(inputs[i]): inputs[i] for i in idx}.values())
        embeds = encoder.encode_sketch(torch.stack([item["sketch"] for item in unique]))  # (U, D)
        pick = torch.tensor([first[id(inputs[i])] for i in idx])
        q, h = encoder.encode_query(sketch_embeds=embeds[pick], words=[phrases[i] for i in idx], return_states=True)
        parts.append((idx, q, h, torch.stack([inputs[i]["sketch"] for i in idx])))
    query = torch.empty(n, parts[0][1].shape[-1])
    states = torch.empty(n, *parts[0][2].shape[1:])
    sketches = torch.empty(n, *parts[0][3].shape[1:])
    for idx, q, h, sk in parts:
        query[idx], states[idx], sketches[idx] = q.float(), h.float(), sk
    return {"query": query, "states": states, "sketches": sketches, "words": words, "read": read}


def verify_kwargs(composed: dict, args) -> dict:
    """``Gallery.search`` arguments for silhouette verification against each pair's outline (or none)."""
    return {"verify_sketches": composed["sketches"]} if args.verify else {}


def generate(
    pipe,
    sketches: torch.Tensor,
    queries: torch.Tensor,
    states: torch.Tensor,
    seeds: list[int],
    args,
    starts: list[Image.Image | None] | None = None,
) -> np.ndarray:
    """(B, S, S, 3) float images; row i from ``seeds[i]`` whatever the batching.

    ``starts``: per row, a photo to start from (image-to-image at ``args.strength``) or None (from noise); rows of
    the two kinds go through the pipeline in separate batches.
    """
    n = len(queries)
    starts = starts if starts is not None and args.strength is not None else [None] * n
    out = np.empty((n, pipe.sample_size, pipe.sample_size, 3), dtype=np.float32)
    per_call = prompts_per_call(args.batch, args.best_of)  # candidates count as images
    for rows in ([i for i in range(n) if starts[i] is None], [i for i in range(n) if starts[i] is not None]):
        for s in range(0, len(rows), per_call):
            idx = rows[s : s + per_call]
            gens = candidate_generators([seeds[i] for i in idx], args.best_of)
            from_photo = starts[idx[0]] is not None
            start = {"image": [starts[i] for i in idx], "strength": args.strength} if from_photo else {}
            res = pipe(sketch=sketches[idx], query_embeds=queries[idx], query_token_embeds=states[idx],
                       num_inference_steps=args.steps, guidance_scale=args.guidance, generator=gens,
                       sketch_guidance_scale=args.sketch_guidance or None, best_of=args.best_of, output_type="np",
                       **start)  # fmt: skip
            out[idx] = np.asarray(res.images, dtype=np.float32)
    return out


def photo_starts(inputs: list[dict]) -> list[Image.Image | None]:
    """Per input, the photo generation starts from with ``--strength`` (None for sketches: they have no pixels)."""
    return [item["display"] if item["kind"] == "photo" else None for item in inputs]


def cache_dir(args) -> Path:
    root = args.cache or os.environ.get("DUETGEN_CACHE") or Path.home() / ".cache" / "duetgen"
    return Path(root).expanduser() / "recipes"


def world_gallery(encoder, args, model_source: str) -> Gallery:
    """The default gallery: ``--gallery-size`` world photos (64 px, seed DEMO_SEED), built once per encoder."""
    key = hashlib.sha256(json.dumps(encoder.identity, sort_keys=True).encode()).hexdigest()[:12]
    root = cache_dir(args) / f"attribute_gallery-{args.gallery_size}-{key}"
    if (root / "gallery" / "manifest.json").is_file():
        return Gallery.open(root / "gallery", encoder)
    photos = root / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for i in range(args.gallery_size):
        rng = np.random.default_rng([DEMO_SEED, 1, i])
        inst, attrs = world.sample_instance(rng), world.sample_attributes(rng)
        name = photos / f"{i:05d}.png"
        if not name.is_file():
            Image.fromarray(world.render_photo(inst, attrs, 64, seed=i)).save(name)
    logger.info("building the default world gallery in %s", root)
    return Gallery.build(photos, encoder, root / "gallery", batch_size=64, num_workers=0, progress=False,
                         model_source=model_source)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# contact sheet
# ---------------------------------------------------------------------------------------------------------------


def contact_sheet(path: Path, rows: list[dict], k: int, cell: int = 96) -> None:
    """Rows: input | phrase | top-k retrieved | generated. ``row["ok"]`` (optional) frames the top retrieved and the
    generated image green (success) or red."""
    pad, text_w = 4, 120
    font = ImageFont.load_default()
    head = 18
    width = pad + (cell + pad) + (text_w + pad) + k * (cell + pad) + (cell + pad)
    sheet = Image.new("RGB", (width, head + len(rows) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    x_ret = 2 * pad + cell + text_w + pad
    x_gen = x_ret + k * (cell + pad)
    for x, label in ((pad, "input"), (2 * pad + cell, "phrase"), (x_ret, f"top {k} retrieved"), (x_gen, "generated")):
        draw.text((x, 3), label, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        y = head + r * (cell + pad)
        sheet.paste(row["input"].convert("RGB").resize((cell, cell), Image.NEAREST), (pad, y))
        if row.get("inset") is not None:  # the outline extracted from a photo, under the phrase
            side = cell * 2 // 5
            x0, y0 = 2 * pad + cell, y + cell - side
            sheet.paste(row["inset"].convert("RGB").resize((side, side), Image.BILINEAR), (x0, y0))
            draw.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), outline=(160, 160, 160))
        lines = textwrap.wrap(row["phrase"], 18) + (textwrap.wrap(f"({row['note']})", 20) if row.get("note") else [])
        for j, line in enumerate(lines):
            draw.text((2 * pad + cell, y + 8 + 13 * j), line, fill=(0, 0, 0), font=font)
        ok = row.get("ok", {})
        for j, im in enumerate(row["retrieved"][:k]):
            x = x_ret + j * (cell + pad)
            sheet.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
            if j == 0 and "retrieval" in ok:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=(30, 170, 60) if ok["retrieval"]
                               else (210, 40, 40), width=3)  # fmt: skip
        sheet.paste(row["generated"].resize((cell, cell), Image.NEAREST), (x_gen, y))
        if "generation" in ok:
            draw.rectangle((x_gen, y, x_gen + cell - 1, y + cell - 1), outline=(30, 170, 60) if ok["generation"]
                           else (210, 40, 40), width=3)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))


# ---------------------------------------------------------------------------------------------------------------
# the user-facing run
# ---------------------------------------------------------------------------------------------------------------


def demo_inputs(out: Path) -> tuple[list[str], list[str]]:
    """Two held-out world sketches and two world photos written to ``out/inputs``."""
    folder = out / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    sketches, photos = [], []
    for i in range(4):
        rng = np.random.default_rng([DEMO_SEED, 0, i])
        inst, attrs = world.sample_instance(rng), world.sample_attributes(rng, domain="plain")
        if i < 2:
            sketches.append(str(folder / f"sketch{i}.png"))
            Image.fromarray(world.render_sketch(inst, 128, seed=i)).save(sketches[-1])
        else:
            photos.append(str(folder / f"photo{i}.png"))
            Image.fromarray(world.render_photo(inst, attrs, 128, seed=i)).save(photos[-1])
    return sketches, photos


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model, unet_dtype="auto")
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_unet_jit()
    encoder = pipe.encoder
    sketches, photos = args.sketches, args.photos
    if not sketches and not photos:
        sketches, photos = demo_inputs(out)
    inputs, failed = [], []
    for kind, paths in (("sketch", sketches), ("photo", photos)):
        for path in paths:
            try:
                inputs.append(prepare_input(kind, path, pipe))
            except (DuetgenError, OSError) as err:
                failed.append({"input": str(path), "error": str(err)})
                logger.warning("skipping %s %s: %s", kind, path, err)
    if not inputs:
        raise SystemExit(f"no usable input: {failed}")
    if args.gallery:
        gallery = Gallery.open(args.gallery, encoder)
    else:
        gallery = world_gallery(encoder, args, args.model or "embedded")
    pairs = [(item, phrase) for item in inputs for phrase in args.phrases]
    composed = compose_queries(encoder, [p[0] for p in pairs], [p[1] for p in pairs], args.photo_route, args.complete,
                               size=sketch_size(pipe))  # fmt: skip
    hits = gallery.search(composed["query"], k=min(args.k, len(gallery)), **verify_kwargs(composed, args))
    seeds = [args.seed + i for i in range(len(pairs))]
    images = generate(pipe, composed["sketches"], composed["query"], composed["states"], seeds, args,
                      starts=photo_starts([p[0] for p in pairs]))  # fmt: skip
    (out / "generated").mkdir(exist_ok=True)
    records, rows = [], []
    for i, ((item, phrase), res, image) in enumerate(zip(pairs, hits, images, strict=True)):
        gen_path = out / "generated" / f"{i:04d}.png"
        to_pil(image).save(gen_path)
        read = composed["read"][i]
        records.append({"input": str(item["source"]), "kind": item["kind"], "phrase": phrase,
                        "words": composed["words"][i], "read": read.to_dict() if read else None, "seed": seeds[i],
                        "route": args.photo_route if item["kind"] == "photo" else "sketch",
                        "retrieved": [r.to_dict() for r in res], "generated": str(gen_path)})  # fmt: skip
        note = item["kind"] if composed["words"][i] == phrase else f'{item["kind"]}: "{composed["words"][i]}"'
        rows.append({"input": item["display"], "phrase": phrase, "note": note,
                     "inset": to_inset(composed["sketches"][i]) if item["kind"] == "photo" else None,
                     "retrieved": [Image.open(r.path) for r in res], "generated": to_pil(image)})  # fmt: skip
    contact_sheet(out / "sheet.png", rows, args.k)
    result = {"model": args.model or "embedded", "gallery": str(gallery.path), "steps": args.steps,
              "guidance": args.guidance, "sketch_guidance": args.sketch_guidance, "strength": args.strength,
              "photo_route": args.photo_route,
              "complete": args.complete, "verify": args.verify, "best_of": args.best_of,
              "pairs": records, "failed_inputs": failed,
              "sheet": str(out / "sheet.png")}  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"{len(records)} pairs ({len(inputs)} inputs x {len(args.phrases)} phrases) -> {out / 'sheet.png'}, "
          f"{out / 'results.json'}; {len(failed)} inputs skipped")  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------------------------
# --evaluate
# ---------------------------------------------------------------------------------------------------------------


def eval_sources(n: int, seed: int = EVAL_SEED, size: int = 64) -> list[dict]:
    """Held-out sources: instance, source/target attributes (one attribute changed), photo, sketch and phrase."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        inst, src = world.sample_instance(rng), world.sample_attributes(rng)
        kind = KINDS[i % 3]
        values = {"colour": tuple(world.COLOURS), "pattern": world.PATTERNS, "domain": world.DOMAINS}[kind]
        others = [v for v in values if v != getattr(src, kind)]
        new = others[int(rng.integers(len(others)))]
        tgt = world.Attributes(**{**src.to_dict(), kind: new})
        render_seeds = [int(s) for s in rng.integers(2**31, size=6)]
        poses = world.pose_variants(inst, 2, rng)
        out.append({"index": i, "instance": inst, "source": src, "target": tgt, "kind": kind,
                    "phrase": world.change_words(src, tgt), "poses": poses, "render_seeds": render_seeds,
                    "photo": world.render_photo(inst, src, size, render_seeds[0]),
                    "sketch": world.render_sketch(inst, size, render_seeds[1])})  # fmt: skip
    return out


def eval_gallery_photos(sources: list[dict], folder: Path, size: int = 64) -> dict[str, tuple[int, str]]:
    """Writes the evaluation gallery; returns {file name: (source index, role)}."""
    folder.mkdir(parents=True, exist_ok=True)
    roles = {}
    for s in sources:
        i, seeds = s["index"], s["render_seeds"]
        items = [("target", s["instance"], s["target"], seeds[2]), ("source", s["instance"], s["source"], seeds[3])]
        items += [(f"pose{j}", pose, s["target"], seeds[4 + j]) for j, pose in enumerate(s["poses"])]
        for role, inst, attrs, seed in items:
            name = f"{i:05d}_{role}.png"
            Image.fromarray(world.render_photo(inst, attrs, size, seed)).save(folder / name)
            roles[name] = (i, role)
    return roles


def score_outputs(evaluator, images, sources: list[dict]) -> dict:
    """Per-item attribute success, shape kept, both, and unchanged attributes kept (evaluator on ``images``)."""
    from duetgen.evaluator import HEADS

    reqs = [{"instance": s["instance"], "attrs": s["target"]} for s in sources]
    sc = evaluator.score(images, reqs)
    idx = np.arange(len(sources))
    attr_ok = np.array([sc[f"{s['kind']}_ok"][i] for i, s in zip(idx, sources, strict=True)])
    shape_kept = (sc["shape_ok"] == 1) & (sc["iou"] >= IOU_KEPT)
    others = np.array([np.mean([sc[f"{k}_ok"][i] for k in KINDS if k != s["kind"]])
                       for i, s in zip(idx, sources, strict=True)])  # fmt: skip
    return {"attribute": attr_ok.astype(float), "shape_kept": shape_kept.astype(float),
            "success": (attr_ok.astype(bool) & shape_kept).astype(float), "others_kept": others,
            "iou": sc["iou"], "predicted": {h: sc["predicted"][h] for h in HEADS}}  # fmt: skip


def lpips_report(source_images: torch.Tensor, results: dict[str, torch.Tensor], weights) -> dict:
    """Mean LPIPS(source, result) per result kind, or why it is unavailable."""
    try:
        from duetgen.perceptual import load_lpips, lpips_distance

        model = load_lpips("alex", weights)
    except (WeightsUnavailableError, ImportError, DuetgenError) as err:
        return {"available": False, "reason": f"{type(err).__name__}: {err}"}
    out = {"available": True, "net": "alex"}
    for name, images in results.items():
        out[name] = round(float(lpips_distance(source_images, images, model=model).mean()), 4)
    return out


def summarise(scores: dict) -> dict:
    out = {k: round(float(np.mean(scores[k])), 4) for k in ("attribute", "shape_kept", "success", "others_kept")}
    out["iou_mean"] = round(float(np.nanmean(scores["iou"])), 4)
    return out


def evaluate(args) -> dict:
    from duetgen.evaluator import load_evaluator

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model, unet_dtype="auto")
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_unet_jit()
    encoder = pipe.encoder
    evaluator = load_evaluator(args.evaluator)
    sources = eval_sources(args.n)
    work = Path(tempfile.mkdtemp(prefix="duetgen-attr-eval-"))
    eval_gallery_photos(sources, work / "photos")
    gallery = Gallery.build(work / "photos", encoder, work / "gallery", batch_size=64, num_workers=0, progress=False,
                            model_source=args.model or "embedded")  # fmt: skip

    inputs = [prepare_input(args.eval_input, Image.fromarray(s["photo"]) if args.eval_input == "photo"
                            else Image.fromarray(s["sketch"]), pipe) for s in sources]  # fmt: skip
    phrases = [s["phrase"] for s in sources]
    composed = compose_queries(encoder, inputs, phrases, args.photo_route, args.complete, size=sketch_size(pipe))
    queries, states = composed["query"], composed["states"]
    hits = gallery.search(queries, k=min(max(args.k, 5), len(gallery)), **verify_kwargs(composed, args))
    top = [Image.open(h[0].path).convert("RGB") for h in hits]
    rank_of_target = []
    for s, h in zip(sources, hits, strict=True):
        names = [Path(r.path).name for r in h]
        want = f"{s['index']:05d}_target.png"
        rank_of_target.append(names.index(want) + 1 if want in names else math.inf)
    seeds = [args.seed + i for i in range(len(sources))]
    images = generate(pipe, composed["sketches"], queries, states, seeds, args, starts=photo_starts(inputs))

    scores = {"retrieval": score_outputs(evaluator, top, sources),
              "generation": score_outputs(evaluator, images, sources)}  # fmt: skip
    # the evaluator on the untouched source photos: how often it reads the source right (its own error floor)
    ceiling = score_outputs(evaluator, [Image.fromarray(world.render_photo(s["instance"], s["target"], 64,
                                                                           s["render_seeds"][5]))
                                        for s in sources], sources)  # fmt: skip
    src = torch.from_numpy(np.stack([s["photo"] for s in sources])).permute(0, 3, 1, 2).float() / 255
    ret_t = torch.stack([photo_tensor(im.resize((64, 64))) for im in top])
    gen_t = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    if gen_t.shape[-1] != 64:
        gen_t = torch.nn.functional.interpolate(gen_t, size=(64, 64), mode="bilinear", antialias=True)
    lp = lpips_report(src, {"retrieval": ret_t, "generation": gen_t}, args.lpips_weights)

    result = {"model": args.model or "embedded", "evaluator": args.evaluator or "embedded", "n": args.n,
              "world_seed": EVAL_SEED, "eval_input": args.eval_input,
              "photo_route": args.photo_route if args.eval_input == "photo" else "sketch",
              "complete": args.complete and args.eval_input == "photo", "steps": args.steps,
              "guidance": args.guidance, "sketch_guidance": args.sketch_guidance, "gallery_size": len(gallery),
              "strength": args.strength if args.eval_input == "photo" else None,
              "verify": args.verify, "best_of": args.best_of, "targets": TARGETS,
              "retrieval": summarise(scores["retrieval"]), "generation": summarise(scores["generation"]),
              "real_photo_ceiling": summarise(ceiling), "lpips": lp}  # fmt: skip
    read = [(r, s) for r, s in zip(composed["read"], sources, strict=True) if r is not None]
    if read:  # how well the encoder read the sources' own attributes (zero-shot)
        result["read_accuracy"] = {
            k: round(float(np.mean([getattr(r, k) == getattr(s["source"], k) for r, s in read])), 4) for k in KINDS
        }
    rt = np.array(rank_of_target)
    result["retrieval"].update({"target_at_1": round(float(np.mean(rt <= 1)), 4),
                                "target_at_5": round(float(np.mean(rt <= 5)), 4)})  # fmt: skip
    for name in ("retrieval", "generation"):
        result[name]["per_kind"] = {k: {m: round(float(np.mean([scores[name][m][i] for i, s in enumerate(sources)
                                                                  if s["kind"] == k])), 4)
                                        for m in ("attribute", "shape_kept", "success")} for k in KINDS}  # fmt: skip
    result["items"] = [{"index": s["index"], "kind": s["kind"], "phrase": s["phrase"], "words": composed["words"][i],
                        "source": s["source"].to_dict(), "target": s["target"].to_dict(),
                        "shape": s["instance"].shape, "seed": seeds[i],
                        "top_retrieved": Path(hits[i][0].path).name, "target_rank": None if math.isinf(rt[i])
                        else int(rt[i]),
                        **{f"{n}_{m}": float(scores[n][m][i]) for n in scores for m in ("attribute", "shape_kept")},
                        "generation_iou": float(scores["generation"]["iou"][i])}
                       for i, s in enumerate(sources)]  # fmt: skip
    result["seconds"] = round(time.perf_counter() - t0, 1)

    rows = []
    for i, s in enumerate(sources[: args.sheet_rows]):
        change = f"{s['kind']}: {getattr(s['source'], s['kind'])} -> {getattr(s['target'], s['kind'])}"
        if composed["words"][i] != s["phrase"]:
            change += f'; "{composed["words"][i]}"'
        inset = to_inset(composed["sketches"][i]) if inputs[i]["kind"] == "photo" else None
        rows.append({"input": inputs[i]["display"], "phrase": s["phrase"], "inset": inset, "note": change,
                     "retrieved": [Image.open(r.path) for r in hits[i][: args.k]], "generated": to_pil(images[i]),
                     "ok": {"retrieval": bool(scores["retrieval"]["success"][i]),
                            "generation": bool(scores["generation"]["success"][i])}})  # fmt: skip
    contact_sheet(out / "sheet.png", rows, args.k)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(markdown_table(result))
    return result


def markdown_table(r: dict) -> str:
    inputs = "sketches" if r["eval_input"] == "sketch" else "photos"
    words = ", phrases completed" if r.get("complete") else ""
    sketch_guidance = f", sketch guidance {r['sketch_guidance']}" if r.get("sketch_guidance") is not None else ""
    sketch_guidance += f", from the photo at strength {r['strength']}" if r.get("strength") is not None else ""
    sketch_guidance += ", retrieval verified by silhouette" if r.get("verify") else ""
    sketch_guidance += f", each image the best of {r['best_of']}" if r.get("best_of", 1) > 1 else ""
    lines = [f"attribute transfer on {r['n']} held-out world {inputs} (route: {r['photo_route']}{words}, "
             f"{r['steps']} steps, guidance {r['guidance']}{sketch_guidance}, gallery {r['gallery_size']} photos)",
             "| output | attribute success | shape kept (shape + IoU >= 0.5) | both | other attrs kept | mean IoU |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name in ("retrieval", "generation", "real_photo_ceiling"):
        s = r[name]
        lines.append(f"| {name} | {s['attribute']:.3f} | {s['shape_kept']:.3f} | {s['success']:.3f} | "
                     f"{s['others_kept']:.3f} | {s['iou_mean']:.3f} |")  # fmt: skip
    lines.append(f"targets: attribute success >= {TARGETS['attribute']}, shape kept >= {TARGETS['shape_kept']}; "
                 f"retrieval finds the exact target photo at 1: {r['retrieval']['target_at_1']:.3f}, "
                 f"at 5: {r['retrieval']['target_at_5']:.3f}")  # fmt: skip
    if "read_accuracy" in r:
        acc = r["read_accuracy"]
        read = ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
        lines.append(f"the sources' own attributes read zero-shot: {read}")
    lp = r["lpips"]
    if lp["available"]:
        lines.append(f"LPIPS(source, result): retrieval {lp['retrieval']}, generation {lp['generation']}")
    else:
        lines.append(f"LPIPS unavailable: {lp['reason']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    return evaluate(args) if args.evaluate else run(args)


if __name__ == "__main__":
    run_script(main, "attribute_transfer")
