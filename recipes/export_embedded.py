#!/usr/bin/env python
"""Installs a trained DuetGenPipeline folder as the embedded default (``duetgen/embedded/pipeline``).

Checks that it loads, that every weight file is fp16 safetensors (no pickles), and that everything shipped
(pipeline + evaluator) stays under the 40 MB budget; swaps the folder in atomically.

    python recipes/export_embedded.py runs/generator/pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from safetensors import safe_open

import duetgen
from duetgen.embedded import EMBEDDED_DIR, PIPELINE_DIR
from duetgen.pipelines import load_pipeline

BUDGET_MB = 40.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pipeline", help="pipeline folder written by recipes/train_generator.py")
    args = p.parse_args(argv)
    src = Path(args.pipeline)
    load_pipeline(src)  # refuses pickles, unknown configs, missing parts
    for f in src.rglob("*"):
        if f.is_file() and f.suffix not in (".json", ".safetensors", ".txt"):
            sys.exit(f"refusing to ship {f}: only json and safetensors files belong in the embedded model")
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as st:
                dtypes = {str(st.get_slice(k).get_dtype()) for k in st.keys()}
            if dtypes - {"F16", "I64"}:
                sys.exit(f"{f} holds {dtypes}; ship fp16 weights (the training recipe saves them so)")
    tmp = PIPELINE_DIR.with_name(".pipeline.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = PIPELINE_DIR.with_name(".pipeline.old")
    shutil.rmtree(old, ignore_errors=True)
    if PIPELINE_DIR.exists():
        os.replace(PIPELINE_DIR, old)
    os.replace(tmp, PIPELINE_DIR)
    shutil.rmtree(old, ignore_errors=True)
    total = sum(f.stat().st_size for f in EMBEDDED_DIR.rglob("*.safetensors")) / 1e6
    print(json.dumps({"installed": str(PIPELINE_DIR), "shipped_weights_mb": round(total, 1)}))
    if total > BUDGET_MB:
        print(f"warning: shipped weights {total:.1f} MB exceed the {BUDGET_MB} MB budget", file=sys.stderr)
        return 1
    duetgen.load_encoder()
    return 0


if __name__ == "__main__":
    sys.exit(main())
