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


def test_bench_loss_prints_the_same_process_table_beside_the_separate_one():
    pytest.importorskip("torch")
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "bench_loss.py")]
        + ["--sizes", "32", "64", "--same-process"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    separate, _, same = out.stdout.partition("both in one process")
    assert same, out.stdout
    for table in (separate, same):
        rows = [
            line.split("|") for line in table.splitlines() if line[:4].strip("| ").isdigit()
        ]
        assert [int(row[1]) for row in rows] == [32, 64], table
        for row in rows:  # convirt ms, PyTorch ms, speed-up
            assert float(row[3]) > 0 and float(row[4]) > 0 and row[5].strip().endswith("x")
