"""ResNet image encoder: inference and training-step throughput of convirt's C core
beside PyTorch on the same threads, in the same run, with the machine's measured FP32
FMA peak and each side's peak memory.

    python benchmarks/bench_resnet.py                    # ResNet-50 (1 and 3 ch), ResNet-18
    python benchmarks/bench_resnet.py --batch 8 --size 128 --steps 2 --profile

Every (framework, model, mode) runs in its own process, convirt and PyTorch back to
back, so that the peak memory (max RSS) is each one's own and both meet the same load
on a shared machine. PyTorch gets its best: channels_last, torch.inference_mode for
inference, a float32 input already normalised (convirt reads the uint8 images and
normalises them inside its first convolution). A training step is forward in training
mode (batch statistics) and backward from a feature gradient, without the input
gradient, on both sides. GFLOP/s counts the convolutions' multiply-adds (2 flops each;
training: forward, weight gradient and input gradient, less the first layer's input
gradient).

'of peak' is the median step against the median of the FMA peaks read in the parent
process between rows; 'of peak, same moment' reads the peak in convirt's own process just
before every timed step and takes the median over the steps of each against its own
reading (benchmarks.common.peak_pairs), the figure that holds on a host whose speed
drifts within minutes.

--profile adds convirt's per-layer wall times (convolution and batch norm apart) for one
extra step of each model and mode, summed by stage and kind.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

LAYERS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}


def conv_layers(depth, channels, size):
    """[(name, macs per image, is_first)] of every convolution of the network."""

    def out(h, k, s, p):
        return (h + 2 * p - k) // s + 1

    convs = []
    h = out(size, 7, 2, 3)
    convs.append(("conv1", h * h * 64 * 49 * channels))
    h = out(h, 3, 2, 1)
    in_planes, bottleneck = 64, depth == 50
    for stage, blocks in enumerate(LAYERS[depth]):
        planes = 64 << stage
        for b in range(blocks):
            stride = 2 if b == 0 and stage > 0 else 1
            h_out = out(h, 3, stride, 1)
            if bottleneck:
                width, outp = planes, planes * 4
                convs += [
                    ("1x1", h * h * width * in_planes),
                    ("3x3", h_out * h_out * width * width * 9),
                    ("1x1", h_out * h_out * outp * width),
                ]
            else:
                outp = planes
                convs += [
                    ("3x3", h_out * h_out * planes * in_planes * 9),
                    ("3x3", h_out * h_out * planes * planes * 9),
                ]
            if stride != 1 or in_planes != outp:
                convs.append(("downsample", h_out * h_out * outp * in_planes))
            in_planes, h = outp, h_out
    return convs


def flops(depth, channels, size, training):
    convs = conv_layers(depth, channels, size)
    forward = 2.0 * sum(m for _, m in convs)
    if not training:
        return forward
    return 3 * forward - 2.0 * convs[0][1]  # no input gradient for the images


def max_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(step, steps, warmup):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- the two sides (each runs in a fresh process) ------------------------------------------


def run_convirt(depth, channels, batch, size, mode, steps, warmup, threads, profile):
    import numpy as np

    import convirt
    from convirt import _core

    convirt.set_num_threads(threads)
    encoder = getattr(convirt.Encoder, f"resnet{depth}")(in_channels=channels)
    rng = np.random.default_rng(0)
    shape = (batch, size, size) if channels == 1 else (batch, size, size, channels)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    features = np.empty((batch, encoder.feature_dim), np.float32)
    grad = rng.standard_normal((batch, encoder.feature_dim)).astype(np.float32)
    if mode == "inference":

        def step():
            encoder.forward(images, embeddings=False, features_out=features)
    else:
        encoder.train()

        def step():
            encoder.zero_grad()
            encoder.forward(images, embeddings=False)
            encoder.backward(d_features=grad)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.common import peak_pairs

    pairs = peak_pairs(step, threads, steps, warmup=warmup)
    result = {"seconds": statistics.median(s for s, _ in pairs), "pairs": pairs}
    if profile:
        _core._resnet_profile(enable=True)
        step()
        result["profile"] = _core._resnet_profile(enable=False)
    return result


def torch_resnet(depth, channels):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, in_planes, planes, stride, bottleneck):
            super().__init__()
            out = planes * 4 if bottleneck else planes
            if bottleneck:
                self.convs = nn.ModuleList(
                    [
                        nn.Conv2d(in_planes, planes, 1, bias=False),
                        nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
                        nn.Conv2d(planes, out, 1, bias=False),
                    ]
                )
            else:
                self.convs = nn.ModuleList(
                    [
                        nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False),
                        nn.Conv2d(planes, planes, 3, 1, 1, bias=False),
                    ]
                )
            self.bns = nn.ModuleList([nn.BatchNorm2d(c.out_channels) for c in self.convs])
            self.downsample = None
            if stride != 1 or in_planes != out:
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_planes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
                )
            self.out = out

        def forward(self, x):
            y = x
            for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
                y = bn(conv(y))
                if i < len(self.convs) - 1:
                    y = torch.relu(y)
            identity = x if self.downsample is None else self.downsample(x)
            return torch.relu(y + identity)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            blocks, in_planes = [], 64
            for stage, n in enumerate(LAYERS[depth]):
                for b in range(n):
                    block = Block(
                        in_planes,
                        64 << stage,
                        2 if b == 0 and stage > 0 else 1,
                        depth == 50,
                    )
                    blocks.append(block)
                    in_planes = block.out
            self.blocks = nn.Sequential(*blocks)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = nn.functional.max_pool2d(x, 3, 2, 1)
            return self.blocks(x).mean(dim=(2, 3))

    return ResNet()


def run_torch(depth, channels, batch, size, mode, steps, warmup, threads, profile):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_resnet(depth, channels).to(memory_format=torch.channels_last)
    x = torch.randn(batch, channels, size, size).contiguous(
        memory_format=torch.channels_last
    )
    if mode == "inference":
        model.eval()

        def step():
            with torch.inference_mode():
                model(x)
    else:
        model.train()
        grad = torch.randn(batch, 2048 if depth == 50 else 512)

        def step():
            model.zero_grad(set_to_none=True)
            (model(x) * grad).sum().backward()

    return {"seconds": timed(step, steps, warmup)}


def isolated(framework, **kwargs):
    """Run run_<framework>(**kwargs) in a fresh process; its result plus max RSS."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); import bench_resnet as b; "
        f"r = b.run_{framework}(**json.loads(sys.argv[1])); r['max_rss_mib'] = b.max_rss_mib(); "
        "print(json.dumps(r))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{framework} {kwargs} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- output -------------------------------------------------------------------------------------


