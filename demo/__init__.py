"""The embedded demo model: a small Qwen2-Audio trained by the project on synthetic speech (work in progress)."""
