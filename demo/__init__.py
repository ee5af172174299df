"""The embedded demo model: a Qwen2-Audio on Whisper tiny.en's encoder, its language model trained here, and its bundle.

This module only names where the committed checkpoint and bundle live (the service serves them when no
model is configured); training, evaluation and the model card are in the submodules.
"""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_MODEL_DIR = ASSETS / "qwen2-audio-demo"
"""The trained checkpoint (weights, processor, chat template, model card)."""
DEMO_BUNDLE_DIR = ASSETS / "qwen2-audio-demo-bundle"
"""Its noise-basis bundle, made by ``seen calibrate``."""
