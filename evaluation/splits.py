"""Disjoint calibration / selection / test splits of a transcribed speech folder, by speaker.

A noise basis calibrated on some clips must be judged on others, and a configuration chosen on a
selection split must be reported on a test split it never saw. Speakers never cross splits (a
LibriSpeech id is ``SPEAKER-CHAPTER-UTTERANCE``), so babble made from one split's voices is never
the voice of a clip in another. The assignment is a stable hash of the speaker id, so the same
folder always splits the same way.

Usage (writes one dataset CSV per split, in ``seen eval``'s ``file,transcript`` shape, and a folder
of each split's clips for ``seen calibrate --clean``)::

    python -m evaluation.splits ../shared/data/librispeech --out runs/librispeech --sizes 20,15,15
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

SPLITS = ("calibration", "selection", "test")


def speaker_of(utterance_id: str) -> str:
    return utterance_id.split("-", 1)[0]


def _order(speaker: str) -> str:
    return hashlib.sha256(speaker.encode()).hexdigest()


def split_rows(rows: Sequence[dict[str, str]], sizes: Sequence[int]) -> dict[str, list[dict[str, str]]]:
    """Whole speakers, in hash order, each into the first split that still has room for all their clips."""
    if len(sizes) != len(SPLITS) or sum(sizes) > len(rows):
        raise ValueError(f"sizes {list(sizes)}: give {len(SPLITS)} sizes adding up to at most {len(rows)} clips")
    by_speaker: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_speaker.setdefault(speaker_of(row["utterance_id"]), []).append(row)
    splits: dict[str, list[dict[str, str]]] = {name: [] for name in SPLITS}
    for speaker in sorted(by_speaker, key=_order):
        clips = sorted(by_speaker[speaker], key=lambda r: r["utterance_id"])
        for name, size in zip(SPLITS, sizes, strict=True):
            if len(splits[name]) + len(clips) <= size:
                splits[name].extend(clips)
                break
    return splits


def write_splits(source: Path, out: Path, sizes: Sequence[int]) -> dict[str, list[str]]:
    with (source / "transcripts.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    splits = split_rows(rows, sizes)
    out.mkdir(parents=True, exist_ok=True)
    for name, chosen in splits.items():
        folder = out / name
        folder.mkdir(exist_ok=True)
        with (out / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "transcript"])
            for row in chosen:
                target = folder / Path(row["file"]).name
                shutil.copyfile(source / row["file"], target)
                writer.writerow([f"{name}/{target.name}", row["text"]])
    manifest = {name: [row["utterance_id"] for row in chosen] for name, chosen in splits.items()}
    (out / "splits.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder with transcripts.csv (file,utterance_id,text) and audio")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sizes", default="20,15,15", help="clips in calibration,selection,test")
    args = parser.parse_args(argv)
    manifest = write_splits(args.source, args.out, [int(part) for part in args.sizes.split(",")])
    for name, ids in manifest.items():
        speakers = {speaker_of(i) for i in ids}
        print(f"{name}: {len(ids)} clips, {len(speakers)} speakers -> {args.out / name}.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
