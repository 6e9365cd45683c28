#!/usr/bin/env python
"""Sketch + text generation in batch: a CSV or JSONL of (sketch, words[, seed]) rows in, images and a grid out.

Each row names a sketch file (PNG, JPEG, SVG, QuickDraw ndjson... anything ``duetgen.load_sketch`` reads; a relative
path is relative to the rows file; empty for text-only) and the words ("red with stripes in pixel art"; may be empty
when there is a sketch), optionally a seed. CSV needs a header with ``sketch`` and ``words`` (``seed`` optional);
JSONL lines are objects with the same keys. Writes under ``--out``:

* ``images/NNNNN_HASH.png``: row ``NNNNN``'s image; ``HASH`` is a digest of the row's (sketch, words, seed, and
  ``--best-of`` when above 1), so an edited row gets a new file instead of being mistaken for done;
* ``manifest.jsonl``: one line per row: ``row``, ``sketch``, ``words``, ``seed``, ``status`` (``done`` / ``failed``)
  and ``output`` or ``error``; appended as rows finish, rewritten (compacted, atomically) at the end;
* ``grid.png``: every finished row as sketch | image with its words.

Resumable: a row whose image exists is skipped, so a killed run continues where it stopped when started again with
the same arguments. Every image is written to a temporary file and moved into place with ``os.replace``, so an
interrupted run never leaves a half-written image under its final name. A row without a seed gets ``--seed`` + its
row number; the seed used is recorded in the manifest either way.

Bad rows (missing or unreadable sketch, no sketch and no words, a malformed seed) are reported and skipped; the batch
goes on and finished images are kept. ``--best-of N`` keeps, per row, the best of N candidates
(``pipe(best_of=N)``). Prints ``done N, skipped N (already done), failed N`` and exits with 0, or 1
only if every row failed.

    python recipes/sketch_text_generation.py rows.csv --out runs/batch [--model DIR] [--steps 25] [--limit 2]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from duetgen import limits, load_sketch
from duetgen.errors import DuetgenError
from duetgen.pipelines import candidate_generators, load_pipeline, prompts_per_call

logger = logging.getLogger("sketch_text_generation")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", help="CSV (header: sketch,words[,seed]) or JSONL ({'sketch', 'words'[, 'seed']} per line)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None, help="pipeline folder (default: the embedded pipeline)")
    p.add_argument("--steps", type=int, default=25, help="num_inference_steps")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance_scale")
    p.add_argument("--seed", type=int, default=0, help="seed of a row without one: --seed + row number")
    p.add_argument("--best-of", type=int, default=1,
                   help="each image is the best of N candidates (query cosine + silhouette overlap with the sketch; "
                        "candidate j of a row drawn with its seed + j * 1,000,000); N times the time")  # fmt: skip
    p.add_argument("--batch", type=int, default=4, help="rows per pipeline call (at most DUETGEN_MAX_BATCH, 256)")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows of the file")
    p.add_argument("--grid-columns", type=int, default=6, help="tiles per grid row")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.best_of < 1 or (args.limit is not None and args.limit < 0):
        p.error("--steps, --batch and --best-of must be >= 1 and --limit >= 0")
    try:
        limits.check("max_batch", args.batch, "--batch")
        limits.check("max_images", args.best_of, "--best-of")
        limits.check("max_steps", args.steps, "--steps")
    except DuetgenError as err:
        p.error(str(err))
    return args


# ---------------------------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV or JSONL file: ``{"row", "sketch", "words", "seed"}`` (raw values) or ``{"row", "error"}``
    for a line that cannot be parsed."""
    text = path.read_text(encoding="utf-8-sig")
    rows = []
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for line in text.splitlines():
            if not line.strip():
                continue
            i = len(rows)
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                rows.append({"row": i, **{k: obj.get(k) for k in ("sketch", "words", "seed")}})
            except ValueError as err:
                rows.append({"row": i, "error": f"line is not a JSON object ({err})"})
        return rows
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "sketch" not in fields or "words" not in fields:
        raise SystemExit(f"{path}: the CSV header must name 'sketch' and 'words' (optional 'seed'), got {fields}")
    for i, rec in enumerate(reader):
        rec = {(k or "").strip().lower(): v for k, v in rec.items()}
        rows.append({"row": i, "sketch": rec.get("sketch"), "words": rec.get("words"), "seed": rec.get("seed")})
    return rows


