"""The paper's image transforms (convirt.ImageAugment) on a batch of 32 images, 256 ->
224, grey and RGB, on 1 and 2 threads, beside the same transforms written with PyTorch
(affine_grid + grid_sample + colour ops + a grouped separable conv for the blur, with
the same parameters), and beside a ResNet-50 training step on this machine.

    python benchmarks/bench_augment.py [--quick] [--batch 32] [--repeat 7]

The share columns put the transforms against a ResNet-50 training step for the same
batch: the step as convirt runs it on this machine (measured in the same run, on 4
images, scaled to the batch) and the step at the FMA peak measured in the same run
(ResNet-50 training costs about 24.5 GFLOP per 224 x 224 image, forward + backward). Timings are the best of
--repeat runs (wall clock), taken on a machine that may be shared: compare the
columns of one run, not runs of different days."""

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import convirt
from benchmarks.common import cpu_model, measure_peak
from convirt import ImageAugment

RESNET50_TRAIN_GFLOP = 24.5


def measure_step_seconds(batch, size, images=4):
    """Seconds of a ResNet-50 training step (forward + backward, grey views) for `batch`
    views of size x size, from the best of two steps on `images` views."""
    encoder = convirt.Encoder.resnet50(in_channels=1).train()
    views = np.random.default_rng(0).random((images, size, size), dtype=np.float32)
    grad = np.ones((images, 2048), np.float32)

    def step():
        encoder.forward(views, embeddings=False)
        encoder.backward(d_features=grad)

    return best_time(step, 2) * batch / images


def best_time(fn, repeat):
    fn()  # warm-up: buffers, thread pool
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ---- the same transforms in PyTorch ---------------------------------------------------


def torch_augment(torch, images, params, size, fill=0.0):
    """augment.h's pipeline in PyTorch on NCHW float: one grid_sample for crop, flip,
    affine and resize, then brightness, contrast and a per-image Gaussian blur."""
    F = torch.nn.functional
    x = torch.from_numpy(images)
    x = (x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)).float() / 255.0
    n, c, h, w = x.shape
    half = size / 2.0
    thetas, u_maps = [], []
    for p in params:
        a = math.radians(p["angle"])
        cs, sn = math.cos(a) / p["scale"], math.sin(a) / p["scale"]
        flip = -1.0 if p["flip"] else 1.0
        tx, ty = p["translate"][0] * size, p["translate"][1] * size
        # normalised output (xn, yn) -> pixel (j, i) -> crop-image u -> normalised input
        to_pixel = np.array([[half, 0, half - 0.5], [0, half, half - 0.5], [0, 0, 1]])
        to_u = np.array([[flip * cs, -flip * sn, 0], [sn, cs, 0], [0, 0, 1]])
        to_u[:2, 2] = to_u[:2, :2] @ [0.5 - half - tx, 0.5 - half - ty] + [half, half]
        to_input = np.array(
            [
                [2 * p["crop"][2] * w / size / w, 0, 2 * p["crop"][0] - 1],
                [0, 2 * p["crop"][3] * h / size / h, 2 * p["crop"][1] - 1],
                [0, 0, 1],
            ]
        )
        u_map = to_u @ to_pixel
        thetas.append((to_input @ u_map)[:2])
        u_maps.append(u_map[:2])
    theta = torch.tensor(np.array(thetas), dtype=torch.float32)
    grid = F.affine_grid(theta, (n, c, size, size), align_corners=False)
    out = F.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    # the share of each bilinear footprint inside the crop image (fill outside)
    u = F.affine_grid(
        torch.tensor(np.array(u_maps), dtype=torch.float32),
        (n, 1, size, size),
        align_corners=False,
    )
    inside = torch.clamp(torch.minimum(u + 0.5, size + 0.5 - u), 0, 1).prod(dim=-1)
    out = inside[:, None] * out + (1 - inside[:, None]) * fill
    b = torch.tensor(params["brightness"], dtype=torch.float32).view(n, 1, 1, 1)
    k = torch.tensor(params["contrast"], dtype=torch.float32).view(n, 1, 1, 1)
    out = torch.clamp(b * out, 0, 1)
    weights = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (out * weights).sum(1, keepdim=True) if c == 3 else out
    out = torch.clamp(k * out + (1 - k) * grey.mean(dim=(1, 2, 3), keepdim=True), 0, 1)
    sigma = params["sigma"]
    radius = math.ceil(3 * sigma.max())
    taps = np.arange(-radius, radius + 1)
    kernels = np.exp(-0.5 * taps[None] ** 2 / sigma[:, None] ** 2)
    kernels[np.abs(taps)[None] > np.ceil(3 * sigma)[:, None]] = 0.0
    kernels /= kernels.sum(1, keepdims=True)
    kern = torch.tensor(np.repeat(kernels, c, axis=0), dtype=torch.float32)
    flat = out.reshape(1, n * c, size, size)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kern.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kern.view(n * c, 1, -1, 1), groups=n * c)
    out = flat.view(n, c, size, size)
    return out[:, 0] if images.ndim == 3 else out.permute(0, 2, 3, 1)


