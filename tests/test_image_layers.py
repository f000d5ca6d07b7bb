"""The image layers of the C core one at a time (convolution, batch norm, pooling and
their fused forms), through the test-only module convirt._testing: each forward
and backward against the naive C reference, against PyTorch (torch.nn.functional, in
float64) and against finite differences."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convirt
from convirt import _testing

RNG = np.random.default_rng(1234)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def nchw(x):
    """NHWC NumPy -> NCHW float64 tensor."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).permute(0, 3, 1, 2)


def krsc_to_torch(w):
    return torch.from_numpy(w.astype(np.float64)).permute(0, 3, 1, 2)


def torch_conv(x, w, stride, pad):
    y = F.conv2d(nchw(x), krsc_to_torch(w), stride=stride, padding=pad)
    return y.permute(0, 2, 3, 1).numpy()


# (n, h, w, c, k, kernel, stride, pad): every path of conv.c. 1x1 stride 1 reads the
# input in place; the others go through im2col; sizes that make tiles split images
# (h * w >= the tile) and tiles that group whole images.
CONV_CASES = [
    (2, 9, 7, 5, 6, 1, 1, 0),
    (3, 24, 24, 16, 8, 1, 1, 0),  # direct, 576 rows per image: images split
    (5, 6, 6, 8, 4, 1, 1, 0),  # direct, tiny images grouped
    (2, 9, 8, 6, 4, 1, 2, 0),  # downsample
    (2, 8, 8, 4, 5, 3, 1, 1),
    (3, 11, 9, 5, 7, 3, 2, 1),
    (2, 20, 18, 3, 8, 7, 2, 3),  # a stem
    (2, 7, 10, 3, 4, 5, 3, 0),
    (1, 5, 5, 2, 3, 3, 1, 2),  # padding wider than the stride
    (2, 40, 40, 4, 4, 3, 1, 1),  # 1600 rows per image: split into tiles
]


@pytest.mark.parametrize("n,h,w,c,k,r,stride,pad", CONV_CASES)
def test_conv_forward_matches_reference_and_torch(n, h, w, c, k, r, stride, pad):
    x, weight = randn(n, h, w, c), randn(k, r, r, c)
    fast = _testing.conv2d_forward(x, weight, stride, pad)
    naive = _testing.conv2d_forward(x, weight, stride, pad, reference=True)
    expected = torch_conv(x, weight, stride, pad)
    assert fast.shape == expected.shape
    assert rel(naive, expected) < 1e-6
    assert rel(fast, expected) < 1e-5


@pytest.mark.parametrize("n,h,w,c,k,r,stride,pad", CONV_CASES)
@pytest.mark.parametrize("add", [True, False])
def test_conv_backward_matches_reference_and_torch(n, h, w, c, k, r, stride, pad, add):
    x, weight = randn(n, h, w, c), randn(k, r, r, c)
    dout = randn(*torch_conv(x, weight, stride, pad).shape)
    before_dx, before_dw = randn(*x.shape), randn(*weight.shape)
    dx, dw = before_dx.copy(), before_dw.copy()
    _testing.conv2d_backward(dout, x, weight, stride, pad, dx=dx, dw=dw, add=add)
    ref_dx, ref_dw = np.zeros_like(x), np.zeros_like(weight)
    _testing.conv2d_backward(
        dout, x, weight, stride, pad, dx=ref_dx, dw=ref_dw, reference=True
    )

    xt = nchw(x).requires_grad_(True)
    wt = krsc_to_torch(weight).requires_grad_(True)
    F.conv2d(xt, wt, stride=stride, padding=pad).backward(nchw(dout))
    torch_dx = xt.grad.permute(0, 2, 3, 1).numpy()
    torch_dw = wt.grad.permute(0, 2, 3, 1).numpy()
    assert rel(ref_dx, torch_dx) < 1e-6 and rel(ref_dw, torch_dw) < 1e-6
    # the weight gradient always adds; the input gradient adds or overwrites
    assert rel(dw - before_dw, torch_dw) < 1e-5
    assert rel(dx - (before_dx if add else 0), torch_dx) < 1e-5


# Layers whose weight gradient is summed as dW^T: wide enough for BLIS's packed kernels
# (n >= 200 outputs, r*s*c >= 240, tiles of >= 512 rows), or narrow (k = 64) under a
# long r*s*c, where dW^T's tiles fit the small-GEMM kernel and dW's do not (a ResNet's
# 256 -> 64 reductions and its 7x7 stem: tiles of 288 and 512 rows).
WIDE_CASES = [
    (2, 16, 16, 64, 256, 3, 1, 1),
    (8, 12, 12, 512, 256, 1, 1, 0),
    (4, 14, 14, 256, 512, 1, 2, 0),
    (2, 24, 24, 256, 64, 1, 1, 0),
    (1, 64, 64, 3, 64, 7, 2, 3),
]


