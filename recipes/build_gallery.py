#!/usr/bin/env python
"""Build a gallery with several processes: each rank embeds a contiguous share of the sorted image list into the
shared work folder, rank 0 merges the shards in path order and writes the gallery (atomically).

The result equals a one-process ``duetgen index`` of the same folder (same order, same embeddings up to float
rounding). Like ``duetgen index`` it is resumable: run the same command again after a crash and every rank skips
the rows already in the work folder.

    python -m torch.distributed.run --nproc_per_node 2 recipes/build_gallery.py photos/ --out photos.gallery   # CPU
    accelerate launch --multi_gpu --num_processes 8 recipes/build_gallery.py photos/ --out photos.gallery --model DIR
    python recipes/build_gallery.py photos/ --out photos.gallery          # one process

On CPU the processes talk over gloo (``Accelerator(cpu=True)`` under torchrun). Note that ``accelerate launch --cpu
--num_processes 2`` starts only *one* process on a single machine (accelerate runs multi-CPU jobs through mpirun
with ``--mpirun_hostfile``); ``accelerate launch --multi_gpu --num_processes 2`` on a machine without GPUs uses
torchrun and works like the first line. The work folder (default ``.NAME.work`` beside ``--out``) must be on a file
system every rank can see.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import duetgen
from duetgen.errors import run_script
from duetgen.gallery import GalleryBuilder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("photos", help="folder of photos (searched recursively)")
    p.add_argument("--out", required=True, help="gallery folder to write")
    p.add_argument("--model", default=None, help="encoder folder or backbone (default: the embedded encoder)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=None, help="decoding processes per rank (default min(2, cpus))")
    p.add_argument("--regions", action="store_true", help="also keep region embeddings (scene retrieval)")
    p.add_argument("--index", default="auto", choices=("auto", "flat", "ivf", "hnsw"))
    p.add_argument("--fp16", action="store_true", help="store embeddings as float16")
    p.add_argument("--work-dir", default=None, help="shared shard folder (default .NAME.work beside --out)")
    p.add_argument("--flush-every", type=int, default=16, help="batches per shard file")
    return p.parse_args(argv)


def main(argv=None) -> None:
    from accelerate import Accelerator

    args = parse_args(argv)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    encoder = duetgen.load_encoder(args.model, device=acc.device)
    builder = GalleryBuilder(
        encoder, args.photos, args.out, batch_size=args.batch_size, num_workers=args.num_workers,
        regions=args.regions, dtype="float16" if args.fp16 else "float32", index=args.index,
        flush_every=args.flush_every, work_dir=args.work_dir, progress=acc.is_main_process,
        model_source="embedded" if args.model is None else args.model,
    )  # fmt: skip
    t0 = time.perf_counter()
    # 1. rank 0 lists the images and writes the plan; the others check they see the same list
    if acc.is_main_process:
        builder.prepare(write=True)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        builder.prepare(write=False)
    # 2. each rank embeds its contiguous share of the rows
    share = np.array_split(np.arange(len(builder.paths)), acc.num_processes)[acc.process_index]
    start, end = (int(share[0]), int(share[-1]) + 1) if len(share) else (0, 0)
    embedded = builder.embed(start, end) if end > start else 0
    print(f"rank {acc.process_index}: rows {start}:{end}, embedded {embedded}, resumed {builder.resumed}", flush=True)
    acc.wait_for_everyone()
    # 3. rank 0 merges in path order and writes the gallery
    if acc.is_main_process:
        gallery = builder.finalize()
        summary = {
            "gallery": str(gallery.path),
            "items": len(gallery),
            "skipped": gallery.manifest["counts"]["skipped"],
            "processes": acc.num_processes,
            "distributed_type": str(acc.distributed_type),
            "index": gallery.index.kind,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        print(json.dumps(summary), flush=True)
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    run_script(main, "build_gallery")
