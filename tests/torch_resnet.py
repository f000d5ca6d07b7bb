"""A reference ResNet v1.5 (torchvision's architecture) written with torch.nn.functional.

Test-only: it gives the tests and the benchmark an independent implementation of the
network the C core runs, on the same weights. Parameters are a dict of tensors with
torchvision's state_dict names (no fc, no num_batches_tracked); convolution weights in
PyTorch's (K, C, R, S) layout. torchvision itself is not needed.
"""

import math

import torch
import torch.nn.functional as F

LAYERS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}
WIDTHS = [64, 128, 256, 512]


def is_bottleneck(depth):
    return depth == 50


def feature_dim(depth):
    return 2048 if is_bottleneck(depth) else 512


def block_convs(depth, in_planes, planes, stride):
    """[(suffix, out_channels, in_channels, kernel, stride, padding)] of one block,
    with the downsample (if any) last."""
    if is_bottleneck(depth):
        out = planes * 4
        convs = [
            ("conv1", planes, in_planes, 1, 1, 0),
            ("conv2", planes, planes, 3, stride, 1),
            ("conv3", out, planes, 1, 1, 0),
        ]
    else:
        out = planes
        convs = [
            ("conv1", planes, in_planes, 3, stride, 1),
            ("conv2", planes, planes, 3, 1, 1),
        ]
    if stride != 1 or in_planes != out:
        convs.append(("downsample.0", out, in_planes, 1, stride, 0))
    return convs, out


def architecture(depth, in_channels):
    """[(name, out_channels, in_channels, kernel, stride, padding)] of every convolution,
    in torchvision's state_dict order; each is followed by its batch norm."""
    convs = [("conv1", 64, in_channels, 7, 2, 3)]
    in_planes = 64
    for stage, (blocks, planes) in enumerate(zip(LAYERS[depth], WIDTHS)):
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 0) else 1
            block, in_planes = block_convs(depth, in_planes, planes, stride)
            convs += [(f"layer{stage + 1}.{b}.{suffix}", *rest) for suffix, *rest in block]
    return convs


def bn_name(conv_name):
    if conv_name == "conv1":
        return "bn1"
    if conv_name.endswith("downsample.0"):
        return conv_name[:-1] + "1"
    return conv_name.replace(".conv", ".bn")