@pytest.mark.parametrize("n,h,w,c,k,r,stride,pad", WIDE_CASES)
def test_wide_conv_matches_reference(n, h, w, c, k, r, stride, pad):
    x, weight = randn(n, h, w, c), randn(k, r, r, c)
    out = _testing.conv2d_forward(x, weight, stride, pad)
    assert rel(out, _testing.conv2d_forward(x, weight, stride, pad, reference=True)) < 1e-5
    dout = randn(*out.shape)
    dx, dw = _testing.conv2d_backward(dout, x, weight, stride, pad, add=False)
    ref_dx, ref_dw = _testing.conv2d_backward(dout, x, weight, stride, pad, reference=True)
    assert rel(dx, ref_dx) < 1e-5 and rel(dw, ref_dw) < 1e-5


# A few small images against a wide weight: fewer output rows than filters, and fewer
# tiles than threads or at most 256 rows, so the forward reads the weight in place in
# one GEMM of all the rows (cv_gemm_few_rows, all threads sharing the weight's rows)
# instead of packing it for the tiles: a 1 x 1, a 3 x 3 through im2col (Winograd off), a
# strided 3 x 3, three images in a 1 x 1 and two in a strided 1 x 1 (several tiles, each
# with its own epilogue in a network).
FEW_ROWS_CASES = [
    (1, 7, 7, 512, 2048, 1, 1, 0),
    (1, 5, 6, 256, 512, 3, 1, 1),
    (1, 9, 9, 300, 520, 3, 2, 1),
    (3, 7, 7, 512, 1024, 1, 1, 0),
    (2, 14, 14, 256, 512, 1, 2, 0),
]


