"""Evaluation data tools: speaker-disjoint splits, and calibration options compared on held-out clips."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from evaluation.splits import SPLITS, speaker_of, split_rows, write_splits
from tests.conftest import LIBRISPEECH


def _rows(speakers: dict[str, int]) -> list[dict[str, str]]:
    return [
        {"utterance_id": f"{speaker}-1-{i:04d}", "file": f"wav/{speaker}-1-{i:04d}.wav", "text": "A"}
        for speaker, count in speakers.items()
        for i in range(count)
    ]


def test_speakers_never_cross_splits_and_sizes_are_bounds() -> None:
    rows = _rows({str(100 + s): 1 + s % 3 for s in range(30)})
    splits = split_rows(rows, [20, 15, 15])
    speakers = [{speaker_of(r["utterance_id"]) for r in splits[name]} for name in SPLITS]
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])
    assert all(len(splits[name]) <= size for name, size in zip(SPLITS, [20, 15, 15], strict=True))
    assert sum(len(v) for v in splits.values()) >= 45  # whole speakers leave at most a few clips out
    assert split_rows(list(reversed(rows)), [20, 15, 15]) == splits  # stable: a hash of the speaker, not file order


def test_sizes_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="adding up to at most 3 clips"):
        split_rows(_rows({"1": 3}), [2, 1, 1])


@pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason=f"LibriSpeech clips not found at {LIBRISPEECH}")
def test_librispeech_splits_are_written_for_eval_and_calibration(tmp_path: Path) -> None:
    manifest = write_splits(LIBRISPEECH, tmp_path, [20, 15, 15])
    assert [len(manifest[name]) for name in SPLITS] == [20, 15, 15]
    with (tmp_path / "test.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 15 and all((tmp_path / row["file"]).is_file() and row["transcript"] for row in rows)
    assert len(list((tmp_path / "calibration").glob("*.wav"))) == 20


def test_bundle_comparison_prints_one_row_per_option(
    tmp_path: Path, model_dirs: dict[str, Path], service_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m evaluation.bundles`` on the tiny Qwen2-Audio, its test bundle twice, one noise."""
    import numpy as np
    import soundfile as sf

    from evaluation.bundles import main
    from tests.conftest import speechlike

    clips = tmp_path / "clips"
    clips.mkdir()
    with (tmp_path / "data.csv").open("w") as handle:
        handle.write("file,transcript\n")
        for index in range(3):
            sf.write(clips / f"{index}.wav", speechlike(1.5, index), 16000)
            handle.write(f"clips/{index}.wav,hello\n")
    arguments = ["--model", str(model_dirs["qwen2_audio"]), "--dataset", str(tmp_path / "data.csv")]
    arguments += [
        "--bundle",
        f"a={service_bundle}",
        "--bundle",
        f"b={service_bundle}",
        "--noise",
        "white",
        "--snrs",
        "0",
    ]
    assert main(arguments) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| a ", "| b "))]
    assert len(rows) == 2
    cells = [[float(cell) for cell in row.strip("| ").split(" | ")[3:]] for row in rows]
    assert cells[0] == cells[1] and len(cells[0]) == 2 and np.isfinite(cells[0]).all()
    assert cells[0][1] != cells[0][0]  # white noise at 0 dB moves SEE
