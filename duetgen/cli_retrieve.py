"""``duetgen index`` and ``duetgen retrieve``: build a gallery from a folder of photos, query it with a sketch and/or
words.

::

    duetgen index photos/ --out photos.gallery [--model DIR] [--batch-size 64] [--regions] [--index auto]
    duetgen retrieve --sketch cat.png --text "in red" --gallery photos.gallery -k 10 [--json] [--sheet hits.png]
    duetgen retrieve --text "red with stripes" --gallery photos.gallery          # words only
    duetgen retrieve --sketch star.png --text "in red" --gallery scenes.gallery --regions   # scene retrieval

Running ``duetgen index`` again on the same folder and gallery updates it incrementally (new files are added,
deleted ones removed); ``--rebuild`` starts afresh. ``retrieve`` reloads the model recorded in the gallery unless
``--model`` names one.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import limits
from .cli import command
from .errors import DuetgenInputError

SHEET_THUMB = 128
SHEET_COLUMNS = 6


def _load_model(model: str | None):
    """(encoder, what to record as its source)."""
    from .loading import load_encoder

    if model is None:
        return load_encoder(), "embedded"
    path = Path(os.path.expanduser(model))
    source = str(path.resolve()) if path.exists() else model
    return load_encoder(model), source


# ---------------------------------------------------------------------------------------------------------------
# index
# ---------------------------------------------------------------------------------------------------------------


def _index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("photos", metavar="PHOTOS_DIR", help="folder of photos (searched recursively)")
    p.add_argument("--out", required=True, metavar="GALLERY", help="gallery folder to write (or update)")
    p.add_argument("--model", default=None, metavar="DIR", help="encoder folder or backbone (default: embedded)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per forward pass (default 64; at most DUETGEN_MAX_BATCH, 256)",
    )
    p.add_argument(
        "--num-workers", type=int, default=None, help="image decoding processes (default: half the cores, at most 2)"
    )
    p.add_argument("--regions", action="store_true", help="also keep region embeddings (scene retrieval)")
    p.add_argument(
        "--index",
        default="auto",
        choices=("auto", "flat", "ivf", "hnsw"),
        help="FAISS index: exact flat, or IVF / HNSW for large galleries (auto: IVF from 200k items)",
    )
    p.add_argument("--fp16", action="store_true", help="store embeddings as float16 (half the size)")
    p.add_argument("--rebuild", action="store_true", help="rebuild from scratch instead of updating GALLERY")
    p.add_argument("--quiet", action="store_true", help="no progress bar")  # fmt: skip


@command("index", "embed a folder of photos into a searchable gallery (resumable; reruns update it)")(_index_args)
def _index(args: argparse.Namespace) -> int:
    from .gallery import MANIFEST, Gallery

    photos = os.path.expanduser(args.photos)
    if not os.path.isdir(photos):
        if os.path.islink(photos) and not os.path.exists(photos):
            raise DuetgenInputError(
                f"PHOTOS_DIR '{args.photos}' is a symlink loop (or a broken link); point it at a folder of photos"
            )
        what = "it does not exist" if not os.path.exists(photos) else "it is a file"
        raise DuetgenInputError(f"PHOTOS_DIR '{args.photos}' is not a folder ({what}); pass a folder of photos")
    if args.batch_size < 1:
        raise DuetgenInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    limits.check("max_batch", args.batch_size, "--batch-size")
    encoder, source = _load_model(args.model)
    out = Path(os.path.expanduser(args.out))
    if (out / MANIFEST).is_file() and not args.rebuild:
        gallery = Gallery.open(out, encoder)
        if bool(args.regions) != (gallery.regions is not None):
            raise DuetgenInputError(
                f"gallery '{out}' was built {'with' if gallery.regions is not None else 'without'} regions; "
                "pass --rebuild to change that"
            )
        added, removed = gallery.sync(args.photos, encoder, batch_size=args.batch_size,
                                      num_workers=args.num_workers, progress=not args.quiet)  # fmt: skip
        gallery.save()
        print(f"updated {out}: {len(added)} added, {removed} removed, {len(gallery)} items "
              f"(index {gallery.index.kind})")  # fmt: skip
        return 0
    gallery = Gallery.build(
        args.photos, encoder, out, batch_size=args.batch_size, num_workers=args.num_workers, regions=args.regions,
        dtype="float16" if args.fp16 else "float32", index=args.index, progress=not args.quiet, model_source=source,
    )  # fmt: skip
    counts = gallery.manifest["counts"]
    mem = gallery.memory_per_item()
    print(f"indexed {counts['items']} images into {gallery.path} ({counts['skipped']} skipped, index "
          f"{gallery.index.kind}, {mem['total'] / 1024:.1f} KiB per item)")  # fmt: skip
    return 0


# ---------------------------------------------------------------------------------------------------------------
# retrieve
# ---------------------------------------------------------------------------------------------------------------


def _retrieve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sketch", default=None, metavar="S", help="sketch file (png, jpg, svg, strokes json/npz)")
    p.add_argument("--text", default=None, help='words to compose with the sketch, e.g. "in red with stripes"')
    p.add_argument("--gallery", required=True, help="gallery folder written by 'duetgen index'")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10; at most DUETGEN_MAX_K, 1000)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--sheet", default=None, metavar="OUT.png", help="write a contact sheet of the query and hits")
    p.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="encoder folder or backbone (default: the one recorded in the gallery, else embedded)",
    )
    p.add_argument(
        "--regions", action="store_true", help="scene retrieval: score photos by their best region (needs --regions)"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-rank the top 20 by how well each photo's object silhouette fills the sketch's outline (score = "
        "cosine + weight x IoU); with --regions, re-score each scene by its best object instead (weight x shape "
        "agreement at any rotation + how likely the object's crop shows what --text says) and box that object; for "
        "photos on plain backgrounds (product shots, the procedural world); needs --sketch",
    )
    p.add_argument(
        "--verify-weight",
        type=float,
        default=None,
        metavar="W",
        help="weight of the IoU with --verify (default 0.3; with --regions 1.0)",
    )


def _model_for(gallery_dir: Path, model: str | None) -> str | None:
    if model is not None:
        return model
    from .gallery import MANIFEST

    try:
        manifest = json.loads((gallery_dir / MANIFEST).read_bytes())
        source = manifest.get("model_source") if isinstance(manifest, dict) else None
    except (OSError, ValueError, RecursionError):
        return None  # Gallery.open reports the problem
    if isinstance(source, str) and source and source != "embedded" and "\0" not in source and Path(source).exists():
        return source
    return None


@command("retrieve", "find gallery photos for a sketch, words, or both")(_retrieve_args)
def _retrieve(args: argparse.Namespace) -> int:
    import torch

    from .gallery import MANIFEST, Gallery

    if args.sketch is None and not args.text:
        raise DuetgenInputError("retrieve needs --sketch, --text or both")
    if args.k < 1:
        raise DuetgenInputError(f"-k must be >= 1, got {args.k}")
    limits.check("max_k", args.k, "-k")
    if args.text:
        limits.check("max_text_chars", len(args.text), "--text")
    if args.verify_weight is not None and not args.verify:
        raise DuetgenInputError("--verify-weight goes with --verify")
    verifier = None
    if args.verify:
        if args.sketch is None:
            raise DuetgenInputError("--verify compares the photos with the sketch's outline: give --sketch")
        from .verify import DEFAULT_WEIGHT, SilhouetteVerifier

        weight = DEFAULT_WEIGHT if args.verify_weight is None else args.verify_weight
        verifier = SilhouetteVerifier(weight=weight)  # checks the weight before any model is loaded
    gallery_dir = Path(os.path.expanduser(args.gallery))
    if not gallery_dir.is_dir():
        raise DuetgenInputError(f"--gallery '{args.gallery}' is not a folder; build one with 'duetgen index'")
    if not (gallery_dir / MANIFEST).is_file():
        raise DuetgenInputError(f"--gallery '{args.gallery}' is not a gallery (no {MANIFEST}); build one with "
                                "'duetgen index'")  # fmt: skip
    encoder, _ = _load_model(_model_for(gallery_dir, args.model))
    gallery = Gallery.open(gallery_dir, encoder)
    if verifier is not None and args.regions:
        from .verify import SCENE_WEIGHT, SceneVerifier

        verifier = SceneVerifier(encoder, weight=SCENE_WEIGHT if args.verify_weight is None else args.verify_weight)
    sketch = None
    if args.sketch is not None:
        from .sketch_input import load_sketch

        sketch = load_sketch(
            args.sketch, fit=encoder.config.sketch_fit, size=encoder.image_size, limits=limits.sketch_limits()
        )  # (3, S, S)
    with torch.inference_mode():
        query = encoder.encode_query(sketch[None] if sketch is not None else None, [args.text] if args.text else None)
    verify = {} if verifier is None else {"verify_sketches": sketch[None], "verifier": verifier}
    if verifier is not None and args.regions:
        verify["verify_words"] = args.text or ""  # what the words say is read from each object
    results = gallery.search(query, args.k, regions=args.regions, **verify)[0]
    if args.sheet:
        contact_sheet(sketch, args.text, results).save(args.sheet)
    if args.json:
        payload = {
            "query": {"sketch": args.sketch, "text": args.text},
            "gallery": str(gallery.path),
            "k": args.k,
            "regions": bool(args.regions),
            "verify_weight": None if verifier is None else verifier.weight,
            "results": [dict(rank=i + 1, **r.to_dict()) for i, r in enumerate(results)],
        }
        if args.sheet:
            payload["sheet"] = str(Path(args.sheet).resolve())
        print(json.dumps(payload, indent=2))
        return 0
    for i, r in enumerate(results, 1):
        box = f"  box {r.box}" if r.box is not None else ""
        kind = "shape" if r.box is not None else "iou"  # scenes: the object's shape agreement
        iou = f"  {kind} {r.iou:.3f}" if r.iou is not None else ""
        print(f"{i:3d}  {r.score:+.4f}  {r.path}{box}{iou}")
    if args.sheet:
        print(f"contact sheet: {args.sheet}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# contact sheet
# ---------------------------------------------------------------------------------------------------------------


def contact_sheet(sketch, words: str | None, results, thumb: int = SHEET_THUMB, columns: int = SHEET_COLUMNS):
    """A PNG-ready PIL image: the query (sketch and words) first, then the hits with rank, score and file name;
    scene-retrieval hits have their best region outlined in red.

    Args:
        sketch: (3, S, S) tensor in [0, 1] or ``None`` (words-only query).
        words: the query's words or ``None``.
        results: :class:`duetgen.gallery.SearchResult` list.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    pad, label = 6, 30
    cell_w, cell_h = thumb + 2 * pad, thumb + 2 * pad + label
    n = len(results) + 1
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)

    def text(xy, s, fill=(0, 0, 0)):
        draw.text(xy, s, fill=fill, font=font)

    def fit(s: str, width: int) -> str:
        while s and draw.textlength(s, font=font) > width:
            s = s[:-2] + "…" if len(s) > 2 else ""
        return s

    # the query
    draw.rectangle([2, 2, cell_w - 3, cell_h - 3], outline=(40, 90, 200), width=2)
    if sketch is not None:
        arr = (sketch.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
        sheet.paste(Image.fromarray(arr).resize((thumb, thumb), Image.LANCZOS), (pad, pad))
    else:
        text((pad + 4, pad + thumb // 2 - 6), "(words only)", fill=(120, 120, 120))
    text((pad, pad + thumb + 3), "query", fill=(40, 90, 200))
    text((pad, pad + thumb + 16), fit(f'"{words}"' if words else "(sketch only)", thumb))

    for i, r in enumerate(results, 1):
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        try:
            with Image.open(r.path) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = thumb / max(w, h)
                im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
        except OSError:
            im, scale = Image.new("RGB", (thumb, thumb), (230, 230, 230)), 1.0
        ox, oy = x + pad + (thumb - im.width) // 2, y + pad + (thumb - im.height) // 2
        sheet.paste(im, (ox, oy))
        if r.box is not None:
            x0, y0, x1, y1 = (v * scale for v in r.box)
            draw.rectangle([ox + x0, oy + y0, ox + x1 - 1, oy + y1 - 1], outline=(230, 20, 20), width=2)
        text((x + pad, y + pad + thumb + 3), f"#{i}  {r.score:.3f}")
        text((x + pad, y + pad + thumb + 16), fit(os.path.basename(r.path), thumb), fill=(90, 90, 90))
    return sheet
