"""ContrastiveLoss: parity with NumPy and torch, finite differences, bad input, zero copy,
reference counts, the GIL."""

import gc
import os
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

import convirt

torch = pytest.importorskip("torch")
F = torch.nn.functional


def reference_loss(v, u, temperature, lam):
    """ConVIRT's loss and gradients in float64 NumPy, written from the paper's formula."""
    v = np.asarray(v, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    nv = np.linalg.norm(v, axis=1, keepdims=True)
    nu = np.linalg.norm(u, axis=1, keepdims=True)
    vh, uh = v / nv, u / nu
    s = vh @ uh.T / temperature
    n = len(v)

    def log_softmax(x, axis):
        m = x.max(axis=axis, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))

    lr, lc = log_softmax(s, 1), log_softmax(s, 0)
    l_v2u = -np.mean(np.diag(lr))
    l_u2v = -np.mean(np.diag(lc))
    eye = np.eye(n)
    g = lam / n * (np.exp(lr) - eye) + (1 - lam) / n * (np.exp(lc) - eye)
    dvh = g @ uh / temperature
    duh = g.T @ vh / temperature
    dv = (dvh - vh * np.sum(vh * dvh, axis=1, keepdims=True)) / nv
    du = (duh - uh * np.sum(uh * duh, axis=1, keepdims=True)) / nu
    acc_v = np.mean(np.argmax(s, axis=1) == np.arange(n))
    acc_u = np.mean(np.argmax(s, axis=0) == np.arange(n))
    return lam * l_v2u + (1 - lam) * l_u2v, l_v2u, l_u2v, dv, du, acc_v, acc_u


def torch_loss(v, u, temperature, lam):
    tv = torch.tensor(np.ascontiguousarray(v), dtype=torch.float64, requires_grad=True)
    tu = torch.tensor(np.ascontiguousarray(u), dtype=torch.float64, requires_grad=True)
    logits = F.normalize(tv, dim=1) @ F.normalize(tu, dim=1).T / temperature
    target = torch.arange(len(v))
    loss = lam * F.cross_entropy(logits, target) + (1 - lam) * F.cross_entropy(
        logits.T, target
    )
    loss.backward()
    return loss.item(), tv.grad.numpy(), tu.grad.numpy()


def make_inputs(n, d, layout, seed=0):
    """v and u of shape (n, d) as contiguous, transposed or sliced views."""
    rng = np.random.default_rng(seed)
    if layout == "contiguous":
        v = rng.standard_normal((n, d)).astype(np.float32)
        u = rng.standard_normal((n, d)).astype(np.float32)
    elif layout == "transposed":
        v = rng.standard_normal((d, n)).astype(np.float32).T
        u = rng.standard_normal((d, n)).astype(np.float32).T
    elif layout == "sliced":
        v = rng.standard_normal((2 * n + 1, 3 * d)).astype(np.float32)[1::2, ::3]
        u = rng.standard_normal((n, 2 * d)).astype(np.float32)[:, d:]
    else:
        raise ValueError(layout)
    assert v.shape == (n, d) and u.shape == (n, d)
    return v, u


def assert_grad_close(actual, expected, rtol=2e-4):
    # Relative to the largest entry; the 1e-5 floor covers d = 1, where the exact
    # gradient is 0 and float32 leaves the rounding of (g - v <v, g>) / |v|.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=max(rtol * scale, 1e-5))


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("lam", [0.0, 0.75, 1.0])
@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("d", [1, 128, 512])
@pytest.mark.parametrize("n", [1, 2, 32, 257])
def test_parity_with_numpy_reference(n, d, temperature, lam, layout):
    v, u = make_inputs(n, d, layout, seed=n * 1000 + d)
    loss = convirt.ContrastiveLoss(temperature=temperature, image_to_text_weight=lam)
    result = loss(v, u)
    ref, l_v2u, l_u2v, dv, du, acc_v, acc_u = reference_loss(v, u, temperature, lam)
    np.testing.assert_allclose(result.loss, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.image_to_text, l_v2u, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.text_to_image, l_u2v, rtol=1e-5, atol=1e-5)
    assert_grad_close(result.grad_v, dv)
    assert_grad_close(result.grad_u, du)
    if d > 1:  # with d = 1 every cosine is +-1: ties make argmax arbitrary
        assert result.accuracy_image_to_text == pytest.approx(acc_v)
        assert result.accuracy_text_to_image == pytest.approx(acc_u)


