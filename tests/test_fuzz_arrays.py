"""Fuzzing the array validation of every public entry point (issue 10, C-facing half).

Each argument is drawn near what the entry point wants (so the math runs too) or far
from it: other dtypes (swapped byte order, object, bool, complex), other ranks and
shapes (empty, zero-size with a huge other axis), strides that are negative, zero
(broadcast), overlapping (as_strided windows), misaligned or read-only, values with
NaN, Inf and float32's extremes, and Python ints near 2**63 and 2**64. The only
acceptable outcomes are a result or an ordinary Python exception: no crash (`make
sanitize` runs this file under AddressSanitizer and UBSan), no SystemError (an internal
error), and the object still works afterwards (no "in use" flag left behind).

Bounded: small sides (huge sizes only where validation refuses them before any work),
a fixed number of examples, no example database: the file runs in well under a minute.
"""

import numpy as np
import pytest
import tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import as_strided

import convirt
from convirt import _core, _testing

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)

DTYPES = [
    np.float32,
    np.float64,
    np.float16,
    np.uint8,
    np.int8,
    np.int32,
    np.int64,
    np.bool_,
    np.complex64,
    np.dtype(">f4"),
    np.dtype(">i4"),
    object,
]
LAYOUTS = [
    "contiguous",
    "fortran",
    "reversed",
    "every_other",
    "broadcast",
    "overlapping",
    "misaligned",
    "readonly",
    "offset_view",
]
SPECIAL = [np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, 0.0]
HUGE_INTS = [2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, -(2**63)]


def make_array(rng, dtype, shape, layout, special):
    """An array of dtype and shape with the given memory layout (always inside its base
    buffer: the fuzzing is of validation, not of invalid memory)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) if shape else 1
    if dtype == object:
        return np.full(shape, 1.0, dtype=object)
    values = rng.standard_normal(size) * 3
    if dtype.kind in "ui":
        values = rng.integers(0, 50, size)
    if special and dtype.kind == "f" and size:
        picks = rng.integers(0, size, max(1, size // 7))
        values[picks] = rng.choice(SPECIAL, len(picks))
    with np.errstate(all="ignore"):
        base = values.astype(dtype).reshape(shape)
    ndim = len(shape)
    if layout == "fortran":
        return np.asfortranarray(base)
    if layout == "reversed" and ndim:
        return np.ascontiguousarray(base[::-1])[::-1]  # negative strides, same values
    if layout == "every_other" and ndim:
        big = np.empty(tuple(2 * s for s in shape), dtype)
        view = big[tuple(slice(None, None, 2) for _ in shape)]
        view[...] = base
        return view
    if layout == "broadcast" and ndim:
        return np.broadcast_to(base[(slice(0, 1),) * ndim] if size else base, shape)
    if layout == "overlapping" and ndim and size:
        # windows that share elements: stride of one item on every axis
        item = dtype.itemsize
        flat = np.resize(base.ravel(), sum(s - 1 for s in shape) + 1)
        return as_strided(flat, shape=shape, strides=(item,) * ndim)
    if layout == "misaligned" and dtype.itemsize > 1 and size:
        raw = np.zeros(base.nbytes + 1, np.uint8)
        view = raw[1:].view(dtype).reshape(shape)
        view[...] = base
        return view
    if layout == "readonly":
        base.flags.writeable = False
        return base
    if layout == "offset_view" and ndim and size:
        big = np.zeros((shape[0] + 2,) + tuple(shape[1:]), dtype)
        big[1:-1] = base
        return big[1:-1]
    return base


@st.composite
def array_for(draw, dtype, shape, valid_p=0.6):
    """Mostly the wanted dtype and shape in some layout; sometimes something else."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(
        st.sampled_from(
            ["valid"] * 6 + ["dtype", "shape", "rank", "empty", "huge_empty", "not_array"]
        )
    )
    layout = draw(st.sampled_from(LAYOUTS))
    special = draw(st.booleans()) and draw(st.booleans())
    shape = tuple(shape)
    if kind == "dtype":
        dtype = draw(st.sampled_from(DTYPES))
    elif kind == "shape":
        shape = tuple(max(0, s + draw(st.integers(-2, 2))) for s in shape)
    elif kind == "rank":
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=5)))
    elif kind == "empty" and shape:
        shape = (0,) + shape[1:]
    elif kind == "huge_empty":
        # zero elements, but a side of 2**40 (NumPy bounds the product of the others)
        huge = (0, 2**40) + shape[2:] if len(shape) > 1 else (0,)
        return np.empty(huge, dtype=np.float32 if dtype == object else dtype)
    elif kind == "not_array":
        return draw(st.sampled_from([None, 3, 2.5, "x", [[1.0, 2.0]], (1, 2), b"\x00"]))
    return make_array(rng, dtype, shape, layout, special)


