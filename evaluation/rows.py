"""The per-request row every evaluation writes, its CSV form, and the result store that resumes runs.

One :class:`RequestRow` per (condition, clip, method). Columns added after the first release have defaults,
so rows of older runs still load (with those fields ``None``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Protocol, get_args, get_type_hints


@dataclass(frozen=True)
class RequestRow:
    """One request: a clip under one condition (noise, SNR), answered with one method (nothing, SEEN, a denoiser)."""

    noise: str  # noise source name, "clean" for the clean condition
    snr_db: float | None  # None for clean
    method: str  # "none", "seen-<strength>", "seen-adaptive", or a denoiser name
    clip: str
    success: float  # 1/0 exact match for QA, max(0, 1 - WER) for transcription
    wer: float | None  # None when the dataset has no transcripts
    see: float  # SEE of the audio the model received (after any denoiser)
    residual_see: float | None  # SEE left after SEEN; None when SEEN was off
    true_snr_db: float | None  # SNR of the model's input against the clean clip; None for clean
    wada_snr_db: float  # blind SNR estimate on the model's input
    stoi: float  # STOI of the model's input against the clean clip
    # Added later, so with defaults: rows of older runs load with them None.
    dnsmos_bak: float | None = None  # DNSMOS P.835 background score of the model's input (blind, higher = cleaner)
    dnsmos_ovrl: float | None = None  # DNSMOS P.835 overall score of the model's input
    answer: str | None = None  # the model's answer, kept so a resumed run can recover the clean answers
    agreement: float | None = None  # success scored against this clip's clean "none" answer instead of the truth


_FIELDS = [f.name for f in fields(RequestRow)]
_REQUIRED = {f.name for f in fields(RequestRow) if f.default is MISSING}
_TEXT = {name for name, hint in get_type_hints(RequestRow).items() if hint is str}
_OPTIONAL = {name for name, hint in get_type_hints(RequestRow).items() if type(None) in get_args(hint)}
_JSON = {"answer"}
"""Free text that may be empty: JSON-quoted in its cell, so an empty answer ("") differs from none (empty cell)."""


def _text(name: str, value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False) if name in _JSON else str(value)


def rows_to_csv(rows: Iterable[RequestRow], path: Path) -> None:
    """Write rows under a header; ``None`` is an empty cell and floats are written exactly (``str`` round-trips)."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_FIELDS)
        for row in rows:
            writer.writerow([_text(name, getattr(row, name)) for name in _FIELDS])


def _cell(name: str, text: str) -> Any:
    if name in _TEXT:
        return text
    if text == "" and name not in _OPTIONAL:
        raise ValueError(f"column {name!r} is empty but is required")
    if text == "":
        return None
    if name in _JSON:
        value = json.loads(text)
        if not isinstance(value, str):
            raise ValueError(f"column {name!r} holds {text!r}, not a JSON string")
        return value
    return float(text)


def rows_from_csv(path: Path) -> list[RequestRow]:
    """Read rows written by :func:`rows_to_csv`; a missing required column is a ValueError.

    Columns added after the first release (DNSMOS, answer, agreement) may be missing: older runs load with
    those fields ``None``.
    """
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        present = set(reader.fieldnames or ())
        missing = _REQUIRED - present
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        names = [name for name in _FIELDS if name in present]
        return [RequestRow(**{name: _cell(name, record[name]) for name in names}) for record in reader]


class Labelled(Protocol):
    """A condition, as the store names its files."""

    @property
    def label(self) -> str: ...


class ResultStore:
    """One CSV per finished (condition, method); a run with other settings refuses to reuse the folder."""

    def __init__(self, folder: Path, fingerprint: dict[str, object]) -> None:
        self.rows_dir = folder / "rows"
        self.rows_dir.mkdir(parents=True, exist_ok=True)
        manifest = folder / "run.json"
        if manifest.exists():
            previous = json.loads(manifest.read_text())
            if previous != fingerprint:
                changed = sorted(
                    k for k in fingerprint.keys() | previous.keys() if fingerprint.get(k) != previous.get(k)
                )
                raise ValueError(f"{folder} holds a run with other settings ({', '.join(changed)}); use a new --out")
        manifest.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")

    def _path(self, condition: Labelled, method: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-.@" else "_" for c in f"{condition.label}__{method}")
        return self.rows_dir / f"{safe}.csv"

    def has(self, condition: Labelled, method: str) -> bool:
        return self._path(condition, method).exists()

    def load(self, condition: Labelled, method: str) -> list[RequestRow] | None:
        """The stored rows of one (condition, method), or None when it has not finished."""
        path = self._path(condition, method)
        return rows_from_csv(path) if path.exists() else None

    def save(self, condition: Labelled, method: str, rows: Sequence[RequestRow]) -> None:
        path = self._path(condition, method)
        partial = path.with_suffix(".partial")
        rows_to_csv(list(rows), partial)
        partial.replace(path)  # atomic: an interrupted write never looks finished

    def load_all(self) -> list[RequestRow]:
        return [row for path in sorted(self.rows_dir.glob("*.csv")) for row in rows_from_csv(path)]
