#!/usr/bin/env python
"""Zero-shot SBIR training on real sketch data: "CLIP for all things" (category / fine-grained) or the duet method.

Tasks:
  pretrain      the CLIP stand-in for a backbone whose transformers start random (efficientnet-lite0-hybrid: an
                ImageNet CNN under a small ViT): everything but the pretrained CNN trains, text tower included, on
                the seen classes: CLIP's contrastive loss over "a photo of a {c}" captions + sketch-photo pairing
                (duetgen.zs_sbir.pretrain_losses, --w-cls / --w-pair). The other tasks then start from OUT/final.
  category      triplet (negative from another class) + 0.5 * classification against frozen "a photo of a {c}"
                text features; only LayerNorms of V and the visual prompts train (set_trainable("prompts")).
  fine-grained  hard triplet (negative from the same class) + 0.5 * classification + 0.1 * f-divergence
                + 1.0 * patch-shuffle triplet; same trainable parameters.
  duet          the duet method's losses (duetgen.duet_losses) on real (sketch, photo) pairs, each photo its own
                instance, no words; trains LayerNorms of V, visual prompts, C_v2w and P_L.

Trains on the train classes of --split, evaluates on its test classes every --eval-every steps, keeps the best
encoder (save_pretrained) in OUT/best, the last one in OUT/final, resumable state in OUT/state (--resume continues
at the saved step with the same batches), log.jsonl, eval.jsonl and the resolved config in OUT/config.yaml.
--config FILE.yaml supplies argparse defaults (keys = option names with '_' or '-'); the command line wins.

    accelerate launch recipes/train_sbir.py --task category --dataset sketchy \\
        --root ../shared/data/sketchy128 --split sketchy128_zs --model duetgen-world --out runs/sbir_cat
    python recipes/train_sbir.py --config recipes/configs/sbir_sketchy128_category.yaml --out runs/sbir_cat
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

import duetgen
from duetgen.atomic import load_training_state, save_training_state
from duetgen.duet_losses import DuetLossConfig, duet_losses
from duetgen.errors import run_script
from duetgen.zs_sbir import (
    DATASETS,
    ClassBalancedBatches,
    ImageTransforms,
    SBIRLossConfig,
    SBIRPairs,
    class_prompts,
    class_text_features,
    collate_pairs,
    evaluate_sbir,
    open_sbir_dataset,
    pretrain_losses,
    sbir_losses,
)

TASKS = ("pretrain", "category", "fine-grained", "duet")
BEST_METRIC = {"pretrain": "mAP@all", "category": "mAP@all", "fine-grained": "Acc@1", "duet": "Acc@1"}
TRAINABLE = {"pretrain": "pretrain", "category": "prompts", "fine-grained": "prompts", "duet": "duet"}
_DUET_PREFIX = "duet_"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of defaults for these options")
    p.add_argument("--task", choices=TASKS, default="category")
    p.add_argument("--dataset", choices=DATASETS, default="sketchy")
    p.add_argument("--root", default=None, help="dataset folder (required)")
    p.add_argument("--split", default=None, help="class split: built-in name (sketchy128_zs) or JSON/text file")
    p.add_argument("--model", default=None, help="init: encoder folder, backbone name; default the embedded encoder")
    p.add_argument("--out", default=None, help="run folder (required)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--classes-per-batch", type=int, default=8)
    p.add_argument("--per-class", type=int, default=4, help="items (different photos) per class in a batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--num-visual-prompts", type=int, default=3)
    p.add_argument("--sketch-fit", choices=("ink", "canvas"), default="ink")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=100, help="resumable state every N steps (and at the end)")
    p.add_argument("--eval-every", type=int, default=100, help="evaluate on the test classes every N steps (0: never)")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--max-steps-this-run", type=int, default=None,
                   help="stop after this many steps of this invocation (simulates an interruption)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from OUT/state if it exists")
    # "CLIP for all things" weights (None = the task's default from SBIRLossConfig.for_task)
    for f in dataclasses.fields(SBIRLossConfig):
        if f.name == "task":
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                       help=f"default: the task's ({f.default} for category)")  # fmt: skip
    p.add_argument("--w-pair", type=float, default=1.0, help="pretrain: weight of the sketch-photo pairing term")
    # duet losses (task duet)
    for f in dataclasses.fields(DuetLossConfig):
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            p.add_argument(f"--duet-{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        import yaml

        data = yaml.safe_load(Path(pre.config).read_text()) or {}
        if not isinstance(data, dict):
            parser.error(f"--config {pre.config}: expected a mapping of option names to values")
        known = {a.dest for a in parser._actions}
        defaults = {}
        for key, value in data.items():
            dest = str(key).replace("-", "_")
            if dest not in known or dest in ("config", "help"):
                parser.error(f"--config {pre.config}: unknown option {key!r}")
            defaults[dest] = value
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    for name in ("root", "out"):
        if not getattr(args, name):
            parser.error(f"--{name} is required (on the command line or in --config)")
    if args.steps < 1 or args.classes_per_batch < 1 or args.per_class < 1:
        parser.error("--steps, --classes-per-batch and --per-class must be >= 1")
    if args.task in ("fine-grained", "duet") and args.per_class < 2:
        parser.error(f"--task {args.task} needs --per-class >= 2 (negatives come from the same class)")
    return args


def write_config(args: argparse.Namespace, path: Path) -> None:
    import yaml

    cfg = {k: v for k, v in vars(args).items() if k not in ("config",)}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def init_encoder(model: str | None, num_visual_prompts: int) -> duetgen.ComposedQueryEncoder:
    """The initial encoder, rebuilt with ``num_visual_prompts`` visual prompts if it has another number."""
    base = duetgen.load_encoder(model)
    if base.config.num_visual_prompts == num_visual_prompts:
        return base
    cfg = {k: v for k, v in dict(base.config).items() if not k.startswith("_")}
    cfg["num_visual_prompts"] = num_visual_prompts
    encoder = duetgen.ComposedQueryEncoder(**cfg)
    missing, unexpected = encoder.load_state_dict(base.state_dict(), strict=False)
    if unexpected or not all(k.startswith("visual_prompts") for k in missing):
        raise RuntimeError(f"cannot carry weights over: missing {missing}, unexpected {unexpected}")
    return encoder.float()


def main(argv=None) -> dict:
    args = parse_args(argv)
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    acc = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        write_config(args, out / "config.yaml")
        (out / "args.json").write_text(json.dumps(vars(args), indent=2))

    # 1. data: train classes for training, test classes for evaluation
    split = args.split
    train_set = open_sbir_dataset(args.dataset, args.root, split, "train")
    test_set = open_sbir_dataset(args.dataset, args.root, split, "test")
    paired = hasattr(train_set, "sketch_photo")
    if args.task in ("fine-grained", "duet") and not paired:
        raise SystemExit(f"train_sbir: --task {args.task} needs sketch/photo pairs; {args.dataset} has no photos")

    # 2. model, trainable parameters, frozen class text features
    encoder = init_encoder(args.model, args.num_visual_prompts)
    sbir_cfg = SBIRLossConfig.for_task(
        {"duet": "fine-grained", "pretrain": "category"}.get(args.task, args.task),
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(SBIRLossConfig) if f.name != "task"},
    )
    duet_cfg = DuetLossConfig(
        **{f.name: getattr(args, _DUET_PREFIX + f.name) for f in dataclasses.fields(DuetLossConfig)
           if hasattr(args, _DUET_PREFIX + f.name)}
    )  # fmt: skip
    text_features = class_text_features(encoder, train_set.classes)  # (C, D), no gradient
    prompts = class_prompts(train_set.classes)  # pretrain: encoded with gradient every step
    params = encoder.set_trainable(TRAINABLE[args.task])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    encoder, opt, sched = acc.prepare(encoder, opt, sched)
    model = acc.unwrap_model(encoder)
    text_features = text_features.to(acc.device)

    # 3. resume
    state_dir = out / "state"
    start, best = 0, {"value": -1.0, "step": None}
    saved = load_training_state(acc, state_dir) if args.resume else None
    if saved is not None:
        start = saved["step"]
        if (out / "best.json").is_file():
            best = json.loads((out / "best.json").read_text())
        acc.print(f"resumed at step {start}")
    if start >= args.steps:
        acc.print(f"nothing to do: state is at step {start} of {args.steps}")

    # 4. batches: deterministic per step, so a resumed run sees the same data
    sampler = ClassBalancedBatches(
        train_set.sketch_labels, args.classes_per_batch, args.per_class, args.steps, start=start, seed=args.seed,
        rank=acc.process_index, sketch_photo=train_set.sketch_photo if paired else None,
    )  # fmt: skip
    tf = ImageTransforms(model.image_size, args.sketch_fit)
    loader = torch.utils.data.DataLoader(
        SBIRPairs(train_set, tf), batch_sampler=sampler, num_workers=args.num_workers, collate_fn=collate_pairs
    )
    query = "composed" if args.task == "duet" else "image"
    metric = BEST_METRIC[args.task]

    def evaluate(step: int) -> dict:
        res = evaluate_sbir(model, test_set, query=query, sketch_fit=args.sketch_fit, batch_size=args.eval_batch_size)
        rec = {"step": step, **{k: (None if v is None else round(v, 5)) for k, v in res.items()}}
        with open(out / "eval.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        acc.print(json.dumps(rec))
        if res[metric] is not None and res[metric] > best["value"]:
            best.update(value=res[metric], step=step, metric=metric, metrics=rec)
            model.eval().save_pretrained(str(out / "best"))
            (out / "best.json").write_text(json.dumps(best, indent=2))
        return rec

    log = open(out / "log.jsonl", "a") if acc.is_main_process else None
    t0 = time.time()
    ran = 0
    step = start
    for step, (sketches, photos, labels, pids) in enumerate(loader, start=start):
        model.train()
        sketches, labels = sketches.to(acc.device), labels.to(acc.device)
        photos = photos.to(acc.device) if photos is not None else None
        gen = torch.Generator().manual_seed(args.seed * 100_003 + step)
        if args.task == "pretrain":
            w_cls = 1.0 if args.w_cls is None else args.w_cls
            losses = pretrain_losses(model, sketches, labels, prompts, photos=photos, w_cls=w_cls, w_pair=args.w_pair)
        elif args.task == "duet":
            photo_instance = torch.arange(sketches.shape[0], device=acc.device)  # each photo its own instance
            losses = duet_losses(model, sketches, photos, photo_instance, None, duet_cfg, generator=gen)
        else:
            losses = sbir_losses(
                model, sketches, labels, text_features, sbir_cfg, photos=photos, photo_index=pids, generator=gen
            )
        opt.zero_grad(set_to_none=True)
        acc.backward(losses["loss"])
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ran += 1

        if log and (step % args.log_every == 0 or step == args.steps - 1):
            rec = {"step": step, **{k: round(v.item(), 5) for k, v in losses.items()},
                   "lr": round(sched.get_last_lr()[0], 7), "s": round(time.time() - t0, 1)}  # fmt: skip
            log.write(json.dumps(rec) + "\n")
            log.flush()
            acc.print(rec)
        done = step + 1
        interrupted = args.max_steps_this_run is not None and ran >= args.max_steps_this_run
        if done % args.save_every == 0 or done == args.steps or interrupted:
            save_training_state(acc, state_dir, done)  # temp folder + atomic swap: a kill never tears it
        if acc.is_main_process and args.eval_every and (done % args.eval_every == 0 or done == args.steps):
            evaluate(done)
        if interrupted:
            acc.print(f"stopping after {ran} steps of this run (step {done}); --resume continues")
            break
    acc.wait_for_everyone()
    summary = {"start": start, "ran": ran, "seconds": round(time.time() - t0, 1), "best": best}
    if acc.is_main_process:
        if ran and (step + 1 == args.steps):
            model.eval().save_pretrained(str(out / "final"))
        with open(out / "runs.jsonl", "a") as f:
            f.write(json.dumps(summary) + "\n")
        acc.print(
            f"trained {ran} steps in {summary['seconds']} s; best {metric} {best['value']} at step {best['step']}"
        )
    return summary


if __name__ == "__main__":
    run_script(main, "train_sbir")