def acceptable(call):
    """Runs call: a result or an ordinary exception is fine, SystemError is a bug."""
    try:
        return call()
    except SystemError:
        raise
    except Exception:  # noqa: BLE001 - any ordinary exception is an acceptable outcome
        return None


sides = st.sampled_from([1, 2, 3, 4, 5, 8, 16])


# ---- encoders -------------------------------------------------------------------------------


_objects = {}


def image_encoder():
    if "image" not in _objects:
        _objects["image"] = convirt.Encoder.resnet18(proj_dim=8, proj_hidden=8)
    return _objects["image"]


def text_encoder():
    if "text" not in _objects:
        # 12 positions: sequences of 13 tokens are drawn too
        _objects["text"] = tiny.bert(vocab_size=30, max_position_embeddings=12)
    return _objects["text"]


def still_works_image():
    encoder = image_encoder()
    encoder.train(False)
    x = np.zeros((2, 32, 32), np.uint8)
    f, e = encoder.forward(x)
    assert f.shape == (2, 512) and e.shape == (2, 8) and np.isfinite(e).all()


@SETTINGS
@given(st.data())
def test_image_encoder_forward_backward(data):
    encoder = image_encoder()
    n = data.draw(st.sampled_from([1, 2, 3]))
    side = data.draw(st.sampled_from([31, 32, 33, 40]))
    dtype = data.draw(st.sampled_from([np.uint8, np.float32]))
    x = data.draw(array_for(dtype, (n, side, side)))
    training = data.draw(st.booleans())
    encoder.train(training)
    outs = {}
    if data.draw(st.booleans()):
        outs["features_out"] = data.draw(array_for(np.float32, (n, 512)))
    if data.draw(st.booleans()):
        outs["embeddings_out"] = data.draw(array_for(np.float32, (n, 8)))
    result = acceptable(lambda: encoder.forward(x, **outs))
    if result is not None and training:
        d_emb = data.draw(array_for(np.float32, (n, 8)))
        d_feat = data.draw(st.one_of(st.none(), array_for(np.float32, (n, 512))))
        want_input = data.draw(st.booleans())
        acceptable(lambda: encoder.backward(d_emb, d_feat, input_grad=want_input))
    encoder.zero_grad()
    still_works_image()


@SETTINGS
@given(st.data())
def test_image_encoder_shapes_near_integer_limits(data):
    # Overlapping windows over a small buffer claim 2**30 to 2**40 pixels, more than
    # this machine could hold activations for; zero-size batches claim 2**40-pixel
    # images. Both must be refused before any pass over the pixels (a float input used
    # to be scanned for NaN first: hours).
    encoder = image_encoder()
    side = data.draw(st.sampled_from([2**15, 2**16, 2**20]))
    dtype = np.dtype(data.draw(st.sampled_from([np.uint8, np.float32])))
    base = np.zeros(2 * side, dtype)
    x = as_strided(base, shape=(1, side, side), strides=(0, dtype.itemsize, dtype.itemsize))
    encoder.train(data.draw(st.booleans()))
    acceptable(lambda: encoder.forward(x))
    acceptable(lambda: encoder.forward(np.empty((0, 2**40, 2**20), dtype)))
    acceptable(lambda: encoder.encode(np.empty((0, 32, 32), dtype)))
    still_works_image()


