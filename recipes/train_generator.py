#!/usr/bin/env python
"""Stage 3: the generator G (UNet + query conditioner) on world twin groups, with L_rec and the duet encoder frozen.

L_rec is the DDPM denoising loss of a pixel-space UNet conditioned on the composed query (cross-attention tokens from
the QueryConditioner, plus the query in the timestep embedding; ``--query-states``, the default: the cross-attention
also sees the query's per-token states) and on the sketch (a fourth input channel). Each
training photo [g, i, j] is paired with its instance's sketch and its attribute words ``groups.words(g, j)``; per row:

* composed query ``q(sketch, words)`` (the default);
* sometimes the caption-free sketch query ``q(sketch)`` (``--p-sketch-query``), as in the duet paper's training;
* sometimes the words-only query with a blank sketch channel (``--p-text-only``), so text alone generates;
* classifier-free guidance dropout: null query / blank sketch / both (``--p-drop-query/-sketch/-both``).

Why a separate stage after the duet encoder rather than L_rec inside stage 2: it is far cheaper on CPU (the encoder
runs forward only, under ``no_grad``, and its optimiser state is not kept), and the retrieval embedding the encoder
learnt stays exactly fixed, so galleries embedded with it stay valid. ``--encoder-grad`` passes L_rec's gradient into
the encoder's duet-trainable parts (LayerNorms of V, visual prompts, C_v2w, P_L) at ``--encoder-lr`` (single
process), as DESIGN.md's auxiliary-loss reading of L_rec; the saved pipeline then holds that fine-tuned encoder.

Writes under ``--out``: ``args.json``, ``log.jsonl`` (loss every ``--log-every`` steps), ``state/`` (accelerate
``save_state`` every ``--save-every`` steps; ``--resume`` continues from it) and ``pipeline/`` (the whole
DuetGenPipeline, encoder included, ``save_pretrained`` in fp16 safetensors; load it as float32 with
``duetgen.pipelines.load_pipeline``).

``--init PIPELINE`` fine-tunes an existing pipeline (its UNet, conditioner and scheduler, and its encoder unless
``--encoder`` is given) instead of building a fresh one from the architecture options.

    python recipes/train_generator.py --encoder runs/stage2/encoder --out runs/generator
    python recipes/train_generator.py --init runs/generator/pipeline --out runs/generator_ft --steps 800 --lr 4e-4
    accelerate launch recipes/train_generator.py --config gen.yaml --resume
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import duetgen
from duetgen import world
from duetgen import world_dataset as wd
from duetgen.atomic import load_training_state, save_training_state, truncate_log
from duetgen.errors import run_script
from duetgen.generator import (
    add_pattern_gates,
    add_pattern_masks,
    add_pattern_waves,
    blank_sketch,
    count_parameters,
    drop_conditions,
    has_pattern_masks,
    has_pattern_waves,
    rec_loss,
    sketch_channel,
)
from duetgen.pipelines import DuetGenPipeline


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", help="YAML file whose keys (e.g. batch_size: 32) become this script's defaults")
    p.add_argument("--encoder", default=None, help="duet encoder folder (save_pretrained); default: the embedded one")
    p.add_argument("--out", required=True, help="run folder: state/, pipeline/, log.jsonl, args.json")
    p.add_argument(
        "--init",
        default=None,
        help="fine-tune: start the UNet and conditioner from this pipeline folder (its architecture replaces the\n"
        "architecture options below; the encoder comes from --encoder, else the pipeline's own)",
    )
    p.add_argument(
        "--steps", type=int, default=1600, help="optimiser steps (~1.55 s each at the defaults on 2 idle cores)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="photos per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps, then cosine decay to 10%%")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the generator weights (0: off)")
    p.add_argument("--encoder-grad", action="store_true", help="also train the encoder's duet parts with L_rec")
    p.add_argument("--encoder-lr", type=float, default=1e-5)
    p.add_argument("--groups", type=int, default=12000, help="world twin groups (the stage-2 cache is reused)")
    p.add_argument(
        "--cache",
        default=None,
        help="world cache (.npz); default runs/cache/world_train_64.npz, or world_train_64_canvas.npz with\n"
        "--pattern-frame canvas, so that a canvas run never rebuilds the object-frame cache stages 1 and 2 use",
    )
    p.add_argument("--world-seed", type=int, default=1000, help="seed of the rendered world (stage 2 uses 1000)")
    p.add_argument(
        "--pattern-frame",
        default="object",
        choices=world.PATTERN_FRAMES,
        help="object: train on the world's photos as they are. canvas: on the same photos with their patterns laid\n"
        "in the canvas frame, and give the UNet the pattern waves (duetgen.generator.pattern_waves; an --init\n"
        "pipeline without them gets them, zero-initialised). The cache records its frame (see --cache)",
    )
    p.add_argument(
        "--pattern-masks",
        action="store_true",
        help="with --pattern-frame canvas: also give the UNet the canvas-frame patterns themselves\n"
        "(duetgen.generator.pattern_masks; an --init pipeline without them gets them, zero-initialised)",
    )
    p.add_argument(
        "--pattern-gates",
        action="store_true",
        help="with --pattern-masks: the conditioner picks which pattern's masks reach the UNet\n"
        "(QueryConditioner.pattern_probs; an --init pipeline without the gates gets them, all choices equal)",
    )
    p.add_argument(
        "--gate-loss-weight",
        type=float,
        default=0.1,
        help="with --pattern-gates: weight of the cross-entropy between the gate and the pattern the words name\n"
        "(rows whose query has the words; 0: the gates learn from the denoising loss alone)",
    )
    p.add_argument("--gate-lr", type=float, default=3e-3, help="learning rate of the pattern gates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prediction-type", default="v_prediction", choices=("epsilon", "v_prediction", "sample"))
    p.add_argument(
        "--snr-gamma", type=float, default=5.0, help="Min-SNR-gamma loss weighting (Hang et al. 2023; 0: plain MSE)"
    )
    p.add_argument("--block-out-channels", default="16,32,64,128", help="UNet channels per level")
    p.add_argument(
        "--no-sketch-fill",
        action="store_true",
        help="do not give the UNet the region the sketch encloses (an outline-only, 3 + 1 channel UNet)",
    )
    p.add_argument("--attention-levels", type=int, default=2, help="lowest levels with attention blocks")
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--cross-attention-dim", type=int, default=128)
    p.add_argument("--num-query-tokens", type=int, default=4)
    p.add_argument(
        "--query-states",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cross-attention also sees the composed query token by token (the text transformer's states)",
    )
    p.add_argument("--p-drop-states", type=float, default=0.1, help="rows whose token states become the null states")
    p.add_argument(
        "--p-sketch-query", type=float, default=0.2, help="rows conditioned on the caption-free sketch query"
    )
    p.add_argument(
        "--p-photo-query",
        type=float,
        default=0.0,
        help="rows conditioned as attribute transfer is: the same instance's photo with the group's other\n"
        "attributes (through encode_image) plus words naming only what changes ('in blue at night')",
    )
    p.add_argument("--p-text-only", type=float, default=0.1, help="rows with a words-only query and a blank sketch")
    p.add_argument("--p-drop-query", type=float, default=0.1, help="rows whose query becomes the null query")
    p.add_argument("--p-drop-sketch", type=float, default=0.1, help="rows whose sketch channel becomes blank")
    p.add_argument("--p-drop-both", type=float, default=0.1, help="rows with neither (the unconditional example)")
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--resume", action="store_true", help="continue from OUT/state if present")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--mixed-precision",
        default="no",
        choices=("no", "bf16", "fp16"),
        help="autocast the UNet and conditioner (accelerate's mixed_precision). bf16 trains about 1.4x faster on\n"
        "CPUs with AVX512-BF16 or AMX; fp16 needs a GPU. The shipped weights are fp16 either way",
    )

    pre, _ = p.parse_known_args(argv)
    if pre.config:
        import yaml

        cfg = yaml.safe_load(Path(pre.config).read_text()) or {}
        if not isinstance(cfg, dict):
            p.error(f"--config {pre.config}: expected a mapping of option: value")
        known = {a.dest for a in p._actions}
        cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
        unknown = sorted(set(cfg) - known)
        if unknown:
            p.error(f"--config {pre.config}: unknown keys {unknown}")
        p.set_defaults(**cfg)
        for action in p._actions:  # a required option given in the config is no longer required on the command line
            if action.dest in cfg:
                action.required = False
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1")
    for name in ("p_drop_states", "p_sketch_query", "p_photo_query", "p_text_only", "p_drop_query", "p_drop_sketch",
                 "p_drop_both"):  # fmt: skip
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be a probability in [0, 1], got {getattr(args, name)}")
    if args.cache is None:
        args.cache = f"runs/cache/world_train_64{'_canvas' if args.pattern_frame == 'canvas' else ''}.npz"
    if args.pattern_frame == "canvas" and args.no_sketch_fill and not args.init:
        p.error("--pattern-frame canvas needs the sketch region channel: drop --no-sketch-fill")
    if args.pattern_masks and args.pattern_frame != "canvas":
        p.error("--pattern-masks needs --pattern-frame canvas (the masks are the canvas-frame patterns)")
    if args.pattern_gates and not args.pattern_masks:
        p.error("--pattern-gates needs --pattern-masks (the gates scale the pattern masks)")
    if args.gate_loss_weight < 0:
        p.error(f"--gate-loss-weight must be >= 0, got {args.gate_loss_weight}")
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        p.error("--mixed-precision fp16 needs a GPU; use bf16 (or no) on a CPU")
    if args.init:
        from duetgen.pipelines.pipeline_duetgen import check_pipeline_folder

        try:
            check_pipeline_folder(args.init)
        except duetgen.DuetgenError as err:
            p.error(f"--init: {str(err).splitlines()[0]}")
    return args


def lr_lambda(args):
    def f(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def sample_batch(groups: wd.WorldGroups, args, step: int):
    """Rows (g, i, j) for one step, deterministic from (seed, step) so a resumed run sees the same batches.

    Returns target photos (B, 3, S, S) in [-1, 1], sketches (B, 3, S, S) in [0, 1], words, the text-only mask (B,),
    for ``--p-photo-query`` rows the source photos (B, 3, S, S) in [0, 1] with their mask (B,) (else ``None``), and
    the target photos' patterns (B,) as indices into ``world.PATTERNS``.
    """
    rng = np.random.default_rng([args.seed, step])
    b = args.batch_size
    g = rng.integers(0, len(groups), b)
    i = rng.integers(0, 2, b)
    j = rng.integers(0, 2, b)
    photos = wd.to_float(groups.photos[g, i, j]) * 2 - 1  # (B, 3, S, S) in [-1, 1]
    sketches = wd.to_float(groups.sketches[g, i])  # (B, 3, S, S) in [0, 1]
    words = [groups.words(int(gg), int(jj)) for gg, jj in zip(g, j, strict=True)]
    u = rng.random(b)
    text_only = u < args.p_text_only
    sketch_query = (u >= args.p_text_only) & (u < args.p_text_only + args.p_sketch_query)
    words = ["" if sq else w for sq, w in zip(sketch_query, words, strict=True)]  # "" = the caption-free sketch query
    sources = photo_rows = None
    if args.p_photo_query > 0:  # (drawn only then: runs without photo queries repeat earlier runs exactly)
        photo_rows = (rng.random(b) < args.p_photo_query) & ~text_only & ~sketch_query
        sources = wd.to_float(groups.photos[g, i, 1 - j])  # the same instance with the group's other attributes
        for k in np.flatnonzero(photo_rows):
            attrs = groups.records[int(g[k])]["attrs"]
            source, target = (world.Attributes.from_dict(attrs[a]) for a in (1 - j[k], j[k]))
            words[k] = world.change_words(source, target)
        photo_rows = torch.from_numpy(photo_rows)
    patterns = torch.tensor([world.PATTERNS.index(groups.records[int(gg)]["attrs"][int(jj)]["pattern"])
                             for gg, jj in zip(g, j, strict=True)])  # fmt: skip
    return photos, sketches, words, torch.from_numpy(text_only), sources, photo_rows, patterns


def encode_queries(
    encoder,
    sketches: torch.Tensor,
    words: list[str],
    text_only: torch.Tensor,
    sources: torch.Tensor | None = None,
    photo_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composed / sketch-only / words-only / photo + change-words queries per row: (B, D), and their token states
    (B, L, Wt). Photo rows enter as attribute transfer does: ``encode_query(sketch_embeds=encode_image(source))``."""
    query = torch.empty(len(words), encoder.embed_dim, device=sketches.device)
    width = encoder.clip.token_embedding.embedding_dim
    states = torch.empty(len(words), encoder.context_length, width, device=sketches.device)
    photo_rows = torch.zeros_like(text_only) if photo_rows is None else photo_rows
    with_sketch = (~text_only & ~photo_rows).nonzero().flatten().tolist()
    only_words = text_only.nonzero().flatten().tolist()
    for rows, images in ((with_sketch, sketches[with_sketch]), (only_words, None)):
        if rows:
            q, h = encoder.encode_query(images, [words[k] for k in rows], return_states=True)
            query[rows], states[rows] = q.float(), h.float()
    from_photo = photo_rows.nonzero().flatten().tolist()
    if from_photo:
        embeds = encoder.encode_image(sources[from_photo])
        q, h = encoder.encode_query(sketch_embeds=embeds, words=[words[k] for k in from_photo], return_states=True)
        query[from_photo], states[from_photo] = q.float(), h.float()
    return query, states