@pytest.mark.parametrize("lam", [0.0, 0.75, 1.0])
@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("n,d", [(1, 128), (2, 1), (32, 512), (257, 128), (1000, 64)])
def test_parity_with_torch_autograd(n, d, temperature, lam):
    v, u = make_inputs(n, d, "contiguous", seed=7)
    result = convirt.ContrastiveLoss(temperature=temperature, image_to_text_weight=lam)(
        v, u
    )
    ref, dv, du = torch_loss(v, u, temperature, lam)
    np.testing.assert_allclose(result.loss, ref, rtol=1e-5, atol=1e-5)
    assert_grad_close(result.grad_v, dv)
    assert_grad_close(result.grad_u, du)


def test_finite_differences():
    rng = np.random.default_rng(3)
    n, d = 5, 4
    v = rng.standard_normal((n, d)).astype(np.float32)
    u = rng.standard_normal((n, d)).astype(np.float32)
    loss = convirt.ContrastiveLoss(temperature=0.5, image_to_text_weight=0.75)
    result = loss(v, u)
    eps = 1e-2
    for name, x, grad in (("v", v, result.grad_v), ("u", u, result.grad_u)):
        numeric = np.zeros_like(x)
        for i in range(n):
            for k in range(d):
                x[i, k] += eps
                plus = loss(v, u, compute_grad=False).loss
                x[i, k] -= 2 * eps
                minus = loss(v, u, compute_grad=False).loss
                x[i, k] += eps
                numeric[i, k] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=2e-2, atol=2e-3, err_msg=name)


def test_learnable_temperature_gradient():
    rng = np.random.default_rng(4)
    v = rng.standard_normal((16, 8)).astype(np.float32)
    u = rng.standard_normal((16, 8)).astype(np.float32)
    loss = convirt.ContrastiveLoss(temperature=0.2, learnable_temperature=True)
    result = loss(v, u)
    assert result.grad_logit_scale is not None
    scale = torch.tensor(loss.logit_scale, dtype=torch.float64, requires_grad=True)
    tv, tu = torch.tensor(v, dtype=torch.float64), torch.tensor(u, dtype=torch.float64)
    logits = scale.exp() * F.normalize(tv, dim=1) @ F.normalize(tu, dim=1).T
    target = torch.arange(16)
    ref = 0.75 * F.cross_entropy(logits, target) + 0.25 * F.cross_entropy(logits.T, target)
    ref.backward()
    assert result.loss == pytest.approx(ref.item(), rel=1e-5)
    assert result.grad_logit_scale == pytest.approx(scale.grad.item(), rel=1e-4, abs=1e-6)
    # Past the clamp the logit scale gets no gradient and the scale stays at the maximum.
    loss.logit_scale = np.log(1000.0)
    clamped = loss(v, u)
    assert clamped.grad_logit_scale == 0.0
    assert loss.temperature == pytest.approx(1 / 100.0)
    # A fixed temperature reports no logit-scale gradient.
    assert convirt.ContrastiveLoss()(v, u).grad_logit_scale is None


def test_defaults_and_repr():
    loss = convirt.ContrastiveLoss()
    assert loss.temperature == pytest.approx(0.1)
    assert loss.image_to_text_weight == 0.75
    assert not loss.learnable_temperature
    assert "temperature=0.1" in repr(loss) and "image_to_text_weight=0.75" in repr(loss)
    loss.temperature = 0.05
    assert loss.temperature == pytest.approx(0.05)


