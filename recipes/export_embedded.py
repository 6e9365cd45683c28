#!/usr/bin/env python
"""Installs a trained DuetGenPipeline folder as the embedded default (``duetgen/embedded/pipeline``).

Checks that it loads, that every weight file is fp16 safetensors (no pickles), and that everything shipped
(pipeline + evaluator) stays under the 40 MB budget, all before anything is replaced; then swaps the folder in
atomically. ``--encoder`` installs the pipeline with another ComposedQueryEncoder in place of its own (saved as fp16):
the generator was trained on one encoder, and a later duet stage refined it (``recipes/train_embedded.sh``).

    python recipes/export_embedded.py runs/generator/pipeline [--encoder runs/stage2b/encoder]
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
from duetgen.errors import DuetgenError
from duetgen.pipelines import load_pipeline

BUDGET_MB = 40.0


def _problem(folder: Path) -> str | None:
    """Why ``folder`` must not be shipped, or None."""
    for f in folder.rglob("*"):
        if f.is_file() and f.suffix not in (".json", ".safetensors", ".txt"):
            return f"refusing to ship {f}: only json and safetensors files belong in the embedded model"
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as st:
                dtypes = {str(st.get_slice(k).get_dtype()) for k in st.keys()}
            if dtypes - {"F16", "I64"}:
                return f"{f} holds {dtypes}; ship fp16 weights (the training recipe saves them so)"
    return None


def _mb(files) -> float:
    return sum(f.stat().st_size for f in files) / 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pipeline", help="pipeline folder written by recipes/train_generator.py")
    p.add_argument("--encoder", default=None, help="install this encoder folder in place of the pipeline's own")
    p.add_argument("--dest", default=str(PIPELINE_DIR), help="where to install (default: the embedded pipeline)")
    args = p.parse_args(argv)
    src, dest = Path(args.pipeline), Path(args.dest)
    try:  # both load before anything is written: a bad folder is one line, and leaves nothing behind
        pipe = load_pipeline(src)  # refuses pickles, unknown configs, missing parts
        encoder = None if args.encoder is None else duetgen.load_encoder(args.encoder).half()
        if encoder is not None and encoder.config.clip_config != pipe.encoder.config.clip_config:
            raise DuetgenError(
                f"--encoder {args.encoder} is not the architecture of the pipeline's own encoder, which its generator "
                "was trained on; pass an encoder refined from that one (recipes/train_duet.py --init)"
            )
    except DuetgenError as e:
        print(f"export_embedded: error: {e}; nothing was installed", file=sys.stderr)
        return 2
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if encoder is not None:
        shutil.rmtree(tmp / "encoder")
        encoder.register_to_config(_name_or_path=str(dest / "encoder"))  # where it is installed, not the run folder
        encoder.save_pretrained(str(tmp / "encoder"))
    others = [f for f in EMBEDDED_DIR.rglob("*.safetensors") if not {PIPELINE_DIR, dest, tmp} & set(f.parents)]
    total = _mb(tmp.rglob("*.safetensors")) + _mb(others)
    problem = _problem(tmp)
    if problem is None and total > BUDGET_MB:
        problem = f"shipped weights would be {total:.1f} MB, over the {BUDGET_MB} MB budget"
    if problem is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"export_embedded: error: {problem}; nothing was installed", file=sys.stderr)
        return 1
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    duetgen.load_encoder(dest / "encoder")
    print(json.dumps({"installed": str(dest), "shipped_weights_mb": round(total, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
