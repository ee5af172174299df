#!/usr/bin/env bash
# SEEN study, selection split on Whisper base: the tiny.en sweep's informative axes around the chance-delta FFN recipe.
set -euo pipefail
seen sweep --model /work/models/whisper-base \
  --clean runs/librispeech/calibration \
  --calibration-noise white=runs/noise/white --calibration-noise pink=runs/noise/pink \
  --calibration-noise babble=runs/noise/babble --calibration-noise engine=runs/noise/engine \
  --dataset runs/librispeech/selection.csv \
  --noise white --noise pink --noise librispeech-babble=babble:runs/librispeech/calibration \
  --snrs 0,10 \
  --sites encoder_ffn \
  --layers localized,all \
  --bases chance,contrastive \
  --k auto,1 \
  --lambdas 0.25,1 --adaptive \
  --batch-size 15 --max-tokens 96 --seed 500 --out runs/sweep/base
