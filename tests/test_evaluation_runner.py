"""``seen eval`` end to end: datasets, conditions through the service backend, resume, and the written results."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cli.evaluate import _check_extras
from cli.main import main
from evaluation.dataset import DEFAULT_BABBLE_TALKERS, NoiseSource, load_dataset, parse_noise, speaker_of
from evaluation.rows import ResultStore
from evaluation.runner import Condition, Evaluator, parse_method, run_all, score_answer
from seen.adapters import load_audio_lm
from seen.audio import load_audio_file
from seen.bundle import NoiseBundle
from tests.conftest import LIBRISPEECH, speechlike


def _write_dataset(folder: Path, rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> Path:
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
    evaluator = Evaluator.for_model(lm, bundle, dataset, batch_size=2, max_tokens=3)
    try:
        rows = run_all(evaluator, store, conditions, methods)
    except BaseException:
        evaluator.close()
        raise
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
    # DNSMOS: measured once per distinct input, so shared by none and SEEN, changed by the denoiser.
    assert all(r.dnsmos_bak is not None and 1.0 <= r.dnsmos_bak <= 5.0 for r in rows)
    assert noisy_none.dnsmos_ovrl == noisy_seen.dnsmos_ovrl and denoised.dnsmos_bak != noisy_none.dnsmos_bak
    # Agreement: every answer scored against the clip's clean "none" answer, which agrees with itself.
    clean_answers = {r.clip: r.answer for r in rows if (r.noise, r.method) == ("clean", "none")}
    assert all(answer is not None for answer in clean_answers.values())
    for row in rows:
        assert row.answer is not None and row.agreement is not None
        assert row.agreement == score_answer("qa", row.answer, clean_answers[row.clip] or "")[0]
    assert all(r.agreement == 1.0 for r in rows if (r.noise, r.method) == ("clean", "none"))

    def refuse(*_: object) -> None:
        raise AssertionError("a finished condition was computed again")

    # A resumed run (a new process: no clean answers in memory) adds a condition of real-speech babble (each
    # clip's from the other two clips' "speakers") and scores its agreement against the stored clean answers.
    talk = parse_noise(f"talk=babble:2:{qa_dataset.parent}")
    evaluator.clean_answers = None
    try:
        resumed = run_all(
            evaluator, ResultStore(tmp_path / "run", {"dataset": dataset.fingerprint}), [Condition(talk, 0.0)], methods
        )
    finally:
        evaluator.close()
    added = [r for r in resumed if r.noise == "talk"]
    assert len(added) == len(methods) * 3 and len(resumed) == len(rows) + len(added)
    assert evaluator.clean_answers == [clean_answers[f"clip{i}"] for i in range(3)]
    for row in added:
        assert row.true_snr_db == pytest.approx(0.0, abs=0.01) or row.method == "spectral-subtraction"
        assert row.answer is not None
        assert row.agreement == score_answer("qa", row.answer, clean_answers[row.clip] or "")[0]

    monkeypatch.setattr(Evaluator, "run", refuse)
    everything = [*conditions, Condition(talk, 0.0)]
    again = run_all(evaluator, ResultStore(tmp_path / "run", {"dataset": dataset.fingerprint}), everything, methods)
    assert sorted(again, key=repr) == sorted(resumed, key=repr)
    with pytest.raises(ValueError, match="holds a run with other settings"):
        ResultStore(tmp_path / "run", {"dataset": "another"})


@pytest.mark.parametrize("package", ["speechmos", "onnxruntime"])
def test_a_missing_dnsmos_package_is_named_before_any_work(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(RuntimeError, match=rf"seen eval needs {package}: pip install 'seen\[eval\]'"):
        _check_extras(["none"])


def test_agreement_scores_like_success_against_the_clean_answer() -> None:
    assert score_answer("transcription", "the cat sat", "The cat sat.") == (1.0, 0.0)
    assert score_answer("transcription", "the dog sat", "the cat sat") == pytest.approx((2 / 3, 1 / 3))
    assert score_answer("transcription", "", "the cat sat") == (0.0, 1.0)
    assert score_answer("transcription", "a b c d e f", "x") == (0.0, 6.0)  # floored at 0
    assert score_answer("transcription", "...", "") == (1.0, None)  # both empty: they agree
    assert score_answer("transcription", "words", "") == (0.0, None)
    assert score_answer("qa", "Paris!", "paris") == (1.0, None) and score_answer("qa", "Rome", "paris")[0] == 0.0


def _write_speakers(folder: Path, speakers: int, utterances: int, gain: float = 1.0) -> list[Path]:
    """LibriSpeech-named recordings (SPEAKER-CHAPTER-UTTERANCE.wav) of distinct synthetic voices.

    Every second speaker is scaled by ``gain``; float samples, so that scaling is all that differs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(speakers):
        for u in range(utterances):
            paths.append(folder / f"{100 + s}-{7 + s}-{u:04d}.wav")
            level = gain if s % 2 else 1.0
            sf.write(paths[-1], level * speechlike(0.7 + 0.1 * u, seed=10 * s + u), 16000, subtype="FLOAT")
    return paths


