"""The ``seen`` command as users run it: calibrate, score, import-basis and noise, with their errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch
from torch import nn

from cli.main import main
from seen.bundle import NoiseBundle
from seen.patch import SeenPatch
from seen.policy import AUTO_PROFILE, Control, NoisePolicy
from seen.see import FrameLayout
from tests.conftest import speechlike


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    clean = root / "clean"
    clean.mkdir()
    for i in range(8):
        sf.write(clean / f"speech_{i}.wav", speechlike(1.5 + 0.2 * i, seed=i), 16000)
    for kind in ("white", "engine"):
        assert main(["noise", "--kind", kind, "--out", str(root / kind), "--count", "8", "--seconds", "2"]) == 0
    return {"root": root, "clean": clean, "model": model_dirs["qwen2_audio"]}


def _calibrate(ws: dict[str, Path], out: Path, *extra: str) -> int:
    return main(
        [
            "calibrate", "--model", str(ws["model"]), "--clean", str(ws["clean"]),
            "--noise", f"white={ws['root'] / 'white'}", "--noise", f"engine={ws['root'] / 'engine'}",
            "--out", str(out), *extra,
        ]
    )  # fmt: skip


def test_calibrate_then_score_as_json(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    bundle = workspace["root"] / "bundle"
    options = ["--center", "per_set", "--delta", "3", "--delta-mode", "chance", "--alpha", "0.99"]
    assert _calibrate(workspace, bundle, *options) == 0
    report = capsys.readouterr().out
    assert "M_l" in report and "k (engine)" in report and "bundle written" in report
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["calibration"]["options"]["delta_mode"] == "chance"

    files = [workspace["clean"] / "speech_0.wav", workspace["root"] / "white" / "white_0000.wav"]
    code = main(["score", "--model", str(workspace["model"]), "--bundle", str(bundle), "--json", *map(str, files)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [row["path"] for row in rows] == [str(f) for f in files]
    assert all(0.0 <= row["see"] <= 1.0 and set(row["see_by_profile"]) == {"white", "engine", "merged"} for row in rows)


def test_paper_recipe_warns_loudly_about_empty_bases(workspace: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    paper = ["--delta", "0.1", "--delta-mode", "absolute", "--max-directions", "0"]
    assert _calibrate(workspace, workspace["root"] / "literal", *paper) == 0
    output = capsys.readouterr().out
    assert "EVERY basis is empty" in output or "no noise direction" in output


def test_import_basis_command(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    bases = [torch.linalg.qr(torch.randn(64, 2))[0]]
    torch.save(bases, workspace["root"] / "paper.pt")
    out = workspace["root"] / "imported"
    args = ["import-basis", str(workspace["root"] / "paper.pt"), "--model", str(workspace["model"])]
    assert main([*args, "--start-layer", "1", "--out", str(out)]) == 0
    assert "k = 2" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["site"]["layers"] == [1]


WIDTH = 64  # the tiny Qwen2-Audio's encoder FFN width; it has two encoder layers


def _orthonormal(*columns: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(torch.stack(columns, dim=1))[0]


@pytest.fixture(scope="module")
def published(workspace: dict[str, Path]) -> dict[str, Path]:
    """Three published noise types for layers 0 and 1 with different k; traffic shares a direction with crowd."""
    generator = torch.Generator().manual_seed(7)
    files: dict[str, list[torch.Tensor]] = {"crowd": [], "wind": [], "traffic": []}
    for k_crowd, k_wind in ((3, 2), (2, 4)):
        crowd = torch.linalg.qr(torch.randn(WIDTH, k_crowd, generator=generator))[0]
        files["crowd"].append(crowd)
        files["wind"].append(torch.linalg.qr(torch.randn(WIDTH, k_wind, generator=generator))[0])
        files["traffic"].append(_orthonormal(crowd[:, 0], torch.randn(WIDTH, generator=generator)))
    folder = workspace["root"] / "published"
    folder.mkdir()
    for name, bases in files.items():
        torch.save(bases, folder / f"{name}.pt")
    return {name: folder / f"{name}.pt" for name in files}


def _import(workspace: dict[str, Path], out: Path, *sources: str | Path, extra: tuple[str, ...] = ()) -> int:
    model = str(workspace["model"])
    return main(["import-basis", *map(str, sources), "--model", model, "--start-layer", "0", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def three_types(workspace: dict[str, Path], published: dict[str, Path]) -> Path:
    out = workspace["root"] / "three-types"
    sources = [f"crowd={published['crowd']}", published["wind"], f"traffic={published['traffic']}"]
    assert _import(workspace, out, *sources) == 0  # wind is named by its file's stem
    return out


def test_import_several_files_gives_each_type_and_their_exact_union(
    workspace: dict[str, Path], published: dict[str, Path], three_types: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = three_types
    bundle = NoiseBundle.load(out)
    assert list(bundle.profiles) == ["crowd", "wind", "traffic", "merged"]
    assert bundle.default_profile == "merged" and bundle.layers == [0, 1]
    assert bundle.profiles["merged"].ranks == [3 + 2 + 1, 2 + 4 + 1]  # the shared direction counts once
    for layer in range(2):
        merged = bundle.profiles["merged"].bases[layer]
        inputs = [torch.load(published[name], weights_only=True)[layer] for name in ("crowd", "wind", "traffic")]
        assert torch.allclose(merged.T @ merged, torch.eye(merged.shape[1]), atol=1e-6)
        for basis in inputs:
            assert torch.allclose(merged @ (merged.T @ basis), basis, atol=1e-5)  # spans every input
        assert merged.shape[1] == int(torch.linalg.matrix_rank(torch.cat(inputs, dim=1)))

    record = json.loads((out / "manifest.json").read_text())["calibration"]
    for name in ("crowd", "wind", "traffic"):
        source = record["imported_from"][name]
        assert source["path"] == str(published[name])
        assert source["sha256"] == hashlib.sha256(published[name].read_bytes()).hexdigest()
    assert record["merged"]["from"] == ["crowd", "wind", "traffic"]
    assert record["merged"]["singular_value_tolerance"] > 0

    # auto routing on the imported bundle works from the bases alone, through the CLI too
    clip = workspace["root"] / "white" / "white_0000.wav"
    args = ["score", "--model", str(workspace["model"]), "--bundle", str(out), "--profile", "auto", "--json"]
    assert main([*args, str(clip)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["profile"] == row["dominant_noise"] and row["profile"] in {"crowd", "wind", "traffic"}
    assert row["see_by_profile"]["merged"] >= max(row["see_by_profile"][t] for t in ("crowd", "wind", "traffic"))
    assert row["noisy"] is None  # no calibration statistics, so no noisy threshold


def test_auto_routes_activations_to_the_type_whose_subspace_holds_them(three_types: Path) -> None:
    """Activations built in one type's subspace (plus a little isotropic energy) are routed to that type."""
    bundle = NoiseBundle.load(three_types)
    types = ["crowd", "wind", "traffic"]
    generator = torch.Generator().manual_seed(3)
    frames = 6
    acts = []  # per layer: (clips, frames, D), clip c in type c's subspace
    for layer in range(len(bundle.layers)):
        clips = []
        for name in types:
            basis = bundle.profiles[name].bases[layer]
            inside = torch.randn(frames, basis.shape[1], generator=generator) @ basis.T
            clips.append(inside + 0.02 * torch.randn(frames, WIDTH, generator=generator))
        acts.append(torch.stack(clips))

    class Replay(nn.Module):
        def __init__(self, output: torch.Tensor) -> None:
            super().__init__()
            self.output = nn.Parameter(output, requires_grad=False)  # the patch reads dtype and device here

        def forward(self, _: torch.Tensor) -> torch.Tensor:
            return self.output

    model = nn.Sequential(*(Replay(layer_acts) for layer_acts in acts))
    patch = SeenPatch(model, [str(i) for i in range(len(acts))], bundle.bases_by_profile())
    with patch.score(FrameLayout.padded(torch.full((len(types),), frames), frames)) as readout:
        model(torch.zeros(1))
    measurement = readout.report()
    policy = NoisePolicy(bundle)
    control = Control(enabled=True, strength=1.0, profile=AUTO_PROFILE)
    for clip, name in enumerate(types):
        report = policy.assess_scored(measurement, [clip], control)
        assert report.profile == report.dominant_noise == name
        assert report.see > 0.9 and report.see_by_profile["merged"] >= report.see - 1e-6