def test_result_fields():
    v, u = make_inputs(8, 16, "contiguous")
    result = convirt.ContrastiveLoss()(v, u)
    assert isinstance(result, convirt.LossResult)
    loss, _v2u, _u2v, acc_v, acc_u, gv, _gu, gs = result
    assert loss == result.loss and gv is result.grad_v and gs is None
    assert 0.0 <= acc_v <= 1.0 and 0.0 <= acc_u <= 1.0
    no_grad = convirt.ContrastiveLoss()(v, u, compute_grad=False)
    assert no_grad.grad_v is None and no_grad.grad_u is None
    assert no_grad.loss == pytest.approx(loss)


def test_result_repr_is_short():
    # The structseq's own repr printed both gradient arrays (1,800 characters for 512 x
    # 128, more with NumPy's print options raised); the losses and shapes are enough.
    v, u = make_inputs(512, 128, "contiguous")
    result = convirt.ContrastiveLoss()(v, u)
    text = repr(result)
    assert len(text) < 400, text
    assert text.startswith(f"convirt.LossResult(loss={result.loss!r}, ")
    assert f"accuracy_text_to_image={result.accuracy_text_to_image!r}" in text
    assert "grad_v=<float32 array, shape (512, 128)>" in text
    assert text.endswith("grad_u=<float32 array, shape (512, 128)>, grad_logit_scale=None)")
    assert type(result).__repr__(result) == str(result) == text
    with np.printoptions(threshold=sys.maxsize):
        assert repr(result) == text
    no_grad = convirt.ContrastiveLoss(learnable_temperature=True)(v, u, compute_grad=False)
    assert "grad_v=None, grad_u=None, grad_logit_scale=" in repr(no_grad)
    # repr leaks nothing: neither the arrays nor the shape tuples it reads
    gc.collect()
    refs = [sys.getrefcount(x) for x in (result, result.grad_v, result.grad_u)]
    tracemalloc.start()
    try:
        for _ in range(100):
            repr(result)
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(2000):
            repr(result)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [sys.getrefcount(x) for x in (result, result.grad_v, result.grad_u)] == refs
    assert after - before < 16_000, after - before


def test_perfect_alignment_has_full_accuracy():
    rng = np.random.default_rng(5)
    v = rng.standard_normal((64, 32)).astype(np.float32)
    result = convirt.ContrastiveLoss(temperature=0.1)(v, v.copy())
    assert result.accuracy_image_to_text == 1.0 and result.accuracy_text_to_image == 1.0
    shuffled = convirt.ContrastiveLoss(temperature=0.1)(v, v[::-1].copy())
    assert shuffled.accuracy_image_to_text < 0.1
    assert shuffled.loss > result.loss


@pytest.mark.parametrize("temperature", [0.1, 0.01])  # the two-pass and by-max softmaxes
@pytest.mark.parametrize("n,layout", [(257, "sliced"), (1000, "contiguous")])
def test_thread_count_does_not_change_results(n, layout, temperature):
    """Every gradient entry is the same sums in the same order on any team (the column
    tiles follow n, not the threads): the same bits. Only the totals' double-precision
    reductions over rows may differ in their last places."""
    v, u = make_inputs(n, 128, layout, seed=11)
    loss = convirt.ContrastiveLoss(temperature=temperature)
    threads = convirt.get_num_threads()
    try:
        convirt.set_num_threads(1)
        one = loss(v, u)
        convirt.set_num_threads(2)
        two = loss(v, u)
    finally:
        convirt.set_num_threads(threads)
    assert one.loss == pytest.approx(two.loss, rel=1e-12)
    assert np.array_equal(one.grad_v, two.grad_v)
    assert np.array_equal(one.grad_u, two.grad_u)


