#!/usr/bin/env python
"""Ablation of the duet losses: stage 2 trained from the same stage-1 CLIP with each loss switched off in turn.

Each variant runs ``recipes/train_duet.py`` for ``--steps`` steps (same seed, same data), then the twin benchmark.
Results are cached per variant in OUT/<variant>/eval.jsonl, so a rerun only trains what is missing.

    python benchmarks/bench_duet_ablation.py --init runs/stage1/encoder --out runs/ablation --steps 400
    python benchmarks/bench_duet_ablation.py --init runs/stage1/encoder --out runs/ablation_cs --caption-supervised
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "full": [],
    "no L_trip": ["--w-trip", "0"],
    "no InfoNCE": ["--w-nce", "0"],
    "no L_comp": ["--w-comp", "0"],
    "no L_reg": ["--w-reg", "0"],
    "no L_TT": ["--w-tt", "0"],
    "no L_RT": ["--w-rt", "0"],
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", required=True, help="stage-1 encoder folder")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--caption-supervised", action="store_true")
    p.add_argument("--extra", default="", help="extra arguments for train_duet.py, quoted")
    args = p.parse_args(argv)

    out = Path(args.out)
    results = {}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        run = out / name.replace(" ", "_")
        eval_file = run / "eval.jsonl"
        if not (eval_file.is_file() and (run / "encoder" / "config.json").is_file()):
            cmd = [sys.executable, str(REPO / "recipes" / "train_duet.py"), "--init", args.init, "--out", str(run),
                   "--steps", str(args.steps), "--eval-every", str(args.steps), "--resume", *VARIANTS[name],
                   *args.extra.split()]  # fmt: skip
            if args.caption_supervised:
                cmd.append("--caption-supervised")
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        last = json.loads(eval_file.read_text().splitlines()[-1])
        results[name] = last
    print(f"\nablation ({'caption-supervised' if args.caption_supervised else 'caption-free'}, {args.steps} steps)")
    print("| variant | sketch Acc@1 | words Acc@1 | sketch+words Acc@1 | sketch+words Acc@5 |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['sketch']['acc@1']:.3f} | {r['words']['acc@1']:.3f} | "
              f"{r['sketch+words']['acc@1']:.3f} | {r['sketch+words']['acc@5']:.3f} |")  # fmt: skip
    (out / "ablation.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
