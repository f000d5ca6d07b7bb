"""The fine-tuning losses in C (_core.softmax_cross_entropy, _core.binary_cross_entropy):
parity with PyTorch autograd and a float64 NumPy reference, finite differences,
stability at extreme logits, strided inputs and outputs, bad input, references, the GIL."""

import sys
import threading
import tracemalloc

import numpy as np
import pytest

import convirt
from convirt import _core

torch = pytest.importorskip("torch")
F = torch.nn.functional

softmax_ce = _core.softmax_cross_entropy
binary_ce = _core.binary_cross_entropy


# ---- references ------------------------------------------------------------------------


def numpy_softmax_ce(z, y):
    """Loss and dL/dz in float64, from the definition."""
    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    loss = np.mean(lse - z[np.arange(n), y])
    p = np.exp(z - lse[:, None])
    p[np.arange(n), y] -= 1.0
    return loss, p / n


def numpy_binary_ce(z, t, w=None):
    """Loss and dL/dz in float64, from -[w y log s + (1 - y) log(1 - s)]."""
    z = np.asarray(z, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    w = np.ones(z.shape[1]) if w is None else np.asarray(w, dtype=np.float64)
    log_s = -np.logaddexp(0.0, -z)  # log sigmoid(z)
    log_1ms = -np.logaddexp(0.0, z)  # log (1 - sigmoid(z))
    loss = -(w * t * log_s + (1 - t) * log_1ms)
    s = np.exp(log_s)
    grad = (1 - t) * s - w * t * (1 - s)
    return loss.mean(), grad / z.size


def torch_softmax_ce(z, y):
    tz = torch.tensor(np.ascontiguousarray(z), requires_grad=True)
    loss = F.cross_entropy(tz, torch.tensor(y, dtype=torch.long))
    loss.backward()
    return loss.item(), tz.grad.numpy()


def torch_binary_ce(z, t, w=None):
    tz = torch.tensor(np.ascontiguousarray(z), requires_grad=True)
    pw = None if w is None else torch.tensor(w)
    loss = F.binary_cross_entropy_with_logits(
        tz, torch.tensor(np.ascontiguousarray(t)), pos_weight=pw
    )
    loss.backward()
    return loss.item(), tz.grad.numpy()


def make_logits(n, k, layout="contiguous", scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    if layout == "contiguous":
        z = rng.standard_normal((n, k))
    elif layout == "transposed":
        z = rng.standard_normal((k, n)).T
    elif layout == "sliced":
        z = rng.standard_normal((2 * n, 3 * k))[::2, 1::3]
    else:
        raise ValueError(layout)
    z = (scale * z).astype(np.float32)
    assert z.shape == (n, k)
    return z


def make_labels(n, k, seed=1):
    return np.random.default_rng(seed).integers(0, k, n).astype(np.int32)


def make_targets(n, k, seed=2, soft=False):
    rng = np.random.default_rng(seed)
    if soft:
        return rng.uniform(0, 1, (n, k)).astype(np.float32)
    return (rng.uniform(0, 1, (n, k)) < 0.3).astype(np.float32)


def assert_grad_close(actual, expected, rtol=1e-5):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale + 1e-9)


SHAPES = [(1, 1), (1, 5), (7, 2), (33, 14), (200, 100)]  # the last crosses the thread cut
LAYOUTS = ["contiguous", "transposed", "sliced"]


# ---- softmax cross-entropy: parity -------------------------------------------------------


@pytest.mark.parametrize("n, k", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_softmax_parity_with_torch_and_numpy(n, k, layout):
    z, y = make_logits(n, k, layout), make_labels(n, k)
    loss, grad = softmax_ce(z, y)
    ref_loss, ref_grad = numpy_softmax_ce(z, y)
    t_loss, t_grad = torch_softmax_ce(z.astype(np.float64), y)
    assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-7)
    assert loss == pytest.approx(t_loss, rel=1e-6, abs=1e-7)
    assert grad.dtype == np.float32 and grad.shape == (n, k)
    assert_grad_close(grad, ref_grad)
    assert_grad_close(grad, t_grad)


def test_softmax_parity_with_torch_float32():
    z, y = make_logits(64, 10), make_labels(64, 10)
    tz = torch.tensor(z, requires_grad=True)
    t_loss = F.cross_entropy(tz, torch.tensor(y, dtype=torch.long))
    t_loss.backward()
    loss, grad = softmax_ce(z, y)
    assert loss == pytest.approx(t_loss.item(), rel=1e-6)
    assert_grad_close(grad, tz.grad.numpy(), rtol=1e-5)


def test_softmax_finite_differences():
    z, y = make_logits(5, 4, scale=1.0), make_labels(5, 4)
    _, grad = softmax_ce(z, y)
    h = np.float32(1e-2)
    fd = np.zeros_like(grad, dtype=np.float64)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            zp, zm = z.copy(), z.copy()
            zp[i, j] += h
            zm[i, j] -= h
            step = float(zp[i, j]) - float(zm[i, j])
            fd[i, j] = (
                softmax_ce(zp, y, compute_grad=False)[0]
                - softmax_ce(zm, y, compute_grad=False)[0]
            ) / step
    np.testing.assert_allclose(grad, fd, atol=2e-5)


def test_softmax_known_values():
    # Uniform logits: the loss is log K and the gradient 1/(N K) - onehot / N.
    n, k = 4, 5
    z = np.full((n, k), 7.0, dtype=np.float32)
    y = np.array([0, 4, 2, 2], dtype=np.int32)
    loss, grad = softmax_ce(z, y)
    assert loss == pytest.approx(np.log(k), rel=1e-7)
    expected = np.full((n, k), 1 / (n * k))
    expected[np.arange(n), y] -= 1 / n
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    # One class: softmax is 1, loss and gradient are 0.
    loss, grad = softmax_ce(np.array([[3.0], [-2.0]], np.float32), np.zeros(2, np.int32))
    assert loss == 0.0 and not grad.any()


def test_softmax_extreme_logits_are_stable():
    z = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 3e4], [88.0, 89.0, -200.0]], np.float32)
    y = np.array([1, 2, 0], dtype=np.int32)
    loss, grad = softmax_ce(z, y)
    t_loss, t_grad = torch_softmax_ce(z.astype(np.float64), y)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(t_loss, rel=1e-6)
    assert_grad_close(grad, t_grad)
    # Gradient rows sum to 0 (softmax sums to 1).
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-7)


