#!/usr/bin/env python
"""Long fuzz run of every duetgen input parser: a seeded mutation loop, thousands of inputs per parser.

Parsers (targets of ``tests/fuzz_corpus.py``): raster images (PNG/JPEG/WebP/GIF/BMP/TIFF/PPM), SVG, QuickDraw
ndjson and sketch-rnn stroke-3 through ``read_sketch``; in-memory arrays and tensors; the QuickDraw, Sketchy and
QMUL dataset loaders and class-split files; the world-groups cache; the five files of a gallery folder; a checkpoint
folder's ``config.json`` and safetensors weights through ``duetgen.load_encoder``.

Input ``i`` of a parser is drawn from ``random.Random(f"{seed}-{parser}-{i}")``: the unmutated seeds first, then
one input in five random bytes behind a format's magic (where the parser has one), one in five a random document
from the format's grammar (SVG trees, QuickDraw drawings, stroke-3 arrays; in-memory arrays are always generated)
and the rest a valid seed file mutated by 1 to 4 ops (bit flips, interesting integers, insertions, deletions,
duplications, truncations, splices; number and token replacements for text; structural edits for JSON). Each
parser runs in its own child process, each input under a time limit and an address-space cap, so a hang, a memory
blow-up or even a segfault is recorded as a crash with its input saved to ``--out/crashes/`` instead of ending
the run.

Outcomes: *parsed* (returned), *refused* (raised the parser's duetgen error with a one-line message), *crash*
(anything else). Prints a markdown table and writes ``--out/fuzz_inputs.json``.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/fuzz_inputs.py --inputs 3000 --out runs/fuzz
    python benchmarks/fuzz_inputs.py --parsers svg,raster --inputs 500 --out runs/fuzz   # a subset
    python benchmarks/fuzz_inputs.py --replay runs/fuzz/crashes/svg-0.bin --parsers svg  # rerun one repro
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALL_PARSERS = (
    "raster", "svg", "quickdraw", "stroke3", "array", "quickdraw_dataset", "quickdraw_npy", "class_split",
    "dataset_images", "qmul_split", "world_groups", "gallery_manifest", "gallery_items", "gallery_embeddings",
    "gallery_index", "gallery_regions", "checkpoint_config", "checkpoint_weights",
)  # fmt: skip


def make_input(target, i: int, seed: int) -> bytes:
    """Input ``i`` of ``target``: reproducible from (seed, parser, i) alone."""
    from fuzz_corpus import apply_ops, random_ops

    rng = random.Random(f"{seed}-{target.name}-{i}")
    if i < len(target.seeds):
        return target.seeds[i]
    if target.generate and (not target.ops or i % 5 == 1):
        return target.generate(rng)
    if target.random_prefixes and i % 5 == 0:
        return rng.choice(target.random_prefixes) + rng.randbytes(rng.choice((0, 1, 8, 64, 512, 2048)))
    return apply_ops(rng.choice(target.seeds), random_ops(rng, target.ops), target.ops, target.seeds)


def crash_key(err: BaseException) -> str:
    """Deduplication key: exception type and the innermost duetgen frame (or innermost frame)."""
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if "duetgen" in f.filename and "fuzz_corpus" not in f.filename] or frames[-1:]
    where = f"{Path(own[-1].filename).name}:{own[-1].lineno}" if own else "?"
    return f"{type(err).__name__}@{where}"


def worker(args) -> int:
    """Runs one parser from input ``--start`` to ``--inputs``, appending one JSON line per input to the log."""
    from fuzz_corpus import build_targets, classify, memory_limit

    name = args.worker
    out = Path(args.out)
    targets, ws = build_targets(out / "fixtures", [name])
    target = targets[name]
    log = open(out / f"{name}.log.jsonl", "a")
    current = out / f"{name}.current"
    crashes = out / "crashes"
    crashes.mkdir(exist_ok=True)
    seen = (
        {json.loads(x)["key"] for x in (out / f"{name}.crashes.jsonl").read_text().splitlines()}
        if (out / f"{name}.crashes.jsonl").is_file()
        else set()
    )
    deadline = time.monotonic() + args.max_seconds
    for i in range(args.start, args.inputs):
        if time.monotonic() > deadline:
            break
        data = make_input(target, i, args.seed)
        current.write_bytes(data)  # left behind if the process dies (segfault, OOM kill)
        t0 = time.perf_counter()
        with memory_limit(args.mem_mb * 2**20):
            outcome = classify(target, data, timeout=args.timeout)
        dt = time.perf_counter() - t0
        rec = {"i": i, "kind": outcome.kind, "s": round(dt, 4)}
        if outcome.kind == "crash":
            key = (
                crash_key(outcome.error)
                if not outcome.detail.startswith(("hang", "MemoryError"))
                else (outcome.detail.split(":")[0])
            )
            rec["key"] = key
            if key not in seen:
                seen.add(key)
                repro = crashes / f"{name}-{len(seen) - 1}.bin"
                repro.write_bytes(data)
                tb = "".join(traceback.format_exception(outcome.error))
                (repro.with_suffix(".txt")).write_text(
                    f"{name} input {i} (seed {args.seed})\n{outcome.detail}\n\n{tb}"
                )
                with open(out / f"{name}.crashes.jsonl", "a") as fh:
                    fh.write(json.dumps({"key": key, "i": i, "detail": outcome.detail, "repro": str(repro)}) + "\n")
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if i % 50 == 0:
            ws.clean()
    current.unlink(missing_ok=True)
    ws.clean()
    return 0


def run_parser(name: str, args) -> dict:
    """Runs the worker for one parser in child processes, restarting after a fatal crash (segfault, kill)."""
    out = Path(args.out)
    for f in (f"{name}.log.jsonl", f"{name}.crashes.jsonl", f"{name}.current"):
        (out / f).unlink(missing_ok=True)
    start, fatal = 0, []
    t0 = time.perf_counter()
    while start < args.inputs:
        remaining = args.max_seconds - (time.perf_counter() - t0)
        if remaining <= 0:
            break
        cmd = [sys.executable, __file__, "--worker", name, "--start", str(start), "--inputs", str(args.inputs),
               "--seed", str(args.seed), "--out", str(out), "--timeout", str(args.timeout),
               "--mem-mb", str(args.mem_mb), "--max-seconds", str(remaining)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        done = (
            [json.loads(x) for x in (out / f"{name}.log.jsonl").read_text().splitlines()]
            if (out / f"{name}.log.jsonl").is_file()
            else []
        )
        if proc.returncode == 0:
            break
        current = out / f"{name}.current"
        last = done[-1]["i"] if done else start - 1
        repro = out / "crashes" / f"{name}-fatal-{len(fatal)}.bin"
        repro.parent.mkdir(exist_ok=True)
        if current.is_file():
            current.replace(repro)
        fatal.append({"i": last + 1, "returncode": proc.returncode, "repro": str(repro),
                      "stderr": proc.stderr[-2000:]})  # fmt: skip
        print(f"  {name}: worker died (rc {proc.returncode}) at input {last + 1}; repro {repro}", flush=True)
        start = last + 2
        if len(fatal) >= 5:
            break
    wall = time.perf_counter() - t0
    recs = (
        [json.loads(x) for x in (out / f"{name}.log.jsonl").read_text().splitlines()]
        if (out / f"{name}.log.jsonl").is_file()
        else []
    )
    kinds = Counter(r["kind"] for r in recs)
    crash_list = (
        [json.loads(x) for x in (out / f"{name}.crashes.jsonl").read_text().splitlines()]
        if (out / f"{name}.crashes.jsonl").is_file()
        else []
    )
    crash_counts = Counter(r["key"] for r in recs if r["kind"] == "crash")
    for c in crash_list:
        c["count"] = crash_counts[c["key"]]
    times = sorted(r["s"] for r in recs) or [0.0]
    return {
        "parser": name,
        "inputs": len(recs) + len(fatal),
        "parsed": kinds["parsed"],
        "refused": kinds["refused"],
        "crashes": kinds["crash"] + len(fatal),
        "unique_crashes": len(crash_list) + len(fatal),
        "hangs": sum(1 for r in recs if r.get("key", "").startswith("hang")),
        "fatal": fatal,
        "crash_list": crash_list,
        "max_s": times[-1],
        "p50_ms": 1000 * times[len(times) // 2],
        "wall_s": round(wall, 1),
    }


def replay(args) -> int:
    from fuzz_corpus import build_targets, classify

    out = Path(args.out)
    targets, ws = build_targets(out / "fixtures", [args.parsers])
    outcome = classify(targets[args.parsers], Path(args.replay).read_bytes(), timeout=args.timeout)
    print(outcome.kind, outcome.detail)
    if outcome.error is not None and outcome.kind == "crash":
        traceback.print_exception(outcome.error)
    ws.clean()
    return 1 if outcome.kind == "crash" else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parsers", default=",".join(ALL_PARSERS), help="comma-separated parsers (default: all)")
    p.add_argument("--inputs", type=int, default=3000, help="inputs per parser (default 3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/fuzz", help="folder for crashes/, logs and fuzz_inputs.json")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds one input may take before it is a hang")
    p.add_argument("--mem-mb", type=int, default=2048, help="address space one input may add (MiB)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="time budget per parser")
    p.add_argument("--replay", help="run one saved input through --parsers (one parser) and print the outcome")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(args)
    if args.replay:
        return replay(args)
    names = [n for n in args.parsers.split(",") if n]
    unknown = sorted(set(names) - set(ALL_PARSERS))
    if unknown:
        p.error(f"unknown parsers {unknown}; choose from {', '.join(ALL_PARSERS)}")
    results = []
    for name in names:
        r = run_parser(name, args)
        results.append(r)
        print(f"{name}: {r['inputs']} inputs, {r['parsed']} parsed, {r['refused']} refused, {r['crashes']} crashes "
              f"({r['unique_crashes']} unique), {r['wall_s']} s", flush=True)  # fmt: skip
        for c in r["crash_list"]:
            print(f"    {c['key']} x{c['count']}: {c['detail'][:160]}  repro {c['repro']}", flush=True)
    print()
    print("| parser | inputs | parsed | refused (duetgen error) | crashes | unique crashes | hangs | p50 ms | max s "
          "| wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['parser']} | {r['inputs']} | {r['parsed']} | {r['refused']} | {r['crashes']} | "
              f"{r['unique_crashes']} | {r['hangs']} | {r['p50_ms']:.1f} | {r['max_s']:.2f} | "
              f"{r['wall_s']} |")  # fmt: skip
    total = {k: sum(r[k] for r in results) for k in ("inputs", "parsed", "refused", "crashes", "unique_crashes")}
    print(f"| **total** | {total['inputs']} | {total['parsed']} | {total['refused']} | {total['crashes']} | "
          f"{total['unique_crashes']} | | | | |")  # fmt: skip
    report = {"seed": args.seed, "inputs_per_parser": args.inputs, "timeout_s": args.timeout, "mem_mb": args.mem_mb,
              "python": sys.version.split()[0], "parsers": results, "total": total}  # fmt: skip
    (Path(args.out) / "fuzz_inputs.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {Path(args.out) / 'fuzz_inputs.json'}")
    return 1 if total["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
