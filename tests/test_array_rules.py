"""The array rules every entry point shares, tested once over a table of entry points.

Every public call that takes NumPy arrays validates them the same way (csrc/py/arrays.c):
a wrong dtype (or byte order) is a TypeError that names the expected dtype and the one
given; a wrong rank or shape, a misaligned array, a read-only output, a zero stride (a
broadcast view), a non-contiguous array where the core needs a contiguous one and an
output that overlaps an input or another output are ValueErrors that name the argument;
NaN or Inf in data the core computes with is a convirt.NonFiniteError, and a refused call
writes nothing into the outputs given and keeps no reference to its arguments. Arrays
the core reads with their strides (negative ones too) give the result of a contiguous
copy, and inputs may be read-only.

ENTRY_POINTS is the table: for each entry point, how to call it with one array per
argument slot, and what each slot is (input or output, dtype, rank, whether it must be
C-contiguous or finite). The rules are applied to every (entry point, slot) where they
apply; checks specific to one type (a label out of range, a sequence longer than the
position table ...) stay in that type's test file."""

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import tiny
from numpy.lib.stride_tricks import as_strided

import convirt
from convirt import _core

# ---- the table ---------------------------------------------------------------------------


IN, OUT, INOUT = "in", "out", "inout"
F32, I32, U8 = "float32", "int32", "uint8"


@dataclass(frozen=True)
class Slot:
    """One array argument. `name` is how messages call it, and its key in the arrays
    an entry point's call takes."""

    name: str
    role: str  # "in": read; "out": written; "inout": read and updated in place
    dtype: str  # "float32", "int32", "uint8" or "float32 or uint8"
    ndim: tuple  # (fewest, most) dimensions
    contiguous: bool = False  # must be C-contiguous (else read with any strides)
    finite: bool = False  # NaN or Inf is a convirt.NonFiniteError
    tied: tuple = ()  # the axes whose size another argument sets (a wrong one is refused)
    list_form: bool = False  # a list of arrays is another accepted form
    copied: bool = False  # only copied from (a state dict): any layout is read as values


@dataclass(frozen=True)
class Entry:
    """An entry point: setup() returns (call, arrays), where call(arrays) makes the call
    with one array per slot (arrays holds valid ones) and returns what to compare
    (arrays and numbers). Each setup() builds a fresh object, or reuses one that the
    call leaves as it was (a ResNet takes a while to build)."""

    name: str
    setup: Callable
    slots: tuple

    def slot(self, name):
        return next(s for s in self.slots if s.name == name)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _f32(*shape, seed=0):
    return _rng(seed).standard_normal(shape).astype(np.float32)


def contrastive_loss():
    loss = convirt.ContrastiveLoss()
    arrays = {
        "v": _f32(4, 8, seed=1),
        "u": _f32(4, 8, seed=2),
        "grad_v": np.zeros((4, 8), np.float32),
        "grad_u": np.zeros((4, 8), np.float32),
    }

    def call(a):
        r = loss(a["v"], a["u"], grad_v=a["grad_v"], grad_u=a["grad_u"])
        return r.loss, r.grad_v, r.grad_u

    return call, arrays


def nt_xent():
    loss = convirt.ContrastiveLoss()
    arrays = {"z": _f32(4, 8, seed=3), "grad": np.zeros((4, 8), np.float32)}

    def call(a):
        r = loss.nt_xent(a["z"], grad=a["grad"])
        return r.loss, r.grad_v

    return call, arrays


def softmax_cross_entropy():
    arrays = {
        "logits": _f32(4, 3, seed=4),
        "labels": np.array([0, 2, 1, 2], np.int32),
        "grad": np.zeros((4, 3), np.float32),
    }
    return (
        lambda a: convirt.softmax_cross_entropy(a["logits"], a["labels"], a["grad"]),
        arrays,
    )