def init_params(
    depth, in_channels, seed=0, dtype=torch.float32, random_bn=True, bias_scale=None
):
    """Random parameters with torchvision's names. random_bn: non-trivial BN weights,
    biases and running statistics (so tests see every term). bias_scale: BN biases of
    +-bias_scale instead, so that few values sit near a ReLU's kink: in training mode a
    ResNet-50's gradients otherwise change by about 1% in float32 (PyTorch's too) when
    rounding moves a value across zero."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, k, c, r, _, _ in architecture(depth, in_channels):
        std = math.sqrt(2.0 / (k * r * r))
        params[name + ".weight"] = (torch.randn(k, c, r, r, generator=g) * std).to(dtype)
        bn = bn_name(name)
        if random_bn:
            params[bn + ".weight"] = (1 + 0.2 * torch.randn(k, generator=g)).to(dtype)
            params[bn + ".bias"] = (0.1 * torch.randn(k, generator=g)).to(dtype)
            if bias_scale is not None:
                sign = torch.sign(torch.randn(k, generator=g))
                params[bn + ".bias"] = (bias_scale * sign).to(dtype)
            params[bn + ".running_mean"] = (0.1 * torch.randn(k, generator=g)).to(dtype)
            params[bn + ".running_var"] = (1 + 0.5 * torch.rand(k, generator=g)).to(dtype)
        else:
            params[bn + ".weight"] = torch.ones(k, dtype=dtype)
            params[bn + ".bias"] = torch.zeros(k, dtype=dtype)
            params[bn + ".running_mean"] = torch.zeros(k, dtype=dtype)
            params[bn + ".running_var"] = torch.ones(k, dtype=dtype)
    return params


def _bn(x, p, name, training):
    # F.batch_norm updates running_mean / running_var in place when training.
    return F.batch_norm(
        x,
        p[name + ".running_mean"],
        p[name + ".running_var"],
        p[name + ".weight"],
        p[name + ".bias"],
        training=training,
        momentum=0.1,
        eps=1e-5,
    )


def forward(params, x, depth, training=False, record=None, flips=None):
    """Features (N, 512 or 2048) of x, a float tensor (N, C, H, W) already normalised.
    In training mode the running statistics in params are updated in place.

    For tests that must tell a bug from rounding at a kink (see `ambiguous_elements`):
    record, a dict, receives every ReLU's input under its site name ("stem",
    "layer1.0.conv1", "layer1.0.out", ...) and, under "maxpool", the gap between the
    two largest values of each max-pool window; flips maps a site name to a bool mask
    of elements whose ReLU decision (for "maxpool": whose window's winner, then the
    runner-up) is taken the other way."""
    p = params
    record = {} if record is None else record
    flips = flips or {}

    def relu(site, y):
        record[site] = y.detach()
        if site in flips:
            return y * ((y > 0) ^ flips[site]).to(y.dtype)  # value and gradient flipped
        return F.relu(y)

    x = F.conv2d(x, p["conv1.weight"], stride=2, padding=3)
    x = relu("stem", _bn(x, p, "bn1", training))
    x = _max_pool(x, record, flips.get("maxpool"))
    in_planes = 64
    for stage, (blocks, planes) in enumerate(zip(LAYERS[depth], WIDTHS)):
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 0) else 1
            convs, out_planes = block_convs(depth, in_planes, planes, stride)
            prefix = f"layer{stage + 1}.{b}."
            identity = x
            y = x
            main = [c for c in convs if not c[0].startswith("downsample")]
            for i, (suffix, _, _, _, s, pad) in enumerate(main):
                y = F.conv2d(y, p[prefix + suffix + ".weight"], stride=s, padding=pad)
                y = _bn(y, p, prefix + suffix.replace("conv", "bn"), training)
                if i < len(main) - 1:
                    y = relu(prefix + suffix, y)
            if len(convs) > len(main):
                identity = F.conv2d(x, p[prefix + "downsample.0.weight"], stride=stride)
                identity = _bn(identity, p, prefix + "downsample.1", training)
            x = relu(prefix + "out", y + identity)
            in_planes = out_planes
    return x.mean(dim=(2, 3))


def _max_pool(x, record, flip=None):
    """The stem's 3x3 / 2 max pool (padding 1). Records each window's gap between its
    largest and second-largest value; windows in `flip` pass on the runner-up."""
    n, c, h, w = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    windows = F.unfold(F.pad(x, (1, 1, 1, 1), value=-math.inf), 3, stride=2)
    windows = windows.view(n, c, 9, ho * wo)
    top2 = windows.detach().topk(2, dim=2)
    gap = (top2.values[:, :, 0] - top2.values[:, :, 1]).view(n, c, ho, wo)
    record["maxpool"] = torch.where(
        top2.values[:, :, 0].view(n, c, ho, wo) > 0, gap, torch.full_like(gap, math.inf)
    )  # zeros: no gradient
    if flip is None:
        return F.max_pool2d(x, 3, stride=2, padding=1)
    winner = torch.where(
        flip.view(n, c, 1, ho * wo), top2.indices[:, :, 1:2], top2.indices[:, :, 0:1]
    )
    return windows.gather(2, winner).view(n, c, ho, wo)


def ambiguous_elements(record64, record32, margin=4.0):
    """The elements whose ReLU decision (or max-pool winner) float32 rounding can take
    either way: where the float64 value (or window gap) lies within `margin` times the
    largest deviation of PyTorch's own float32 forward from float64 at that site. Any
    correct float32 implementation may resolve these differently from the float64
    reference, and each moves some gradients by up to a few percent (a whole-tensor
    relative error, in a training-mode ResNet). Returns {site: bool mask}."""
    out = {}
    for site, value in record64.items():
        if site == "maxpool":
            deviation = (record64["stem"] - record32["stem"].double()).abs().max()
            near = value < 2 * margin * deviation  # a gap moves with both values
        else:
            deviation = (value - record32[site].double()).abs().max()
            near = value.abs() < margin * deviation
        if near.any():
            out[site] = near
    return out


def normalise(images, mean, std):
    """(N, H, W[, C]) uint8 or float32 NumPy images -> (N, C, H, W) float32 tensor as the
    encoder sees them: (x / 255 - mean) / std for uint8, (x - mean) / std for float."""
    x = torch.from_numpy(images.copy())
    if x.ndim == 3:
        x = x[..., None]
    scale = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
    x = x.to(torch.float32) * scale
    x = (x - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(
        std, dtype=torch.float32
    )
    return x.permute(0, 3, 1, 2).contiguous()
