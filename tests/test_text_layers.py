"""The text tower's single layers (csrc/embedding.c, layernorm.c, attention.c, gelu.c
and the pooling in bert.c) against NumPy / PyTorch references, their naive C versions,
and finite differences."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convirt
from convirt import _testing as tl

rng = np.random.default_rng(1234)


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def directional_fd(loss, x, direction, h):
    """Central difference of loss along direction at x (all float64 sums)."""
    return (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)


@pytest.fixture
def threads():
    saved = convirt.get_num_threads()
    yield
    convirt.set_num_threads(saved)


# ---- LayerNorm ---------------------------------------------------------------------


def test_layernorm_forward_matches_torch_and_reference():
    x = f32(37, 48, scale=3.0) + 5.0  # a large mean tests the two-pass variance
    gamma, beta = f32(48), f32(48)
    out, xhat, rstd = tl.layernorm_forward(x, gamma, beta, 1e-5)
    ref = F.layer_norm(
        torch.tensor(x, dtype=torch.float64),
        (48,),
        torch.tensor(gamma, dtype=torch.float64),
        torch.tensor(beta, dtype=torch.float64),
        1e-5,
    ).numpy()
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
    naive = tl.layernorm_forward(x, gamma, beta, 1e-5, reference=True)
    for fast, slow in zip((out, xhat, rstd), naive):
        np.testing.assert_allclose(fast, slow, atol=2e-5, rtol=1e-5)
    var = x.astype(np.float64).var(axis=1)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(var + 1e-5), rtol=1e-5)


def test_layernorm_backward_matches_autograd_and_reference():
    x, gamma, beta, dout = f32(29, 40), f32(40), f32(40), f32(29, 40)
    _, xhat, rstd = tl.layernorm_forward(x, gamma, beta, 1e-12)
    dx, dgamma, dbeta = tl.layernorm_backward(dout, xhat, rstd, gamma)
    tx, tg, tb = (
        torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, gamma, beta)
    )
    F.layer_norm(tx, (40,), tg, tb, 1e-12).backward(torch.tensor(dout, dtype=torch.float64))
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dgamma, tg.grad.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dbeta, tb.grad.numpy(), atol=1e-4, rtol=1e-4)
    naive = tl.layernorm_backward(dout, xhat, rstd, gamma, reference=True)
    for fast, slow in zip((dx, dgamma, dbeta), naive):
        np.testing.assert_allclose(fast, slow, atol=1e-4, rtol=1e-4)


def test_layernorm_backward_finite_differences():
    x, gamma, beta, r = f32(6, 24), f32(24), f32(24), f32(6, 24)
    _, xhat, rstd = tl.layernorm_forward(x, gamma, beta, 1e-6)
    dx, dgamma, dbeta = tl.layernorm_backward(r, xhat, rstd, gamma)

    def loss_x(v):
        return float(
            np.sum(
                tl.layernorm_forward(v.astype(np.float32), gamma, beta, 1e-6)[0].astype(
                    np.float64
                )
                * r
            )
        )

    def loss_g(v):
        return float(
            np.sum(
                tl.layernorm_forward(x, v.astype(np.float32), beta, 1e-6)[0].astype(
                    np.float64
                )
                * r
            )
        )

    def loss_b(v):
        return float(
            np.sum(
                tl.layernorm_forward(x, gamma, v.astype(np.float32), 1e-6)[0].astype(
                    np.float64
                )
                * r
            )
        )

    for loss, point, grad in (
        (loss_x, x, dx),
        (loss_g, gamma, dgamma),
        (loss_b, beta, dbeta),
    ):
        v = rng.standard_normal(point.shape)
        fd = directional_fd(loss, point.astype(np.float64), v, 1e-2)
        assert fd == pytest.approx(float(np.sum(grad * v)), rel=2e-3, abs=2e-3)


def test_layernorm_threads_do_not_change_results(threads):
    x, gamma, beta, dout = f32(300, 200), f32(200), f32(200), f32(300, 200)
    results = []
    for n in (1, 2):
        convirt.set_num_threads(n)
        out, xhat, rstd = tl.layernorm_forward(x, gamma, beta, 1e-12)
        results.append((out, *tl.layernorm_backward(dout, xhat, rstd, gamma)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_layernorm_bad_shapes():
    with pytest.raises(ValueError, match="gamma must have shape"):
        tl.layernorm_forward(f32(3, 4), f32(5), f32(4))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        tl.layernorm_forward(np.zeros((3, 4)), f32(4), f32(4))


# ---- GELU ----------------------------------------------------------------------------


def test_erf_accuracy():
    x = np.linspace(-7, 7, 20001).astype(np.float32)
    ref = np.array([math.erf(float(v)) for v in x])
    assert np.max(np.abs(tl.erf(x) - ref)) < 5e-7


def test_gelu_forward_backward_match_torch():
    x = f32(5000, scale=3.0)
    dout = f32(5000)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = F.gelu(tx)  # exact (erf) GELU
    y.backward(torch.tensor(dout, dtype=torch.float64))
    np.testing.assert_allclose(tl.gelu_forward(x), y.detach().numpy(), atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(
        tl.gelu_backward(dout, x), tx.grad.numpy(), atol=2e-6, rtol=1e-5
    )


def test_gelu_backward_finite_differences():
    x, r = f32(200, scale=2.0), f32(200)
    grad = tl.gelu_backward(r, x)

    def loss(v):
        return float(np.sum(tl.gelu_forward(v.astype(np.float32)).astype(np.float64) * r))

    v = rng.standard_normal(200)
    fd = directional_fd(loss, x.astype(np.float64), v, 1e-2)
    assert fd == pytest.approx(float(np.sum(grad * v)), rel=2e-3, abs=2e-3)


# ---- attention ------------------------------------------------------------------------


def torch_attention(qkv, lengths, heads):
    """Per-sequence softmax(q k^T / sqrt(d)) v, float64, with autograd."""
    width = qkv.shape[1] // 3
    d = width // heads
    outs, start = [], 0
    for n in lengths:
        rows = qkv[start : start + n]
        q, k, v = (
            rows[:, i * width : (i + 1) * width].reshape(n, heads, d).transpose(0, 1)
            for i in range(3)
        )
        p = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append((p @ v).transpose(0, 1).reshape(n, width))
        start += n
    return torch.cat(outs)


# Head widths the small-GEMM kernel takes (16, 32: its 12 x 32 block, 64) beside ones it
# leaves to BLIS (5; 8 with AVX-512), and lengths on and off its 16-column blocks (the
# scores padded to 16 columns) and its 12- and 6-row blocks (the rows left over).
@pytest.mark.parametrize(
    "lengths,heads,head_dim",
    [
        ([5, 1, 9, 3], 2, 8),
        ([17, 4], 3, 5),
        ([32, 7, 45], 2, 16),
        ([128, 1, 37], 2, 32),
        ([64, 13], 1, 64),
    ],
)
def test_attention_forward_backward(lengths, heads, head_dim):
    m, width = sum(lengths), heads * head_dim
    qkv, dctx = f32(m, 3 * width), f32(m, width)
    ctx, probs = tl.attention_forward(qkv, lengths, heads)
    ctx_ref, probs_ref = tl.attention_forward(qkv, lengths, heads, reference=True)
    np.testing.assert_allclose(ctx, ctx_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(probs, probs_ref, atol=1e-6, rtol=1e-5)
    t = torch.tensor(qkv, dtype=torch.float64, requires_grad=True)
    out = torch_attention(t, lengths, heads)
    out.backward(torch.tensor(dctx, dtype=torch.float64))
    np.testing.assert_allclose(ctx, out.detach().numpy(), atol=1e-5, rtol=1e-5)
    dqkv = tl.attention_backward(dctx, probs, qkv, lengths, heads)
    np.testing.assert_allclose(dqkv, t.grad.numpy(), atol=1e-5, rtol=1e-4)
    naive = tl.attention_backward(dctx, probs, qkv, lengths, heads, reference=True)
    np.testing.assert_allclose(dqkv, naive, atol=1e-5, rtol=1e-4)


def test_attention_probabilities_are_softmax_rows():
    lengths = [4, 7]
    _, probs = tl.attention_forward(f32(11, 3 * 12, scale=4.0), lengths, 3)
    start = 0
    for n in lengths:
        block = probs[start : start + 3 * n * n].reshape(3, n, n)
        np.testing.assert_allclose(block.sum(-1), 1.0, rtol=1e-6)
        assert np.all(block >= 0)
        start += 3 * n * n
    assert start == probs.size


@pytest.mark.parametrize("nan", [np.nan, -np.nan])
def test_attention_softmax_extremes_underflow_to_zero_and_nan_spreads(nan):
    # Rows of 40 and 33 keys run the softmax's two-vector body, its one-vector step and
    # its scalar tail. Scores spread over +-1000 put most exponents below -87.3 (exactly
    # 0) and the reference agrees; a NaN key (either sign: the masks read x's bits)
    # makes every row of its sequence and head NaN, never 0, and leaves the other
    # sequence finite.
    lengths, heads = [40, 33], 2
    qkv = f32(73, 3 * 16, scale=40.0)
    ctx, probs = tl.attention_forward(qkv, lengths, heads)
    ctx_ref, probs_ref = tl.attention_forward(qkv, lengths, heads, reference=True)
    # the scores' float32 rounding (|s| ~ 1e3: ~1e-4) comes out of exp as a relative
    # error of the same size, whatever the summation order of either side
    np.testing.assert_allclose(probs, probs_ref, atol=1e-6, rtol=2e-3)
    np.testing.assert_allclose(ctx, ctx_ref, atol=1e-3, rtol=2e-3)
    assert (probs == 0).mean() > 0.5 and np.isfinite(ctx).all()
    qkv[45, 16] = nan  # sequence 1's key 5, head 0
    ctx, probs = tl.attention_forward(qkv, lengths, heads)
    first = heads * 40 * 40
    seq1 = probs[first:].reshape(heads, 33, 33)
    assert np.isnan(seq1[0]).all() and np.isfinite(seq1[1]).all()
    assert np.isfinite(probs[:first]).all() and np.isfinite(ctx[:40]).all()
    assert np.isnan(ctx[40:, :8]).all()


def test_attention_backward_finite_differences():
    lengths, heads = [3, 5], 2
    qkv, r = f32(8, 3 * 8), f32(8, 8)
    _, probs = tl.attention_forward(qkv, lengths, heads)
    grad = tl.attention_backward(r, probs, qkv, lengths, heads)

    def loss(v):
        c, _ = tl.attention_forward(v.astype(np.float32), lengths, heads)
        return float(np.sum(c.astype(np.float64) * r))

    for _ in range(3):
        v = rng.standard_normal(qkv.shape)
        fd = directional_fd(loss, qkv.astype(np.float64), v, 1e-2)
        assert fd == pytest.approx(float(np.sum(grad * v)), rel=2e-3, abs=2e-3)


def test_attention_sequences_are_independent():
    """A sequence's output does not depend on the other sequences in the pack."""
    qkv = f32(12, 3 * 16)
    both, _ = tl.attention_forward(qkv, [5, 7], 4)
    alone, _ = tl.attention_forward(np.ascontiguousarray(qkv[5:]), [7], 4)
    np.testing.assert_array_equal(both[5:], alone)