def print_table(headers, rows):
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")


def layer_group(name):
    if name in ("conv1", "maxpool", "avgpool"):
        return name
    parts = name.split(".")
    kind = "downsample" if parts[2] == "downsample" else parts[2]
    return f"{parts[0]}.{kind}"


def print_profile(title, profile, peak):
    groups = {}
    for name, cf, bf, cb, bb, ff, fb, _, _ in profile:
        g = groups.setdefault(layer_group(name), [0.0] * 6)
        for i, v in enumerate((cf, bf, cb, bb, ff, fb)):
            g[i] += v
    total = sum(sum(g[:4]) for g in groups.values())
    print(f"\n### convirt per-layer profile: {title} (one step, {total:.2f} s in layers)\n")
    rows = []
    for name, (cf, bf, cb, bb, ff, fb) in groups.items():

        def rate(f, t):
            return f"{f / t / 1e9:.0f}" if t > 0 and f > 0 else "-"

        rows.append(
            [
                name,
                f"{cf * 1e3:.0f}",
                rate(ff, cf),
                f"{bf * 1e3:.0f}",
                f"{cb * 1e3:.0f}",
                rate(fb, cb),
                f"{bb * 1e3:.0f}",
                f"{100 * (cf + bf + cb + bb) / total:.1f}%",
            ]
        )
    print_table(
        [
            "layers",
            "conv fwd ms",
            "GFLOP/s",
            "bn/pool fwd ms",
            "conv bwd ms",
            "GFLOP/s",
            "bn/pool bwd ms",
            "share",
        ],
        rows,
    )
    conv = sum(g[0] + g[2] for g in groups.values())
    conv_flops = sum(g[4] + g[5] for g in groups.values())
    print(
        f"\nconvolutions: {conv:.2f} s at {conv_flops / conv / 1e9:.0f} GFLOP/s "
        f"({100 * conv_flops / conv / 1e9 / peak:.0f}% of peak); batch norm, ReLU, "
        f"residual and pooling: {total - conv:.2f} s"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="default: convirt's")
    parser.add_argument(
        "--models",
        default="50:1,50:3,18:3",
        help="depth:channels list (default: %(default)s)",
    )
    parser.add_argument("--modes", default="inference,training")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--profile", action="store_true", help="convirt's per-layer times")
    args = parser.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import convirt
    from convirt import _core

    threads = args.threads or convirt.get_num_threads()
    info = convirt.config()
    first_peak, peak_bits = _core.fma_peak(threads=threads, seconds=1.0)
    peaks = [first_peak]
    print(
        f"# ResNet encoder: batch {args.batch}, {args.size} x {args.size}, {threads} threads"
    )
    from benchmarks.common import cpu_model, fraction_of_peak

    print(f"CPU: {cpu_model()}; BLIS kernel set {info['blis_arch']}")
    print(
        f"convirt {info['convirt_version']}, BLIS {info['blis_version']}, "
        f"{info['cpu_features']}"
    )
    rows, profiles = [], {}
    for spec in args.models.split(","):
        depth, channels = (int(v) for v in spec.split(":"))
        for mode in args.modes.split(","):
            kwargs = {
                "depth": depth,
                "channels": channels,
                "batch": args.batch,
                "size": args.size,
                "mode": mode,
                "steps": args.steps,
                "warmup": args.warmup,
                "threads": threads,
            }
            ours = isolated("convirt", profile=args.profile, **kwargs)
            theirs = None if args.no_torch else isolated("torch", profile=False, **kwargs)
            peaks.append(_core.fma_peak(threads=threads, seconds=0.5)[0])
            if args.profile:
                profiles[(depth, channels, mode)] = (
                    f"ResNet-{depth}, {channels} channel(s), {mode}",
                    ours["profile"],
                )
            gflop = flops(depth, channels, args.size, mode == "training") * args.batch / 1e9
            rate = args.batch / ours["seconds"]
            achieved = gflop / ours["seconds"]
            peak = statistics.median(peaks)
            row = [f"ResNet-{depth}", channels, mode, f"{rate:.2f}"]
            if theirs:
                row += [
                    f"{args.batch / theirs['seconds']:.2f}",
                    f"{theirs['seconds'] / ours['seconds']:.2f}x",
                ]
            else:
                row += ["-", "-"]
            row += [
                f"{achieved:.0f}",
                f"{100 * achieved / peak:.0f}%",
                f"{100 * fraction_of_peak(gflop, ours['pairs']):.0f}%",
                f"{ours['max_rss_mib']:.0f}",
                f"{theirs['max_rss_mib']:.0f}" if theirs else "-",
            ]
            rows.append(row)
            print(f"  measured ResNet-{depth} {channels}ch {mode}", file=sys.stderr)
    peak = statistics.median(peaks)
    print(
        f"FP32 FMA peak measured in this run ({peak_bits}-bit vectors, the width of the "
        f"GEMM kernels in use): {peak:.0f} GFLOP/s on {threads} threads "
        f"(median of {len(peaks)}: {', '.join(f'{p:.0f}' for p in peaks)})\n"
    )
    print_table(
        [
            "model",
            "ch",
            "mode",
            "convirt img/s",
            "torch img/s",
            "speed-up",
            "convirt GFLOP/s",
            "of peak",
            "of peak, same moment",
            "convirt MiB",
            "torch MiB",
        ],
        rows,
    )
    for title, profile in profiles.values():
        print_profile(title, profile, peak)


if __name__ == "__main__":
    main()
