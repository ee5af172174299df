#!/usr/bin/env bash
# Issue 14, final split: the configurations the selection split chose, on the test clips (seeds 0-14),
# with cabin and cafeteria noise never used in calibration.
set -euo pipefail
noises="--noise white --noise pink --noise librispeech-babble=babble:runs/librispeech/calibration --noise cabin --noise cafeteria"
seen eval --model /work/models/whisper-tiny.en --bundle runs/sweep/tiny.en/bundles/encoder_ffn__localized__chance__k1 \
  --dataset runs/librispeech/test.csv $noises --snrs=0,5,10 --methods none,seen-adaptive \
  --batch-size 15 --max-tokens 96 --seed 0 --out runs/study/tiny.en-k1
seen eval --model /work/models/whisper-tiny.en --bundle runs/sweep/tiny.en/bundles/encoder_ffn__layer-3__chance__kauto \
  --dataset runs/librispeech/test.csv $noises --snrs=0,5,10 --methods none,seen-0.25 \
  --batch-size 15 --max-tokens 96 --seed 0 --out runs/study/tiny.en-layer3
