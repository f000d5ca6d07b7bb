"""ContrastiveLoss forward + backward beside the PyTorch formulation on the same threads.

    python benchmarks/bench_loss.py [--sizes 32 256 1024 4096] [--dim 512] [--same-process]

PyTorch: F.normalize, matmul, F.cross_entropy both ways (lambda 0.75), backward. Each side
runs in its own process. Each size reports the median over at least a second of calls
(five calls at N = 1024 moved by 10% from run to run on a shared machine). convirt's
second is five bursts of 0.2 s, each after a reading of the FMA peak in its own process:
'of peak' compares with the peak read at the start of the run, 'of peak, same moment' is
the median of the five bursts each beside its own reading (benchmarks.common.peak_pairs).
--same-process adds a run of both sides in one process (two OpenMP runtimes, as in a
notebook that imports both), 0.2 s bursts of each alternating five times per size."""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (
    fraction_of_peak,
    header,
    measure_peak,
    peak_line,
    print_table,
    run_isolated,
)


def loss_step(framework, v, u, threads):
    """One forward + backward of the loss on (v, u) by `framework`, as a callable."""
    import numpy as np

    n = len(v)
    if framework == "torch":
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
        tv = torch.from_numpy(v).requires_grad_()
        tu = torch.from_numpy(u).requires_grad_()
        target = torch.arange(n)

        def fn():
            tv.grad = tu.grad = None
            logits = F.normalize(tv, dim=1) @ F.normalize(tu, dim=1).T / 0.1
            loss = 0.75 * F.cross_entropy(logits, target) + 0.25 * F.cross_entropy(
                logits.T, target
            )
            loss.backward()

        return fn
    import convirt

    convirt.set_num_threads(threads)
    loss = convirt.ContrastiveLoss()
    gv, gu = np.empty_like(v), np.empty_like(u)
    return lambda: loss(v, u, grad_v=gv, grad_u=gu)


def embeddings(n, dim):
    import numpy as np

    rng = np.random.default_rng(n)
    v = rng.standard_normal((n, dim), dtype=np.float32)
    u = rng.standard_normal((n, dim), dtype=np.float32)
    return v, u


def run(framework, sizes, dim, threads, repeat):
    from benchmarks.common import peak_pairs, timeit

    results, pairs = {}, {}
    for n in sizes:
        v, u = embeddings(n, dim)
        fn = loss_step(framework, v, u, threads)
        if framework == "torch":
            reps = max(repeat, int(min(200, 2e9 / (n * n * dim + 1))))
            results[str(n)] = timeit(fn, repeat=reps, warmup=2, min_time=1.0)
        else:  # the same second of calls, in five bursts, each after a peak reading
            pairs[str(n)] = peak_pairs(fn, threads, bursts=5, burst_seconds=0.2, warmup=2)
            results[str(n)] = statistics.median(t for t, _ in pairs[str(n)])
    return {"seconds": results, "pairs": pairs}


def run_same(sizes, dim, threads, rounds=5, burst_seconds=0.2):
    """Both sides in one process (two OpenMP runtimes, as in a notebook that imports
    both), bursts alternating: per size, `rounds` x (a burst of convirt's calls, then
    one of PyTorch's), each burst's median call; the median over the rounds per side."""
    from benchmarks.common import timeit

    results = {"convirt": {}, "torch": {}}
    for n in sizes:
        v, u = embeddings(n, dim)
        steps = {side: loss_step(side, v, u, threads) for side in results}
        times = {side: [] for side in results}
        for side, fn in steps.items():
            fn()
        for _ in range(rounds):
            for side, fn in steps.items():
                times[side].append(timeit(fn, repeat=1, min_time=burst_seconds, warmup=1))
        for side, per_size in results.items():
            per_size[str(n)] = statistics.median(times[side])
    return results


COLUMNS = ["N", "d", "convirt ms", "PyTorch ms", "speed-up", "convirt GFLOP/s (GEMMs)"]
COLUMNS += ["of peak"]


def table_row(n, dim, ours, theirs, peak):
    """N, d, both sides' ms, the speed-up, convirt's GEMM rate and its share of peak."""
    flops = 3 * 2.0 * n * n * dim  # the three GEMMs
    rate = flops / ours / 1e9
    return [
        n,
        dim,
        f"{ours * 1e3:.3f}",
        f"{theirs * 1e3:.3f}",
        f"{theirs / ours:.2f}x",
        f"{rate:.1f}",
        f"{100 * rate / peak:.0f}%",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="also run both sides in one process, bursts alternating",
    )
    args = parser.parse_args()

    import convirt

    threads = args.threads or convirt.get_num_threads()
    header("bench_loss: ConVIRT loss forward + backward", threads)
    peak, bits = measure_peak(threads)
    print(peak_line(peak, bits, threads))
    kwargs = {
        "sizes": args.sizes,
        "dim": args.dim,
        "threads": threads,
        "repeat": args.repeat,
    }
    ours = run_isolated("bench_loss", "run", dict(kwargs, framework="convirt"))
    theirs = run_isolated("bench_loss", "run", dict(kwargs, framework="torch"))
    rows = []
    for n in args.sizes:
        gflop = 3 * 2.0 * n * n * args.dim / 1e9
        same_moment = fraction_of_peak(gflop, ours["pairs"][str(n)])
        rows.append(
            table_row(n, args.dim, ours["seconds"][str(n)], theirs["seconds"][str(n)], peak)
            + [f"{100 * same_moment:.0f}%"]
        )
    print_table(
        COLUMNS + ["of peak, same moment"],
        rows,
        title=f"forward + backward, {threads} threads, peak {peak:.0f} GFLOP/s",
    )
    print(
        f"peak memory: convirt {ours['max_rss_mb']:.0f} MiB, PyTorch {theirs['max_rss_mb']:.0f} "
        "MiB (whole process, including the interpreter and imports)"
    )
    if not args.same_process:
        return
    same = run_isolated(
        "bench_loss", "run_same", {"sizes": args.sizes, "dim": args.dim, "threads": threads}
    )
    rows = [
        table_row(n, args.dim, same["convirt"][str(n)], same["torch"][str(n)], peak)
        for n in args.sizes
    ]
    print_table(
        COLUMNS,
        rows,
        title=f"the same, both in one process, bursts alternating, {threads} threads",
    )
    print(f"peak memory of the shared process: {same['max_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
