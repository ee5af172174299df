#!/usr/bin/env bash
# Issue 14 study, selection split: one-axis-at-a-time sweep on Whisper tiny.en around the chance-delta FFN recipe.
set -euo pipefail
seen sweep --model /work/models/whisper-tiny.en \
  --clean runs/librispeech/calibration \
  --calibration-noise white=runs/noise/white --calibration-noise pink=runs/noise/pink \
  --calibration-noise babble=runs/noise/babble --calibration-noise engine=runs/noise/engine \
  --dataset runs/librispeech/selection.csv \
  --noise white --noise pink --noise librispeech-babble=babble:runs/librispeech/calibration \
  --snrs 0,10 \
  --sites encoder_ffn,encoder_residual,encoder_attention \
  --layers localized,all,layer-0,layer-3 \
  --bases chance,paper,contrastive,paired \
  --k auto,1,32 \
  --lambdas 0.25,1 --adaptive \
  --batch-size 15 --max-tokens 96 --seed 500 --out runs/sweep/tiny.en
