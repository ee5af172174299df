#!/usr/bin/env bash
# SEEN study, final split on Whisper base: the two configurations the selection split chose (largest noisy gain,
# no clean cost), on the test clips (seeds 0-14), with cabin and cafeteria noise never used in calibration.
set -euo pipefail
noises="--noise white --noise pink --noise librispeech-babble=babble:runs/librispeech/calibration --noise cabin --noise cafeteria"
seen eval --model /work/models/whisper-base --bundle runs/sweep/base/bundles/encoder_ffn__all__chance__kauto \
  --dataset runs/librispeech/test.csv $noises --snrs=0,5,10 --methods none,seen-adaptive \
  --batch-size 15 --max-tokens 96 --seed 0 --out runs/study/base-all-adaptive
seen eval --model /work/models/whisper-base --bundle runs/sweep/base/bundles/encoder_ffn__localized__chance__kauto \
  --dataset runs/librispeech/test.csv $noises --snrs=0,5,10 --methods none,seen-0.25 \
  --batch-size 15 --max-tokens 96 --seed 0 --out runs/study/base-localized-0.25
