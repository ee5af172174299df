"""The subcommands of ``seen``: the module that implements each, and the line ``seen --help`` shows for it.

Kept apart from the modules so that ``seen --help`` (and the parsing of one subcommand) imports only this
table: each module, and the torch, transformers or uvicorn it needs, is imported only when its command runs.
"""

from __future__ import annotations

COMMANDS: dict[str, tuple[str, str]] = {
    "convert": (
        "cli.convert",
        "convert a CTranslate2 Whisper checkpoint (faster-whisper format) into a transformers folder",
    ),
    "calibrate": ("cli.calibrate", "build a noise-basis bundle from clean and noise clips"),
    "import-basis": ("cli.calibrate", "turn published per-layer bases into a bundle"),
    "score": ("cli.score", "SEE of audio files (no generation)"),
    "examples": ("cli.examples", "print the folder of the installed example clips (for the README's requests)"),
    "noise": ("cli.noise", "write synthetic noise clips (white, pink, babble, ...)"),
    "serve": ("cli.serve", "serve a model with its noise bundle over HTTP (OpenAI-compatible)"),
    "eval": ("cli.evaluate", "measure SEE against success and SEEN against denoisers under noise"),
    "sweep": (
        "cli.sweep",
        "measure a grid of SEEN configurations (site, layers, basis, k, lambda, routing) on one split",
    ),
}


def help_of(name: str) -> str:
    return COMMANDS[name][1]
