"""``seen eval`` end to end: datasets, conditions through the service backend, resume, and the written results."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cli.main import main
from evaluation.dataset import load_dataset, parse_noise
from evaluation.runner import Condition, Evaluator, ResultStore, parse_method, run_all
from seen.adapters import load_audio_lm
from seen.bundle import NoiseBundle
from tests.conftest import speechlike


def _write_dataset(folder: Path, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows):
        sf.write(folder / row[0], speechlike(1.0 + 0.2 * index, seed=index), 16000)
    path = folder / "data.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def qa_dataset(tmp_path: Path) -> Path:
    rows = [(f"clip{i}.wav", "What is said?", f"answer {i}") for i in range(3)]
    return _write_dataset(tmp_path / "qa", rows, ("file", "question", "answer"))


def test_datasets_of_both_shapes_load_and_bad_ones_say_what_is_wrong(tmp_path: Path, qa_dataset: Path) -> None:
    qa = load_dataset(qa_dataset, 16000)
    assert qa.task == "qa" and [item.reference for item in qa.items] == ["answer 0", "answer 1", "answer 2"]
    transcripts = _write_dataset(tmp_path / "asr", [("a.wav", "HELLO THERE")], ("file", "text"))
    assert load_dataset(transcripts, 16000).task == "transcription"
    with pytest.raises(ValueError, match="expected file,question,answer"):
        load_dataset(_write_dataset(tmp_path / "bad", [("a.wav", "x")], ("file", "label")), 16000)
    missing = tmp_path / "missing.csv"
    missing.write_text("file,question,answer\nnowhere.wav,q,a\n")
    with pytest.raises(ValueError, match=r"line 2: audio file .* does not exist"):
        load_dataset(missing, 16000)
    with pytest.raises(ValueError, match="unknown noise type 'hum'"):
        parse_noise("hum")
    with pytest.raises(ValueError, match="unknown method 'wiener'"):
        parse_method("wiener")
    with pytest.raises(ValueError, match="0 < lambda <= 2"):
        parse_method("seen-5")
    assert parse_method("seen-0.5").strength == 0.5 and parse_method("rnnoise").denoiser == "rnnoise"


def test_every_condition_and_method_gives_one_row_per_clip_and_a_rerun_resumes(
    qa_dataset: Path, model_dirs: dict[str, Path], service_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm = load_audio_lm(str(model_dirs["qwen2_audio"]))
    bundle = NoiseBundle.load(service_bundle)
    dataset = load_dataset(qa_dataset, lm.sample_rate)
    methods = [parse_method(name) for name in ("none", "seen-1", "seen-adaptive", "spectral-subtraction")]
    babble = parse_noise("babble")  # the test bundle's default profile
    conditions = [Condition(None, None), Condition(babble, 20.0), Condition(babble, -10.0)]
    store = ResultStore(tmp_path / "run", {"dataset": dataset.fingerprint})
    evaluator = Evaluator(lm, bundle, dataset, batch_size=2, max_tokens=3)
    try:
        rows = run_all(evaluator, store, conditions, methods)
    finally:
        evaluator.close()
    assert len(rows) == len(conditions) * len(methods) * 3
    by = {(r.noise, r.snr_db, r.method, r.clip): r for r in rows}
    # Same noisy input for none and SEEN; the denoiser changes what the model hears.
    noisy_none, noisy_seen = by[("babble", -10.0, "none", "clip0")], by[("babble", -10.0, "seen-1", "clip0")]
    assert noisy_none.see == pytest.approx(noisy_seen.see, abs=1e-6) and noisy_none.residual_see is None
    assert noisy_seen.residual_see is not None and noisy_seen.residual_see < noisy_seen.see
    assert noisy_none.true_snr_db == pytest.approx(-10.0, abs=0.01)
    denoised = by[("babble", -10.0, "spectral-subtraction", "clip0")]
    assert denoised.true_snr_db is not None and abs(denoised.true_snr_db + 10.0) > 0.1
    assert denoised.stoi != noisy_none.stoi
    assert by[("clean", None, "none", "clip0")].true_snr_db is None
    mean_see = {snr: np.mean([r.see for r in rows if r.method == "none" and r.snr_db == snr]) for snr in (20.0, -10.0)}
    assert mean_see[-10.0] > mean_see[20.0]

    def refuse(*_: object) -> None:
        raise AssertionError("a finished condition was computed again")

    monkeypatch.setattr(Evaluator, "run", refuse)
    again = run_all(evaluator, ResultStore(tmp_path / "run", {"dataset": dataset.fingerprint}), conditions, methods)
    assert sorted(again, key=repr) == sorted(rows, key=repr)
    with pytest.raises(ValueError, match="holds a run with other settings"):
        ResultStore(tmp_path / "run", {"dataset": "another"})


def test_seen_eval_writes_results_report_and_plots(
    qa_dataset: Path, model_dirs: dict[str, Path], service_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    argv = [
        "eval", "--model", str(model_dirs["qwen2_audio"]), "--bundle", str(service_bundle),
        "--dataset", str(qa_dataset), "--noise", "babble", "--snrs", "0,20",
        "--methods", "none,seen-0.5,noisereduce-stationary", "--max-tokens", "2", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["methods"] == ["none", "seen-0.5", "noisereduce-stationary"]
    assert len(results["conditions"]) == 3 * 3 and results["run_seconds"] > 0
    assert {entry["measure"] for entry in results["correlations"]} >= {"see", "true_snr_db", "wada_snr_db", "stoi"}
    with (out / "requests.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 3 * 3
    report = (out / "report.md").read_text()
    assert "SEEN vs waveform denoisers" in report and "Correlation with success" in report
    for name in ("see_vs_snr.png", "see_vs_success.png", "success_vs_snr_babble.png", "conditions.csv"):
        assert (out / name).stat().st_size > 1000, name
    assert main([*argv[:-2], "--out", str(out)]) == 0  # a rerun resumes and rewrites the same results
    assert main([*argv[:-4], "--snrs", "5", "--out", str(out)]) == 2  # other settings: refused, not mixed