@SETTINGS
@given(st.data())
def test_text_encoder_forward_backward(data):
    encoder = text_encoder()
    n, t = data.draw(st.sampled_from([1, 2, 3])), data.draw(st.sampled_from([1, 4, 12, 13]))
    ids = data.draw(array_for(np.int32, (n, t)))
    mask = data.draw(
        st.one_of(st.just(np.ones((n, t), np.int32)), array_for(np.int32, (n, t)))
    )
    types = data.draw(st.one_of(st.none(), array_for(np.int32, (n, t))))
    if isinstance(ids, np.ndarray) and ids.dtype == np.int32 and ids.flags.writeable:
        ids %= 30  # mostly inside the vocabulary
    encoder.train(data.draw(st.booleans()))
    out = data.draw(st.one_of(st.none(), array_for(np.float32, (n, 4))))
    result = acceptable(lambda: encoder.forward(ids, mask, types, embeddings_out=out))
    if result is not None and encoder.training:
        acceptable(lambda: encoder.backward(data.draw(array_for(np.float32, (n, 4)))))
    acceptable(lambda: encoder.last_hidden_state())
    encoder.zero_grad()
    encoder.train(False)
    _, e = encoder.forward(np.ones((2, 3), np.int32), np.ones((2, 3), np.int32))
    assert np.isfinite(e).all()


# ---- losses -----------------------------------------------------------------------------------


@SETTINGS
@given(st.data())
def test_contrastive_loss(data):
    loss = _objects.setdefault("loss", convirt.ContrastiveLoss())
    n, d = data.draw(sides), data.draw(sides)
    v = data.draw(array_for(np.float32, (n, d)))
    u = data.draw(array_for(np.float32, (n, d)))
    grads = {}
    if data.draw(st.booleans()):
        grads["grad_v"] = data.draw(array_for(np.float32, (n, d)))
    if data.draw(st.booleans()):
        grads["grad_u"] = data.draw(
            st.one_of(array_for(np.float32, (n, d)), st.just(grads.get("grad_v")))
        )
    acceptable(lambda: loss(v, u, **grads))
    acceptable(lambda: loss(v, u, compute_grad=data.draw(st.booleans())))
    z = data.draw(array_for(np.float32, (2 * n, d)))
    acceptable(
        lambda: loss.nt_xent(
            z, grad=data.draw(st.one_of(st.none(), array_for(np.float32, (2 * n, d))))
        )
    )
    ok = np.eye(4, dtype=np.float32)
    assert np.isfinite(loss(ok, ok).loss)


@SETTINGS
@given(st.data())
def test_classification_losses(data):
    n, k = data.draw(sides), data.draw(sides)
    logits = data.draw(array_for(np.float32, (n, k)))
    labels = data.draw(array_for(np.int32, (n,)))
    if (
        isinstance(labels, np.ndarray)
        and labels.dtype == np.int32
        and labels.flags.writeable
    ):
        labels %= k
    grad = data.draw(st.one_of(st.none(), array_for(np.float32, (n, k))))
    acceptable(lambda: _core.softmax_cross_entropy(logits, labels, grad))
    targets = data.draw(array_for(np.float32, (n, k)))
    weight = data.draw(st.one_of(st.none(), array_for(np.float32, (k,))))
    acceptable(lambda: _core.binary_cross_entropy(logits, targets, grad, weight))
    loss, _ = _core.softmax_cross_entropy(
        np.zeros((2, 3), np.float32), np.zeros(2, np.int32)
    )
    assert np.isfinite(loss)


# ---- transforms, optimiser, head, GEMM ----------------------------------------------------------


@SETTINGS
@given(st.data())
def test_image_augment(data):
    augment = _objects.setdefault("augment", convirt.ImageAugment(8, blur_sigma=(0.5, 2.0)))
    n, h, w = data.draw(st.sampled_from([1, 2])), data.draw(sides), data.draw(sides)
    channels = data.draw(st.sampled_from([(), (1,), (3,), (2,)]))
    images = data.draw(array_for(np.uint8, (n, h, w) + channels))
    if data.draw(st.booleans()) and isinstance(images, np.ndarray) and images.ndim:
        images = list(images)  # the list form
    out = data.draw(st.one_of(st.none(), array_for(np.float32, (n, 8, 8) + channels[:1])))
    step = data.draw(st.one_of(st.integers(0, 5), st.sampled_from(HUGE_INTS)))
    acceptable(lambda: augment(images, step, out=out))
    params = acceptable(lambda: augment.sample_parameters(n, step))
    if params is not None and data.draw(st.booleans()):
        field = data.draw(st.sampled_from(["crop", "angle", "scale", "sigma", "contrast"]))
        params[field] = data.draw(st.sampled_from(SPECIAL + [-1.0, 2.0, 1e9]))
    acceptable(lambda: augment.apply(images, params, out=out))
    acceptable(
        lambda: augment.sample_parameters(
            data.draw(st.sampled_from([-1, 2**62, 2**63 - 1])), 0
        )
    )
    assert augment(np.zeros((1, 4, 4), np.uint8)).shape == (1, 8, 8)