def test_softmax_labels_may_be_strided():
    z = make_logits(6, 3)
    y_full = np.repeat(make_labels(6, 3), 2)
    y = y_full[::2]
    assert not y.flags.c_contiguous
    loss, grad = softmax_ce(z, y)
    ref_loss, ref_grad = numpy_softmax_ce(z, np.ascontiguousarray(y))
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert_grad_close(grad, ref_grad)


# ---- binary cross-entropy: parity --------------------------------------------------------


@pytest.mark.parametrize("n, k", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_parity_with_torch_and_numpy(n, k, layout, weighted):
    z, t = make_logits(n, k, layout), make_targets(n, k)
    w = np.linspace(0.5, 4.0, k).astype(np.float32) if weighted else None
    loss, grad = binary_ce(z, t, pos_weight=w)
    ref_loss, ref_grad = numpy_binary_ce(z, t, w)
    t_loss, t_grad = torch_binary_ce(
        z.astype(np.float64),
        t.astype(np.float64),
        None if w is None else w.astype(np.float64),
    )
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert loss == pytest.approx(t_loss, rel=1e-6)
    assert grad.dtype == np.float32 and grad.shape == (n, k)
    assert_grad_close(grad, ref_grad)
    assert_grad_close(grad, t_grad)


def test_binary_soft_targets_and_zero_weight():
    z, t = make_logits(9, 4), make_targets(9, 4, soft=True)
    w = np.array([0.0, 1.0, 2.5, 10.0], np.float32)
    loss, grad = binary_ce(z, t, None, w)
    t_loss, t_grad = torch_binary_ce(
        z.astype(np.float64), t.astype(np.float64), w.astype(np.float64)
    )
    assert loss == pytest.approx(t_loss, rel=1e-6)
    assert_grad_close(grad, t_grad)


def test_binary_finite_differences():
    z, t = make_logits(4, 3, scale=1.0), make_targets(4, 3, soft=True)
    w = np.array([0.5, 1.0, 3.0], np.float32)
    _, grad = binary_ce(z, t, pos_weight=w)
    h = np.float32(1e-2)
    fd = np.zeros_like(grad, dtype=np.float64)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            zp, zm = z.copy(), z.copy()
            zp[i, j] += h
            zm[i, j] -= h
            step = float(zp[i, j]) - float(zm[i, j])
            fd[i, j] = (
                binary_ce(zp, t, pos_weight=w, compute_grad=False)[0]
                - binary_ce(zm, t, pos_weight=w, compute_grad=False)[0]
            ) / step
    np.testing.assert_allclose(grad, fd, atol=2e-6)


def test_binary_known_values():
    # z = 0: the loss is log 2 whatever the target; the gradient (0.5 - y) / (N K).
    z = np.zeros((2, 3), np.float32)
    t = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
    loss, grad = binary_ce(z, t)
    assert loss == pytest.approx(np.log(2), rel=1e-7)
    np.testing.assert_allclose(grad, (0.5 - t) / 6, rtol=1e-6)


def test_binary_extreme_logits_are_stable():
    z = np.array([[1e4, -1e4, 100.0, -100.0, 0.0, 30.0]], np.float32)
    t = np.array([[0, 1, 1, 0, 1, 0]], np.float32)
    loss, grad = binary_ce(z, t, pos_weight=np.full(6, 2.0, np.float32))
    t_loss, t_grad = torch_binary_ce(
        z.astype(np.float64), t.astype(np.float64), np.full(6, 2.0)
    )
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(t_loss, rel=1e-6)
    assert_grad_close(grad, t_grad)
    # Confident and right: a loss below float32's resolution of 1, not 0 by cancellation.
    tiny, tiny_grad = binary_ce(np.array([[40.0]], np.float32), np.ones((1, 1), np.float32))
    assert tiny == pytest.approx(np.exp(-40.0), rel=1e-5)
    assert tiny_grad[0, 0] == pytest.approx(-np.exp(-40.0), rel=1e-5)


# ---- outputs, threads, references --------------------------------------------------------


@pytest.mark.parametrize("which", ["softmax", "binary"])
def test_grad_is_written_into_the_supplied_buffer(which):
    z = make_logits(10, 4)
    target = make_labels(10, 4) if which == "softmax" else make_targets(10, 4)
    fn = softmax_ce if which == "softmax" else binary_ce
    expected_loss, expected = fn(z, target)
    grad = np.full((10, 4), np.nan, np.float32)
    loss, out = fn(z, target, grad)
    assert out is grad and loss == expected_loss
    np.testing.assert_array_equal(grad, expected)
    # A strided view (a transposed buffer) is written through its strides.
    buffer = np.full((4, 10), np.nan, np.float32)
    loss, out = fn(z, target, buffer.T)
    assert np.shares_memory(out, buffer)
    np.testing.assert_array_equal(buffer.T, expected)


@pytest.mark.parametrize("which", ["softmax", "binary"])
def test_compute_grad_false_returns_loss_only(which):
    z = make_logits(5, 3)
    target = make_labels(5, 3) if which == "softmax" else make_targets(5, 3)
    fn = softmax_ce if which == "softmax" else binary_ce
    loss, grad = fn(z, target, compute_grad=False)
    assert grad is None and loss == fn(z, target)[0]


def test_inputs_are_left_unchanged():
    z, y, t = make_logits(20, 6), make_labels(20, 6), make_targets(20, 6)
    w = np.ones(6, np.float32)
    copies = [a.copy() for a in (z, y, t, w)]
    softmax_ce(z, y)
    binary_ce(z, t, pos_weight=w)
    for a, b in zip((z, y, t, w), copies):
        np.testing.assert_array_equal(a, b)


def test_thread_count_does_not_change_results():
    z, y, t = make_logits(600, 50), make_labels(600, 50), make_targets(600, 50)
    before = convirt.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            convirt.set_num_threads(threads)
            results.append((softmax_ce(z, y), binary_ce(z, t)))
    finally:
        convirt.set_num_threads(before)
    (s1, b1), (s2, b2) = results
    assert s1[0] == s2[0] and b1[0] == b2[0]
    np.testing.assert_array_equal(s1[1], s2[1])
    np.testing.assert_array_equal(b1[1], b2[1])


def test_thousand_calls_leak_nothing():
    z, y, t = make_logits(16, 5), make_labels(16, 5), make_targets(16, 5)
    w = np.ones(5, np.float32)
    grad = np.empty((16, 5), np.float32)
    for _ in range(10):
        softmax_ce(z, y, grad)
        binary_ce(z, t, grad, w)
    refs = [sys.getrefcount(a) for a in (z, y, t, w, grad)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(1000):
        softmax_ce(z, y, grad)
        binary_ce(z, t, grad, w)
        softmax_ce(z, y)
        binary_ce(z, t, compute_grad=False)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert [sys.getrefcount(a) for a in (z, y, t, w, grad)] == refs
    diffs = after.compare_to(before, "filename")
    grown = sum(s.size_diff for s in diffs if s.size_diff > 0)
    assert grown < 10_000


def test_errors_leak_nothing():
    z, y = make_logits(4, 3), make_labels(4, 3)
    y[2] = 7
    grad = np.empty((4, 3), np.float32)
    refs = [sys.getrefcount(a) for a in (z, y, grad)]
    for _ in range(200):
        with pytest.raises(ValueError):
            softmax_ce(z, y, grad)
    assert [sys.getrefcount(a) for a in (z, y, grad)] == refs


def test_gil_is_released():
    # With a long switch interval, another thread only runs while this one has released
    # the GIL: its progress during the call proves the release.
    z, t = make_logits(2000, 400), make_targets(2000, 400)
    binary_ce(z, t)  # warm-up
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1

    interval = sys.getswitchinterval()
    thread = threading.Thread(target=count)
    sys.setswitchinterval(0.5)
    try:
        thread.start()
        while counter[0] == 0:
            pass
        seen = counter[0]
        binary_ce(z, t)
        progressed = counter[0] - seen
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert progressed > 0


# ---- bad input (the array rules every entry point shares are in test_array_rules.py) ---


def test_empty_logits():
    with pytest.raises(ValueError, match=r"at least one row and one class, got \(0, 3\)"):
        softmax_ce(np.zeros((0, 3), np.float32), np.zeros(0, np.int32))
    with pytest.raises(ValueError, match=r"at least one row and one class, got \(2, 0\)"):
        binary_ce(np.zeros((2, 0), np.float32), np.zeros((2, 0), np.float32))


@pytest.mark.parametrize("bad", [2, -1, 1000])
def test_label_out_of_range(bad):
    y = np.zeros(4, np.int32)
    y[3] = bad
    with pytest.raises(
        ValueError,
        match=rf"labels\[3\] is {bad}; class indices must be in "
        r"\[0, 2\)",
    ):
        softmax_ce(make_logits(4, 2), y)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["softmax", "binary"])
def test_nonfinite_logits(value, which):
    z = make_logits(4, 3)
    z[2, 1] = value
    grad = np.full((4, 3), 5.0, np.float32)
    message = r"logits\[2, 1\] is -?(nan|inf); logits must be finite"
    with pytest.raises(ValueError, match=message):
        if which == "softmax":
            softmax_ce(z, make_labels(4, 3), grad)
        else:
            binary_ce(z, make_targets(4, 3), grad)
    assert np.all(grad == 5.0), "a failed call wrote into grad"


@pytest.mark.parametrize("value", [-1.0, 2.0, np.nan])
def test_targets_out_of_range(value):
    t = make_targets(4, 3)
    t[1, 2] = value
    with pytest.raises(ValueError, match=r"targets\[1, 2\] is .*; targets must be in "):
        binary_ce(make_logits(4, 3), t)


def test_pos_weight_bad():
    z, t = make_logits(4, 3), make_targets(4, 3)
    with pytest.raises(ValueError, match=r"pos_weight\[1\] is -1; weights must be finite"):
        binary_ce(z, t, pos_weight=np.array([1, -1, 1], np.float32))
    with pytest.raises(ValueError, match=r"pos_weight\[2\] is inf"):
        binary_ce(z, t, pos_weight=np.array([1, 1, np.inf], np.float32))


def test_grad_with_compute_grad_false():
    z, y = make_logits(4, 3), make_labels(4, 3)
    with pytest.raises(ValueError, match=r"grad given with compute_grad=False"):
        softmax_ce(z, y, np.zeros((4, 3), np.float32), compute_grad=False)
