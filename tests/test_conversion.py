"""``seen convert``: CTranslate2 Whisper checkpoints to transformers folders, on tiny files the tests write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from conversion.ctranslate2 import CheckpointError, model_files, read_model_bin, write_model_bin
from conversion.whisper import convert_whisper
from seen.adapters import load_audio_lm
from tests.conftest import speechlike
from tests.tiny_whisper import build_whisper_ct2


def _loaded(folder: Path) -> torch.nn.Module:
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_exact_for_every_float_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    source, original = build_whisper_ct2(tmp_path / "ct2", dtype=dtype)
    result = convert_whisper([source], tmp_path / "hf")
    converted = _loaded(result.folder)
    reference = original.state_dict()
    state = converted.state_dict()
    assert set(state) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor.to(dtype).float()), name
    assert result.dtype == str(dtype).removeprefix("torch.")
    # proj_out is tied to the token embeddings, as in the released checkpoints
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()


def test_converted_model_computes_what_the_original_does(tmp_path: Path) -> None:
    source, original = build_whisper_ct2(tmp_path / "ct2", dtype=torch.float32)
    converted = _loaded(convert_whisper([source], tmp_path / "hf").folder)
    features = torch.randn(1, 80, 3000)
    decoder = torch.tensor([[1, 5, 9]])
    with torch.inference_mode():
        expected = original(input_features=features, decoder_input_ids=decoder).logits
        got = converted(input_features=features, decoder_input_ids=decoder).logits
    assert torch.equal(expected, got)


def test_configs_carry_the_checkpoint_settings(tmp_path: Path) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2", multilingual=True)
    folder = convert_whisper([source], tmp_path / "hf").folder
    ct2 = json.loads((source / "config.json").read_text())
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == ct2["suppress_ids"]
    assert generation["begin_suppress_tokens"] == ct2["suppress_ids_begin"]
    assert generation["alignment_heads"] == ct2["alignment_heads"]
    assert generation["is_multilingual"] is True
    assert sorted(generation["lang_to_id"].values()) == sorted(ct2["lang_ids"])
    assert set(generation["task_to_id"]) == {"transcribe", "translate"}
    assert generation["return_timestamps"] is False
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["WhisperForConditionalGeneration"]
    assert (config["encoder_layers"], config["d_model"], config["encoder_attention_heads"]) == (2, 64, 2)
    processor = json.loads((folder / "processor_config.json").read_text())
    assert processor["feature_extractor"]["feature_size"] == 80
    assert processor["feature_extractor"]["chunk_length"] == 30
    record = json.loads((folder / "conversion.json").read_text())
    assert len(record["model_bin_sha256"]) == 64


def test_english_only_checkpoint_has_no_languages(tmp_path: Path) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2", multilingual=False)
    result = convert_whisper([source], tmp_path / "hf")
    generation = json.loads((result.folder / "generation_config.json").read_text())
    assert result.multilingual is False
    assert generation["is_multilingual"] is False and not generation["lang_to_id"]


def test_parts_spread_over_two_folders_convert_in_one_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole, _ = build_whisper_ct2(tmp_path / "whole", dtype=torch.float16)
    split, _ = build_whisper_ct2(tmp_path / "split", dtype=torch.float16, parts=3)
    second = tmp_path / "second-package"
    second.mkdir()
    (split / "model.bin.part2").rename(second / "model.bin.part2")
    (split / "model.bin.part3").rename(second / "model.bin.part3")
    assert [p.name for p in model_files([split, second])] == ["model.bin.part1", "model.bin.part2", "model.bin.part3"]
    assert main(["convert", str(split), str(second), "--out", str(tmp_path / "hf")]) == 0
    assert "English-only Whisper checkpoint" in capsys.readouterr().out
    reference = read_model_bin(model_files([whole]))
    assert read_model_bin(model_files([split, second])).sha256 == reference.sha256


def test_converted_whisper_loads_through_the_one_loading_path(tmp_path: Path) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2")
    lm = load_audio_lm(str(convert_whisper([source], tmp_path / "hf").folder))
    assert type(lm).__name__ == "Whisper" and lm.max_clip_seconds == 30.0
    batch = lm.encoder_batch([speechlike(1.3, 0), speechlike(3.1, 1)])
    assert np.bincount(batch.encoder_layout.frame_clip[batch.encoder_layout.frame_clip >= 0].numpy()).tolist() == [
        65,
        155,
    ]


# -- bad input ---------------------------------------------------------------------------------------------


def _expect_error(tmp_path: Path, sources: list[Path], match: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=match):
        convert_whisper(sources, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name], "a failed conversion left a staging folder"


def test_refuses_a_folder_without_a_checkpoint(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(tmp_path, [empty], "no CTranslate2 model.bin")


def test_refuses_a_truncated_checkpoint(tmp_path: Path) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2")
    data = (source / "model.bin").read_bytes()
    (source / "model.bin").write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path, [source], r"model\.bin is truncated: it ends inside the values of")


def test_refuses_a_missing_part(tmp_path: Path) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2", parts=3)
    (source / "model.bin.part2").unlink()
    _expect_error(tmp_path, [source], r"checkpoint parts \[2\] are missing")


def test_refuses_a_missing_tokenizer(tmp_path: Path) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2")
    (source / "tokenizer.json").unlink()
    _expect_error(tmp_path, [source], "no tokenizer.json beside the checkpoint")


def test_refuses_a_file_that_is_not_ctranslate2(tmp_path: Path) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2")
    (source / "model.bin").write_bytes(b"PK\x03\x04 this is a zip file, not a model")
    _expect_error(tmp_path, [source], r"binary version \d+; this reader knows version 6 \(not a CTranslate2 model\.bin")


def test_refuses_another_spec(tmp_path: Path) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2")
    write_model_bin(source / "model.bin", "TransformerSpec", 1, {"x": torch.zeros(2, 2)}, {})
    _expect_error(tmp_path, [source], "is a CTranslate2 TransformerSpec; this converter reads WhisperSpec only")


def test_refuses_int8_quantized_checkpoints(tmp_path: Path) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2")
    variables = {
        "encoder/conv1/weight": torch.zeros(4, 4, dtype=torch.int8),
        "encoder/conv1/weight_scale": torch.ones(4),
    }
    write_model_bin(source / "model.bin", "WhisperSpec", 3, variables, {})
    _expect_error(tmp_path, [source], "int8-quantized")


def test_refuses_an_unknown_dtype(tmp_path: Path) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2")
    write_model_bin(source / "model.bin", "WhisperSpec", 3, {"x": torch.zeros(2, dtype=torch.float32)}, {})
    data = bytearray((source / "model.bin").read_bytes())
    marker = data.index(b"x\x00") + 2 + 1 + 4  # name, rank 1, one dimension: the dtype byte follows
    data[marker] = 9
    (source / "model.bin").write_bytes(bytes(data))
    _expect_error(tmp_path, [source], "has dtype id 9; known ids")


def test_refuses_to_overwrite_without_being_told(tmp_path: Path) -> None:
    source, _ = build_whisper_ct2(tmp_path / "ct2")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        convert_whisper([source], out)
    assert (out / "keep.txt").read_text() == "user data"
    convert_whisper([source], out, overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


def test_cli_reports_errors_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "hf")]) == 2
    assert "seen convert: error: no CTranslate2 model.bin" in capsys.readouterr().err
    assert main(["convert", "--package", "no_such_package_xyz", "--out", str(tmp_path / "hf")]) == 2
    assert "no installed package named 'no_such_package_xyz'" in capsys.readouterr().err
