#!/usr/bin/env python
"""Stage 2: the sketch+text duet on (sketch, photo) pairs of the procedural world, with no captions.

Trains only what the method trains (LayerNorms of V, visual prompts, the pseudo-word mapper C_v2w and the learned
prompt P_L; T_t stays frozen) with L_trip, L_comp, L_reg, L_TT and L_RT (plus in-batch InfoNCE), each weighted and
switchable (``--w-comp 0`` removes L_comp). ``--visual-blocks K`` also trains V's last K transformer blocks (not
the method; the shipped encoder's stage 2b, see recipes/README.md). ``--caption-supervised`` splices the attribute
words after the sketch token during training (the world has captions; the paper does not use them). Batches are
whole twin groups, so every photo's geometry twin and attribute twin are in the batch. Evaluates on the held-out twin
benchmark every ``--eval-every`` steps, saves resumable state and the final encoder with ``save_pretrained``.

    python recipes/train_duet.py --init runs/stage1/encoder --out runs/stage2 --steps 1200

``--init`` may also name a duet encoder (a stage-2 output, e.g. ``duetgen/embedded/pipeline/encoder``): training
then continues it, its learned prompt and visual prompts included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import duetgen
from duetgen import world_dataset as wd
from duetgen.atomic import load_training_state, save_training_state, truncate_log
from duetgen.duet_losses import DuetLossConfig, duet_losses
from duetgen.errors import run_script
from duetgen.world_benchmark import build_twin_benchmark, evaluate_twin_benchmark


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--init", required=True, help="stage-1 encoder folder (save_pretrained) to start from")
    p.add_argument("--out", required=True, help="run folder: state/, encoder/, log.jsonl, args.json, eval.json")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--groups-per-batch", type=int, default=32, help="twin groups per step (2 sketches, 4 photos each)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--groups", type=int, default=12000)
    p.add_argument("--cache", default="runs/cache/world_train_64.npz")
    p.add_argument(
        "--holdout-shapes", type=wd.holdout_shapes_arg, default=(), help="comma-separated shapes left out (zero-shot)"
    )
    p.add_argument("--num-visual-prompts", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=400)
    p.add_argument("--eval-queries", type=int, default=150)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--resume", action="store_true")
    for f in dataclasses.fields(DuetLossConfig):
        if f.type in ("float", "int") or isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    p.add_argument("--caption-supervised", action="store_true", help="train with the attribute words spliced in")
    p.add_argument(
        "--visual-blocks",
        type=int,
        default=0,
        help="also train V's last K transformer blocks and projection (not the method: it\n"
        "makes up for a stand-in CLIP that knows too little shape); default 0",
    )
    p.add_argument("--visual-lr", type=float, default=2e-3, help="learning rate of --visual-blocks' weights")
    args = p.parse_args(argv)
    if args.visual_blocks < 0:
        p.error(f"--visual-blocks must be >= 0, got {args.visual_blocks}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    # a bad --init or --visual-blocks fails here, before anything is written or rendered (and before set_seed, so the
    # run's random numbers are the same with or without this check)
    checked = duetgen.load_encoder(args.init)
    try:
        checked.set_trainable("duet", visual_blocks=args.visual_blocks)
    except ValueError as e:
        raise SystemExit(f"train_duet: error: --visual-blocks: {e}") from None
    del checked
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    acc = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        (out / "args.json").write_text(json.dumps(vars(args), indent=2))
    loss_cfg = DuetLossConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(DuetLossConfig) if hasattr(args, f.name)}
    )

    shapes, holdout = wd.split_shapes(args.holdout_shapes)
    cache = wd.cache_path(args.cache, holdout)  # a split never reads (or overwrites) the full set's cache
    groups = wd.load_or_build(cache, args.groups, seed=1000 + args.seed, size=64, shapes=shapes)
    bench = build_twin_benchmark(args.eval_queries, shapes=shapes if not holdout else holdout)

    base = duetgen.load_encoder(args.init)
    cfg = dict(base.config)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["num_visual_prompts"] = args.num_visual_prompts
    encoder = duetgen.ComposedQueryEncoder(**cfg)
    missing, unexpected = encoder.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("visual_prompts") for k in missing), (missing, unexpected)
    if missing:  # an encoder without visual prompts: the learned prompt P_L starts from the handcrafted prompt's
        # embedding (train_world_clip.py saves its stage-1 encoders with P_L so initialised)
        encoder.init_prompt_from_text()
    else:
        acc.print(f"starting from {args.init} with its visual prompts and P_L")
    method = encoder.set_trainable("duet")
    params = encoder.set_trainable("duet", visual_blocks=args.visual_blocks)
    param_groups = [{"params": params[: len(method)], "lr": args.lr}]
    if len(params) > len(method):
        param_groups.append({"params": params[len(method) :], "lr": args.visual_lr})
    opt = torch.optim.AdamW(param_groups, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    encoder, opt, sched = acc.prepare(encoder, opt, sched)
    model = acc.unwrap_model(encoder)
    state_dir = out / "state"
    start = 0
    saved = load_training_state(acc, state_dir) if args.resume else None
    if saved is not None:
        start = saved["step"]
        acc.print(f"resumed at step {start}")
    if acc.is_main_process:
        truncate_log(out / "log.jsonl", start)  # steps after the saved state are run (and logged) again
        truncate_log(out / "eval.jsonl", start + 1)

    log = open(out / "log.jsonl", "a") if acc.is_main_process else None
    n_groups, G = len(groups), args.groups_per_batch
    t0 = time.time()
    evals = []
    for step in range(start, args.steps):
        model.train()
        rng = np.random.default_rng([args.seed, step, acc.process_index])
        g = rng.choice(n_groups, size=G, replace=False)
        sketches = wd.to_float(groups.sketches[g].reshape(G * 2, *groups.sketches.shape[2:])).to(acc.device)
        photos = wd.to_float(groups.photos[g].reshape(G * 4, *groups.photos.shape[3:])).to(acc.device)
        photo_instance = torch.arange(G * 2).repeat_interleave(2).to(acc.device)  # photo (g, i, j) -> sketch (g, i)
        words = [groups.words(int(gg), j) for gg in g for _i in range(2) for j in range(2)]
        gen = torch.Generator().manual_seed(args.seed * 100_003 + step)
        losses = duet_losses(model, sketches, photos, photo_instance, words, loss_cfg, generator=gen)
        opt.zero_grad(set_to_none=True)
        acc.backward(losses["loss"])
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()

        if log and (step % args.log_every == 0 or step == args.steps - 1):
            rec = {"step": step, **{k: round(v.item(), 4) for k, v in losses.items()}, "s": round(time.time() - t0, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            acc.print(rec)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_training_state(acc, state_dir, step + 1)  # temp folder + atomic swap: a kill never tears it
        if acc.is_main_process and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            res = evaluate_twin_benchmark(model, bench)
            evals.append({"step": step + 1, **res})
            acc.print(json.dumps(evals[-1]))
            with open(out / "eval.jsonl", "a") as f:
                f.write(json.dumps(evals[-1]) + "\n")
    acc.wait_for_everyone()
    if acc.is_main_process:
        model.eval().save_pretrained(str(out / "encoder"))
        acc.print(f"saved {out / 'encoder'} after {time.time() - t0:.0f} s")


if __name__ == "__main__":
    run_script(main, "train_duet")