def binary_cross_entropy():
    arrays = {
        "logits": _f32(4, 3, seed=5),
        "targets": _rng(6).integers(0, 2, (4, 3)).astype(np.float32),
        "grad": np.zeros((4, 3), np.float32),
        "pos_weight": np.array([1.0, 2.0, 0.5], np.float32),
    }
    return (
        lambda a: convirt.binary_cross_entropy(
            a["logits"], a["targets"], a["grad"], a["pos_weight"]
        ),
        arrays,
    )


_RESNET = {}  # built once: a ResNet-18 takes a while to initialise


def resnet_forward():
    # an eval-mode forward changes nothing in the encoder
    if "forward" not in _RESNET:
        _RESNET["forward"] = convirt.Encoder.resnet18(proj_dim=8, proj_hidden=8, seed=1)
    encoder = _RESNET["forward"]
    arrays = {
        "images": _rng(7).random((2, 32, 32), dtype=np.float32),
        "features_out": np.zeros((2, 512), np.float32),
        "embeddings_out": np.zeros((2, 8), np.float32),
    }
    return (
        lambda a: encoder.forward(
            a["images"], features_out=a["features_out"], embeddings_out=a["embeddings_out"]
        ),
        arrays,
    )


def resnet_backward():
    # backward may run again after one training forward (each call adds into the zeroed
    # gradients), so one forward serves every case; its images must stay unchanged
    if "backward" not in _RESNET:
        encoder = convirt.Encoder.resnet18(proj_dim=8, proj_hidden=8, seed=2).train()
        images = _rng(8).integers(0, 256, (2, 32, 32), dtype=np.uint8)
        encoder.forward(images)
        _RESNET["backward"] = encoder, images
    encoder, _ = _RESNET["backward"]
    arrays = {"d_embeddings": _f32(2, 8, seed=9), "d_features": _f32(2, 512, seed=10)}

    def call(a):
        encoder.zero_grad()
        encoder.backward(a["d_embeddings"], a["d_features"])
        grads = encoder.gradients()  # the first layer's and the head's, not all 11 M
        return grads["conv1.weight"].copy(), grads["projection.0.weight"].copy()

    return call, arrays


def _bert_batch(seed):
    ids = _rng(seed).integers(1, 50, (2, 5)).astype(np.int32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
    return ids, mask, np.zeros((2, 5), np.int32)


def bert_forward():
    encoder = tiny.bert(seed=2).eval()
    ids, mask, types = _bert_batch(12)
    arrays = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
        "features_out": np.zeros((2, 8), np.float32),
        "embeddings_out": np.zeros((2, 4), np.float32),
    }
    return (
        lambda a: encoder.forward(
            a["input_ids"],
            a["attention_mask"],
            a["token_type_ids"],
            features_out=a["features_out"],
            embeddings_out=a["embeddings_out"],
        ),
        arrays,
    )


def bert_backward():
    encoder = tiny.bert(seed=3).train()
    encoder.forward(*_bert_batch(13)[:2])

    def call(a):
        encoder.zero_grad()
        encoder.backward(a["d_embeddings"])
        return (encoder.flat_gradients.copy(),)

    return call, {"d_embeddings": _f32(2, 4, seed=14)}


def image_augment():
    augment = convirt.ImageAugment(8, seed=1)
    arrays = {
        "images": _rng(15).integers(0, 256, (2, 12, 10), dtype=np.uint8),
        "out": np.zeros((2, 8, 8), np.float32),
    }
    return lambda a: augment(a["images"], 3, out=a["out"]), arrays


def image_augment_apply():
    augment = convirt.ImageAugment(8, seed=1)
    params = augment.sample_parameters(2, 5)
    arrays = {
        "images": _rng(16).integers(0, 256, (2, 12, 10), dtype=np.uint8),
        "out": np.zeros((2, 8, 8), np.float32),
    }
    return lambda a: augment.apply(a["images"], params, out=a["out"]), arrays


