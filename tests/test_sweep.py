"""``seen sweep``: a small grid on a tiny Whisper, end to end through the CLI, and the Pareto front."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

from cli.main import main
from conversion.whisper import convert_whisper
from evaluation.sweep import BundlePoint, Outcome, grid, markdown, pareto_front
from seen.hooks import SiteKind
from seen.noise import generate_noise
from tests.conftest import speechlike
from tests.tiny_whisper import build_whisper_ct2


def _write(folder: Path, clips: list, prefix: str) -> None:
    folder.mkdir(parents=True)
    for index, clip in enumerate(clips):
        sf.write(folder / f"{prefix}{index}.wav", clip, 16000)


def test_one_axis_at_a_time_grid_and_layer_rules() -> None:
    sweep = grid(
        [SiteKind.ENCODER_FFN, SiteKind.ENCODER_RESIDUAL],
        ["localized", "last-2"],
        ["chance", "paired"],
        [None, 4],
        [0.5],
        ["merged"],
    )
    keys = [point.key for point in sweep.points]
    assert len(keys) == 5 and len(set(keys)) == 5
    assert keys[0] == "encoder_ffn__localized__chance__kauto"
    assert BundlePoint(SiteKind.ENCODER_FFN, "last-2", "chance", None).layer_list(4) == [2, 3]
    assert BundlePoint(SiteKind.ENCODER_FFN, "layer-1", "chance", None).layer_list(4) == [1]
    assert BundlePoint(SiteKind.ENCODER_FFN, "localized", "chance", None).layer_list(4) is None
    with pytest.raises(ValueError, match="layer 9 does not exist"):
        BundlePoint(SiteKind.ENCODER_FFN, "layer-9", "chance", None).layer_list(4)
    factorial = grid(
        [SiteKind.ENCODER_FFN], ["all", "last-1"], ["chance", "paper"], [1, 2], [1.0], ["merged"], factorial=True
    )
    assert len(factorial.points) == 8


def test_pareto_front_keeps_only_undominated_configurations() -> None:
    def outcome(name: str, cost: float, gain: float) -> Outcome:
        return Outcome(name, "merged", "seen-1", 1.0, 4, cost, gain, {}, 0.5, 0.5)

    results = [outcome("a", 0.0, 1.0), outcome("b", 1.0, 3.0), outcome("c", 1.5, 2.0), outcome("d", 0.5, 0.5)]
    assert [o.bundle for o in pareto_front(results)] == ["a", "b"]
    in_white = {"a": 0.0, "b": 1.0, "c": 5.0, "d": 0.2}  # per noise type the front is another one
    results = [dataclasses.replace(o, gain_by_noise={"white": in_white[o.bundle]}) for o in results]
    assert [o.bundle for o in pareto_front(results, lambda o: o.gain_by_noise["white"])] == ["a", "d", "b", "c"]
    report = markdown(results, "t")
    assert "## Pareto front in white noise" in report and "| c | merged | seen-1 | +1.50 | +5.00 |" in report
    assert "## Noisy gain per noise type" in report


def test_sweep_runs_a_small_grid_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2", dtype=torch.float32)
    model = convert_whisper([source], tmp_path / "whisper").folder
    _write(tmp_path / "clean", [speechlike(1.5 + 0.2 * i, seed=i) for i in range(6)], "speech")
    _write(tmp_path / "white", [0.1 * generate_noise("white", 24000, 16000, seed=i) for i in range(6)], "white")
    _write(tmp_path / "babble", [0.1 * generate_noise("babble", 24000, 16000, seed=i) for i in range(6)], "babble")
    _write(tmp_path / "data", [speechlike(1.2, seed=20 + i) for i in range(2)], "clip")
    (tmp_path / "data.csv").write_text("file,transcript\ndata/clip0.wav,hello there\ndata/clip1.wav,good morning\n")
    arguments = ["sweep", "--model", str(model), "--clean", str(tmp_path / "clean")]
    arguments += [
        "--calibration-noise",
        f"white={tmp_path / 'white'}",
        "--calibration-noise",
        f"babble={tmp_path / 'babble'}",
    ]
    arguments += ["--dataset", str(tmp_path / "data.csv"), "--noise", "white", "--snrs", "0", "--max-tokens", "3"]
    arguments += ["--sites", "encoder_ffn,encoder_residual", "--layers", "all", "--bases", "chance,contrastive,paired"]
    arguments += [
        "--k",
        "auto,1",
        "--lambdas",
        "0.5,1",
        "--adaptive",
        "--routings",
        "merged,auto",
        "--out",
        str(tmp_path / "sweep"),
    ]
    assert main(arguments) == 0
    outcomes = json.loads((tmp_path / "sweep" / "outcomes.json").read_text())
    assert len(outcomes) == 5 * 2 * 3  # bundles x routings x (two lambdas and the adaptive mode)
    assert {o["method"] for o in outcomes} == {"seen-0.5", "seen-1", "seen-adaptive"}
    assert {o["routing"] for o in outcomes} == {"merged", "auto"}
    baseline = sorted(p.name for p in (tmp_path / "sweep" / "rows" / "baseline" / "rows").iterdir())
    assert baseline == ["clean__none.csv", "white@0dB__none.csv"]  # the unprocessed answers, generated once
    assert not any("none" in p.name for p in (tmp_path / "sweep" / "rows").rglob("*.csv") if "baseline" not in str(p))
    assert all(o["see_auc"] != o["see_auc"] or 0 <= o["see_auc"] <= 1 for o in outcomes)  # NaN when one class
    manifest = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert manifest["points"][0] == "encoder_ffn__all__chance__kauto" and manifest["lambdas"] == [0.5, 1.0]
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "## Pareto front" in report and "encoder_residual__all__chance__kauto" in report
    bundles = sorted((tmp_path / "sweep" / "bundles").iterdir())
    assert [b.name for b in bundles if "paired" in b.name] == ["encoder_ffn__all__paired__kauto"]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep" / "rows").rglob("*.csv")}
    assert main(arguments) == 0  # resumes: nothing is measured again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep" / "rows").rglob("*.csv")} == stamps
