"""sgemm on ResNet-50 and BERT shapes, contiguous and strided: convirt's own kernel
(the packed path the towers and the loss run) and its BLIS wrapper, beside the machine's
FP32 FMA peak, the kernel's own ceiling (operands in L1), BLIS's generic kernels and
torch.mm.

    python benchmarks/bench_gemm.py [--quick]

Each column runs in its own process on the same threads; the peak and the kernel's
ceiling are measured in the same run: an FMA loop on registers, and the kernel on a
block of A and a panel of B that stay in L1 (convirt._core.gemm_kernel_peak), so that
what the kernel loses to its loads and stores and what a GEMM loses to the caches show
apart."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import header, measure_peak, peak_line, print_table, run_isolated

# (name, m, n, k): C (m x n) = A (m x k) B (k x n)
SHAPES = [
    ("ResNet-50 layer1 1x1 (64->256), batch 32", 100352, 256, 64),
    ("ResNet-50 layer1 1x1 weight grad (256->64)", 256, 64, 100352),
    ("ResNet-50 layer1 3x3 im2col (576->64), batch 32", 100352, 64, 576),
    ("ResNet-50 layer3 1x1 (1024->256), batch 32", 6272, 256, 1024),
    ("ResNet-50 layer4 1x1 (512->2048), batch 32", 1568, 2048, 512),
    ("ResNet-50 layer2 3x3 weight grad", 128, 1152, 25088),
    ("BERT-base QKV, 32x128 tokens", 4096, 2304, 768),
    ("BERT-base FFN up", 4096, 3072, 768),
    ("BERT-base FFN down", 4096, 768, 3072),
    ("BERT-base FFN down weight grad", 768, 3072, 4096),
    ("MiniLM FFN up, 32x128 tokens", 4096, 1536, 384),
    ("MiniLM FFN down weight grad", 384, 1536, 4096),
    ("BERT-base attention scores (one head)", 128, 128, 64),
    ("ContrastiveLoss N = 1024, d = 512", 1024, 1024, 512),
    ("square 2048", 2048, 2048, 2048),
]
QUICK = [SHAPES[3], SHAPES[4], SHAPES[6], SHAPES[10], SHAPES[11], SHAPES[12], SHAPES[13]]
LAYOUTS = ["contiguous", "A transposed", "B transposed", "C strided"]


def operands(m, n, k, layout, rng):
    import numpy as np

    def make(rows, cols, transposed):
        if transposed:
            return rng.standard_normal((cols, rows), dtype=np.float32).T
        return rng.standard_normal((rows, cols), dtype=np.float32)

    a = make(m, k, layout == "A transposed")
    b = make(k, n, layout == "B transposed")
    c = (
        np.zeros((n, m), np.float32).T
        if layout == "C strided"
        else np.zeros((m, n), np.float32)
    )
    return a, b, c


def run(framework, shapes, layouts, threads, repeat):
    """GFLOP/s for every (shape, layout) with one framework, in this process."""
    import numpy as np

    from benchmarks.common import timeit

    rng = np.random.default_rng(0)
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        import convirt
        from convirt import _core, _testing

        convirt.set_num_threads(threads)
    results = {}
    for name, m, n, k in shapes:
        for layout in layouts:
            a, b, c = operands(m, n, k, layout, rng)
            if framework == "torch":
                ta, tb, tc = (torch.from_numpy(x) for x in (a, b, c))

                def fn():
                    torch.mm(ta, tb, out=tc)

                if layout == "C strided":  # torch.mm cannot write a strided out in place

                    def fn():
                        tc.copy_(torch.mm(ta, tb))
            elif framework == "kernel":
                # the packed path writes C with contiguous rows, and on AVX2 reads A
                # with a unit stride: other layouts are BLIS's
                if layout == "C strided" or not _testing.gemm_packed(a, b, c):
                    continue

                def fn():
                    _testing.gemm_packed(a, b, c)

            else:

                def fn():
                    _core.gemm(a, b, c)

            flops = 2.0 * m * n * k
            reps = max(repeat, int(min(50, 2e10 / flops)))
            # two warm-up calls and at least 0.3 s of timed ones: the first layout of a shape
            # read 10-40% low with one warm-up call (fresh pages, the clock settling)
            seconds = timeit(fn, repeat=reps, warmup=2, min_time=0.3)
            results[f"{name}|{layout}"] = flops / seconds / 1e9
    return {"gflops": results}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and layouts")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-generic", action="store_true")
    args = parser.parse_args()

    import convirt

    threads = args.threads or convirt.get_num_threads()
    header("bench_gemm: sgemm GFLOP/s", threads)
    peak, bits = measure_peak(threads)
    peak1, _ = measure_peak(1)
    print(f"{peak_line(peak, bits, threads)}, {peak1:.1f} on 1")
    from convirt import _core

    try:
        ceiling, _ = _core.gemm_kernel_peak(threads, 1.0)
        ceiling1, _ = _core.gemm_kernel_peak(1, 1.0)
        print(
            f"convirt's GEMM kernel on operands in L1 (its ceiling): {ceiling:.1f} GFLOP/s "
            f"on {threads} threads ({100 * ceiling / peak:.0f}% of the FMA peak), "
            f"{ceiling1:.1f} on 1 ({100 * ceiling1 / peak1:.0f}%)"
        )
    except ValueError as error:  # a kernel set without convirt's own kernel
        print(f"convirt's GEMM kernel: {error}")
    shapes = QUICK if args.quick else SHAPES
    layouts = LAYOUTS[:2] + LAYOUTS[3:] if args.quick else LAYOUTS
    kwargs = {
        "shapes": shapes,
        "layouts": layouts,
        "threads": threads,
        "repeat": args.repeat,
    }
    kernel = run_isolated("bench_gemm", "run", dict(kwargs, framework="kernel"))["gflops"]
    ours = run_isolated("bench_gemm", "run", dict(kwargs, framework="convirt"))["gflops"]
    generic = (
        {}
        if args.no_generic
        else run_isolated(
            "bench_gemm",
            "run",
            dict(kwargs, framework="convirt"),
            env={"BLIS_ARCH_TYPE": "generic"},
        )["gflops"]
    )
    torch = (
        {}
        if args.no_torch
        else run_isolated("bench_gemm", "run", dict(kwargs, framework="torch"))["gflops"]
    )
    rows = []
    for name, m, n, k in shapes:
        for layout in layouts:
            key = f"{name}|{layout}"
            g = ours[key]
            own = kernel.get(key)
            rows.append(
                [
                    name,
                    f"{m}x{n}x{k}",
                    layout,
                    f"{own:.1f}" if own else "-",
                    f"{100 * own / peak:.0f}%" if own else "-",
                    f"{g:.1f}",
                    f"{100 * g / peak:.0f}%",
                    f"{generic[key]:.1f}" if key in generic else "-",
                    f"{torch[key]:.1f}" if key in torch else "-",
                ]
            )
    print_table(
        [
            "shape",
            "m x n x k",
            "layout",
            "convirt kernel",
            "of peak",
            "convirt BLIS",
            "of peak",
            "BLIS generic",
            "torch.mm",
        ],
        rows,
        title=f"sgemm, {threads} threads, peak {peak:.0f} GFLOP/s",
    )


if __name__ == "__main__":
    main()