def adam():
    arrays = {"parameters[0]": _f32(10, seed=17), "gradients[0]": _f32(10, seed=18)}

    def call(a):
        optimizer = convirt.Adam([a["parameters[0]"]], [a["gradients[0]"]], lr=0.1)
        optimizer.step()
        return a["parameters[0]"].copy(), optimizer.exp_avg.copy()

    return call, arrays


def adam_load_state_dict():
    optimizer = convirt.Adam([_f32(10, seed=19)], [_f32(10, seed=20)])
    optimizer.step()
    state = optimizer.state_dict()
    arrays = {
        "state_dict['exp_avg']": state["exp_avg"].copy(),
        "state_dict['exp_avg_sq']": state["exp_avg_sq"].copy(),
    }

    def call(a):
        optimizer.load_state_dict(
            dict(
                state,
                exp_avg=a["state_dict['exp_avg']"],
                exp_avg_sq=a["state_dict['exp_avg_sq']"],
            )
        )
        return optimizer.exp_avg.copy(), optimizer.exp_avg_sq.copy()

    return call, arrays


def linear_head_forward():
    head = _core.LinearHead(5, 3, seed=1)
    arrays = {"x": _f32(4, 5, seed=21), "out": np.zeros((4, 3), np.float32)}
    return lambda a: head.forward(a["x"], out=a["out"]), arrays


def linear_head_backward():
    head = _core.LinearHead(5, 3, seed=1)
    arrays = {
        "d_logits": _f32(4, 3, seed=22),
        "x": _f32(4, 5, seed=23),
        "d_x": np.zeros((4, 5), np.float32),
    }

    def call(a):
        head.zero_grad()
        d_x = head.backward(a["d_logits"], a["x"], d_x=a["d_x"])
        return d_x, head.flat_gradients.copy()

    return call, arrays


BOTH = (0, 1)  # both axes of a 2-D argument are set by another one