@pytest.mark.parametrize("scale", [40.0, 40.5])
def test_extreme_logits_either_side_of_the_two_pass_bound(scale):
    """Up to a logit scale of 40 the softmaxes shift every logit by the scale itself
    (exp(-2 scale) is still a normal float); above it, by each row's and column's
    maximum. Cosines of exactly +1 and -1 at the bound: both agree with float64."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((6, 16)).astype(np.float32)
    v = np.vstack([base, -base[:2], base[:3]])
    u = np.vstack([base, base[:2], -base[:3]])
    loss = convirt.ContrastiveLoss(temperature=1.0 / scale, image_to_text_weight=0.75)
    result = loss(v, u)
    ref, _, _, dv, du, _, _ = reference_loss(v, u, 1.0 / scale, 0.75)
    assert np.isfinite(result.loss)
    np.testing.assert_allclose(result.loss, ref, rtol=1e-5)
    assert_grad_close(result.grad_v, dv)
    assert_grad_close(result.grad_u, du)


# ---- bad input: one case each (the array rules shared by every entry point: dtype, rank,
# shape, alignment, strides, read-only and overlapping outputs, are in test_array_rules.py)


@pytest.fixture
def vu():
    return make_inputs(4, 8, "contiguous")


def test_empty_batch_and_empty_dimension():
    with pytest.raises(ValueError, match="at least one row and one column"):
        convirt.ContrastiveLoss()(
            np.zeros((0, 8), np.float32), np.zeros((0, 8), np.float32)
        )
    with pytest.raises(ValueError, match="at least one row and one column"):
        convirt.ContrastiveLoss()(
            np.zeros((4, 0), np.float32), np.zeros((4, 0), np.float32)
        )


def test_nan_input(vu):
    v, u = vu
    v = v.copy()
    v[2, 3] = np.nan
    with pytest.raises(
        convirt.NonFiniteError, match="row 2 of the first input contains NaN"
    ):
        convirt.ContrastiveLoss()(v, u)


def test_inf_input(vu):
    v, u = vu
    u = u.copy()
    u[1, 0] = np.inf
    with pytest.raises(convirt.NonFiniteError, match="row 1 of the second input"):
        convirt.ContrastiveLoss()(v, u)


def test_zero_vector(vu):
    v, u = vu
    v = v.copy()
    v[3] = 0.0
    with pytest.raises(ValueError, match="row 3 of the first input has a zero"):
        convirt.ContrastiveLoss()(v, u)


def test_output_with_compute_grad_false(vu):
    v, u = vu
    with pytest.raises(ValueError, match="compute_grad=False"):
        convirt.ContrastiveLoss()(v, u, grad_v=np.zeros_like(v), compute_grad=False)


@pytest.mark.parametrize(
    "temperature", [0.0, -0.1, float("nan"), float("inf"), 1e-300, 1e-36, 1e300]
)
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        convirt.ContrastiveLoss(temperature=temperature)
    loss = convirt.ContrastiveLoss()
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        loss.temperature = temperature
    assert loss.temperature == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [1000.0, 80.5, -1000.0, float("nan"), float("inf")])
def test_logit_scale_must_keep_the_scale_finite_in_float32(bad, vu):
    # loss.logit_scale = 1000 was accepted (only isfinite was checked); exp(1000) is inf
    # and the next call failed with "the logit scale must be positive and finite, got
    # inf". Now the setter refuses it with the valid range, and nothing changes.
    loss = convirt.ContrastiveLoss(learnable_temperature=True)
    with pytest.raises(ValueError, match=r"logit_scale must be in \[-80, 80\]"):
        loss.logit_scale = bad
    assert loss.logit_scale == pytest.approx(np.log(10.0))
    for edge in (80.0, -80.0):  # the bounds themselves run, finite
        loss = convirt.ContrastiveLoss()
        loss.logit_scale = edge
        result = loss(*vu)
        assert np.isfinite(result.loss), edge
        assert np.isfinite(result.grad_v).all() and np.isfinite(result.grad_u).all()


@pytest.mark.parametrize("lam", [-0.01, 1.01, float("nan")])
def test_bad_lambda(lam):
    with pytest.raises(
        ValueError, match=r"image_to_text_weight \(lambda\) must be in \[0, 1\]"
    ):
        convirt.ContrastiveLoss(image_to_text_weight=lam)
    loss = convirt.ContrastiveLoss()
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        loss.image_to_text_weight = lam


def test_lambda_is_keyword_only():
    with pytest.raises(TypeError):
        convirt.ContrastiveLoss(0.1, 0.75)


def test_similarity_overflow_is_an_error():
    v = np.full((2, 4), 1e30, np.float32)
    v[1, 0] = -1e30
    # Norms in float64 are fine, but the raw dot products overflow float32.
    with pytest.raises(ValueError, match="overflowed float32|out-of-range norm"):
        convirt.ContrastiveLoss()(v, v.copy())


# ---- zero copy, memory, references, the GIL ----------------------------------------------


def test_outputs_are_the_supplied_buffers():
    v, u = make_inputs(32, 64, "sliced")
    gv = np.empty((32, 64), np.float32)
    gu_base = np.empty((64, 32), np.float32)
    gu = gu_base.T  # a strided output works too
    result = convirt.ContrastiveLoss()(v, u, grad_v=gv, grad_u=gu)
    assert result.grad_v is gv and result.grad_u is gu
    assert np.shares_memory(result.grad_u, gu_base)
    _, _, _, dv, du, _, _ = reference_loss(v, u, 0.1, 0.75)
    assert_grad_close(gv, dv)
    assert_grad_close(gu, du)


def test_inputs_are_left_unchanged():
    v, u = make_inputs(16, 32, "transposed")
    v_before, u_before = v.copy(), u.copy()
    convirt.ContrastiveLoss()(v, u)
    np.testing.assert_array_equal(v, v_before)
    np.testing.assert_array_equal(u, u_before)


def test_no_input_sized_allocation_for_strided_inputs():
    n, d = 512, 512
    v, u = make_inputs(n, d, "transposed")
    gv = np.empty((n, d), np.float32)
    gu = np.empty((n, d), np.float32)
    loss = convirt.ContrastiveLoss()
    loss(v, u, grad_v=gv, grad_u=gu)  # warm the workspace
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        loss(v, u, grad_v=gv, grad_u=gu)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < v.nbytes // 4, f"a call allocated {peak} bytes; an input is {v.nbytes}"


def thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


HUGE_PAGES_CHILD = """
import numpy as np, convirt