@pytest.mark.parametrize("head_dim", [8, 32])
def test_attention_threads_do_not_change_results(threads, head_dim):
    lengths, heads = [30, 2, 17, 25, 9], 4
    width = heads * head_dim
    qkv, dctx = f32(sum(lengths), 3 * width), f32(sum(lengths), width)
    results = []
    for n in (1, 2):
        convirt.set_num_threads(n)
        ctx, probs = tl.attention_forward(qkv, lengths, heads)
        results.append(
            (ctx, probs, tl.attention_backward(dctx, probs, qkv, lengths, heads))
        )
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_attention_bad_inputs():
    with pytest.raises(ValueError, match="lengths sum to 5 but qkv has 6 rows"):
        tl.attention_forward(f32(6, 12), [2, 3], 2)
    with pytest.raises(ValueError, match="not 3 \\* heads \\* head_dim"):
        tl.attention_forward(f32(6, 10), [6], 2)
    with pytest.raises(ValueError, match="every sequence needs a row"):
        tl.attention_forward(f32(6, 12), [6, 0], 2)


# ---- embeddings -------------------------------------------------------------------------


def test_embedding_forward_backward():
    vocab, positions, types, dim, m = 50, 20, 3, 70, 40  # dim > 64: several column blocks
    word, pos, typ = f32(vocab, dim), f32(positions, dim), f32(types, dim)
    ids = rng.integers(0, vocab, m).astype(np.int32)
    ids[:5] = 7  # repeated ids accumulate
    position = rng.integers(0, positions, m).astype(np.int32)
    type_ids = rng.integers(0, types, m).astype(np.int32)
    out = tl.embedding_forward(ids, position, type_ids, word, pos, typ)
    np.testing.assert_array_equal(out, (word[ids] + typ[type_ids]) + pos[position])
    dout = f32(m, dim)
    dword, dpos, dtype = tl.embedding_backward(
        dout, ids, position, type_ids, vocab, positions, types
    )
    for grad, index, size in (
        (dword, ids, vocab),
        (dpos, position, positions),
        (dtype, type_ids, types),
    ):
        ref = np.zeros((size, dim))
        np.add.at(ref, index, dout.astype(np.float64))
        np.testing.assert_allclose(grad, ref, atol=1e-5)


