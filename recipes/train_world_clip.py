#!/usr/bin/env python
"""Stage 1: pre-train a tiny open_clip CLIP on (photo, caption) pairs of the procedural world.

It stands in for CLIP's web-scale pre-training, which cannot be downloaded here. Captions vary in everything the
embeddings must represent (shape, coarse position and size, orientation, colour, pattern, domain) and parts are
dropped at random, so a missing word means "any". A share of the batch are sketches captioned "a sketch of ...",
as real CLIP saw line drawings. ``--label-weight`` adds an image-label term (UniCL, Yang et al. 2022): every photo
and sketch is also classified among the shape prompts ("a photo of a star", "a sketch of a star") through the text
tower, as web CLIP saw every common object named countless times (off by default: it lifts shape knowledge but
flattens the instance detail composed retrieval needs; recipes/README.md). Uses accelerate (``accelerate launch``
for several processes), logs losses, saves a resumable state every ``--save-every`` steps and the final encoder with
``save_pretrained``. The state is written to a temporary folder and swapped in atomically, and batches depend only
on (seed, step), so a run killed at any point and continued with ``--resume`` ends bit-identical to an
uninterrupted one (tests/test_crash_safety.py).

    python recipes/train_world_clip.py --out runs/stage1 --steps 2000
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import duetgen
from duetgen import world_dataset as wd
from duetgen.atomic import load_training_state, save_training_state, truncate_log
from duetgen.backbones import get_clip_config
from duetgen.duet_losses import clip_contrastive_loss
from duetgen.errors import run_script


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="run folder: state/, encoder/, log.jsonl, args.json")
    p.add_argument("--arch", default="duetgen-world", help="backbone architecture (default duetgen-world)")
    p.add_argument("--init", default=None, help="continue from this encoder folder instead of random weights")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256, help="(photo or sketch, caption) pairs per step")
    p.add_argument("--sketch-share", type=float, default=0.25, help="share of the batch that are captioned sketches")
    p.add_argument("--drop-prob", type=float, default=0.25, help="probability of dropping each caption part")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--groups", type=int, default=12000, help="twin groups rendered for training (4 photos each)")
    p.add_argument("--cache", default="runs/cache/world_train_64.npz", help="rendered training set cache")
    p.add_argument(
        "--holdout-shapes", type=wd.holdout_shapes_arg, default=(), help="comma-separated shapes left out (zero-shot)"
    )
    p.add_argument(
        "--group-share",
        type=float,
        default=0.75,
        help="share of the photos drawn as whole twin groups (4 photos: geometry and attribute twins), "
        "the hard negatives that random batches almost never hold; the rest are random photos",
    )
    p.add_argument(
        "--label-weight",
        type=float,
        default=0.0,
        help="weight of the shape-prompt classification term (UniCL); 0 turns it off",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--resume", action="store_true", help="continue from OUT/state if present")
    return p.parse_args(argv)


def shape_label_loss(model, img: torch.Tensor, labels: torch.Tensor, n_photos: int, shapes) -> torch.Tensor:
    """UniCL's image-label term: the first ``n_photos`` rows of ``img`` against "a photo of a {shape}", the rest
    against "a sketch of a {shape}", over the training ``shapes``; ``labels`` index :data:`duetgen.world.SHAPES`."""
    nouns = [duetgen.world.SHAPE_NOUNS[s] for s in shapes]
    prompts = [f"a photo of a {n}" for n in nouns] + [f"a sketch of a {n}" for n in nouns]
    txt = model.clip.encode_text(model.tokenizer(prompts).to(img.device), normalize=True)
    k = len(shapes)
    to_class = torch.full((len(duetgen.world.SHAPES),), -1, dtype=torch.long, device=img.device)
    to_class[[duetgen.world.SHAPES.index(s) for s in shapes]] = torch.arange(k, device=img.device)
    target = to_class[labels]
    scale = model.clip.logit_scale.exp()
    logits_ph = scale * img[:n_photos] @ txt[:k].T
    logits_sk = scale * img[n_photos:] @ txt[k:].T
    return torch.nn.functional.cross_entropy(torch.cat([logits_ph, logits_sk]), target)


def main(argv=None) -> None:
    args = parse_args(argv)
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    acc = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        (out / "args.json").write_text(json.dumps(vars(args), indent=2))

    shapes, holdout = wd.split_shapes(args.holdout_shapes)
    cache = wd.cache_path(args.cache, holdout)  # a split never reads (or overwrites) the full set's cache
    groups = wd.load_or_build(cache, args.groups, seed=1000 + args.seed, size=64, shapes=shapes)

    encoder = duetgen.ComposedQueryEncoder(
        clip_config=get_clip_config(args.arch),
        backbone=args.arch,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        sketch_fit="canvas",
    )
    if args.init:
        encoder.load_state_dict(duetgen.load_encoder(args.init).state_dict())
    params = encoder.set_trainable("all")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    encoder, opt, sched = acc.prepare(encoder, opt, sched)
    state_dir = out / "state"
    start = 0
    saved = load_training_state(acc, state_dir) if args.resume else None
    if saved is not None:
        start = saved["step"]
        acc.print(f"resumed at step {start}")
    if acc.is_main_process:
        truncate_log(out / "log.jsonl", start)  # steps after the saved state are run (and logged) again

    model = acc.unwrap_model(encoder)
    n_groups = len(groups)
    n_sk = int(round(args.batch * args.sketch_share))
    n_ph = args.batch - n_sk
    log = open(out / "log.jsonl", "a") if acc.is_main_process else None
    t0 = time.time()
    for step in range(start, args.steps):
        rng = np.random.default_rng([args.seed, step, acc.process_index])
        n_grp = int(n_ph * args.group_share) // 4
        n_rand = n_ph - 4 * n_grp
        gg_ = rng.choice(n_groups, size=n_grp, replace=False)
        g = np.concatenate([np.repeat(gg_, 4), rng.integers(n_groups, size=n_rand)])
        i = np.concatenate([np.tile([0, 0, 1, 1], n_grp), rng.integers(2, size=n_rand)])
        j = np.concatenate([np.tile([0, 1, 0, 1], n_grp), rng.integers(2, size=n_rand)])
        photos = wd.to_float(groups.photos[g, i, j])
        caps = []
        for gg, ii, jj in zip(g, i, j, strict=True):
            inst = wd._instance(groups.records[gg]["instances"][ii])
            att = duetgen.world.Attributes.from_dict(groups.records[gg]["attrs"][jj])
            if rng.random() < 0.5:
                caps.append(duetgen.world.caption(inst, att, rng=rng, drop_prob=args.drop_prob))
            else:
                caps.append(wd.user_caption(inst, att, rng=rng, drop_prob=args.drop_prob))
        gs, is_ = rng.integers(n_groups, size=n_sk), rng.integers(2, size=n_sk)
        sketches = wd.to_float(groups.sketches[gs, is_])
        caps += [wd.sketch_caption(wd._instance(groups.records[a]["instances"][b]), rng, args.drop_prob)
                 for a, b in zip(gs, is_, strict=True)]  # fmt: skip
        images = torch.cat([photos, sketches]).to(acc.device)

        img = model.clip.encode_image(model.normalize_images(model.prepare_images(images)), normalize=True)
        txt = model.clip.encode_text(model.tokenizer(caps).to(acc.device), normalize=True)
        loss = clip_contrastive_loss(img, txt, model.clip.logit_scale)
        rec_terms = {"clip": loss.detach()}
        if args.label_weight:
            labels = torch.as_tensor(np.concatenate([groups.shapes[g, i], groups.shapes[gs, is_]]), device=acc.device)
            label_loss = shape_label_loss(model, img, labels, n_ph, shapes)
            loss = loss + args.label_weight * label_loss
            rec_terms["label"] = label_loss.detach()
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.clip.logit_scale.clamp_(0, math.log(100))

        if log and (step % args.log_every == 0 or step == args.steps - 1):
            rec = {
                "step": step,
                "loss": round(loss.item(), 4),
                **{k: round(v.item(), 4) for k, v in rec_terms.items() if len(rec_terms) > 1},
                "lr": sched.get_last_lr()[0],
                "scale": round(model.clip.logit_scale.exp().item(), 2),
                "s": round(time.time() - t0, 1),
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
            acc.print(rec)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_training_state(acc, state_dir, step + 1)  # temp folder + atomic swap: a kill never tears it
    acc.wait_for_everyone()
    if acc.is_main_process:
        # stage 1 trains CLIP, not the method's parameters: P_L is saved at its CoOp initialisation, the handcrafted
        # prompt's word embeddings in the trained vocabulary, which is where stage 2 starts it
        model.init_prompt_from_text()
        model.save_pretrained(str(out / "encoder"))
        acc.print(f"saved {out / 'encoder'} after {time.time() - t0:.0f} s")


if __name__ == "__main__":
    run_script(main, "train_world_clip")