def test_identical_files_do_not_double_the_rank(
    workspace: dict[str, Path], published: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "crowd-again.pt"
    shutil.copyfile(published["crowd"], copy)
    assert _import(workspace, tmp_path / "twice", published["crowd"], copy) == 0
    bundle = NoiseBundle.load(tmp_path / "twice")
    assert bundle.profiles["merged"].ranks == bundle.profiles["crowd"].ranks == [3, 2]


def test_single_file_import_keeps_its_profile_option(
    workspace: dict[str, Path], published: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert _import(workspace, tmp_path / "one", published["wind"], extra=("--profile", "gusts")) == 0
    assert "gusts: k = 2, 4" in capsys.readouterr().out
    bundle = NoiseBundle.load(tmp_path / "one")
    assert list(bundle.profiles) == ["gusts"] and bundle.default_profile == "gusts"
    assert _import(workspace, tmp_path / "named", f"wind={published['wind']}") == 0
    assert list(NoiseBundle.load(tmp_path / "named").profiles) == ["wind"]
    assert _import(workspace, tmp_path / "both", f"wind={published['wind']}", extra=("--profile", "x")) == 2
    assert "not both" in capsys.readouterr().err


def test_import_refusals_name_the_problem(
    workspace: dict[str, Path], published: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generator = torch.Generator().manual_seed(11)
    narrow, short, skewed = tmp_path / "narrow.pt", tmp_path / "short.pt", tmp_path / "skewed.pt"
    torch.save([torch.linalg.qr(torch.randn(32, 2, generator=generator))[0]] * 2, narrow)
    torch.save([torch.linalg.qr(torch.randn(WIDTH, 2, generator=generator))[0]], short)
    torch.save([2 * torch.linalg.qr(torch.randn(WIDTH, 2, generator=generator))[0]] * 2, skewed)
    (tmp_path / "other").mkdir()
    same_stem = tmp_path / "other" / "crowd.pt"
    shutil.copyfile(published["crowd"], same_stem)
    crowd = published["crowd"]
    cases = {
        "narrow": ((crowd, narrow), (), [str(narrow), "shape (32, 2)", "(64, k)"]),
        "short": ((crowd, short), (), [str(short), "holds 1 layer bases", "same layers"]),
        "skewed": ((crowd, skewed), (), [str(skewed), "not orthonormal"]),
        "duplicate": ((f"a={crowd}", f"a={published['wind']}"), (), ["profile 'a'", "NAME=FILE"]),
        "same stem": ((crowd, same_stem), (), ["profile 'crowd'"]),
        "merged": ((f"merged={crowd}", published["wind"]), (), ["'merged' is reserved"]),
        "auto": ((f"auto={crowd}",), (), ["'auto' is reserved"]),
        "profile": ((crowd, published["wind"]), ("--profile", "x"), ["--profile", "NAME=FILE"]),
        "missing": ((crowd, tmp_path / "nope.pt"), (), ["nope.pt does not exist"]),
    }
    for case, (sources, extra, messages) in cases.items():
        out = tmp_path / f"refused-{case}"
        assert _import(workspace, out, *sources, extra=extra) == 2, case
        error = capsys.readouterr().err
        assert "seen import-basis: error:" in error, (case, error)
        assert all(message in error for message in messages), (case, error)
        assert not out.exists(), case
    with pytest.raises(SystemExit):
        _import(workspace, tmp_path / "x", "=nothing.pt")
    assert "NAME=FILE" in capsys.readouterr().err


def test_clear_errors(workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(workspace["model"])
    missing = ["calibrate", "--model", model, "--clean", str(tmp_path / "nope"), "--noise", f"w={tmp_path}"]
    assert main([*missing, "--out", str(tmp_path / "b")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    empty = ["calibrate", "--model", model, "--clean", str(workspace["clean"]), "--noise", f"w={tmp_path / 'empty'}"]
    assert main([*empty, "--out", str(tmp_path / "b")]) == 2
    assert "empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate", "--model", model, "--clean", "x", "--noise", "no-equals-sign", "--out", "y"])
    assert "NAME=DIR" in capsys.readouterr().err
    assert main(["score", "--model", str(tmp_path / "no-model"), "--bundle", str(tmp_path), "a.wav"]) == 2
    assert "not a noise bundle" in capsys.readouterr().err

    (tmp_path / "broken.wav").write_bytes(b"RIFF not really audio")
    bundle = workspace["root"] / "imported"
    code = main(["score", "--model", model, "--bundle", str(bundle), "--json", str(tmp_path / "broken.wav")])
    assert code == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert "broken.wav" in error and "could not decode audio" in error


def test_console_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, check=True)
    for command in ("calibrate", "score", "import-basis", "noise"):
        assert command in result.stdout


def test_the_cli_and_the_service_start_without_the_eval_extra() -> None:
    """Serving must not need matplotlib, pystoi, noisereduce or pyrnnoise (the optional eval extra)."""
    root = Path(__file__).resolve().parents[1]
    blocked = "; ".join(
        f"sys.modules[{name!r}] = None" for name in ("matplotlib", "pystoi", "noisereduce", "pyrnnoise")
    )
    code = f"import sys; {blocked}; from cli.main import build_parser; build_parser(); import service.app"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    argv = ["eval", "--dataset", "x.csv", "--out", "y"]
    code = f"import sys; {blocked}; from cli.main import main; sys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert result.returncode == 2 and "pip install 'seen[eval]'" in result.stderr, result.stderr


@pytest.mark.anyio
async def test_score_and_the_see_endpoint_give_the_same_report(
    workspace: dict[str, Path], service_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One policy fills both: every field agrees, and the dominant noise is a noise type, never 'merged'."""
    import base64

    import numpy as np
    import soundfile as sf

    from tests.service_helpers import MODEL_NAME, serving

    noisy = workspace["root"] / "white" / "white_0000.wav"
    clean = workspace["clean"] / "speech_1.wav"
    long = workspace["root"] / "long.wav"  # past the tiny model's 5 s window: scored window by window
    audio, rate = sf.read(clean, dtype="float32")
    sf.write(long, np.tile(audio, int(np.ceil(11 * rate / len(audio))))[: 11 * rate], rate)
    capsys.readouterr()
    args = ["score", "--model", str(workspace["model"]), "--bundle", str(service_bundle), "--json"]
    assert main([*args, str(clean), str(noisy), str(long)]) == 0
    offline = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert offline[2]["clips"] == 3
    async with serving(workspace["model"], service_bundle) as client:
        online = []
        for path in (clean, noisy, long):
            part = {
                "type": "input_audio",
                "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": "wav"},
            }
            body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": [part]}]}
            response = await client.post("/v1/see", json=body)
            assert response.status_code == 200, response.text
            online.append(response.json()["noise_report"])
    for row, report in zip(offline, online, strict=True):
        row.pop("path")
        assert set(row) == set(report)
        for key, value in report.items():
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
            elif key == "see_by_profile":
                assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-7)
            elif key == "per_layer":
                assert [(r["layer"], r["residual_see"]) for r in row[key]] == [
                    (r["layer"], r["residual_see"]) for r in value
                ]
                assert [r["see"] for r in row[key]] == pytest.approx([r["see"] for r in value], rel=1e-5, abs=1e-7)
            else:
                assert row[key] == value, key
        assert row["dominant_noise"] in ("white", "babble")


def test_help_and_version_start_fast_and_import_no_model_stack() -> None:
    """``seen --help`` and ``--version`` import the command table only: no torch, transformers or uvicorn."""
    root = Path(__file__).resolve().parents[1]
    probe = (
        "import sys, time; start = time.perf_counter(); from cli.main import build_parser; build_parser([]); "
        "heavy = sorted(m for m in ('torch', 'transformers', 'uvicorn', 'scipy') if m in sys.modules); "
        "print(heavy, time.perf_counter() - start)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, check=True)
    heavy, seconds = result.stdout.rsplit(" ", 1)
    assert heavy == "[]" and float(seconds) < 1.0, result.stdout
    for flag in ("--help", "--version"):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli.main", flag], capture_output=True, check=True, cwd=root)
        assert time.perf_counter() - started < 3.0  # interpreter start included; about 0.2 s on an idle CPU
    noise = "import sys; from cli.main import build_parser; build_parser(['noise']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", noise], capture_output=True, text=True, cwd=root, check=True)
    assert result.stdout.strip() == "False"  # seen noise needs no model stack


def test_help_shows_defaults_and_settings_errors_read_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("serve", "noise", "sweep"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: " in text, command
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 127.0.0.1)" in text and "(default: 8)" in text and "(default: on)" in text
    assert main(["serve", "--max-batch-size", "0"]) == 2
    assert "invalid settings: max_batch_size: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main(["serve", "--bundle", "nowhere"]) == 2
    error = capsys.readouterr().err
    assert "invalid settings: bundle 'nowhere' needs the model" in error and ": :" not in error


def test_examples_prints_the_installed_clips_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["examples"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "request.wav").is_file() and (folder / "request-white-0db.wav").is_file()
