"""The benchmarks' shared measuring helpers (benchmarks/common.py): the tables in the
README and the closing notes come from them."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import fraction_of_peak, peak_pairs


def test_peak_pairs_reads_a_peak_before_every_burst():
    calls = []
    pairs = peak_pairs(lambda: calls.append(1), threads=1, bursts=3, peak_seconds=0.02)
    assert len(pairs) == 3 and len(calls) == 3  # one call per burst without a duration
    assert all(seconds >= 0.0 and peak > 0.0 for seconds, peak in pairs)


def test_peak_pairs_calls_the_warmup_untimed():
    calls = []
    pairs = peak_pairs(lambda: calls.append(1), threads=1, bursts=2, warmup=3)
    assert len(pairs) == 2 and len(calls) == 5


def test_peak_pairs_fills_a_burst_duration():
    calls = []
    peak_pairs(lambda: calls.append(1), threads=1, bursts=2, burst_seconds=0.01)
    assert len(calls) > 2


def test_fraction_of_peak_is_the_median_of_the_bursts():
    # 10 GFLOP in 0.1 s is 100 GFLOP/s: against peaks of 200, 100 and 400
    pairs = [(0.1, 200.0), (0.1, 100.0), (0.1, 400.0)]
    assert fraction_of_peak(10.0, pairs) == pytest.approx(0.5)