def main(argv=None) -> None:
    args = parse_args(argv)
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.training_utils import EMAModel

    if args.threads:
        torch.set_num_threads(args.threads)
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        (out / "args.json").write_text(json.dumps(vars(args), indent=2))

    groups = wd.load_or_build(args.cache, args.groups, seed=args.world_seed, size=64, pattern_frame=args.pattern_frame)
    if args.init:
        from duetgen.pipelines import load_pipeline

        pipe = load_pipeline(args.init)  # fp16 on disk, float32 here
        pipe.unet.requires_grad_(True)
        pipe.conditioner.requires_grad_(True)
        encoder = duetgen.load_encoder(args.encoder) if args.encoder else pipe.encoder
        if pipe.sample_size != groups.size:
            raise SystemExit(
                f"--init {args.init}: generates {pipe.sample_size} px, the world cache is {groups.size} px"
            )
    else:
        encoder = duetgen.load_encoder(args.encoder)
    encoder.requires_grad_(False)
    encoder.eval()
    channels = tuple(int(c) for c in str(args.block_out_channels).split(","))
    if not args.init:
        pipe = DuetGenPipeline.from_encoder(
            encoder,
            sample_size=groups.size,
            prediction_type=args.prediction_type,
            num_query_tokens=args.num_query_tokens,
            cross_attention_dim=args.cross_attention_dim,
            block_out_channels=channels,
            attention_levels=args.attention_levels,
            layers_per_block=args.layers_per_block,
            sketch_fill=not args.no_sketch_fill,
            pattern_waves=args.pattern_frame == "canvas",
            pattern_masks=args.pattern_masks,
            pattern_gates=args.pattern_gates,
            norm_num_groups=math.gcd(8, *channels),
            query_states=args.query_states,
        )
    elif args.pattern_frame == "canvas":
        try:
            if not has_pattern_waves(pipe.unet):
                pipe.unet = add_pattern_waves(pipe.unet).requires_grad_(True)
                acc.print("--init: the UNet now also takes the pattern waves (zero-initialised input weights)")
            if args.pattern_masks and not has_pattern_masks(pipe.unet):
                pipe.unet = add_pattern_masks(pipe.unet).requires_grad_(True)
                acc.print("--init: the UNet now also takes the pattern masks (zero-initialised input weights)")
            if args.pattern_gates and not pipe.conditioner.uses_pattern_gates:
                pipe.conditioner = add_pattern_gates(pipe.conditioner).requires_grad_(True)
                acc.print("--init: the conditioner now gates the pattern masks (all choices equal at first)")
        except ValueError as err:
            raise SystemExit(f"--init {args.init} with --pattern-frame canvas: {err}") from None
    unet, conditioner, scheduler = pipe.unet, pipe.conditioner, pipe.scheduler
    use_states = conditioner.uses_states
    gated = conditioner.uses_pattern_gates and has_pattern_masks(unet)
    gate_hits: list[float] = []
    acc.print(f"generator: {count_parameters(unet, conditioner) / 1e6:.2f} M parameters; {len(groups)} world groups")

    gate_params = [p for n, p in conditioner.named_parameters() if n.startswith("gate_")]
    rest = [p for n, p in conditioner.named_parameters() if not n.startswith("gate_")]
    param_groups = [{"params": list(unet.parameters()) + rest, "lr": args.lr}]
    if gate_params:  # a linear read-out of features that already carry the pattern: it can learn much faster
        param_groups.append({"params": gate_params, "lr": args.gate_lr})
    if args.encoder_grad:
        param_groups.append({"params": encoder.set_trainable("duet"), "lr": args.encoder_lr})
    opt = torch.optim.AdamW(param_groups, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args))
    if args.encoder_grad and acc.num_processes > 1:
        raise SystemExit("--encoder-grad runs in a single process (the encoder is not wrapped for gradient sync)")
    # The encoder is called through its encode_query method, so it is not wrapped (DDP wraps only forward).
    unet, conditioner, opt, sched = acc.prepare(unet, conditioner, opt, sched)
    encoder.to(acc.device)
    trained = list(acc.unwrap_model(unet).parameters()) + list(acc.unwrap_model(conditioner).parameters())
    ema = None
    if args.ema_decay > 0:
        ema = EMAModel(trained, decay=args.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
        acc.register_for_checkpointing(ema)

    state_dir = out / "state"
    start = 0
    saved = load_training_state(acc, state_dir) if args.resume else None
    if saved is not None:
        start = saved["step"]
        acc.print(f"resumed at step {start}")
    if acc.is_main_process:
        truncate_log(out / "log.jsonl", start + 1)  # records are numbered by steps done
    log = open(out / "log.jsonl", "a") if acc.is_main_process else None
    unet.train()
    conditioner.train()
    t0, window, losses = time.time(), time.time(), []
    for step in range(start, args.steps):
        # noise and condition dropout drawn from (seed, step) alone, so a resumed run repeats an uninterrupted one
        gen = torch.Generator().manual_seed(args.seed * 100003 + step)
        photos, sketches, words, text_only, sources, photo_rows, patterns = sample_batch(groups, args, step)
        photos, sketches = photos.to(acc.device), sketches.to(acc.device)
        if sources is not None:
            sources, photo_rows = sources.to(acc.device), photo_rows.to(acc.device)
        size = photos.shape[-1]
        with torch.set_grad_enabled(args.encoder_grad):
            query, states = encode_queries(  # (B, D), (B, L, Wt)
                encoder, sketches, words, text_only.to(acc.device), sources, photo_rows
            )
        drop_q, drop_s = drop_conditions(
            len(words), args.p_drop_query, args.p_drop_sketch, args.p_drop_both, generator=gen, device=acc.device
        )
        drop_s = drop_s | text_only.to(acc.device)
        sk = sketch_channel(sketches, size=size)  # (B, 1, S, S)
        sk = torch.where(drop_s.view(-1, 1, 1, 1), blank_sketch(len(words), size, device=acc.device), sk)
        drop_h = None
        if use_states:  # (drawn only then: runs without states repeat earlier runs exactly)
            drop_h = torch.rand(len(words), generator=gen).to(acc.device) < args.p_drop_states
        tokens, labels = conditioner(query, drop_q, states, drop_h)
        probs = None
        if gated:  # which pattern's masks reach the UNet; trained to name the pattern where the query has the words
            logits = conditioner.pattern_logits(tokens, labels)  # (B, 1 + P)
            probs = logits.softmax(dim=-1)
        loss = rec_loss(unet, scheduler, photos, sk, tokens, labels, generator=gen, snr_gamma=args.snr_gamma,
                        pattern_probs=probs)  # fmt: skip
        if gated:
            named = torch.tensor([bool(w) for w in words], device=acc.device) & ~drop_q
            if drop_h is not None:
                named = named & ~drop_h
            if photo_rows is not None:
                named = named & ~photo_rows  # change words name the target's pattern only when it changes
            if named.any():
                target = patterns.to(acc.device)[named]  # world.PATTERNS order: solid first, as the gates
                gate_ce = F.cross_entropy(logits[named].float(), target)
                gate_hits.append((logits[named].argmax(-1) == target).float().mean().item())
                loss = loss + args.gate_loss_weight * gate_ce
        acc.backward(loss)
        if args.grad_clip > 0:
            acc.clip_grad_norm_(trained, args.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(trained)
        losses.append(loss.item())

        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            rec = {
                "step": done,
                "loss": float(np.mean(losses)),
                "lr": sched.get_last_lr()[0],
                "s_per_step": (time.time() - window) / len(losses),
                "elapsed_s": time.time() - t0,
            }
            if gate_hits:
                rec["gate_acc"] = float(np.mean(gate_hits))
            losses, window, gate_hits = [], time.time(), []
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            gate = f" gate acc {rec['gate_acc']:.2f}" if "gate_acc" in rec else ""
            acc.print(f"step {done}/{args.steps} loss {rec['loss']:.4f}{gate} ({rec['s_per_step']:.2f} s/step)")
        if done % args.save_every == 0 or done == args.steps:
            save_training_state(acc, state_dir, done)  # temp folder + atomic swap: a kill never tears it

    acc.wait_for_everyone()
    if acc.is_main_process:
        if ema is not None:
            ema.copy_to(trained)
        final = DuetGenPipeline(
            encoder=encoder.eval(),
            conditioner=acc.unwrap_model(conditioner).eval(),
            unet=acc.unwrap_model(unet).eval(),
            scheduler=scheduler,
        )
        for module in (final.encoder, final.conditioner, final.unet):
            module.requires_grad_(False).half()  # ship fp16; load_pipeline reads it back as float32
        final.save_pretrained(str(out / "pipeline"), safe_serialization=True)
        size_mb = sum(f.stat().st_size for f in (out / "pipeline").rglob("*.safetensors")) / 1e6
        acc.print(f"wrote {out / 'pipeline'} ({size_mb:.1f} MB)")
    if log:
        log.close()


if __name__ == "__main__":
    run_script(main, "train_generator")