@pytest.mark.parametrize("n,h,w,c,k,r,stride,pad", FEW_ROWS_CASES)
def test_a_few_small_images_read_the_weight_in_place(n, h, w, c, k, r, stride, pad):
    """On one thread and two, the bits of the same images inside a batch with as many
    output rows as filters or more (which the tiles run on the packed weight): the same
    sums. And the reference's values."""
    before, threads = convirt.get_winograd(), convirt.get_num_threads()
    x, weight = randn(n, h, w, c), randn(k, r, r, c)
    rows = n * ((h + 2 * pad - r) // stride + 1) * ((w + 2 * pad - r) // stride + 1)
    many = np.concatenate([x] * (k // rows + 1))  # rows >= k: not a few
    outs = []
    try:
        convirt.set_winograd(False)
        for t in (1, 2):
            convirt.set_num_threads(t)
            outs.append(_testing.conv2d_forward(x, weight, stride, pad))
            outs.append(_testing.conv2d_forward(many, weight, stride, pad)[:n])
    finally:
        convirt.set_winograd(before)
        convirt.set_num_threads(threads)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    assert (
        rel(outs[0], _testing.conv2d_forward(x, weight, stride, pad, reference=True)) < 1e-5
    )


def test_winograd_leaves_one_tile_of_wide_filters_to_the_direct_path():
    """One tile whose transformed filters outweigh its transformed input and output 12
    times or more (one 4 x 4 image, 128 channels in and out: 4 blocks) runs direct with
    the switch on, forward and backward: the direct path's bits. Two such images (8
    blocks) take Winograd again: other bits, the same values to rounding."""
    before = convirt.get_winograd()
    weight = randn(128, 3, 3, 128)
    try:
        for n, direct in ((1, True), (2, False)):
            x = randn(n, 4, 4, 128)
            dout = randn(n, 4, 4, 128)
            results = []
            for mode in (True, False):
                convirt.set_winograd(mode)
                out = _testing.conv2d_forward(x, weight, 1, 1)
                dx, dw = _testing.conv2d_backward(dout, x, weight, 1, 1, add=False)
                results.append((out, dx, dw))
            for on, off in zip(*results):
                assert np.array_equal(on, off) == direct, n
                assert rel(on, off) < 1e-5
    finally:
        convirt.set_winograd(before)


@pytest.mark.parametrize("n,h,w,c,k,r,stride,pad", CONV_CASES + WIDE_CASES)
@pytest.mark.parametrize("winograd_on", [False, True])
def test_conv_backward_from_a_prologue_is_the_same(
    n, h, w, c, k, r, stride, pad, winograd_on
):
    """ResNet's batch-norm backward hands its output gradient to the convolution a tile
    of rows at a time (conv_prologue); where a path reads the gradient whole (Winograd,
    the transposed convolution) it is written out first. Either way the results are
    the bits of the plain call: a row offset off by one tile would change them."""
    before = convirt.get_winograd()
    try:
        convirt.set_winograd(winograd_on)
        x, weight = randn(n, h, w, c), randn(k, r, r, c)
        dout = randn(*torch_conv(x, weight, stride, pad).shape)
        start_dx, start_dw = randn(*x.shape), randn(*weight.shape)
        for add in (True, False):
            plain = start_dx.copy(), start_dw.copy()
            tiled = start_dx.copy(), start_dw.copy()
            _testing.conv2d_backward(
                dout, x, weight, stride, pad, dx=plain[0], dw=plain[1], add=add
            )
            _testing.conv2d_backward(
                dout,
                x,
                weight,
                stride,
                pad,
                dx=tiled[0],
                dw=tiled[1],
                add=add,
                prologue=True,
            )
            np.testing.assert_array_equal(tiled[0], plain[0])
            np.testing.assert_array_equal(tiled[1], plain[1])
    finally:
        convirt.set_winograd(before)


def test_conv_backward_on_images_from_a_prologue_is_the_same():
    """The stem's case: a pixel input (uint8, normalised in the im2col)."""
    images = RNG.integers(0, 256, size=(3, 40, 36, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    weight = randn(16, 7, 7, 3)
    out = _testing.conv2d_forward(images, weight, 2, 3, mean=mean, std=std)
    dout = randn(*out.shape)
    plain = _testing.conv2d_backward(
        dout, images, weight, 2, 3, mean=mean, std=std, add=False
    )
    tiled = _testing.conv2d_backward(
        dout, images, weight, 2, 3, mean=mean, std=std, add=False, prologue=True
    )
    np.testing.assert_array_equal(tiled[0], plain[0])
    np.testing.assert_array_equal(tiled[1], plain[1])


@pytest.mark.parametrize("n,h,w,c,k,r,stride,pad", CONV_CASES[::3])
def test_conv_backward_matches_finite_differences(n, h, w, c, k, r, stride, pad):
    """The convolution is linear, so a central difference along a random direction is
    exact up to rounding: it checks the backward against the fast forward itself."""
    x, weight = randn(n, h, w, c), randn(k, r, r, c)
    g = randn(*torch_conv(x, weight, stride, pad).shape).astype(np.float64)
    dx, dw = _testing.conv2d_backward(g.astype(np.float32), x, weight, stride, pad)

    def loss(x_, w_):
        return float(np.sum(_testing.conv2d_forward(x_, w_, stride, pad) * g))

    eps = 0.5
    vx, vw = randn(*x.shape), randn(*weight.shape)
    fd_x = (loss(x + eps * vx, weight) - loss(x - eps * vx, weight)) / (2 * eps)
    fd_w = (loss(x, weight + eps * vw) - loss(x, weight - eps * vw)) / (2 * eps)
    assert fd_x == pytest.approx(float(np.sum(dx * vx)), rel=1e-4)
    assert fd_w == pytest.approx(float(np.sum(dw * vw)), rel=1e-4)


# ---- the first convolution reads the caller's images ----------------------------------


def normalised(images, mean, std):
    x = images.astype(np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if images.dtype == np.uint8:
        x = x / 255.0
    return ((x - np.array(mean)) / np.array(std)).astype(np.float32)


def image_cases():
    u8 = RNG.integers(0, 256, size=(3, 17, 15, 3), dtype=np.uint8)
    f32 = randn(2, 16, 19, 2)
    gray = RNG.integers(0, 256, size=(2, 14, 13), dtype=np.uint8)
    big = randn(2, 13, 4, 12)  # a transposed view: no axis is contiguous
    large = RNG.integers(0, 256, size=(1, 78, 74, 3), dtype=np.uint8)
    return [
        ("uint8 rgb", u8, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("float32", f32, (0.1, -0.3), (2.0, 0.5)),
        ("uint8 gray (n, h, w)", gray, (0.449,), (0.226,)),
        (
            "float32 strided",
            big.transpose(0, 3, 1, 2)[:, ::2, ::3, 1:4],
            (0.0,) * 3,
            (1.5,) * 3,
        ),
        ("uint8 sliced", u8[:, 1::2, ::-1, ::-1], (0.5,) * 3, (0.25,) * 3),
        # tiles that split an image in the middle of an output row
        ("uint8 large", large, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ]


@pytest.mark.parametrize(
    "name,images,mean,std", image_cases(), ids=lambda v: v if isinstance(v, str) else ""
)
@pytest.mark.parametrize("r,stride,pad", [(7, 2, 3), (3, 1, 1), (1, 1, 0)])
@pytest.mark.parametrize("k", [5, 16])  # 16: each filter row a GEMM on the band in place
def test_conv_on_images_normalises_in_place(name, images, mean, std, r, stride, pad, k):
    before = images.copy()
    x = normalised(images, mean, std)
    c = x.shape[3]
    weight = randn(k, r, r, c)
    out = _testing.conv2d_forward(images, weight, stride, pad, mean=mean, std=std)
    naive = _testing.conv2d_forward(
        images, weight, stride, pad, mean=mean, std=std, reference=True
    )
    expected = torch_conv(x, weight, stride, pad)
    assert rel(out, expected) < 1e-5 and rel(naive, expected) < 1e-5

    # the input gradient is with respect to the pixel values as given
    dout = randn(*out.shape)
    dx, dw = _testing.conv2d_backward(
        dout, images, weight, stride, pad, mean=mean, std=std, add=False
    )
    ref_dx, ref_dw = _testing.conv2d_backward(
        dout, images, weight, stride, pad, mean=mean, std=std, reference=True
    )
    xt = nchw(x).requires_grad_(True)
    wt = krsc_to_torch(weight).requires_grad_(True)
    F.conv2d(xt, wt, stride=stride, padding=pad).backward(nchw(dout))
    scale = (1 / 255.0 if images.dtype == np.uint8 else 1.0) / np.array(std)
    torch_dx = xt.grad.permute(0, 2, 3, 1).numpy() * scale
    torch_dw = wt.grad.permute(0, 2, 3, 1).numpy()
    assert dx.shape == x.shape
    assert rel(dx, torch_dx) < 1e-5 and rel(ref_dx, torch_dx) < 1e-5
    assert rel(dw, torch_dw) < 1e-5 and rel(ref_dw, torch_dw) < 1e-5
    np.testing.assert_array_equal(images, before)


def test_conv_bad_arguments():
    x, weight = randn(1, 8, 8, 3), randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="input channels"):
        _testing.conv2d_forward(x, randn(4, 3, 3, 2))
    with pytest.raises(ValueError, match="does not fit"):
        _testing.conv2d_forward(x, randn(4, 11, 11, 3))
    with pytest.raises(ValueError, match="stride"):
        _testing.conv2d_forward(x, weight, 0, 1)
    with pytest.raises(TypeError, match="float32"):
        _testing.conv2d_forward(x.astype(np.float64), weight)
    with pytest.raises(ValueError, match="C-contiguous"):
        _testing.conv2d_forward(x[:, ::2], weight)
    with pytest.raises(ValueError, match="mean needs 3 values"):
        _testing.conv2d_forward(x, weight, mean=(0.5,), std=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="std must be > 0"):
        _testing.conv2d_forward(x, weight, mean=(0.5,) * 3, std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="dout must have shape"):
        _testing.conv2d_backward(randn(1, 7, 7, 4), x, weight, 1, 1)


# ---- batch norm ----------------------------------------------------------------------------


def torch_bn(y, gamma, beta, rm, rv, training):
    rm_t, rv_t = (
        torch.from_numpy(rm.astype(np.float64)),
        torch.from_numpy(rv.astype(np.float64)),
    )
    shape = y.shape
    out = F.batch_norm(
        torch.from_numpy(y.reshape(-1, shape[-1]).astype(np.float64)),
        rm_t,
        rv_t,
        torch.from_numpy(gamma.astype(np.float64)),
        torch.from_numpy(beta.astype(np.float64)),
        training=training,
        momentum=0.1,
        eps=1e-5,
    )
    return out.numpy().reshape(shape), rm_t.numpy(), rv_t.numpy()


@pytest.mark.parametrize("m,c", [(2, 3), (37, 5), (1000, 64), (4099, 300)])
@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_batch_statistics(m, c, offset):
    """Mean and biased variance, also when the mean dwarfs the spread (no
    cancellation) and when rows cross the 512-row tiles."""
    y = (offset + RNG.standard_normal((m, c)) * RNG.uniform(0.01, 3.0, c)).astype(
        np.float32
    )
    mean, var = _testing.bn_statistics(y)
    y64 = y.astype(np.float64)
    # float sums over short runs of rows: errors relative to the spread, not the mean
    np.testing.assert_allclose(mean, y64.mean(0), rtol=0, atol=1e-6 * y64.std(0).max())
    np.testing.assert_allclose(var, y64.var(0), rtol=1e-5)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [True, False])
def test_batchnorm_forward_matches_torch(training, relu):
    y = (randn(3, 5, 4, 7) * 2 + 1).astype(np.float32)
    gamma, beta = randn(7) + 1, randn(7)
    rm, rv = randn(7), (RNG.random(7) + 0.5).astype(np.float32)
    rm0, rv0 = rm.copy(), rv.copy()
    out, mean, invstd = _testing.batchnorm_forward(
        y, gamma, beta, rm, rv, training=training, relu=relu
    )
    expected, rm_t, rv_t = torch_bn(y, gamma, beta, rm0, rv0, training)
    if relu:
        expected = np.maximum(expected, 0)
    assert rel(out, expected) < 1e-6
    assert rel(rm, rm_t) < 1e-6 and rel(rv, rv_t) < 1e-6  # unchanged in eval mode
    if training:
        y64 = y.reshape(-1, 7).astype(np.float64)
        np.testing.assert_allclose(mean, y64.mean(0), rtol=1e-6)
        np.testing.assert_allclose(invstd, 1 / np.sqrt(y64.var(0) + 1e-5), rtol=1e-6)


def test_batchnorm_with_residual_and_fused_downsample():
    y, res, res_y = randn(2, 3, 3, 6), randn(2, 3, 3, 6), randn(2, 3, 3, 6)
    scale, shift, rs, rt = randn(6), randn(6), randn(6), randn(6)
    out = _testing.bn_apply(y, scale, shift, residual=res)
    np.testing.assert_allclose(
        out, np.maximum(y * scale + shift + res, 0), rtol=1e-5, atol=1e-6
    )
    out = _testing.bn_apply(y, scale, shift, res_y=res_y, res_scale=rs, res_shift=rt)
    np.testing.assert_allclose(
        out, np.maximum(y * scale + shift + res_y * rs + rt, 0), rtol=1e-5, atol=1e-6
    )
    out = _testing.bn_apply(y, scale, shift, residual=res, relu=False)
    np.testing.assert_allclose(out, y * scale + shift + res, rtol=1e-5, atol=1e-6)
    gamma, beta = randn(6), randn(6)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    out, _, _ = _testing.batchnorm_forward(
        y, gamma, beta, rm, rv, training=True, relu=True, residual=res
    )
    expected, _, _ = torch_bn(y, gamma, beta, np.zeros(6), np.ones(6), True)
    assert rel(out, np.maximum(expected + res, 0)) < 1e-6


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("m,c", [(12, 3), (700, 17), (3000, 260)])
def test_batchnorm_backward_matches_torch(relu, m, c):
    y = (randn(m, c) * 1.5 + 0.3).astype(np.float32)
    gamma, beta = randn(c) + 1, randn(c)
    out, mean, invstd = _testing.batchnorm_forward(
        y, gamma, beta, np.zeros(c, np.float32), np.ones(c, np.float32), relu=relu
    )
    dout = randn(m, c)
    dy, dgamma, dbeta = _testing.batchnorm_backward(
        dout, y, mean, invstd, gamma, out=out if relu else None
    )
    yt = torch.from_numpy(y.astype(np.float64)).requires_grad_(True)
    gt = torch.from_numpy(gamma.astype(np.float64)).requires_grad_(True)
    bt = torch.from_numpy(beta.astype(np.float64)).requires_grad_(True)
    o = F.batch_norm(yt, None, None, gt, bt, training=True, eps=1e-5)
    (F.relu(o) if relu else o).backward(torch.from_numpy(dout.astype(np.float64)))
    assert rel(dy, yt.grad.numpy()) < 1e-5
    assert rel(dgamma, gt.grad.numpy()) < 1e-5
    assert rel(dbeta, bt.grad.numpy()) < 1e-5


def test_batchnorm_backward_matches_finite_differences():
    """Central differences of width 1e-2 are wrong where an output crosses the ReLU's kink
    within the step: the loss weights those outputs (pre-activation within 0.15 of 0)
    by zero, so that only the smooth paths through the batch statistics reach them. The
    data comes from the test's own generator, not from what other tests drew."""
    m, c = 40, 6
    rng = np.random.default_rng(7)
    y = (rng.standard_normal((m, c)) * 2 + 1).astype(np.float32)
    gamma = (rng.standard_normal(c) + 1).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    zeros, ones = np.zeros(c, np.float32), np.ones(c, np.float32)
    z, _, _ = _testing.batchnorm_forward(y, gamma, beta, zeros, ones, relu=False)
    g = rng.standard_normal((m, c)) * (np.abs(z) > 0.15)
    assert (g == 0).sum() < m * c // 4  # most outputs still count

    def loss(y_, gamma_, beta_):
        out, _, _ = _testing.batchnorm_forward(
            y_, gamma_, beta_, np.zeros(c, np.float32), np.ones(c, np.float32), relu=True
        )
        return float(np.sum(out * g))

    out, mean, invstd = _testing.batchnorm_forward(
        y, gamma, beta, np.zeros(c, np.float32), np.ones(c, np.float32), relu=True
    )
    dy, dgamma, dbeta = _testing.batchnorm_backward(
        g.astype(np.float32), y, mean, invstd, gamma, out=out
    )
    eps = 1e-2
    for grad, which in [(dy, 0), (dgamma, 1), (dbeta, 2)]:
        args = [y, gamma, beta]
        v = rng.standard_normal(args[which].shape).astype(np.float32)
        plus, minus = list(args), list(args)
        plus[which] = (args[which] + eps * v).astype(np.float32)
        minus[which] = (args[which] - eps * v).astype(np.float32)
        fd = (loss(*plus) - loss(*minus)) / (2 * eps)
        assert fd == pytest.approx(float(np.sum(grad * v)), rel=2e-2, abs=1e-3)


@pytest.mark.parametrize("m,c", [(12, 2048), (48, 1024), (1000, 300)])
@pytest.mark.parametrize("downsample", [True, False])
def test_block_end_mask_and_reduce(m, c, downsample):
    """The fused pass at a residual block's end: the ReLU mask of the block output in
    place, and the sums of both batch norms that feed the add."""
    dout, out = randn(m, c), randn(m, c)
    ya, yb = randn(m, c), randn(m, c)
    ma, mb = randn(c), randn(c)
    ia, ib = (
        (RNG.random(c) + 0.5).astype(np.float32),
        (RNG.random(c) + 0.5).astype(np.float32),
    )
    args = (yb, mb, ib) if downsample else ()
    dz, sum_dz, sum_a, sum_b = _testing.bn_block_end(dout, out, ya, ma, ia, *args)
    expected = np.where(out > 0, dout, 0).astype(np.float64)
    np.testing.assert_array_equal(dz, expected.astype(np.float32))
    np.testing.assert_allclose(sum_dz, expected.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        sum_a, (expected * (ya - ma)).sum(0) * ia, rtol=1e-5, atol=1e-4
    )
    if downsample:
        np.testing.assert_allclose(
            sum_b, (expected * (yb - mb)).sum(0) * ib, rtol=1e-5, atol=1e-4
        )
    # the same as the separate backward of each batch norm, masked by the block output
    gamma = randn(c)
    _, _, dbeta = _testing.batchnorm_backward(dout, ya, ma, ia, gamma, out=out)
    np.testing.assert_allclose(dbeta, sum_dz, rtol=1e-5, atol=1e-4)


# ---- pooling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,stride,pad", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 2)])
def test_maxpool_matches_reference_and_torch(k, stride, pad):
    x = randn(2, 11, 9, 7)
    out = _testing.maxpool_forward(x, k, stride, pad)
    naive = _testing.maxpool_forward(x, k, stride, pad, reference=True)
    xt = nchw(x).requires_grad_(True)
    expected = F.max_pool2d(xt, k, stride=stride, padding=pad)
    np.testing.assert_array_equal(out, naive)
    np.testing.assert_array_equal(
        out, expected.detach().permute(0, 2, 3, 1).numpy().astype(np.float32)
    )
    dout = randn(*out.shape)
    dx = _testing.maxpool_backward(dout, x, out, k, stride, pad)
    ref = _testing.maxpool_backward(dout, x, out, k, stride, pad, reference=True)
    expected.backward(nchw(dout))
    np.testing.assert_allclose(dx, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        dx, xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6
    )


def test_maxpool_ties_follow_torch():
    """After a ReLU many window entries are equal (zeros): the gradient goes to the
    first maximum in row-major order, as PyTorch's kernel does."""
    x = np.maximum(randn(2, 8, 8, 5), 0).astype(np.float32)
    x[0, :3, :3, 0] = 0.0
    x[1, 2:4, 2:5, 1] = 0.75
    out = _testing.maxpool_forward(x, 3, 2, 1)
    dout = randn(*out.shape)
    dx = _testing.maxpool_backward(dout, x, out, 3, 2, 1)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
    F.max_pool2d(xt, 3, stride=2, padding=1).backward(
        torch.from_numpy(dout).permute(0, 3, 1, 2)
    )
    np.testing.assert_allclose(
        dx, xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6
    )


def test_maxpool_backward_matches_finite_differences():
    x = randn(2, 9, 9, 4)  # distinct values: the max pool is linear near x
    out = _testing.maxpool_forward(x, 3, 2, 1)
    g = randn(*out.shape).astype(np.float64)
    dx = _testing.maxpool_backward(g.astype(np.float32), x, out, 3, 2, 1)
    v, eps = randn(*x.shape), 1e-4
    fd = (
        np.sum(_testing.maxpool_forward(x + eps * v, 3, 2, 1) * g)
        - np.sum(_testing.maxpool_forward(x - eps * v, 3, 2, 1) * g)
    ) / (2 * eps)
    assert fd == pytest.approx(float(np.sum(dx * v)), rel=1e-2)


def test_avgpool_forward_backward():
    x = randn(3, 5, 7, 11)
    out = _testing.avgpool_forward(x)
    np.testing.assert_allclose(
        out, x.astype(np.float64).mean(axis=(1, 2)), rtol=1e-6, atol=1e-7
    )
    g = randn(3, 11)
    dx = _testing.avgpool_backward(g, 5, 7)
    np.testing.assert_allclose(
        dx, np.broadcast_to(g[:, None, None, :] / 35, x.shape), rtol=1e-6
    )
    v, eps = randn(*x.shape), 0.5
    fd = (
        np.sum(_testing.avgpool_forward(x + eps * v) * g)
        - np.sum(_testing.avgpool_forward(x - eps * v) * g)
    ) / (2 * eps)
    assert fd == pytest.approx(float(np.sum(dx * v)), rel=1e-4)


def test_layers_do_not_depend_on_the_thread_count():
    x, weight = randn(3, 20, 20, 8), randn(16, 3, 3, 8)
    dout = randn(3, 20, 20, 16)
    results = []
    for threads in (1, 2):
        convirt.set_num_threads(threads)
        try:
            y = _testing.conv2d_forward(x, weight, 1, 1)
            dx, _ = _testing.conv2d_backward(dout, x, weight, 1, 1)
            results.append((y, dx))
        finally:
            convirt.set_num_threads(2)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


# ---- Winograd F(2x2, 3x3) and F(4x4, 3x3) (winograd.c) --------------------------------
# 3x3, stride 1, padding 1 convolutions of a float tensor take this path unless it is
# switched off; each case runs with F(2x2, 3x3) (the default), with F(4x4, 3x3) where
# it applies (outputs of at least 8 x 8; the smaller cases then take F(2x2) again) and
# with the path off. Cases: odd sizes (blocks that hang over the edge), a 1 x 1 image,
# tiles that group whole images unevenly (5 images, 2 tiles), tiles that split an image
# (17 x 17 with 512 channels: 81 blocks of 2 x 2 against a tile of 64; 41 x 37 with 8
# channels: 110 blocks of 4 x 4 in 2 uneven tiles), wide layers, and deep layers on
# small images, whose GEMMs span the whole batch (6 images in 2 tiles; 5 images of odd
# size in 2 uneven tiles; with F(4x4), 3 images of 9 x 8 in 2 tiles).
WINOGRAD_CASES = [
    (2, 8, 8, 4, 5),
    (3, 7, 5, 6, 3),
    (1, 1, 1, 4, 4),
    (2, 2, 3, 3, 2),
    (5, 3, 5, 8, 6),
    (2, 17, 17, 512, 8),
    (1, 41, 37, 8, 8),
    (3, 13, 10, 16, 24),
    (2, 9, 9, 64, 256),
    (6, 4, 4, 256, 128),
    (5, 3, 5, 128, 160),
    (3, 9, 8, 128, 256),
]
WINOGRAD_MODES = [False, True, 4]


@pytest.fixture
def winograd():
    """Yields a function that switches the path on or off; restores it after."""
    before = convirt.get_winograd()
    yield convirt.set_winograd
    convirt.set_winograd(before)


@pytest.mark.parametrize("n,h,w,c,k", WINOGRAD_CASES)
@pytest.mark.parametrize("mode", WINOGRAD_MODES)
def test_winograd_and_direct_paths_match_torch(winograd, n, h, w, c, k, mode):
    winograd(mode)
    x, weight = randn(n, h, w, c), randn(k, 3, 3, c)
    out = _testing.conv2d_forward(x, weight, 1, 1)
    assert rel(out, torch_conv(x, weight, 1, 1)) < 1e-5
    dout = randn(*out.shape)
    before_dx, before_dw = randn(*x.shape), randn(*weight.shape)
    for add in (True, False):
        dx, dw = before_dx.copy(), before_dw.copy()
        _testing.conv2d_backward(dout, x, weight, 1, 1, dx=dx, dw=dw, add=add)
        xt = nchw(x).requires_grad_(True)
        wt = krsc_to_torch(weight).requires_grad_(True)
        F.conv2d(xt, wt, padding=1).backward(nchw(dout))
        assert rel(dw - before_dw, wt.grad.permute(0, 2, 3, 1).numpy()) < 1e-5
        assert (
            rel(dx - (before_dx if add else 0), xt.grad.permute(0, 2, 3, 1).numpy()) < 1e-5
        )


def test_winograd_error_is_within_its_documented_bound():
    """The bounds docs/NUMERICS.md states: against a float64 reference, on ResNet-like
    activations (ReLU outputs, He-scaled filters), the largest error relative to the
    output's scale stays within 4x the direct path's for F(2x2, 3x3), the default
    (measured 0.5-2.3x), and below 2e-5 for F(4x4, 3x3) (measured 6e-6 to 1.2e-5: its
    constants reach 8)."""
    before = convirt.get_winograd()
    try:
        for c, k, size in [(64, 64, 16), (256, 256, 8)]:
            x = np.maximum(randn(4, size, size, c), 0)
            weight = randn(k, 3, 3, c) * np.float32(np.sqrt(2.0 / (9 * c)))
            exact = torch_conv(x, weight, 1, 1)
            errors = {}
            for mode in WINOGRAD_MODES:
                convirt.set_winograd(mode)
                out = _testing.conv2d_forward(x, weight, 1, 1)
                errors[mode] = np.abs(out - exact).max() / np.abs(exact).max()
            assert errors[False] < 1e-6
            assert errors[True] < 4 * errors[False] + 1e-7, errors
            assert errors[4] < 2e-5, errors
    finally:
        convirt.set_winograd(before)


@pytest.mark.parametrize("mode", [True, 4])
@pytest.mark.parametrize(
    "n,h,c,k,whole",
    [(6, 12, 32, 48, False), (6, 4, 256, 128, True), (3, 9, 128, 256, True)],
)
def test_winograd_does_not_depend_on_the_thread_count(winograd, n, h, c, k, whole, mode):
    """The forward (tiles of L2 size, or one GEMM per matrix over the whole batch for
    the second shape), and the second shape's weight gradient, summed over the whole
    batch in one GEMM."""
    winograd(mode)
    x, weight = randn(n, h, h, c), randn(k, 3, 3, c)
    dout = randn(n, h, h, k)
    threads = convirt.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            convirt.set_num_threads(t)
            _, dw = _testing.conv2d_backward(dout, x, weight, 1, 1, add=False)
            results.append((_testing.conv2d_forward(x, weight, 1, 1), dw))
    finally:
        convirt.set_num_threads(threads)
    assert np.array_equal(results[0][0], results[1][0])
    if whole:  # tiles' sums are per thread, so only the whole batch's is the same
        assert np.array_equal(results[0][1], results[1][1])


def test_the_switch_changes_the_path(winograd):
    """Off, F(2x2, 3x3) and F(4x4, 3x3) agree to rounding but not bit for bit: each
    setting takes its own path. 2 is True (F(2x2), the default); 4 takes F(4x4) on a
    10 x 10 output and F(2x2) on a 5 x 5 one."""
    x, weight = randn(2, 10, 10, 16), randn(8, 3, 3, 16)
    small = randn(2, 5, 5, 16)
    outs = {}
    for mode, reads in ((False, False), (True, True), (2, True), (4, 4)):
        winograd(mode)
        got = convirt.get_winograd()
        assert got == reads and type(got) is type(reads), (mode, got)
        outs[mode] = (
            _testing.conv2d_forward(x, weight, 1, 1),
            _testing.conv2d_forward(small, weight, 1, 1),
        )
    for a, b in [(False, True), (False, 4), (True, 4)]:
        assert not np.array_equal(outs[a][0], outs[b][0])
        assert rel(outs[a][0], outs[b][0]) < 1e-5
    assert np.array_equal(outs[2][0], outs[True][0])
    assert np.array_equal(outs[4][1], outs[True][1])


@pytest.mark.parametrize("bad", [3, -1, 8])
def test_the_switch_refuses_other_block_sizes(winograd, bad):
    before = convirt.get_winograd()
    with pytest.raises(ValueError, match="True, False, 2 or 4"):
        convirt.set_winograd(bad)
    assert convirt.get_winograd() == before


def test_winograd_switch_from_the_environment():
    code = "import convirt; print(convirt.get_winograd(), convirt.config()['winograd'])"
    for value, expected in (
        ("0", "False False"),
        ("1", "True True"),
        ("2", "True True"),
        ("4", "4 4"),
        ("3", "True True"),
        (None, "True True"),
    ):
        env = {k: v for k, v in os.environ.items() if k != "CONVIRT_WINOGRAD"}
        if value is not None:
            env["CONVIRT_WINOGRAD"] = value
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == expected
