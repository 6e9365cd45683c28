#!/usr/bin/env bash
# Retrains the embedded default model from scratch on the procedural world (2 CPU cores: about 60 minutes),
# then installs it into duetgen/embedded/pipeline. Every stage is resumable: rerun the script after a crash.
#   bash recipes/train_embedded.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/embedded}
CACHE=$RUN/cache/world_train_64.npz
mkdir -p "$RUN"
# stage 1: the CLIP stand-in, random batches, then batches of twin groups (hard negatives)
python recipes/train_world_clip.py --out "$RUN/stage1" --cache "$CACHE" --steps 1500 --batch 192 --group-share 0 --resume
python recipes/train_world_clip.py --init "$RUN/stage1/encoder" --out "$RUN/stage1b" --cache "$CACHE" --steps 1500 \
  --batch 192 --lr 1e-3 --warmup 50 --group-share 0.75 --resume
# stage 2: the duet method (the shipped default is caption-supervised; see README for the caption-free figures)
python recipes/train_duet.py --init "$RUN/stage1b/encoder" --out "$RUN/stage2" --cache "$CACHE" --steps 800 \
  --groups-per-batch 32 --lr 2e-3 --eval-every 400 --caption-supervised --resume
# stage 3: the generator, L_rec with the encoder frozen
python recipes/train_generator.py --encoder "$RUN/stage2/encoder" --out "$RUN/generator" --cache "$CACHE" \
  --steps 1000 --resume
python recipes/export_embedded.py "$RUN/generator/pipeline"
python benchmarks/bench_world_duet.py
