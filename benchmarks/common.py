"""Shared pieces of the benchmarks: timing, the machine's peak, tables, memory.

Benchmarks are not tests: they print what they measured and decide nothing."""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import convirt
from convirt import _core


def measure_peak(threads=None, seconds=1.0):
    """FP32 FMA peak in GFLOP/s on `threads` threads (default: convirt's), and its vector
    width: that of the GEMM kernels in use (256 bits under BLIS_ARCH_TYPE=haswell on an
    AVX-512 CPU, so that a run restricted to AVX2 is measured against AVX2's peak)."""
    threads = threads or convirt.get_num_threads()
    gflops, bits = _core.fma_peak(threads=threads, seconds=seconds)
    return gflops, bits


def peak_line(peak, bits, threads):
    """The header line that names the peak a table is read against, and its width."""
    return (
        f"measured FP32 FMA peak ({bits}-bit vectors, the width of the GEMM kernels in "
        f"use): {peak:.1f} GFLOP/s on {threads} threads"
    )


def timeit(fn, repeat=5, warmup=1, min_time=0.0):
    """Median wall time of fn() over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_pairs(step, threads, bursts, burst_seconds=0.0, peak_seconds=0.2, warmup=0):
    """Times step() in `bursts` bursts (one call each, or as many as fill burst_seconds)
    after `warmup` untimed calls, reading the FMA peak in this process just before each
    burst: [(median seconds of the burst's calls, GFLOP/s of the peak read before it)].
    The shared hosts these benchmarks ran on drifted by 10-20% within minutes (Zen 5,
    2026-12), so that a peak read once per run, or in another process, could put the same
    step at 75% or 85%; fraction_of_peak takes each burst beside the peak of the same
    moment."""
    for _ in range(warmup):
        step()
    pairs = []
    for _ in range(bursts):
        peak = _core.fma_peak(threads=threads, seconds=peak_seconds)[0]
        times = []
        start = time.perf_counter()
        while not times or time.perf_counter() - start < burst_seconds:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        pairs.append((statistics.median(times), peak))
    return pairs


def fraction_of_peak(gflop, pairs):
    """The median over peak_pairs' bursts of (gflop / seconds) / peak."""
    return statistics.median(gflop / seconds / peak for seconds, peak in pairs)


def print_table(headers, rows, title=None):
    """A Markdown table (pastes into README and issue notes as it is)."""
    if title:
        print(f"\n### {title}\n")
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")
    sys.stdout.flush()


def max_rss_mb():
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(module, function, kwargs, env=None):
    """Run benchmarks.<module>.<function>(**kwargs) in a fresh Python process and return
    its JSON result (with 'max_rss_mb' added): peak memory per framework, and a clean
    BLIS initialisation when env sets BLIS_ARCH_TYPE."""
    code = (
        f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r});"
        f"from benchmarks.{module} import {function} as f; from benchmarks.common import max_rss_mb;"
        f"r = f(**json.loads(sys.argv[1])); r['max_rss_mb'] = max_rss_mb(); print(json.dumps(r))"
    )
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)],
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{module}.{function} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model():
    """The CPU's name, family and model as /proc/cpuinfo gives them (a speed figure
    holds only for the CPU it was measured on)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break
    except OSError:
        return "unknown CPU"
    name = fields.get("model name", "unknown CPU")
    return (
        f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    )


def header(title, threads=None):
    """The run's title, CPU, kernel set, versions and threads (the benchmark's own
    count when given: convirt's default may differ)."""
    info = convirt.config()
    print(f"# {title}")
    print(
        f"CPU: {cpu_model()}; BLIS kernel set {info['blis_arch']}; convirt's own GEMM "
        f"kernel {info['gemm_kernel']} (CONVIRT_SMALL_GEMM=0: none, every GEMM in BLIS); "
        f"element-wise loops {info['vector_loops']}"
    )
    print(
        f"convirt {info['convirt_version']}, BLIS {info['blis_version']}, "
        f"{threads or info['num_threads']} threads, {info['cpu_features']}"
    )
    print(
        "3x3 stride-1 convolutions: "
        + (
            "Winograd "
            + (
                "F(4x4, 3x3) on outputs >= 8 x 8, F(2x2, 3x3) below"
                if info["winograd"] == 4
                else "F(2x2, 3x3)"
            )
            + " (GFLOP/s below count the direct convolution's FLOPs: 2.25-4x the "
            "multiplies those layers execute; CONVIRT_WINOGRAD=0 for the direct path)"
            if info["winograd"]
            else "direct (CONVIRT_WINOGRAD=0)"
        )
    )
