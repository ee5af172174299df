"""The calibration's console summary: the per-layer table and loud warnings about empty bases."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from calibration.pipeline import CalibrationResult


def layer_table(result: CalibrationResult) -> Table:
    """M_l, D_l, whether the layer was selected, and k_l for each noise profile."""
    profiles = list(result.layer_bases)
    table = Table(title="Layer localization and noise directions")
    for column in ("layer", "M_l", "D_l", "selected", *(f"k ({name})" for name in profiles)):
        table.add_column(column, justify="right")
    selected_rank = {layer: i for i, layer in enumerate(result.bundle.layers)}
    for profile in result.localization:
        index = selected_rank.get(profile.layer)
        ranks = [str(result.layer_bases[name][index].k) if index is not None else "-" for name in profiles]
        table.add_row(
            str(profile.layer),
            f"{profile.distance:.4g}",
            f"{profile.consistency:.4f}",
            "yes" if profile.selected else "",
            *ranks,
        )
    return table


def see_table(result: CalibrationResult) -> Table:
    table = Table(title="SEE of the calibration sets (clip level)")
    for column in ("profile", "clean mean", "clean p95", "noise mean", "noise p05", "noise clips"):
        table.add_column(column, justify="right")
    for name, profile in result.bundle.profiles.items():
        clean, noise = profile.see_clean, profile.see_noise
        assert clean is not None and noise is not None
        table.add_row(
            name,
            f"{clean.mean:.4f}",
            f"{clean.quantiles['p95']:.4f}",
            f"{noise.mean:.4f}",
            f"{noise.quantiles['p05']:.4f}",
            str(profile.clips),
        )
    return table


def empty_basis_warnings(result: CalibrationResult) -> list[str]:
    """One line per profile and layer with no direction, and one for the bundle when SEE will be 0."""
    lines = []
    for name, bases in result.layer_bases.items():
        empty = [layer for layer, basis in zip(result.bundle.layers, bases, strict=True) if basis.k == 0]
        if empty:
            lines.append(f"profile {name!r}: no noise direction at layers {empty}; those layers contribute SEE 0")
    if result.bundle.empty:
        lines.append(
            "EVERY basis is empty: SEE will be 0 for every input and SEEN will change nothing. Try --center "
            "clean_mean, a larger --delta (or --delta-mode chance), or a lower --alpha; see docs/calibration.md"
        )
    return lines


def print_report(result: CalibrationResult, console: Console) -> None:
    console.print(layer_table(result))
    console.print(see_table(result))
    for line in empty_basis_warnings(result):
        console.print(f"[bold red]WARNING[/] {line}")