def resolve_row(row: dict, base: Path, default_seed: int, best_of: int = 1) -> dict:
    """Checks one row and fills in its seed, sketch path and output name; sets ``error`` if the row is bad."""
    if "error" in row:
        return row
    sketch = (str(row["sketch"]).strip() if row["sketch"] is not None else "") or None
    words = str(row["words"]).strip() if row["words"] is not None else ""
    seed = row["seed"]
    out = {**row, "sketch": sketch, "words": words}
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        seed = default_seed + row["row"]
    try:
        out["seed"] = int(seed)
    except (TypeError, ValueError):
        return {**out, "error": f"seed {seed!r} is not an integer"}
    if sketch is None and not words:
        return {**out, "error": "no sketch and no words: give at least one"}
    if sketch is not None:
        path = Path(sketch).expanduser()
        out["sketch_path"] = str(path if path.is_absolute() else base / path)
    key = json.dumps([sketch, words, out["seed"]] + ([best_of] if best_of > 1 else [])).encode()
    out["name"] = f"{row['row']:05d}_{hashlib.sha256(key).hexdigest()[:8]}.png"
    return out


# ---------------------------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------------------------


def save_atomic(image: Image.Image, path: Path) -> None:
    """PNG to a temporary sibling, fsync, then ``os.replace`` into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        image.save(fh, format="PNG")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Manifest:
    """``manifest.jsonl``: one record per row, appended as rows finish; :meth:`compact` keeps the latest per row."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[int, dict] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.records[int(rec["row"])] = rec
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill
        self._fh = open(path, "a", encoding="utf-8")

    def add(self, rec: dict) -> None:
        self.records[int(rec["row"])] = rec
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def compact(self) -> None:
        self._fh.close()
        lines = [json.dumps(self.records[r]) for r in sorted(self.records)]
        write_text_atomic(self.path, "".join(line + "\n" for line in lines))


def record(row: dict, status: str, **extra) -> dict:
    return {"row": row["row"], "sketch": row.get("sketch"), "words": row.get("words"), "seed": row.get("seed"),
            "status": status, **extra}  # fmt: skip