ENTRY_POINTS = [
    Entry(
        "ContrastiveLoss",
        contrastive_loss,
        (
            Slot("v", IN, F32, (2, 2), finite=True),
            Slot("u", IN, F32, (2, 2), finite=True, tied=BOTH),
            Slot("grad_v", OUT, F32, (2, 2), tied=BOTH),
            Slot("grad_u", OUT, F32, (2, 2), tied=BOTH),
        ),
    ),
    Entry(
        "ContrastiveLoss.nt_xent",
        nt_xent,
        (
            Slot("z", IN, F32, (2, 2), finite=True),
            Slot("grad", OUT, F32, (2, 2), tied=BOTH),
        ),
    ),
    Entry(
        "softmax_cross_entropy",
        softmax_cross_entropy,
        (
            Slot("logits", IN, F32, (2, 2), finite=True),
            Slot("labels", IN, I32, (1, 1), tied=(0,)),
            Slot("grad", OUT, F32, (2, 2), tied=BOTH),
        ),
    ),
    Entry(
        "binary_cross_entropy",
        binary_cross_entropy,
        (
            Slot("logits", IN, F32, (2, 2), finite=True),
            Slot("targets", IN, F32, (2, 2), tied=BOTH),
            Slot("grad", OUT, F32, (2, 2), tied=BOTH),
            Slot("pos_weight", IN, F32, (1, 1), tied=(0,)),
        ),
    ),
    Entry(
        "Encoder(resnet).forward",
        resnet_forward,
        (
            Slot("images", IN, "float32 or uint8", (3, 4), finite=True),
            Slot("features_out", OUT, F32, (2, 2), contiguous=True, tied=BOTH),
            Slot("embeddings_out", OUT, F32, (2, 2), contiguous=True, tied=BOTH),
        ),
    ),
    Entry(
        "Encoder(resnet).backward",
        resnet_backward,
        (
            Slot("d_embeddings", IN, F32, (2, 2), contiguous=True, finite=True, tied=BOTH),
            Slot("d_features", IN, F32, (2, 2), contiguous=True, finite=True, tied=BOTH),
        ),
    ),
    Entry(
        "Encoder(bert).forward",
        bert_forward,
        (
            Slot("input_ids", IN, I32, (2, 2)),
            Slot("attention_mask", IN, I32, (2, 2), tied=BOTH),
            Slot("token_type_ids", IN, I32, (2, 2), tied=BOTH),
            Slot("features_out", OUT, F32, (2, 2), contiguous=True, tied=BOTH),
            Slot("embeddings_out", OUT, F32, (2, 2), contiguous=True, tied=BOTH),
        ),
    ),
    Entry(
        "Encoder(bert).backward",
        bert_backward,
        (Slot("d_embeddings", IN, F32, (2, 2), contiguous=True, finite=True, tied=BOTH),),
    ),
    Entry(
        "ImageAugment",
        image_augment,
        (
            Slot("images", IN, U8, (3, 4), list_form=True),
            Slot("out", OUT, F32, (3, 3), contiguous=True, tied=(0, 1, 2)),
        ),
    ),
    Entry(
        "ImageAugment.apply",
        image_augment_apply,
        (
            Slot("images", IN, U8, (3, 4), list_form=True),
            Slot("out", OUT, F32, (3, 3), contiguous=True, tied=(0, 1, 2)),
        ),
    ),
    Entry(
        "Adam",
        adam,
        (
            Slot("parameters[0]", INOUT, F32, (1, 1), contiguous=True),
            Slot("gradients[0]", IN, F32, (1, 1), contiguous=True, finite=True, tied=(0,)),
        ),
    ),
    Entry(
        "Adam.load_state_dict",
        adam_load_state_dict,
        (
            Slot(
                "state_dict['exp_avg']",
                IN,
                F32,
                (1, 1),
                finite=True,
                tied=(0,),
                copied=True,
            ),
            Slot(
                "state_dict['exp_avg_sq']",
                IN,
                F32,
                (1, 1),
                finite=True,
                tied=(0,),
                copied=True,
            ),
        ),
    ),
    # The head does not scan x for NaN: the loss after it refuses non-finite logits.
    Entry(
        "LinearHead.forward",
        linear_head_forward,
        (
            Slot("x", IN, F32, (2, 2), contiguous=True, tied=(1,)),
            Slot("out", OUT, F32, (2, 2), contiguous=True, tied=BOTH),
        ),
    ),
    Entry(
        "LinearHead.backward",
        linear_head_backward,
        (
            Slot("d_logits", IN, F32, (2, 2), contiguous=True, finite=True, tied=BOTH),
            Slot("x", IN, F32, (2, 2), contiguous=True, tied=(1,)),
            Slot("d_x", OUT, F32, (2, 2), contiguous=True, tied=BOTH),
        ),
    ),
]

# Where an entry point breaks a rule today: (entry, slot, rule) -> why. Each is a strict
# xfail, so the case fails as soon as the entry point is fixed and the line must go.
KNOWN_DEPARTURES = {}


# ---- helpers -----------------------------------------------------------------------------


def named(name):
    """A pattern for the argument's name in a message; the binding may add a description
    in parentheses ("labels (class indices, ...)", "images (N, H, W) or (N, H, W, C)")."""
    return re.escape(name) + r"(?: \([^;]*?\))?"


def copy_into(buffer, array):
    """array's values in a view of buffer's bytes with array's dtype and shape."""
    view = buffer[: array.nbytes].view(array.dtype).reshape(array.shape)
    view[...] = array
    return view


def aligned_bytes(nbytes):
    return np.zeros((nbytes + 15) // 8, np.float64).view(np.uint8)


def refused(call, arrays, error, match):
    """call(arrays) raises error (matching match), writes nothing into the outputs and
    keeps no reference to any argument."""
    before = {k: v.copy() for k, v in arrays.items()}
    refs = {k: sys.getrefcount(v) for k, v in arrays.items()}
    with pytest.raises(error, match=match):
        call(arrays)
    assert {k: sys.getrefcount(v) for k, v in arrays.items()} == refs
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"the refused call wrote {k}")


