"""The ``seen`` command as users run it: calibrate, score, import-basis and noise, with their errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from cli.main import main
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
    assert _calibrate(workspace, workspace["root"] / "literal") == 0
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

    from tests.service_helpers import MODEL_NAME, serving

    noisy = workspace["root"] / "white" / "white_0000.wav"
    clean = workspace["clean"] / "speech_1.wav"
    capsys.readouterr()
    args = ["score", "--model", str(workspace["model"]), "--bundle", str(service_bundle), "--json"]
    assert main([*args, str(clean), str(noisy)]) == 0
    offline = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    async with serving(workspace["model"], service_bundle) as client:
        online = []
        for path in (clean, noisy):
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