def grid(path: Path, tiles: list[tuple[Image.Image | None, Image.Image, str]], columns: int, cell: int = 96) -> None:
    """Tiles of (sketch or None, image, words) -> one PNG, written atomically."""
    pad, text_h = 4, 30
    font = ImageFont.load_default()
    tile_w, tile_h = 2 * cell + pad, cell + text_h
    cols = max(1, min(columns, len(tiles)))
    nrows = max(1, -(-len(tiles) // cols))
    sheet = Image.new("RGB", (pad + cols * (tile_w + pad), pad + nrows * (tile_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for t, (sketch, image, words) in enumerate(tiles):
        x, y = pad + (t % cols) * (tile_w + pad), pad + (t // cols) * (tile_h + pad)
        if sketch is not None:
            sheet.paste(sketch.convert("RGB").resize((cell, cell), Image.BILINEAR), (x, y))
        else:
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=(200, 200, 200))
            draw.text((x + 6, y + cell // 2 - 6), "(text only)", fill=(120, 120, 120), font=font)
        sheet.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (x + cell + pad, y))
        for j, line in enumerate(textwrap.wrap(words or "(sketch only)", 34)[:2]):
            draw.text((x, y + cell + 3 + 12 * j), line, fill=(0, 0, 0), font=font)
    save_atomic(sheet, path)


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    rows_path = Path(args.rows)
    if not rows_path.is_file():
        print(f"error: rows file '{rows_path}' does not exist", file=sys.stderr)
        return 2
    out = Path(args.out)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for stale in images_dir.glob(".*.tmp-*"):  # a temp file left by a killed run
        stale.unlink(missing_ok=True)
    rows = read_rows(rows_path)
    if args.limit is not None:
        rows = rows[: args.limit]
    rows = [resolve_row(r, rows_path.parent, args.seed, args.best_of) for r in rows]
    manifest = Manifest(out / "manifest.jsonl")

    n_done = n_skipped = n_failed = 0
    todo = []
    for r in rows:
        if "error" in r:
            n_failed += 1
            logger.warning("row %d failed: %s", r["row"], r["error"])
            manifest.add(record(r, "failed", error=r["error"]))
        elif (images_dir / r["name"]).is_file():
            n_skipped += 1
            prev = manifest.records.get(r["row"], {})
            if prev.get("status") != "done" or prev.get("output") != f"images/{r['name']}":
                manifest.add(record(r, "done", output=f"images/{r['name']}"))  # finished before the kill: record it
        else:
            todo.append(r)

    sketch_limits = limits.sketch_limits()
    pipe = load_pipeline(args.model, unet_dtype="auto") if todo else None
    if pipe is not None:
        pipe.set_progress_bar_config(disable=True)
        pipe.enable_unet_jit()  # many rows: tracing each batch shape once pays for itself
        load_size = max(pipe.sample_size, pipe.encoder.image_size)
        fit = pipe.encoder.config.sketch_fit
    per_call = prompts_per_call(args.batch, args.best_of)  # candidates count as images
    bar = tqdm(total=len(todo), desc="generating", unit="row")
    pending: list[tuple[dict, torch.Tensor | None]] = []

    def flush() -> None:
        nonlocal n_done, n_failed
        if not pending:
            return
        sketches = [s for _, s in pending]
        has_sketch = sketches[0] is not None
        try:
            res = pipe(sketch=torch.stack(sketches) if has_sketch else None,
                       text=[r["words"] for r, _ in pending] if any(r["words"] for r, _ in pending) else None,
                       num_inference_steps=args.steps, guidance_scale=args.guidance,
                       generator=candidate_generators([r["seed"] for r, _ in pending], args.best_of),
                       best_of=args.best_of, output_type="pil")  # fmt: skip
            images = res.images
        except (DuetgenError, ValueError, RuntimeError) as err:
            for r, _ in pending:
                n_failed += 1
                logger.warning("row %d failed: %s", r["row"], err)
                manifest.add(record(r, "failed", error=str(err)))
            bar.update(len(pending))
            pending.clear()
            return
        for (r, _), image in zip(pending, images, strict=True):
            save_atomic(image, images_dir / r["name"])
            manifest.add(record(r, "done", output=f"images/{r['name']}"))
            n_done += 1
        bar.update(len(pending))
        pending.clear()

    for r in todo:
        sketch = None
        if r.get("sketch_path") is not None:
            try:
                sketch = load_sketch(r["sketch_path"], fit=fit, size=load_size, limits=sketch_limits)  # (3, S, S)
            except (DuetgenError, OSError) as err:
                n_failed += 1
                logger.warning("row %d failed: %s", r["row"], err)
                manifest.add(record(r, "failed", error=str(err)))
                bar.update(1)
                continue
        # one pipeline call takes rows that all have a sketch or all have none
        if pending and (pending[0][1] is None) != (sketch is None):
            flush()
        pending.append((r, sketch))
        if len(pending) >= per_call:
            flush()
    flush()
    bar.close()
    manifest.compact()

    tiles = []
    for r in rows:
        f = images_dir / r["name"] if "name" in r else None
        if f is not None and f.is_file():
            try:
                sk = None
                if r.get("sketch_path"):
                    sk = Image.fromarray((load_sketch(r["sketch_path"], fit="ink", size=96)[0].numpy() * 255)
                                         .astype(np.uint8))  # fmt: skip
                tiles.append((sk, Image.open(f), r["words"]))
            except (DuetgenError, OSError):
                continue
    if tiles:
        grid(out / "grid.png", tiles, args.grid_columns)
    print(f"done {n_done}, skipped {n_skipped} (already done), failed {n_failed} of {len(rows)} rows -> {out}")
    return 1 if rows and n_failed == len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