def assert_same_result(got, expected, exact=True):
    """The same values; a strided read may take another BLIS path, so only float32
    rounding apart when not exact."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if exact:
            np.testing.assert_array_equal(g, e)
        else:
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)


def results(call, arrays):
    """What call returns, copied (outputs are reused by the next call)."""
    return tuple(np.array(x, copy=True) for x in call(arrays))


# ---- the rules -----------------------------------------------------------------------------
# Each rule: (applies(slot), check(entry, slot)). The cases are every (entry point, slot,
# rule) where the rule applies.

WRONG_DTYPES = {
    "float32": ["float64", "float16", "int32"],
    "int32": ["int64", "float32"],
    "uint8": ["float32", "uint16"],
    "float32 or uint8": ["float64", "int16"],
}


def wrong_dtype(entry, slot):
    call, arrays = entry.setup()
    for dtype in WRONG_DTYPES[slot.dtype]:
        bad = dict(arrays, **{slot.name: arrays[slot.name].astype(dtype)})
        refused(
            call,
            bad,
            TypeError,
            rf"^{named(slot.name)} must have dtype {slot.dtype} \(native byte order\), "
            rf"got {dtype}",
        )


def byte_swapped(entry, slot):
    call, arrays = entry.setup()
    array = arrays[slot.name]
    swapped = array.astype(array.dtype.newbyteorder())
    bad = dict(arrays, **{slot.name: swapped})
    refused(
        call, bad, TypeError, rf"^{named(slot.name)} must have dtype .*native byte order"
    )


def not_an_array(entry, slot):
    call, arrays = entry.setup()
    array = arrays[slot.name]
    with pytest.raises(
        TypeError, match=rf"^{named(slot.name)} must be a NumPy array.*list"
    ):
        call(dict(arrays, **{slot.name: array.tolist()}))


def _ndim_message(slot, got):
    low, high = slot.ndim
    want = f"{low}" if low == high else f"{low} to {high}"
    return rf"^{named(slot.name)} must have {want} dimensions, got {got}$"


def too_many_dimensions(entry, slot):
    call, arrays = entry.setup()
    array = arrays[slot.name]
    extra = slot.ndim[1] + 1 - array.ndim
    bad = array.reshape((1,) * extra + array.shape)
    refused(
        call, dict(arrays, **{slot.name: bad}), ValueError, _ndim_message(slot, bad.ndim)
    )


def too_few_dimensions(entry, slot):
    call, arrays = entry.setup()
    array = arrays[slot.name]
    bad = array[(0,) * (array.ndim - slot.ndim[0] + 1) + (Ellipsis,)]  # 0-d is an array
    refused(
        call, dict(arrays, **{slot.name: bad}), ValueError, _ndim_message(slot, bad.ndim)
    )


def wrong_shape(entry, slot):
    call, arrays = entry.setup()
    array = arrays[slot.name]
    # the message shows "*" for a size that is free ("must have shape (*, 5)")
    want = tuple(n if axis in slot.tied else "*" for axis, n in enumerate(array.shape))
    shape = re.escape(str(want).replace("'", ""))
    for axis in slot.tied:
        bad = np.ascontiguousarray(np.delete(array, 0, axis=axis))
        refused(
            call,
            dict(arrays, **{slot.name: bad}),
            ValueError,
            rf"^{named(slot.name)} must have shape {shape}, got "
            rf"{re.escape(str(bad.shape))}",
        )


def misaligned(entry, slot):
    call, arrays = entry.setup()
    array = arrays[slot.name]
    raw = aligned_bytes(array.nbytes + 1)
    bad = copy_into(raw[1:], array)
    assert not bad.flags.aligned
    refused(
        call,
        dict(arrays, **{slot.name: bad}),
        ValueError,
        rf"^{named(slot.name)} is not aligned",
    )


def read_only_output(entry, slot):
    call, arrays = entry.setup()
    bad = arrays[slot.name].copy()
    bad.flags.writeable = False
    refused(
        call,
        dict(arrays, **{slot.name: bad}),
        ValueError,
        rf"^{named(slot.name)} is read-only",
    )


def read_only_input(entry, slot):
    call, arrays = entry.setup()
    expected = results(call, {k: v.copy() for k, v in arrays.items()})
    call, arrays = entry.setup()
    frozen = arrays[slot.name].copy()
    frozen.flags.writeable = False
    assert_same_result(results(call, dict(arrays, **{slot.name: frozen})), expected)


def broadcast(entry, slot):
    """A zero-stride view over a real row (writeable, so that the stride is what is
    checked, not the flag) is refused; where the values are only copied in (a state
    dict), it is read as the values it shows."""
    call, arrays = entry.setup()
    array = arrays[slot.name]
    row = array[:1].copy()
    bad = as_strided(row, shape=array.shape, strides=(0,) + row.strides[1:])
    if slot.copied:
        expected = results(call, dict(arrays, **{slot.name: np.ascontiguousarray(bad)}))
        call, arrays = entry.setup()
        assert_same_result(results(call, dict(arrays, **{slot.name: bad})), expected)
        return
    message = (
        "must be C-contiguous"
        if slot.contiguous
        else r"has a zero stride on axis 0 \(a broadcast view\)"
    )
    refused(
        call,
        dict(arrays, **{slot.name: bad}),
        ValueError,
        rf"^{named(slot.name)} {message}",
    )


SENTINEL = {"f": -12345.5, "i": -12345, "u": 0xA5}


def _strided_views(array):
    """Views with array's values, each inside a larger buffer of sentinels: every other
    element on every axis, and negative strides on every axis (the view's first element
    is the buffer's last, with as many sentinels again before and after it). Returns
    {layout: (view, buffer, mask of the view's elements in buffer)}."""
    fill = SENTINEL[array.dtype.kind]
    views = {}
    big = np.full(tuple(2 * s for s in array.shape), fill, array.dtype)
    every = tuple(slice(None, None, 2) for _ in array.shape)
    big[every] = array
    inside = np.zeros(big.shape, bool)
    inside[every] = True
    views["every_other"] = (big[every], big, inside)
    guarded = np.full(3 * array.size, fill, array.dtype)
    middle = slice(array.size, 2 * array.size)
    reverse = tuple(slice(None, None, -1) for _ in array.shape)
    guarded[middle].reshape(array.shape)[reverse] = array
    inside = np.zeros(guarded.shape, bool)
    inside[middle] = True
    views["reversed"] = (guarded[middle].reshape(array.shape)[reverse], guarded, inside)
    return views


def strided_is_read_in_place(entry, slot):
    """A strided view (positive or negative strides) is read, or written, in place: the
    result of a contiguous copy, and nothing outside the view's elements is touched."""
    call, arrays = entry.setup()
    expected = results(call, {k: v.copy() for k, v in arrays.items()})
    for layout, (view, buffer, inside) in _strided_views(arrays[slot.name]).items():
        call, arrays = entry.setup()
        assert not view.flags.c_contiguous
        got = results(call, dict(arrays, **{slot.name: view}))
        outside = buffer[~inside]
        assert (outside == SENTINEL[buffer.dtype.kind]).all(), (
            f"{layout}: {np.count_nonzero(outside != outside[0])} elements outside the view"
        )
        assert_same_result(got, expected, exact=False)


def strided_is_refused(entry, slot):
    for view, _, _ in _strided_views(entry.setup()[1][slot.name]).values():
        call, arrays = entry.setup()
        refused(
            call,
            dict(arrays, **{slot.name: view}),
            ValueError,
            rf"^{named(slot.name)} must be C-contiguous",
        )


def _non_finite(value):
    def check(entry, slot):
        call, arrays = entry.setup()
        bad = arrays[slot.name].copy()
        bad.reshape(-1)[bad.size // 2] = value
        refused(
            call,
            dict(arrays, **{slot.name: bad}),
            convirt.NonFiniteError,
            "(?i)nan" if np.isnan(value) else "(?i)inf",
        )

    return check


def _overlap_pairs(entry, slot):
    """The slots an output slot may not overlap: every input, and the other outputs."""
    return [other for other in entry.slots if other.name != slot.name]


def output_overlaps(entry, slot):
    """An output that shares memory with an input or another output (the same bytes, seen
    through each argument's own dtype and shape) is refused, naming both."""
    for other in _overlap_pairs(entry, slot):
        call, arrays = entry.setup()
        mine, theirs = arrays[slot.name], arrays[other.name]
        raw = aligned_bytes(max(mine.nbytes, theirs.nbytes))
        overlapping = dict(arrays)
        overlapping[slot.name] = copy_into(raw, mine)
        overlapping[other.name] = copy_into(raw, theirs)  # last: the input's values hold
        # Either may be named first ("grad_v overlaps grad_u", "grad_u overlaps grad_v");
        # the encoders call each of their inputs "the input".
        theirs = (
            named(other.name) if _is_output(other) else f"({named(other.name)}|the input)"
        )
        pattern = (
            rf"^({named(slot.name)} overlaps {theirs}|"
            rf"{named(other.name)} overlaps {named(slot.name)}) in memory"
        )
        with pytest.raises(ValueError, match=pattern):
            call(overlapping)


def _is_input(slot):
    return slot.role in (IN, INOUT)


def _is_output(slot):
    return slot.role in (OUT, INOUT)


RULES = {
    "wrong_dtype": (lambda s: True, wrong_dtype),
    "byte_swapped": (lambda s: s.dtype != U8, byte_swapped),
    "not_an_array": (lambda s: not s.list_form, not_an_array),
    "too_many_dimensions": (lambda s: True, too_many_dimensions),
    "too_few_dimensions": (lambda s: True, too_few_dimensions),
    "wrong_shape": (lambda s: s.tied, wrong_shape),
    "misaligned": (lambda s: s.dtype != U8, misaligned),
    "read_only_output": (_is_output, read_only_output),
    "read_only_input": (lambda s: s.role == IN, read_only_input),
    "broadcast": (lambda s: True, broadcast),
    "strided_is_read_in_place": (lambda s: not s.contiguous, strided_is_read_in_place),
    "strided_is_refused": (lambda s: s.contiguous, strided_is_refused),
    "nan": (lambda s: s.finite, _non_finite(np.nan)),
    "inf": (lambda s: s.finite, _non_finite(np.inf)),
    "output_overlaps": (_is_output, output_overlaps),
}


def _cases():
    for entry in ENTRY_POINTS:
        for slot in entry.slots:
            for rule, (applies, _) in RULES.items():
                if not applies(slot):
                    continue
                marks = ()
                why = KNOWN_DEPARTURES.get((entry.name, slot.name, rule))
                if why:
                    marks = (pytest.mark.xfail(reason=why, strict=True),)
                yield pytest.param(
                    entry, slot, rule, id=f"{entry.name}-{slot.name}-{rule}", marks=marks
                )


@pytest.mark.parametrize("entry, slot, rule", list(_cases()))
def test_array_rule(entry, slot, rule):
    RULES[rule][1](entry, slot)


def test_every_valid_call_in_the_table_works():
    """The table's own arrays are accepted (else every rule would pass for the wrong
    reason), and the known departures name real cases."""
    for entry in ENTRY_POINTS:
        call, arrays = entry.setup()
        assert set(arrays) == {s.name for s in entry.slots}, entry.name
        call(arrays)
    names = {
        (e.name, s.name, r)
        for e in ENTRY_POINTS
        for s in e.slots
        for r in RULES
        if RULES[r][0](s)
    }
    assert set(KNOWN_DEPARTURES) <= names
