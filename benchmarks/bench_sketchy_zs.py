#!/usr/bin/env python
"""Real-data zero-shot SBIR benchmark on sketchy128: train on the 83 seen classes, test on the 21 unseen ones.

Trains "CLIP for all things" twice with ``recipes/train_sbir.py`` (category-level, then fine-grained, each from the
same initial encoder, visual prompts + LayerNorms only) and evaluates on the unseen classes of ``sketchy128_zs``:

* category-level: mAP@all and P@100 (sketch queries against all 525 unseen-class photos), also mAP@200, P@200;
* fine-grained: Acc@1 and Acc@5 (the paired photo among the 25 photos of the sketch's class), also Acc@10;

against chance (uniformly random similarities, 5 draws) and against the same initial network untrained. No test
class is looked at during training (``--eval-every 0``); the reported models are the final ones, not a best-on-test
pick. CPU only; the default run takes about 20 minutes on 2 shared cores.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 19 python benchmarks/bench_sketchy_zs.py --out runs/bench_sketchy_zs

Model (``--model``): default ``auto`` = the embedded default encoder if shipped, else ``runs/stage1/encoder`` if
present, else the random ``duetgen-world`` backbone (no pretrained CLIP can be downloaded on the build machines).
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
    from duetgen.embedded import ENCODER_DIR

    if (ENCODER_DIR / "config.json").is_file():
        return str(ENCODER_DIR), "embedded default encoder (world-trained stand-in for CLIP), shipped in the package"
    stage1 = REPO / "runs" / "stage1" / "encoder"
    if (stage1 / "config.json").is_file():
        return str(
            stage1
        ), "runs/stage1/encoder (world-trained CLIP stand-in; the embedded encoder is not shipped yet)"
    return "duetgen-world", "random duetgen-world backbone: no trained encoder on this machine yet"


def train(task: str, args, model: str, out: Path, steps: int) -> float:
    cmd = [
        sys.executable, str(REPO / "recipes" / "train_sbir.py"), "--task", task, "--dataset", "sketchy",
        "--root", str(args.root), "--split", args.split, "--model", model, "--out", str(out), "--steps", str(steps),
        "--lr", str(args.lr), "--eval-every", "0", "--save-every", str(steps), "--log-every", "25",
        "--classes-per-batch", str(args.classes_per_batch), "--per-class", str(args.per_class),
        "--seed", str(args.seed),
    ]  # fmt: skip
    t0 = time.time()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.time() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="sketchy128 folder")
    p.add_argument("--split", default="sketchy128_zs")
    p.add_argument("--model", default="auto", help="initial encoder: folder, backbone name, or auto")
    p.add_argument("--out", default=str(REPO / "runs" / "bench_sketchy_zs"))
    p.add_argument("--category-steps", type=int, default=400)
    p.add_argument("--fine-grained-steps", type=int, default=250)
    p.add_argument("--classes-per-batch", type=int, default=8)
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
    rows["untrained"] = evaluate_sbir(init_encoder(model, 3), test_set)
    print(json.dumps(rows, indent=1), flush=True)

    times = {}
    for task, steps in (("category", args.category_steps), ("fine-grained", args.fine_grained_steps)):
        run = out / f"train_{task}"
        if run.exists():
            import shutil

            shutil.rmtree(run)
        times[task] = round(train(task, args, model, run, steps), 1)
        rows[f"trained: {task}"] = evaluate_sbir(duetgen.load_encoder(run / "final"), test_set)
        print(task, json.dumps(rows[f"trained: {task}"]), flush=True)

    chance = rows["chance"]
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
            "untrained": rows["untrained"][key],
            "chance": chance[key],
            "x_chance": got / chance[key],
            "above_untrained": got > rows["untrained"][key],
        }
    result = {
        "model": model,
        "model_reason": why,
        "split": args.split,
        "train_classes": len(train_set.classes),
        "test_classes": len(test_set.classes),
        "test_sketches": len(test_set),
        "test_photos": len(test_set.photos),
        "steps": {"category": args.category_steps, "fine-grained": args.fine_grained_steps},
        "train_seconds": times,
        "total_seconds": round(time.time() - t_start, 1),
        "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + (argv if argv is not None else sys.argv[1:])),
        "results": rows,
        "checks": checks,
    }
    table = format_metrics_table(rows, COLUMNS)
    md = (
        f"# sketchy128 zero-shot SBIR ({len(train_set.classes)} seen -> {len(test_set.classes)} unseen classes)\n\n"
        f"Initial encoder: `{model}` ({why}). Training: category {args.category_steps} steps "
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
    main()