@SETTINGS
@given(st.data())
def test_adam(data):
    sizes = data.draw(st.lists(st.sampled_from([1, 3, 16, 40]), min_size=1, max_size=3))
    params = [data.draw(array_for(np.float32, (s,))) for s in sizes]
    grads = [data.draw(array_for(np.float32, (s,))) for s in sizes]
    if data.draw(st.booleans()) and len(params) > 1:
        grads[0] = params[-1]  # a gradient that is a parameter
    kwargs = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                "lr": st.sampled_from([1e-3, 0.0, -1.0, np.nan]),
                "max_grad_norm": st.sampled_from([None, 1.0, 0.0, np.inf]),
                "betas": st.sampled_from([(0.9, 0.999), (1.0, 0.5), (np.nan, 0.9)]),
            },
        )
    )
    adam = acceptable(lambda: convirt.Adam(params, grads, **kwargs))
    if adam is None:
        return
    acceptable(lambda: adam.step(return_norm=True))
    state = adam.state_dict()
    key = data.draw(st.sampled_from(["exp_avg", "exp_avg_sq", "step", "sizes", "lr"]))
    state[key] = data.draw(
        st.one_of(
            array_for(np.float32, (adam.size,)),
            st.sampled_from(HUGE_INTS + [np.nan, None, [1, 2]]),
        )
    )
    acceptable(lambda: adam.load_state_dict(state))
    acceptable(lambda: adam.step())


@SETTINGS
@given(st.data())
def test_linear_head(data):
    head = _objects.setdefault("head", _core.LinearHead(5, 3, seed=1))
    n = data.draw(sides)
    x = data.draw(array_for(np.float32, (n, 5)))
    out = data.draw(
        st.one_of(
            st.none(),
            array_for(np.float32, (n, 3)),
            st.just(head.weight[:, :3]) if n == 3 else st.none(),
        )
    )
    acceptable(lambda: head.forward(x, out=out))
    d = data.draw(array_for(np.float32, (n, 3)))
    dx = data.draw(st.one_of(st.none(), array_for(np.float32, (n, 5))))
    acceptable(lambda: head.backward(d, x, d_x=dx))
    acceptable(
        lambda: _core.LinearHead(
            data.draw(st.sampled_from(HUGE_INTS + [0, 4])),
            2,
            seed=data.draw(st.sampled_from(HUGE_INTS)),
        )
    )
    head.zero_grad()
    assert head.forward(np.ones((2, 5), np.float32)).shape == (2, 3)


@SETTINGS
@given(st.data())
def test_gemm(data):
    m, k, n = data.draw(sides), data.draw(sides), data.draw(sides)
    a = data.draw(array_for(np.float32, (m, k)))
    b = data.draw(array_for(np.float32, (k, n)))
    c = data.draw(st.one_of(array_for(np.float32, (m, n)), st.just(a)))
    gemm = _testing.gemm_reference if data.draw(st.booleans()) else _core.gemm
    acceptable(lambda: gemm(a, b, c))


@pytest.mark.parametrize("value", HUGE_INTS)
def test_thread_and_size_arguments_near_integer_limits(value):
    before = convirt.get_num_threads()
    try:
        acceptable(lambda: convirt.set_num_threads(value))
        acceptable(lambda: _core.fma_peak(threads=value, seconds=0.01))
        acceptable(lambda: _core.gemm_kernel_peak(threads=value, seconds=0.01))
        acceptable(lambda: convirt.ImageAugment(value))
        acceptable(lambda: convirt.Encoder.resnet18(proj_dim=value, proj_hidden=4))
    finally:
        convirt.set_num_threads(before)
