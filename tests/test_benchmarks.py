"""The encoder overhead benchmark: its statistics, and one real (1-layer) run through its main."""

from __future__ import annotations

import re

import numpy as np
import pytest

from benchmarks.encoder_overhead import TARGET_RATIO, main, paired_interval, verdict


def test_paired_interval_and_verdict() -> None:
    steady = np.full(12, 1.01)
    assert paired_interval(steady) == pytest.approx((1.01, 1.01))
    assert verdict(*paired_interval(steady)) == "PASS"
    assert verdict(*paired_interval(np.full(12, TARGET_RATIO + 0.02))) == "FAIL"
    scattered = np.array([0.9, 1.1] * 6)
    low, high = paired_interval(scattered)
    assert low < 1.0 < high
    assert verdict(low, high) == "UNRESOLVED"


def test_a_run_times_every_variant_and_reports_a_direct_cost(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--layers", "1", "--hooked", "1", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "cycling through all 6 permutations" in out
    assert re.search(r"target: paired ratio <= 1\.03 -> \(b\) [\d.]+ .* \(c\) [\d.]+", out)
    direct = re.findall(r"per run = ([\d.]+)% of the rest of the forward", out)
    assert len(direct) == 2  # (b) and (c): the hooks fired and were timed
    assert all(0.0 < float(share) < 100.0 for share in direct)
