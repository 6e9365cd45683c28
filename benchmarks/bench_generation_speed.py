#!/usr/bin/env python
"""Generation speed of a DuetGenPipeline on CPU: seconds per image, batch throughput and pipeline overhead.

* s/image: one 64 px image (sketch + words) at ``--steps`` steps with the pipeline's default guidance, median of
  ``--repeats`` runs in this process (after one warm-up run);
* throughput: images/s at ``num_images_per_prompt`` = each of ``--batches``;
* overhead: the pipeline against a bare loop of the same UNet + scheduler on the same, precomputed inputs (same
  conditioning, guidance and noise): ``(pipeline - bare) / bare``; the target is <= 10 %.

Each is measured twice: with the eager UNet and with the frozen TorchScript trace
(``DuetGenPipeline.enable_unet_jit``; the bare loop then calls the same traces), and the first traced image of the
process (tracing included) is timed too. Variants measured against each other run interleaved (a, b, a, b...), so
that the shared machine's slow phases hit both.

    python benchmarks/bench_generation_speed.py                       # the embedded generator, 2 threads
    python benchmarks/bench_generation_speed.py --model runs/generator/pipeline --out speed.json
    python benchmarks/bench_generation_speed.py --random              # the default architecture, random weights
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import time

import torch

from duetgen.errors import run_script
from duetgen.generator import gate_pattern_masks, has_pattern_masks, spatial_condition
from duetgen.pipelines.pipeline_duetgen import _trace_unet


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline folder (default: the embedded generator)")
    p.add_argument("--random", action="store_true", help="default architecture with random weights (no model needed)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=None, help="default: the pipeline's default guidance_scale")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("START", "END"),
                   help="part of the trajectory that is guided (default: the pipeline's)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", default="4,8", help="num_images_per_prompt values for throughput")
    p.add_argument("--unet-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="UNet dtype, as the CLI's (auto: bfloat16 on CPUs with native bfloat16)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target machine has 2 cores)")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def build(args):
    from duetgen.pipelines import DuetGenPipeline, load_pipeline

    if args.random:
        import duetgen
        from duetgen.backbones import get_clip_config

        torch.manual_seed(0)
        enc = duetgen.ComposedQueryEncoder(
            get_clip_config("duetgen-world"), backbone="duetgen-world", sketch_fit="canvas"
        )
        from duetgen.pipelines import resolve_unet_dtype

        pipe = DuetGenPipeline.from_encoder(enc.eval())
        pipe.unet.to(dtype=resolve_unet_dtype(args.unet_dtype))
        return pipe, "random default architecture"
    return load_pipeline(args.model, unet_dtype=args.unet_dtype), args.model or "embedded"


def paired(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, run in turn (a, b, c, a, b, c...) after one warm-up round each."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe, source = build(args)
    pipe.set_progress_bar_config(disable=True)
    guidance = args.guidance
    if guidance is None:
        guidance = inspect.signature(pipe.__call__).parameters["guidance_scale"].default
    interval = args.guidance_interval
    if interval is None:
        interval = inspect.signature(pipe.__call__).parameters["guidance_interval"].default
    interval = tuple(interval)
    size = pipe.sample_size
    sketch = torch.ones(3, size, size)
    sketch[:, size // 4 : 3 * size // 4, size // 4] = 0
    sketch[:, size // 4, size // 4 : 3 * size // 4] = 0
    text = "red with stripes in pixel art"

    pipe_traces: dict = {}

    def run_pipe(n: int = 1, interval=interval, jit: bool = False):
        # switch between eager and traced without dropping the traces (enable_unet_jit(False) would)
        pipe._unet_traces = pipe_traces if jit else None
        pipe(
            sketch=sketch,
            text=text,
            num_inference_steps=args.steps,
            guidance_scale=guidance,
            guidance_interval=interval,
            num_images_per_prompt=n,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        )

    # the bare loop: same conditioning, precomputed once
    do_cfg = guidance != 1.0
    with torch.no_grad():
        images, sk = pipe.prepare_sketch(sketch, 1)
        if pipe.conditioner.uses_states:
            _, query, states = pipe.encode_query(images, text, 1, return_states=True)
        else:
            (_, query), states = pipe.encode_query(images, text, 1), None
        hidden, labels, sk_in = pipe.prepare_conditioning(query, sk, do_cfg, states)
        sk_in = spatial_condition(sk_in, pipe.unet.config.in_channels)  # outline (+ enclosed region), as the pipeline
        if pipe.conditioner.uses_pattern_gates and has_pattern_masks(pipe.unet):  # the asked pattern's masks only
            sk_in = gate_pattern_masks(sk_in, pipe.conditioner.pattern_probs(hidden, labels))
        dtype = pipe.unet.dtype  # the UNet's inputs in its dtype; latents and scheduler in float32, as the pipeline
        hidden, labels, sk_in = hidden.to(dtype), labels.to(dtype), sk_in.to(dtype)

    traces = {}

    def unet_fn(jit: bool):
        def eager(x, t, h, lab):
            return pipe.unet(x, t, encoder_hidden_states=h, class_labels=lab).sample

        def traced(x, t, h, lab):
            key = (x.shape[0], t.dtype)
            if key not in traces:
                traces[key] = _trace_unet(pipe.unet, (x, t, h, lab))
            return traces[key](x, t, h, lab)

        return traced if jit else eager

    @torch.no_grad()
    def run_bare(jit: bool = False):
        unet = unet_fn(jit)
        scheduler = pipe.scheduler
        scheduler.set_timesteps(args.steps)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
        n = len(scheduler.timesteps)
        for i, t in enumerate(scheduler.timesteps):
            guide = do_cfg and interval[0] <= i / n < interval[1]
            h, lab, s_in = (hidden, labels, sk_in) if guide or not do_cfg else (hidden[1:], labels[1:], sk_in[1:])
            inp = torch.cat([x] * 2) if guide else x
            inp = torch.cat([scheduler.scale_model_input(inp, t).to(dtype), s_in], dim=1)
            pred = unet(inp, t, h, lab).float()
            if guide:
                u, c = pred.chunk(2)
                pred = u + guidance * (c - u)
            x = scheduler.step(pred, t, x, return_dict=False)[0]

    @torch.no_grad()
    def unet_call(batch: int, jit: bool = False):
        inp = torch.randn(batch, pipe.unet.config.in_channels, size, size).to(dtype)
        unet_fn(jit)(inp, torch.tensor(500), hidden[:1].expand(batch, -1, -1), labels[:1].expand(batch, -1))

    results = {
        "source": source,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "steps": args.steps,
        "guidance_scale": guidance,
        "guidance_interval": list(interval),
        "image_size": size,
        "unet_dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "unet_params_M": round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6, 3),
        "cross_attention_tokens": int(hidden.shape[1]),
    }
    # UNet calls, eager and traced, interleaved so that machine noise hits both alike
    calls = paired({f"{mode}_b{b}": (lambda b=b, jit=mode == "jit": unet_call(b, jit))
                    for b in (1, 2) for mode in ("eager", "jit")}, args.repeats * 4)  # fmt: skip
    for key, value in calls.items():
        results[f"unet_call_ms_{key}"] = 1000 * value
    # first jit image in a fresh state: tracing included (what a one-off `duetgen generate --jit` pays)
    t0 = time.perf_counter()
    run_pipe(jit=True)
    results["first_image_s_jit"] = time.perf_counter() - t0
    # one image: pipeline and bare loop, eager and traced, interleaved
    timed = paired({"pipe_eager": lambda: run_pipe(jit=False), "bare_eager": lambda: run_bare(False),
                    "pipe_jit": lambda: run_pipe(jit=True), "bare_jit": lambda: run_bare(True)},
                   args.repeats)  # fmt: skip
    results["s_per_image"] = timed["pipe_eager"]
    results["s_per_image_jit"] = timed["pipe_jit"]
    results["bare_loop_s_per_image"] = timed["bare_eager"]
    results["bare_loop_s_per_image_jit"] = timed["bare_jit"]
    results["pipeline_overhead"] = timed["pipe_eager"] / timed["bare_eager"] - 1
    results["pipeline_overhead_jit"] = timed["pipe_jit"] / timed["bare_jit"] - 1
    results["jit_speedup"] = timed["pipe_eager"] / timed["pipe_jit"]
    results["s_per_image_guided_every_step"] = median_time(
        lambda: run_pipe(interval=(0.0, 1.0), jit=False), args.repeats
    )
    for b in (int(x) for x in args.batches.split(",") if x):
        for mode in ("eager", "jit"):
            t = median_time(lambda b=b, mode=mode: run_pipe(b, jit=mode == "jit"), max(1, args.repeats // 2))
            results[f"images_per_s_batch{b}_{mode}"] = b / t

    print(f"generation speed: {source} (UNet {results['unet_dtype']}), {size} px, {args.steps} steps, "
          f"guidance {guidance} on {interval}, {args.threads} threads")  # fmt: skip
    print(f"{'measure':32s} value")
    for k, v in results.items():
        if isinstance(v, float):
            print(f"{k:32s} {v:.4f}")
    print(f"pipeline overhead {100 * results['pipeline_overhead']:.1f}% eager, "
          f"{100 * results['pipeline_overhead_jit']:.1f}% jit (target <= 10%); "
          f"{results['s_per_image']:.3f} s/image eager, {results['s_per_image_jit']:.3f} s/image jit "
          f"(target <= 0.75)")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    run_script(main, "bench_generation_speed")
