"""Imports point one way: cli -> (calibration, service, demo, evaluation) -> seen, never back.

conversion (checkpoint formats) stands alone: it imports nothing of the project.

demo may use calibration; evaluation may use calibration (``seen sweep`` calibrates the bundles it measures)
and the service's engine (not its HTTP side).

The one exception: the service reads where the embedded demo checkpoint lives from the ``demo`` package
root, which holds two paths and imports nothing of the project.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "seen": {"calibration", "conversion", "service", "cli", "tests", "demo"},
    "conversion": {"seen", "calibration", "service", "cli", "tests", "demo", "evaluation"},
    "calibration": {"service", "cli", "tests", "demo", "evaluation"},
    "service": {"calibration", "cli", "tests"},
    "demo": {"service", "cli", "tests"},
    "evaluation": {"cli", "tests", "demo"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_points_up(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {file: names for file, names in offenders.items() if names} == {}


def test_the_service_takes_only_asset_locations_from_demo() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path) if m.startswith("demo."))
        for path in (ROOT / "service").rglob("*.py")
    }
    assert {file: names for file, names in offenders.items() if names} == {}
    assert _imported_packages(ROOT / "demo" / "__init__.py") == {"pathlib"}


def test_evaluation_uses_the_service_engine_only() -> None:
    """``seen eval`` generates through the service's batched backend, never through its HTTP side."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m.startswith("service") and not m.startswith("service.engine")
        )
        for path in (ROOT / "evaluation").rglob("*.py")
    }
    assert {file: names for file, names in offenders.items() if names} == {}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_engine_knows_nothing_of_http() -> None:
    """service/engine (batching, the model backend) sits below the routers, the app and the HTTP models."""
    http_side = ("service.app", "service.routers", "service.serving", "service.protocol", "service.dependencies")
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path) if m.startswith(http_side))
        for path in (ROOT / "service" / "engine").rglob("*.py")
    }
    assert {file: names for file, names in offenders.items() if names} == {}


def test_cli_and_evaluation_use_only_the_service_seams() -> None:
    """The command line starts the server through its settings and entry point; the evaluation runs on the
    backend protocol (and builds the transformers backend), never on the HTTP side or the engine's internals."""
    allowed = {
        "cli": {"service.config", "service.server"},
        "evaluation": {"service.engine.backend", "service.engine.transformers_backend"},
    }
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m.split(".")[0] == "service" and m not in allowed[package]
        )
        for package in allowed
        for path in (ROOT / package).rglob("*.py")
    }
    assert {file: names for file, names in offenders.items() if names} == {}
