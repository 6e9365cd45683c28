#!/usr/bin/env bash
# Retrains the embedded default model from scratch on the procedural world, then installs it into
# duetgen/embedded/pipeline. The encoder (stages 1, 2 and 2b) takes 48 to 60 minutes on 2 idle CPU cores, the
# generator (stage 3) about 210 more (bf16 autocast; drop --mixed-precision bf16 on CPUs without AVX512-BF16 or AMX).
# Every stage is resumable: rerun the script after a crash.
#   bash recipes/train_embedded.sh [RUN_DIR] [--encoder-only]
# --encoder-only stops after stage 2b and benchmarks that encoder; it installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/embedded}
ENCODER_ONLY=${2:-}
if [[ -n "$ENCODER_ONLY" && "$ENCODER_ONLY" != "--encoder-only" ]]; then
  echo "train_embedded.sh: unknown option '$ENCODER_ONLY' (the only option is --encoder-only)" >&2
  exit 2
fi
CACHE=$RUN/cache/world_train_64.npz
mkdir -p "$RUN"
# stage 1: the CLIP stand-in, a ViT with a convolutional stem (duetgen-world-cs), half of each batch in twin groups
python recipes/train_world_clip.py --arch duetgen-world-cs --out "$RUN/stage1" --cache "$CACHE" --steps 1600 \
  --batch 160 --group-share 0.5 --lr 2e-3 --warmup 100 --save-every 100 --resume
# stage 2: the duet method (the shipped default is caption-supervised; see README for the caption-free figures)
python recipes/train_duet.py --init "$RUN/stage1/encoder" --out "$RUN/stage2" --cache "$CACHE" --steps 800 \
  --groups-per-batch 32 --lr 2e-3 --eval-every 400 --caption-supervised --resume
# stage 2b: the duet continued with V's four transformer blocks and projection trainable too (--visual-blocks; not the
# method: the stand-in CLIP's V knows too little shape). The generator below is trained on the stage-2 encoder and
# installed with this one (export_embedded.py --encoder): it was trained so, and it draws as well with either.
python recipes/train_duet.py --init "$RUN/stage2/encoder" --out "$RUN/stage2b" --cache "$CACHE" --steps 400 \
  --groups-per-batch 32 --lr 2e-3 --eval-every 400 --caption-supervised --visual-blocks 4 --visual-lr 2e-3 --resume
if [[ -n "$ENCODER_ONLY" ]]; then
  python benchmarks/bench_world_duet.py --model "$RUN/stage2b/encoder"
  exit 0
fi
# stage 3: the generator, L_rec with the encoder frozen (v-prediction, Min-SNR-5 weighting, sketch region channel,
# cross-attention to the composed query's token states, 32 channels at full resolution): 2,400 steps from scratch,
# then 1,600 more at a lower learning rate from those weights
python recipes/train_generator.py --encoder "$RUN/stage2/encoder" --out "$RUN/generator" --cache "$CACHE" \
  --prediction-type v_prediction --snr-gamma 5 --batch-size 32 --lr 1e-3 --steps 2400 \
  --block-out-channels 32,32,64,128 --mixed-precision bf16 --resume
python recipes/train_generator.py --init "$RUN/generator/pipeline" --out "$RUN/generator2" --cache "$CACHE" \
  --prediction-type v_prediction --snr-gamma 5 --batch-size 32 --lr 5e-4 --warmup 20 --steps 1600 \
  --mixed-precision bf16 --seed 2 --resume
# then 2,000 steps on the same world with its patterns laid in the canvas frame, the UNet given the pattern waves
# (zero-initialised input weights; duetgen.generator.pattern_waves)
python recipes/train_generator.py --init "$RUN/generator2/pipeline" --out "$RUN/generator3" --pattern-frame canvas \
  --cache "$RUN/cache/world_train_64_canvas.npz" --prediction-type v_prediction --snr-gamma 5 --batch-size 32 \
  --lr 5e-4 --warmup 50 --steps 2000 --mixed-precision bf16 --seed 3 --resume
# then 1,500 steps with the canvas-frame patterns themselves as input channels (duetgen.generator.pattern_masks),
# and 1,200 + 1,200 + 800 with the conditioner gating them: only the pattern the words ask for reaches the UNet
python recipes/train_generator.py --init "$RUN/generator3/pipeline" --out "$RUN/generator4" --pattern-frame canvas \
  --pattern-masks --cache "$RUN/cache/world_train_64_canvas.npz" --prediction-type v_prediction --snr-gamma 5 \
  --batch-size 32 --lr 5e-4 --warmup 50 --steps 1500 --mixed-precision bf16 --seed 4 --resume
python recipes/train_generator.py --init "$RUN/generator4/pipeline" --out "$RUN/generator5" --pattern-frame canvas \
  --pattern-masks --pattern-gates --cache "$RUN/cache/world_train_64_canvas.npz" --prediction-type v_prediction \
  --snr-gamma 5 --batch-size 32 --lr 5e-4 --warmup 50 --steps 1200 --mixed-precision bf16 --seed 5 --resume
python recipes/train_generator.py --init "$RUN/generator5/pipeline" --out "$RUN/generator6" --pattern-frame canvas \
  --pattern-masks --pattern-gates --cache "$RUN/cache/world_train_64_canvas.npz" --prediction-type v_prediction \
  --snr-gamma 5 --batch-size 32 --lr 5e-4 --warmup 50 --steps 1200 --mixed-precision bf16 --seed 6 --resume
python recipes/train_generator.py --init "$RUN/generator6/pipeline" --out "$RUN/generator7" --pattern-frame canvas \
  --pattern-masks --pattern-gates --cache "$RUN/cache/world_train_64_canvas.npz" --prediction-type v_prediction \
  --snr-gamma 5 --batch-size 32 --lr 5e-4 --warmup 50 --steps 800 --mixed-precision bf16 --seed 7 --resume
python recipes/export_embedded.py "$RUN/generator7/pipeline" --encoder "$RUN/stage2b/encoder"
duetgen index samples/gallery_photos --out samples/gallery --regions --rebuild --quiet  # the manifest names the encoder
python benchmarks/bench_world_duet.py