# ---- the table -----------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 repeats, no torch")
    args = parser.parse_args()
    repeat = 2 if args.quick else args.repeat
    try:
        import torch
    except ImportError:
        torch = None
    if args.quick:
        torch = None

    rng = np.random.default_rng(0)
    variants = [
        (
            "crop+flip+affine+resize",
            {"brightness": None, "contrast": None, "blur_sigma": None},
        ),
        ("+ brightness, contrast", {"blur_sigma": None}),
        ("all (paper's defaults)", {}),
    ]
    step_seconds = measure_step_seconds(args.batch, args.size)
    peak_gflops, _ = measure_peak()  # FP32 FMA peak on convirt's threads, this run
    peak_seconds = args.batch * RESNET50_TRAIN_GFLOP / peak_gflops
    saved_threads = convirt.get_num_threads()
    print(f"CPU: {cpu_model()}; BLIS kernel set {convirt.config()['blis_arch']}")
    print(
        f"convirt.ImageAugment: batch {args.batch}, {args.input} x {args.input} uint8 -> "
        f"{args.size} x {args.size} float32; best of {repeat}"
    )
    step_gflops = args.batch * RESNET50_TRAIN_GFLOP / step_seconds
    print(
        f"ResNet-50 training step for the batch: {step_seconds:.2f} s as measured now "
        f"({step_gflops:.0f} GFLOP/s), {peak_seconds:.2f} s at the measured "
        f"{peak_gflops:.0f} GFLOP/s peak\n"
    )
    header = (
        f"{'image':<5} {'thr':>3}  {'transforms':<26} {'ms/batch':>9} "
        f"{'images/s':>9} {'% step':>7} {'% peak step':>11} {'torch ms':>9} "
        f"{'torch/ours':>10}"
    )
    print(header)
    print("-" * len(header))
    for channels in (None, 3):
        shape = (args.batch, args.input, args.input) + ((channels,) if channels else ())
        images = rng.integers(0, 256, size=shape, dtype=np.uint8)
        out_shape = (args.batch, args.size, args.size) + ((channels,) if channels else ())
        out = np.empty(out_shape, np.float32)
        for threads in (1, 2):
            convirt.set_num_threads(threads)
            if torch is not None:
                torch.set_num_threads(threads)
            for name, kwargs in variants:
                augment = ImageAugment(size=args.size, **kwargs)
                seconds = best_time(
                    lambda a=augment, x=images, o=out: a(x, step=1, out=o), repeat
                )
                torch_cell, ratio_cell = "", ""
                if torch is not None and not kwargs:
                    params = augment.sample_parameters(args.batch, step=1)
                    with torch.no_grad():

                        def run_torch(p=params, x=images):
                            return torch_augment(torch, x, p, args.size)

                        theirs = best_time(run_torch, repeat)
                        check = torch_augment(torch, images, params, args.size).numpy()
                    difference = np.abs(check - augment.apply(images, params)).max()
                    if difference > 1e-4:
                        raise SystemExit(f"the torch version differs by {difference:.2g}")
                    torch_cell = f"{theirs * 1e3:9.1f}"
                    ratio_cell = f"{theirs / seconds:10.2f}"
                print(
                    f"{'RGB' if channels else 'grey':<5} {threads:>3}  {name:<26} "
                    f"{seconds * 1e3:9.1f} {args.batch / seconds:9.0f} "
                    f"{100 * seconds / step_seconds:6.2f}% "
                    f"{100 * seconds / peak_seconds:10.2f}% "
                    f"{torch_cell:>9} {ratio_cell:>10}"
                )
    convirt.set_num_threads(saved_threads)


if __name__ == "__main__":
    main()