def anon_huge_kib():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0

rng = np.random.default_rng(0)
v = rng.standard_normal((2048, 64), dtype=np.float32)
u = rng.standard_normal((2048, 64), dtype=np.float32)
loss = convirt.ContrastiveLoss()  # kept: its workspace is freed with it
before = anon_huge_kib()
loss(v, u)
print(anon_huge_kib() - before)
"""


@pytest.mark.skipif(
    thp_mode() not in ("always", "madvise"), reason="no transparent huge pages here"
)
def test_similarity_matrix_is_in_huge_pages():
    """The core's large buffers ask for transparent huge pages (madvise), which
    Linux's default mode gives only to regions that ask: a 2048 x 2048 similarity
    matrix is 16 MiB, eight huge pages, of which at least half must be huge (under
    AddressSanitizer's allocator seven were). In a fresh process: a long-lived one may
    reuse memory that earlier calls had already faulted in."""
    out = subprocess.run(
        [sys.executable, "-c", HUGE_PAGES_CHILD],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert int(out.stdout.split()[-1]) >= 4 * 2048, out.stdout


def test_thousand_calls_leak_nothing():
    v, u = make_inputs(16, 32, "contiguous")
    gv, gu = np.empty_like(v), np.empty_like(u)
    loss = convirt.ContrastiveLoss()
    for _ in range(10):
        loss(v, u, grad_v=gv, grad_u=gu)
        loss(v, u)
    gc.collect()
    refs = [sys.getrefcount(x) for x in (v, u, gv, gu, loss)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(1000):
        loss(v, u, grad_v=gv, grad_u=gu)
        loss(v, u)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert [sys.getrefcount(x) for x in (v, u, gv, gu, loss)] == refs
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 64 * 1024, f"memory grew by {grown} bytes over 1,000 calls"


def test_errors_leak_nothing(vu):
    v, u = vu
    bad = v.astype(np.float64)
    loss = convirt.ContrastiveLoss()
    refs = [sys.getrefcount(x) for x in (v, u, bad)]
    for _ in range(1000):
        with pytest.raises(TypeError):
            loss(bad, u)
        with pytest.raises(ValueError):
            loss(v, u[:2])
    assert [sys.getrefcount(x) for x in (v, u, bad)] == refs


def test_gil_is_released_two_losses_overlap():
    v, u = make_inputs(1024, 512, "contiguous")
    intervals = {}
    barrier = threading.Barrier(2)

    def work(name):
        loss = convirt.ContrastiveLoss()
        loss(v, u)  # warm-up
        barrier.wait()
        start = time.perf_counter()
        for _ in range(3):
            loss(v, u)
        intervals[name] = (start, time.perf_counter())

    threads = [threading.Thread(target=work, args=(k,)) for k in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a0, a1), (b0, b1) = intervals["a"], intervals["b"]
    assert a0 < b1 and b0 < a1, "the two calls did not overlap in time"
    # The GIL is released during a call: Python in another thread makes progress.
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1

    loss = convirt.ContrastiveLoss()
    thread = threading.Thread(target=count)
    thread.start()
    time.sleep(0.01)
    seen = counter[0]
    loss(v, u)
    progressed = counter[0] - seen
    stop.set()
    thread.join()
    assert progressed > 1000


def test_concurrent_use_of_one_object_is_refused():
    v, u = make_inputs(2048, 512, "contiguous")
    small_v, small_u = make_inputs(4, 8, "contiguous")
    loss = convirt.ContrastiveLoss()
    started = threading.Event()

    def long_call():
        started.set()
        done = 0
        while done < 3:
            try:
                loss(v, u)
                done += 1
            except RuntimeError:  # the main thread held it for a moment
                pass

    thread = threading.Thread(target=long_call)
    thread.start()
    started.wait()
    refused = 0
    while thread.is_alive():
        try:
            loss(small_v, small_u)
            # leave the object free for a moment: back-to-back small calls could keep
            # refusing the long one (a livelock seen under AddressSanitizer, whose slow
            # allocation of the long call's outputs made its window rare)
            time.sleep(0.001)
        except RuntimeError as error:
            assert "in use by another thread" in str(error)
            refused += 1
    thread.join()
    assert refused > 0


# ---- NT-Xent (SimCLR, the image-only baseline) ----------------------------------------------


def torch_nt_xent(z, temperature):
    tz = torch.tensor(np.ascontiguousarray(z), dtype=torch.float64, requires_grad=True)
    zn = F.normalize(tz, dim=1)
    logits = (zn @ zn.T / temperature).masked_fill(
        torch.eye(len(z), dtype=bool), float("-inf")
    )
    target = (torch.arange(len(z)) + len(z) // 2) % len(z)
    loss = F.cross_entropy(logits, target)
    loss.backward()
    accuracy = (logits.argmax(1) == target).double().mean().item()
    return loss.item(), tz.grad.numpy(), accuracy


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
@pytest.mark.parametrize("n,d", [(1, 8), (16, 32), (129, 64)])
def test_nt_xent_matches_torch(n, d, temperature, layout):
    z, _ = make_inputs(2 * n, d, layout, seed=n)
    result = convirt.ContrastiveLoss(temperature=temperature).nt_xent(z)
    ref, grad, accuracy = torch_nt_xent(z, temperature)
    np.testing.assert_allclose(result.loss, ref, rtol=1e-5, atol=1e-5)
    assert_grad_close(result.grad_v, grad)
    assert result.accuracy_image_to_text == pytest.approx(accuracy)
    assert result.grad_u is None and np.isnan(result.text_to_image)


def test_nt_xent_two_identical_views_are_easy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    result = convirt.ContrastiveLoss().nt_xent(np.concatenate([x, x]))
    assert result.accuracy_image_to_text == 1.0


def test_nt_xent_bad_input():
    loss = convirt.ContrastiveLoss()
    with pytest.raises(ValueError, match="even number"):
        loss.nt_xent(np.ones((5, 4), np.float32))
    z = np.ones((4, 4), np.float32)
    z[1] = 0
    with pytest.raises(ValueError, match="row 1 of the input has a zero"):
        loss.nt_xent(z)
