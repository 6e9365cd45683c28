"""Train the independent evaluator (:class:`duetgen.evaluator.WorldEvaluator`) on world photos.

The evaluator scores generated images in ``benchmarks/bench_generation_fidelity.py``, so it must never see data the
generator was trained or benchmarked on. Seed ranges (the other recipes render their world from ``1000 + --seed``; the
generation benchmark uses 777_000+):

- training photos: world seed ``--seed`` (default 555_000), item ``i`` drawn from ``np.random.default_rng([seed, i])``;
  every ``--reuse`` steps render fresh photos (items ``block * batch + j``); a re-used batch is turned and/or
  mirrored (images and masks alike), so no image is seen twice;
- held-out evaluation: seed ``seed + 1`` (555_001), items 0..``--eval-n``-1;
- ``tests/test_evaluator.py`` uses seed 555_002.

Augmentations mimic what a generator outputs without changing any label: Gaussian blur, down-and-up resampling
(softness), JPEG compression, additive noise and a small brightness / contrast / per-channel gain jitter (a few
percent, far from the distance between two palette colours). Losses: cross-entropy per head (label smoothing 0.05) +
BCE and soft dice on the object mask (target: the polygon's antialiased coverage, :func:`instance_mask` with
``soft=True``).

Plain torch on one CPU thread (``torch.set_num_threads(1)``); resumable: every ``--save-every`` steps the model and
optimizer are written to ``--state-dir`` as safetensors + JSON (no pickle). Everything random is a function of the
step number, so a resumed run reproduces an uninterrupted one. The final model is saved in fp16 to ``--out``
(default ``duetgen/embedded/evaluator/``) with ``eval_report.json`` (held-out accuracies) beside it.

Usage::

    OMP_NUM_THREADS=1 python recipes/train_evaluator.py                 # ~10 minutes on one core
    OMP_NUM_THREADS=1 python recipes/train_evaluator.py --steps 2 --batch 8 --out /tmp/ev --eval-n 16   # smoke test
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from duetgen import world
from duetgen.errors import run_script
from duetgen.evaluator import EVALUATOR_DIR, HEADS, WorldEvaluator, instance_mask, mask_iou

logger = logging.getLogger("train_evaluator")

LABELS = {"shape": list(world.SHAPES), "colour": list(world.COLOURS), "pattern": list(world.PATTERNS),
          "domain": list(world.DOMAINS)}  # fmt: skip


# -----------------------------------------------------------------------------
# Data: world photos rendered on the fly.


def render_items(seed: int, start: int, n: int, size: int = 64, jpeg_prob: float = 0.0) -> dict:
    """Items ``start .. start + n - 1`` of the evaluator's world stream.

    Returns:
        dict: ``images`` float (n, 3, size, size) in [0, 1]; ``mask`` float (n, size, size) coverage; one int64 (n,)
        label tensor per head; ``instances`` (list of :class:`~duetgen.world.Instance`).
    """
    images, masks, instances = [], [], []
    labels = {h: [] for h in HEADS}
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, i])
        inst = world.sample_instance(rng)
        attrs = world.sample_attributes(rng)
        photo = world.render_photo(inst, attrs, size, seed=int(rng.integers(2**31)))
        if jpeg_prob and rng.random() < jpeg_prob:  # JPEG softness / blocking, as a saved generation has
            buf = io.BytesIO()
            Image.fromarray(photo).save(buf, format="JPEG", quality=int(rng.integers(40, 90)))
            photo = np.asarray(Image.open(buf).convert("RGB"))
        images.append(photo)
        masks.append(instance_mask(inst, size, soft=True))
        instances.append(inst)
        for h, v in zip(HEADS, (inst.shape, attrs.colour, attrs.pattern, attrs.domain), strict=True):
            labels[h].append(LABELS[h].index(v))
    out = {
        "images": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255),
        "mask": torch.from_numpy(np.stack(masks)),
        "instances": instances,
    }
    out.update({h: torch.tensor(v) for h, v in labels.items()})
    return out


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur, x (B, 3, H, W), sigma (B,) in pixels (0 = identity)."""
    r = torch.arange(-2, 3, dtype=x.dtype)  # 5 taps
    k = torch.exp(-(r[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))  # (B, 5)
    k = k / k.sum(1, keepdim=True)
    b, c, h, w = x.shape
    y = x.reshape(1, b * c, h, w)
    kk = k.repeat_interleave(c, 0)  # (B*3, 5)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), kk[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), kk[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Label-preserving corruptions of a batch (B, 3, H, W) in [0, 1], all drawn from `g`."""
    b, _, h, w = x.shape

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    def coin(p: float) -> torch.Tensor:
        return torch.rand(b, generator=g) < p

    # Blur (generators are soft).
    sigma = torch.where(coin(0.5), u(0.3, 1.0, b), torch.zeros(b))
    x = _gaussian_blur(x, sigma)
    # Down-and-up resampling for a random half of the batch (one factor per batch: cheap).
    sel = coin(0.3)
    if sel.any():
        s = int(u(32, 56, 1).item())
        small = F.interpolate(x[sel], size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        x = x.clone()
        x[sel] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    # Colour jitter: brightness, contrast, per-channel gain, all within a few percent.
    bright = torch.where(coin(0.8), u(0.92, 1.08, b), torch.ones(b))[:, None, None, None]
    gain = torch.where(coin(0.6)[:, None], u(0.96, 1.04, b, 3), torch.ones(b, 3))[:, :, None, None]
    contrast = torch.where(coin(0.5), u(0.9, 1.1, b), torch.ones(b))[:, None, None, None]
    mean = x.mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * bright * gain
    # Pixel noise.
    noise = torch.where(coin(0.5), u(0.0, 0.04, b), torch.zeros(b))[:, None, None, None]
    x = x + noise * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate (..., H, W) by k quarter turns, then mirror left-right if `flip`."""
    x = torch.rot90(x, k, (-2, -1))
    return x.flip(-1) if flip else x


# -----------------------------------------------------------------------------
# Losses and evaluation.


def losses(model: WorldEvaluator, batch: dict, images: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model(images)
    terms = {h: F.cross_entropy(getattr(out, h), batch[h], label_smoothing=0.05) for h in HEADS}
    target = batch["mask"]  # (B, S, S) coverage
    terms["mask_bce"] = F.binary_cross_entropy_with_logits(out.mask, target)
    p = out.mask.sigmoid()
    inter = (p * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
    terms["mask_dice"] = dice.mean()
    terms["loss"] = sum(terms.values())
    return terms


@torch.no_grad()
def evaluate(model: WorldEvaluator, seed: int, n: int, augmented: bool = False, chunk: int = 250) -> dict:
    """Held-out accuracy per head, mean mask IoU, and both broken down by domain, on n fresh photos."""
    model.eval()
    correct = {h: [] for h in HEADS}
    ious, domains = [], []
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, chunk):
        batch = render_items(seed, start, min(chunk, n - start), jpeg_prob=0.3 if augmented else 0.0)
        images = augment(batch["images"], g) if augmented else batch["images"]
        pred = model.predict(images)
        for h in HEADS:
            correct[h] += [p == LABELS[h][t] for p, t in zip(pred[h], batch[h].tolist(), strict=True)]
        gt = np.stack([instance_mask(inst, model.config.image_size) for inst in batch["instances"]])
        ious += mask_iou(pred["mask"].numpy(), gt).tolist()
        domains += [LABELS["domain"][d] for d in batch["domain"].tolist()]
    report = {h: float(np.mean(correct[h])) for h in HEADS}
    report["iou"] = float(np.mean(ious))
    domains = np.asarray(domains)
    report["by_domain"] = {
        d: {**{h: float(np.mean(np.asarray(correct[h])[domains == d])) for h in HEADS},
            "iou": float(np.mean(np.asarray(ious)[domains == d]))}
        for d in LABELS["domain"] if (domains == d).any()
    }  # fmt: skip
    report["n"] = n
    report["seed"] = seed
    return report


# -----------------------------------------------------------------------------
# Resumable state (safetensors + JSON, no pickle).


def save_state(state_dir: Path, model: WorldEvaluator, opt: torch.optim.Optimizer, step: int, args: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for pid, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous()
    tmp = state_dir / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    meta = {"step": step, "param_groups": osd["param_groups"], "args": args}
    (state_dir / "state.json.tmp").write_text(json.dumps(meta))
    os.replace(tmp, state_dir / "state.safetensors")
    os.replace(state_dir / "state.json.tmp", state_dir / "state.json")


def load_state(state_dir: Path, model: WorldEvaluator, opt: torch.optim.Optimizer) -> int:
    """Restores model and optimizer; returns the step to continue from (0 without a state)."""
    if not (state_dir / "state.json").is_file():
        return 0
    meta = json.loads((state_dir / "state.json").read_text())
    tensors = load_file(str(state_dir / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    logger.info("resumed from %s at step %d", state_dir, meta["step"])
    return int(meta["step"])


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# -----------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(EVALUATOR_DIR), help="where the final fp16 model goes")
    p.add_argument("--state-dir", default="runs/evaluator_state", help="resumable training state")
    p.add_argument("--seed", type=int, default=555_000, help="world seed of the training photos (555_000+ only)")
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--reuse", type=int, default=2, help="steps per rendered batch (re-uses are turned / mirrored)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-n", type=int, default=1000, help="held-out photos (seed + 1) for the final report")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128, 192])
    p.add_argument("--decoder-channels", type=int, nargs="+", default=[96, 64, 32, 16])
    p.add_argument("--stem-stride", type=int, default=2)
    p.add_argument("--texture-channels", type=int, default=12, help="full-resolution texture path (0: none)")
    p.add_argument("--spectrum-size", type=int, nargs=2, default=[16, 64], help="pattern spectrum path (0 0: none)")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    model = WorldEvaluator(channels=tuple(args.channels), decoder_channels=tuple(args.decoder_channels),
                           stem_stride=args.stem_stride, texture_channels=args.texture_channels,
                           spectrum_size=tuple(args.spectrum_size))  # fmt: skip
    model = model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)  # fmt: skip
    state_dir = Path(args.state_dir)
    step = load_state(state_dir, model, opt)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("WorldEvaluator: %.2fM parameters; training steps %d..%d, batch %d", n_params / 1e6, step,
                args.steps, args.batch)  # fmt: skip
    model.train()
    t0, t_render, running, cached_block = time.time(), 0.0, {}, -1
    while step < args.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        tr = time.time()
        block = step // args.reuse
        if block != cached_block:
            batch, cached_block = render_items(args.seed, block * args.batch, args.batch, jpeg_prob=0.2), block
        g = torch.Generator().manual_seed(args.seed * 100_003 + step)
        images, target = batch["images"], batch
        if step % args.reuse:  # a re-used batch: turn / mirror images and masks alike (labels do not change)
            k, flip = int(torch.randint(4, (1,), generator=g)), bool(torch.randint(2, (1,), generator=g))
            images, mask = dihedral(images, k, flip), dihedral(batch["mask"], k, flip)
            target = {**batch, "mask": mask}
        images = augment(images, g).contiguous(memory_format=torch.channels_last)
        t_render += time.time() - tr
        terms = losses(model, target, images)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        step += 1
        for k, v in terms.items():
            running[k] = running.get(k, 0.0) + v.item()
        if step % args.log_every == 0 or step == args.steps:
            n = args.log_every if step % args.log_every == 0 else step % args.log_every
            msg = " ".join(f"{k}={v / n:.3f}" for k, v in running.items())
            logger.info("step %d/%d lr=%.2e %s (%.0fs, render %.0fs)", step, args.steps, opt.param_groups[0]["lr"],
                        msg, time.time() - t0, t_render)  # fmt: skip
            running = {}
        if step % args.save_every == 0 and step < args.steps:
            save_state(state_dir, model, opt, step, vars(args))
    train_s = time.time() - t0
    save_state(state_dir, model, opt, step, vars(args))

    model = model.to(memory_format=torch.contiguous_format)
    t1 = time.time()
    report = {"clean": evaluate(model, args.seed + 1, args.eval_n)}
    report["augmented"] = evaluate(model, args.seed + 1, args.eval_n, augmented=True)
    report.update(train_seconds_this_run=round(train_s, 1), eval_seconds=round(time.time() - t1, 1),
                  steps=args.steps, batch=args.batch, params=n_params, train_seed=args.seed)  # fmt: skip
    out = Path(args.out)
    model.half().save_pretrained(str(out), safe_serialization=True)
    (out / "eval_report.json").write_text(json.dumps(report, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    logger.info("saved %s (%.2f MB fp16)", out, size / 1e6)
    logger.info("held-out (seed %d, n=%d): %s", args.seed + 1, args.eval_n, json.dumps(
        {k: v for k, v in report["clean"].items() if k in (*HEADS, "iou")}))  # fmt: skip
    logger.info("held-out augmented: %s", json.dumps(
        {k: v for k, v in report["augmented"].items() if k in (*HEADS, "iou")}))  # fmt: skip
    return report


if __name__ == "__main__":
    run_script(main, "train_evaluator")
