#!/usr/bin/env bash
# Issue 14, selection split: profile routing (merged, auto, babble) for the chance-delta FFN recipe on Whisper tiny.en.
set -euo pipefail
seen sweep --model /work/models/whisper-tiny.en \
  --clean runs/librispeech/calibration \
  --calibration-noise white=runs/noise/white --calibration-noise pink=runs/noise/pink \
  --calibration-noise babble=runs/noise/babble --calibration-noise engine=runs/noise/engine \
  --dataset runs/librispeech/selection.csv \
  --noise white --noise pink --noise librispeech-babble=babble:runs/librispeech/calibration \
  --snrs 0,10 --sites encoder_ffn --layers localized --bases chance --k auto \
  --lambdas 0.25,1 --adaptive --routings merged,auto,babble \
  --batch-size 15 --max-tokens 96 --seed 500 --out runs/sweep/tiny.en