def test_speech_babble_mixes_other_speakers_deterministically(tmp_path: Path) -> None:
    folder = tmp_path / "speech"
    paths = _write_speakers(folder, speakers=6, utterances=2)
    source = parse_noise(f"talk=babble:3:{folder}")
    assert (source.talkers, source.spec) == (3, f"talk=babble:3:{folder}")
    assert parse_noise(f"talk=babble:{folder}").talkers == DEFAULT_BABBLE_TALKERS
    assert parse_noise(f"rec={folder}") == NoiseSource("rec", folder)  # a plain folder of noise, as before
    for index in range(20):
        chosen = source.babble_recordings(index, "101-8-0003", seed=4)
        assert len({speaker_of(p.stem) for p in chosen}) == 3 and "101" not in {speaker_of(p.stem) for p in chosen}
        assert set(chosen) <= set(paths)
    noise = source.for_clip(5, 24000, 16000, seed=4, clip_id="101-8-0003")
    assert noise.dtype == np.float32 and noise.shape == (24000,)
    assert np.sqrt(np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(noise, source.for_clip(5, 24000, 16000, seed=4, clip_id="101-8-0003"))
    assert not np.allclose(noise, source.for_clip(6, 24000, 16000, seed=4, clip_id="101-8-0003"))
    # Each talker is brought to the same level: half the speakers 30 dB quieter give the same babble.
    quiet = tmp_path / "quiet"
    _write_speakers(quiet, speakers=6, utterances=2, gain=10 ** (-30 / 20))
    same = NoiseSource("talk", quiet, talkers=3).for_clip(5, 24000, 16000, seed=4, clip_id="101-8-0003")
    np.testing.assert_allclose(same, noise, atol=1e-5)
    # One talker: its recording looped from some start to the clip's length.
    single = NoiseSource("one", folder, talkers=1)
    (path,) = single.babble_recordings(0, "100-7-0000", seed=0)
    recording = load_audio_file(path, 16000).astype(np.float64)
    recording /= np.sqrt(np.mean(recording**2))
    looped = single.for_clip(0, 40000, 16000, seed=0, clip_id="100-7-0000").astype(np.float64)
    heads = np.lib.stride_tricks.sliding_window_view(np.concatenate([recording, recording[:50]]), 50)
    start = int(np.argmin(np.abs(heads[: recording.size] - looped[:50]).max(axis=1)))
    expected = np.resize(np.roll(recording, -start), 40000)
    np.testing.assert_allclose(looped, expected / np.sqrt(np.mean(expected**2)), atol=1e-5)  # the clip at unit RMS
    with pytest.raises(ValueError, match=r"has 5 speakers besides '100'.*fewer than the 6 talkers"):
        NoiseSource("six", folder, talkers=6).for_clip(0, 1000, 16000, seed=0, clip_id="100-7-0000")
    with pytest.raises(ValueError, match="6 speakers, fewer than 7 talkers"):
        parse_noise(f"talk=babble:7:{folder}")
    with pytest.raises(ValueError, match="NAME=babble:K:DIR"):
        parse_noise(f"talk=babble:0:{folder}")


@pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason=f"needs the LibriSpeech sample at {LIBRISPEECH}")
def test_librispeech_babble_never_uses_the_clips_own_speaker() -> None:
    dataset = load_dataset(LIBRISPEECH / "transcripts.csv", 16000)
    source = parse_noise(f"libri=babble:{LIBRISPEECH / 'wav'}")
    for index, item in enumerate(dataset.items):
        chosen = source.babble_recordings(index, item.clip_id, seed=0)
        speakers = {speaker_of(p.stem) for p in chosen}
        assert len(chosen) == len(speakers) == DEFAULT_BABBLE_TALKERS
        assert speaker_of(item.clip_id) not in speakers and item.clip_id not in {p.stem for p in chosen}
    first = dataset.items[0]
    noise = source.for_clip(0, first.audio.size, 16000, seed=0, clip_id=first.clip_id)
    np.testing.assert_array_equal(noise, source.for_clip(0, first.audio.size, 16000, seed=0, clip_id=first.clip_id))
    assert noise.dtype == np.float32 and noise.shape == first.audio.shape


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
    measures = {"see", "true_snr_db", "wada_snr_db", "dnsmos_bak", "dnsmos_ovrl", "stoi"}
    assert {entry["measure"] for entry in results["correlations"]} == measures
    assert {entry["target"] for entry in results["correlations"]} == {"success", "agreement"}
    assert all(c["agreement"] is not None and c["dnsmos_bak"] is not None for c in results["conditions"])
    with (out / "requests.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 3 * 3
    report = (out / "report.md").read_text()
    assert "SEEN vs waveform denoisers" in report and "Correlation with success" in report
    assert "Correlation with agreement" in report and "−DNSMOS OVRL (blind)" in report
    assert "Flagging answers wrong (ground truth): " in report  # the best score, or why there is none
    assert "Flagging answers changed (vs clean answer): " in report
    for name in ("see_vs_snr.png", "see_vs_success.png", "success_vs_snr_babble.png", "conditions.csv"):
        assert (out / name).stat().st_size > 1000, name
    assert main([*argv[:-2], "--out", str(out)]) == 0  # a rerun resumes and rewrites the same results
    assert main([*argv[:-4], "--snrs", "5", "--out", str(out)]) == 2  # other settings: refused, not mixed
