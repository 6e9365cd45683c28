"""``duetgen eval``: zero-shot SBIR metrics of an encoder on one part of a dataset split.

::

    duetgen eval --model runs/sbir_cat/best --dataset sketchy --root ../shared/data/sketchy128 \\
        --split sketchy128_zs --classes test [--task category|fine-grained] [--json out.json]

Category-level: mAP@all, mAP@200, P@100, P@200 (sketch queries against every photo of the evaluated classes).
Fine-grained: Acc@1, Acc@5, Acc@10 (the paired photo among the photos of the query's class). Without ``--task``
both are reported. A random-ranking ("chance") row is printed beside the model's.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .cli import command
from .errors import DuetgenInputError


def _eval_args(p: argparse.ArgumentParser) -> None:
    from .zs_sbir import DATASETS, PARTS, TASKS

    p.add_argument(
        "--model", default=None, help="encoder folder (save_pretrained) or backbone name (default: embedded)"
    )
    p.add_argument("--dataset", required=True, choices=DATASETS, help="dataset loader")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--split", default=None, help="class split: built-in name (sketchy128_zs) or a JSON/text file")
    p.add_argument("--classes", default="test", choices=PARTS, help="which classes of the split (default test)")
    p.add_argument("--task", default=None, choices=TASKS, help="category or fine-grained metrics (default: both)")
    p.add_argument(
        "--query",
        default="image",
        choices=("image", "composed"),
        help="sketch embedding: V(S) ('image', CLIP for all things) or the duet query ('composed')",
    )
    p.add_argument("--sketch-fit", default="ink", choices=("ink", "canvas"), help="sketch framing (default ink)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the results as JSON ('-': stdout)")


@command("eval", "evaluate zero-shot sketch-based image retrieval on a dataset split (mAP, P@K, Acc@K)")(_eval_args)
def _eval(args: argparse.Namespace) -> int:
    from .loading import load_encoder
    from .zs_sbir import chance_metrics, evaluate_sbir, format_metrics_table, has_photos, open_sbir_dataset

    if args.batch_size < 1:
        raise DuetgenInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.json and args.json != "-":
        parent = Path(os.path.expanduser(args.json)).parent
        if not parent.is_dir():
            raise DuetgenInputError(f"--json: folder '{parent}' does not exist")
    if args.dataset != "qmul" and args.split is None and args.classes != "all":
        raise DuetgenInputError(
            f"--classes {args.classes} needs --split (a built-in name or a file); or --classes all"
        )
    part = "all" if args.split is None and args.dataset != "qmul" else args.classes
    source = open_sbir_dataset(args.dataset, args.root, args.split, part)
    if args.task == "fine-grained" and not has_photos(source):
        raise DuetgenInputError(f"--task fine-grained needs sketch/photo pairs; dataset {args.dataset} has no photos")
    encoder = load_encoder(args.model)
    metrics = evaluate_sbir(
        encoder, source, task=args.task, query=args.query, sketch_fit=args.sketch_fit, batch_size=args.batch_size
    )
    chance = chance_metrics(source, task=args.task)
    result = {
        "model": args.model or "embedded",
        "backbone": encoder.config.backbone,
        "dataset": args.dataset,
        "root": str(args.root),
        "split": args.split,
        "classes": args.classes,
        "num_classes": len(source.classes),
        "task": args.task or "both",
        "query": args.query,
        "num_sketches": int(len(source.sketch_labels)),
        "num_photos": int(len(source.photo_labels)) if has_photos(source) else 0,
        "metrics": metrics,
        "chance": chance,
    }
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{args.dataset} {args.split or ''} [{args.classes}]: {result['num_classes']} classes, "
        f"{result['num_sketches']} sketches, {result['num_photos']} photos; model {result['model']}"
    )
    print(format_metrics_table({result["model"]: metrics, "chance": chance}))
    if args.json:
        Path(os.path.expanduser(args.json)).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0