def test_embedding_backward_finite_differences():
    word, pos, typ = f32(10, 8), f32(6, 8), f32(2, 8)
    ids = np.array([1, 3, 3, 9], np.int32)
    position = np.array([0, 1, 2, 5], np.int32)
    types = np.array([0, 1, 1, 0], np.int32)
    r = f32(4, 8)
    dword, _, _ = tl.embedding_backward(r, ids, position, types, 10, 6, 2)

    def loss(w):
        out = tl.embedding_forward(ids, position, types, w.astype(np.float32), pos, typ)
        return float(np.sum(out.astype(np.float64) * r))

    v = rng.standard_normal(word.shape)
    fd = directional_fd(loss, word.astype(np.float64), v, 1e-2)
    assert fd == pytest.approx(float(np.sum(dword * v)), rel=1e-3, abs=1e-3)


def test_embedding_rejects_out_of_table_ids():
    with pytest.raises(ValueError, match="outside the tables"):
        tl.embedding_forward(
            np.array([10], np.int32),
            np.array([0], np.int32),
            np.array([0], np.int32),
            f32(10, 4),
            f32(3, 4),
            f32(2, 4),
        )


# ---- pooling ------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["max", "mean", "cls"])
def test_pool_forward_backward(pooling):
    lengths = [4, 1, 6]
    hidden, dout = f32(11, 9), f32(3, 9)
    out, argmax = tl.bert_pool_forward(hidden, lengths, pooling)
    t = torch.tensor(hidden, dtype=torch.float64, requires_grad=True)
    pieces, start = [], 0
    for n in lengths:
        block = t[start : start + n]
        pieces.append(
            {
                "max": lambda b: b.max(0).values,
                "mean": lambda b: b.mean(0),
                "cls": lambda b: b[0],
            }[pooling](block)
        )
        start += n
    ref = torch.stack(pieces)
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-6, atol=1e-7)
    dh = tl.bert_pool_backward(dout, argmax, lengths, pooling)
    np.testing.assert_allclose(dh, t.grad.numpy(), rtol=1e-6, atol=1e-7)

    def loss(v):
        return float(
            np.sum(
                tl.bert_pool_forward(v.astype(np.float32), lengths, pooling)[0].astype(
                    np.float64
                )
                * dout
            )
        )

    v = rng.standard_normal(hidden.shape)
    fd = directional_fd(loss, hidden.astype(np.float64), v, 1e-3)
    assert fd == pytest.approx(float(np.sum(dh * v)), rel=1e-3, abs=1e-3)


def test_pool_bad_inputs():
    with pytest.raises(ValueError, match="pooling must be"):
        tl.bert_pool_forward(f32(3, 2), [3], "sum")
    with pytest.raises(ValueError, match="lengths do not sum"):
        tl.bert_pool_forward(f32(3, 2), [2], "max")
