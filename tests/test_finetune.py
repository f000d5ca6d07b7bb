"""Fine-tuning (convirt.eval.finetune) and its classifier (convirt._core.LinearHead): the
head against torch.nn.functional, one training step of encoder + head + loss against
PyTorch autograd and torch.optim.Adam on the same weights, learning on an easy task,
label fractions, early stopping, the encoder left untouched, the result table, and bad
input."""

import sys

import matplotlib
import numpy as np
import pytest

import convirt
from convirt import _core
from convirt import eval as ev

matplotlib.use("Agg")
torch = pytest.importorskip("torch")
F = torch.nn.functional

sys.path.insert(0, __import__("os").path.dirname(__file__))
import torch_resnet


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


# ---- LinearHead against torch.nn.functional ------------------------------------------------


def test_head_initialisation_is_pytorchs_default_and_seeded():
    head = _core.LinearHead(64, 5, seed=3)
    bound = 1 / np.sqrt(64)
    assert head.weight.shape == (5, 64) and head.bias.shape == (5,)
    assert np.abs(head.weight).max() <= bound and np.abs(head.bias).max() <= bound
    # Uniform on [-bound, bound]: the standard deviation is bound / sqrt(3).
    assert abs(head.weight.std() - bound / np.sqrt(3)) < 0.1 * bound
    np.testing.assert_array_equal(head.weight, _core.LinearHead(64, 5, seed=3).weight)
    assert not np.array_equal(head.weight, _core.LinearHead(64, 5, seed=4).weight)
    assert np.all(head.flat_gradients == 0)
    assert repr(head) == "LinearHead(in_dim=64, out_dim=5, seed=3)"


def test_head_views_share_the_flat_buffers_and_keep_the_head_alive():
    head = _core.LinearHead(6, 3)
    flat, weight, bias = head.flat_parameters, head.weight, head.bias
    assert flat.shape == (6 * 3 + 3,)
    assert np.shares_memory(flat, weight) and np.shares_memory(flat, bias)
    assert np.shares_memory(head.flat_gradients, head.weight_grad)
    assert np.shares_memory(head.flat_gradients, head.bias_grad)
    weight[...] = 1.0
    assert np.all(flat[:18] == 1.0)
    del head
    assert weight.base is not None and np.all(weight == 1.0)  # still valid memory


def test_head_forward_and_backward_match_torch():
    rng = np.random.default_rng(0)
    head = _core.LinearHead(7, 4, seed=1)
    x = rng.standard_normal((5, 7)).astype(np.float32)
    d_logits = rng.standard_normal((5, 4)).astype(np.float32)
    logits = head.forward(x)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(head.weight.copy(), requires_grad=True)
    tb = torch.tensor(head.bias.copy(), requires_grad=True)
    ref = F.linear(tx, tw, tb)
    ref.backward(torch.tensor(d_logits))
    np.testing.assert_allclose(logits, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    d_x = head.backward(d_logits, x)
    np.testing.assert_allclose(d_x, tx.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.weight_grad, tw.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.bias_grad, tb.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_head_backward_adds_parameter_gradients_and_writes_the_input_gradient():
    rng = np.random.default_rng(1)
    head = _core.LinearHead(3, 2)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    d = rng.standard_normal((4, 2)).astype(np.float32)
    d_x = np.full((4, 3), 7.0, np.float32)
    assert head.backward(d, x, d_x=d_x) is d_x
    once_w, once_b = head.weight_grad.copy(), head.bias_grad.copy()
    np.testing.assert_allclose(d_x, d @ head.weight, rtol=1e-6)  # written, not added
    assert head.backward(d, x, input_grad=False) is None
    np.testing.assert_allclose(head.weight_grad, 2 * once_w, rtol=1e-6)
    np.testing.assert_allclose(head.bias_grad, 2 * once_b, rtol=1e-6)
    head.zero_grad()
    assert np.all(head.flat_gradients == 0)


def test_head_forward_writes_into_out_and_leaves_inputs_alone():
    head = _core.LinearHead(3, 2)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    before = x.copy()
    out = np.empty((2, 2), np.float32)
    assert head.forward(x, out=out) is out
    np.testing.assert_array_equal(x, before)


def test_head_repeated_calls_do_not_leak():
    import tracemalloc

    head = _core.LinearHead(8, 3)
    x = np.ones((4, 8), np.float32)
    d = np.ones((4, 3), np.float32)
    out, d_x = np.empty((4, 3), np.float32), np.empty((4, 8), np.float32)
    for _ in range(20):
        head.forward(x, out=out)
        head.backward(d, x, d_x=d_x)
    tracemalloc.start()
    first = tracemalloc.get_traced_memory()[0]
    for _ in range(200):
        head.forward(x, out=out)
        head.backward(d, x, d_x=d_x)
        _ = head.weight
    assert tracemalloc.get_traced_memory()[0] - first < 10_000
    tracemalloc.stop()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"in_dim": 0, "out_dim": 2}, ValueError, "in_dim and out_dim must be in"),
        ({"in_dim": 3, "out_dim": -1}, ValueError, "in_dim and out_dim must be in"),
    ],
)
def test_head_bad_sizes(kwargs, error, match):
    with pytest.raises(error, match=match):
        _core.LinearHead(**kwargs)


def test_head_cannot_be_reinitialised():
    head = _core.LinearHead(3, 2)
    with pytest.raises(RuntimeError, match="cannot be re-initialised"):
        head.__init__(3, 2)


def test_head_forward_empty_input():
    # dtype, rank, shape, layout and out: test_array_rules.py
    with pytest.raises(ValueError, match="empty"):
        _core.LinearHead(3, 2).forward(np.ones((0, 3), np.float32))


def test_head_backward_bad_input():
    head = _core.LinearHead(3, 2)
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="d_logits"):
        head.backward(np.ones((5, 2), np.float32), x)
    bad = np.ones((4, 2), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"d_logits\[2, 1\] is nan"):
        head.backward(bad, x)
    assert np.all(head.flat_gradients == 0)  # nothing was added
    with pytest.raises(ValueError, match="overlap|share"):
        head.backward(np.ones((4, 2), np.float32), x, d_x=x)
    with pytest.raises(ValueError, match="input_grad=False"):
        head.backward(
            np.ones((4, 2), np.float32), x, d_x=np.empty_like(x), input_grad=False
        )


# ---- the head path: features -> head -> loss, against PyTorch autograd ---------------------


@pytest.mark.parametrize("multilabel", [False, True])
def test_head_path_loss_and_gradients_match_torch(multilabel):
    rng = np.random.default_rng(2)
    n, d, k = 6, 10, 4
    h = rng.standard_normal((n, d)).astype(np.float32)
    head = _core.LinearHead(d, k, seed=5)
    if multilabel:
        labels = rng.integers(0, 2, (n, k))
        classifier = ev._Classifier(ev._Task(labels, True, None), labels)
    else:
        labels = rng.integers(0, k, n)
        classifier = ev._Classifier(ev._Task(labels, False, None), labels)
    logits = head.forward(h)
    grad = np.empty_like(logits)
    loss = classifier(logits, np.arange(n), grad)
    d_h = head.backward(grad, h)

    th = torch.tensor(h, requires_grad=True)
    tw = torch.tensor(head.weight.copy(), requires_grad=True)
    tb = torch.tensor(head.bias.copy(), requires_grad=True)
    z = F.linear(th, tw, tb)
    if multilabel:
        ref = F.binary_cross_entropy_with_logits(
            z, torch.tensor(labels, dtype=torch.float32)
        )
    else:
        ref = F.cross_entropy(z, torch.tensor(labels))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    np.testing.assert_allclose(d_h, th.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(head.weight_grad, tw.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(head.bias_grad, tb.grad.numpy(), rtol=1e-4, atol=1e-7)


def torch_step(encoder, head, images, labels, multilabel):
    """The fine-tuning step in PyTorch on copies of the weights: ResNet (training-mode
    batch norm) -> linear head -> loss; returns (loss, params with .grad, head tensors)."""
    params = {
        k: torch.tensor(v, requires_grad=not k.endswith(("running_mean", "running_var")))
        for k, v in encoder.state_dict().items()
        if not k.startswith("projection.")
    }
    tw = torch.tensor(head.weight.copy(), requires_grad=True)
    tb = torch.tensor(head.bias.copy(), requires_grad=True)
    mean, std = encoder.normalization
    x = torch_resnet.normalise(images, mean, std)
    z = F.linear(torch_resnet.forward(params, x, 18, training=True), tw, tb)
    if multilabel:
        loss = F.binary_cross_entropy_with_logits(
            z, torch.tensor(labels, dtype=torch.float32)
        )
    else:
        loss = F.cross_entropy(z, torch.tensor(labels, dtype=torch.long))
    loss.backward()
    return loss.item(), params, tw, tb


def tiny_encoder(seed=0):
    """A ResNet-18 whose batch-norm biases keep values off the ReLU kinks (see
    torch_resnet.init_params), so float32 rounding does not flip gradients."""
    encoder = convirt.Encoder.resnet18(proj_dim=8, proj_hidden=8, seed=seed)
    params = torch_resnet.init_params(18, 1, seed=seed, bias_scale=0.5)
    state = {k: v.numpy() for k, v in params.items()}
    state.update(
        {k: v for k, v in encoder.state_dict().items() if k.startswith("projection.")}
    )
    encoder.load_state_dict(state)
    return encoder


def stored(name, array):
    """A PyTorch-layout array in the encoder's stored layout (KRSC for convolutions)."""
    return np.transpose(array, (0, 2, 3, 1)) if array.ndim == 4 else array


@pytest.mark.parametrize("multilabel", [False, True])
def test_train_step_gradients_match_torch(multilabel):
    rng = np.random.default_rng(3)
    encoder = tiny_encoder()
    images = rng.integers(0, 256, (6, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 2, (6, 3)) if multilabel else rng.integers(0, 3, 6)
    task = ev._Task(labels, multilabel, None)
    head = _core.LinearHead(encoder.feature_dim, 3, seed=1)
    loss = ev._train_step(encoder, head, images, ev._Classifier(task, labels), np.arange(6))
    ref_loss, params, tw, tb = torch_step(encoder, head, images, labels, multilabel)

    assert loss == pytest.approx(ref_loss, rel=1e-5)
    # Errors relative to each tensor's largest gradient: float32 features of two
    # implementations differ by rounding, which the weight gradients inherit.
    pairs = [(head.weight_grad, tw.grad.numpy()), (head.bias_grad, tb.grad.numpy())]
    grads = encoder.gradients()
    pairs += [
        (grads[name], stored(name, p.grad.numpy()))
        for name, p in params.items()
        if p.grad is not None
    ]
    worst = max(
        np.abs(ours - ref).max() / (np.abs(ref).max() + 1e-12) for ours, ref in pairs
    )
    assert worst < 1e-3, f"largest gradient error relative to its tensor's scale: {worst}"
    # The projection head is not on the path: no gradient reaches it.
    assert all(np.all(v == 0) for k, v in grads.items() if k.startswith("projection."))


# ---- finetune() -----------------------------------------------------------------------------


def halves(n, size=32, seed=0, multilabel=False):
    """An easy task: class 1 has its left half brighter, class 0 its right half (with
    noise); multi-label: column 0 = left half bright, column 1 = top half bright."""
    rng = np.random.default_rng(seed)
    images = rng.integers(60, 120, (n, size, size)).astype(np.uint8)
    if multilabel:
        labels = np.stack([np.arange(n) % 2, (np.arange(n) // 2) % 2], axis=1)
        labels = labels[rng.permutation(n)]
        for i, (left, top) in enumerate(labels):
            if left:
                images[i, :, : size // 2] += 100
            if top:
                images[i, : size // 2, :] += 80
        return images, labels
    labels = rng.permutation(np.arange(n) % 2)
    for i, c in enumerate(labels):
        if c:
            images[i, :, : size // 2] += 100
        else:
            images[i, :, size // 2 :] += 100
    return images, labels


def splits(n_train=32, n_val=16, n_test=24, **kwargs):
    images, labels = halves(n_train + n_val + n_test, **kwargs)
    a, b = n_train, n_train + n_val
    return (images[:a], labels[:a], images[a:b], labels[a:b], images[b:], labels[b:])


FAST = {"epochs": 3, "batch_size": 8, "lr": 1e-3, "progress": False}


def test_one_finetune_step_matches_torch_adam():
    # One epoch of one full batch: the kept model is the initial one after one Adam step.
    # At step 1 Adam moves each weight by lr * g / (|g| + eps): -lr * sign(g) wherever
    # |g| is well above eps and rounding noise, which is what is compared there.
    rng = np.random.default_rng(4)
    encoder = tiny_encoder(seed=1)
    images = rng.integers(0, 256, (8, 32, 32), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    lr = 1e-3
    result = ev.finetune(
        encoder,
        images,
        labels,
        images,
        labels,
        images,
        labels,
        fractions=(1.0,),
        seeds=(7,),
        epochs=1,
        batch_size=8,
        lr=lr,
        weight_decay=1e-4,
        keep_models=True,
        progress=False,
    )
    tuned, head = result.models[0][0]
    initial_head = _core.LinearHead(encoder.feature_dim, 3, seed=7)
    _, params, tw, _ = torch_step(encoder, initial_head, images, labels, False)
    before = encoder.parameters()
    after = tuned.parameters()
    checked = 0
    for name, p in params.items():
        if p.grad is None:  # running statistics: updated by the training forward
            np.testing.assert_allclose(
                after[name],
                stored(name, p.detach().numpy()),
                rtol=1e-4,
                atol=1e-6,
                err_msg=name,
            )
            continue
        g = stored(name, p.grad.numpy()) + 1e-4 * before[name]  # L2 decay as in torch
        clear = np.abs(g) > 1e-4
        step = after[name] - before[name]
        np.testing.assert_allclose(
            step[clear], -lr * np.sign(g[clear]), rtol=0, atol=1e-2 * lr, err_msg=name
        )
        assert np.all(np.abs(step) <= lr * 1.0001), name
        checked += clear.sum()
    assert checked > 100_000
    g_w = tw.grad.numpy() + 1e-4 * initial_head.weight
    clear = np.abs(g_w) > 1e-4
    np.testing.assert_allclose(
        (head.weight - initial_head.weight)[clear],
        -lr * np.sign(g_w[clear]),
        atol=1e-2 * lr,
    )
    # The projection head got no gradient and no decay: unchanged.
    for name in ("projection.0.weight", "projection.2.bias"):
        np.testing.assert_array_equal(after[name], before[name])


def test_finetune_beats_chance_on_an_easy_task():
    data = splits()
    result = ev.finetune(
        convirt.Encoder.resnet18(seed=0), *data, fractions=(1.0,), seeds=(0,), **FAST
    )
    assert result.task == "binary" and result.metric == "auc"
    assert result.scores[0, 0] > 0.9, result


def test_finetune_multilabel_beats_chance_on_an_easy_task():
    data = splits(multilabel=True)
    result = ev.finetune(
        convirt.Encoder.resnet18(seed=0), *data, fractions=(1.0,), seeds=(0,), **FAST
    )
    assert result.task == "multilabel" and result.per_class.shape == (1, 1, 2)
    assert result.scores[0, 0] > 0.8, result


def test_finetune_leaves_the_encoder_unchanged():
    encoder = convirt.Encoder.resnet18(seed=0)
    encoder.freeze_backbone = True
    params, buffers = encoder.flat_parameters.copy(), encoder.flat_buffers.copy()
    grads = encoder.flat_gradients.copy()
    ev.finetune(
        encoder,
        *splits(n_train=8, n_val=8, n_test=8),
        fractions=(1.0,),
        seeds=(0,),
        **dict(FAST, epochs=1),
    )
    np.testing.assert_array_equal(encoder.flat_parameters, params)
    np.testing.assert_array_equal(encoder.flat_buffers, buffers)
    np.testing.assert_array_equal(encoder.flat_gradients, grads)
    assert encoder.freeze_backbone and not encoder.training


def test_finetune_fractions_seeds_and_determinism():
    data = splits(n_train=40, n_val=8, n_test=8)
    encoder = convirt.Encoder.resnet18(seed=0)
    kwargs = dict(FAST, fractions=(0.05, 0.25), seeds=(0, 1), epochs=(2, 1))
    result = ev.finetune(encoder, *data, **kwargs)
    assert result.scores.shape == (2, 2) and np.isfinite(result.scores).all()
    for f, fraction in enumerate((0.05, 0.25)):
        for s, seed in enumerate((0, 1)):
            assert result.n_train[f, s] == len(ev.sample_fraction(data[1], fraction, seed))
    assert np.all(result.n_train[0] == 2)  # 5% of 40: both classes kept
    assert np.all(result.epochs_run <= [[2], [1]])
    assert np.all((1 <= result.best_epoch) & (result.best_epoch <= result.epochs_run))
    assert len(result.history[0][1]) == result.epochs_run[0, 1]
    again = ev.finetune(encoder, *data, **kwargs)
    np.testing.assert_array_equal(result.scores, again.scores)
    np.testing.assert_array_equal(result.val_losses, again.val_losses)


def test_finetune_early_stopping_keeps_the_best_epoch():
    # A learning rate far too high makes the validation metric wander: with patience 1,
    # a run stops one epoch after its best, and the kept epoch is the best one seen.
    data = splits(n_train=16, n_val=8, n_test=8)
    result = ev.finetune(
        convirt.Encoder.resnet18(seed=0),
        *data,
        fractions=(1.0,),
        seeds=(0, 1),
        epochs=4,
        batch_size=8,
        lr=0.05,
        patience=1,
        progress=False,
    )
    for s in range(2):
        history = result.history[0][s]
        run, best = result.epochs_run[0, s], result.best_epoch[0, s]
        assert run == 4 or run - best == 1
        assert result.val_scores[0, s] == max(r["val_auc"] for r in history)
        assert history[best - 1]["val_auc"] == result.val_scores[0, s]


def test_finetune_with_augment_and_multiclass_accuracy():
    images, _ = halves(36, size=40)
    labels = np.arange(36) % 4  # four classes, each in every split
    aug = convirt.ImageAugment(32, crop_scale=(0.9, 1.0), degrees=None, blur_sigma=None)
    result = ev.finetune(
        convirt.Encoder.resnet18(seed=0),
        images[:12],
        labels[:12],
        images[12:24],
        labels[12:24],
        images[24:],
        labels[24:],
        fractions=(1.0,),
        seeds=(0,),
        metric="accuracy",
        augment=aug,
        epochs=1,
        batch_size=8,
        progress=False,
    )
    assert result.task == "multiclass" and result.metric_name == "accuracy"
    assert 0 <= result.scores[0, 0] <= 1
    assert result.config["augment"]["size"] == 32


def test_finetune_result_table_frame_and_plot():
    data = splits(n_train=8, n_val=8, n_test=8)
    result = ev.finetune(
        convirt.Encoder.resnet18(seed=0),
        *data,
        fractions=(0.5, 1.0),
        seeds=(0, 1),
        epochs=1,
        batch_size=8,
        progress=False,
        name="random init",
    )
    text = repr(result)
    assert text.startswith("FinetuneResult(random init: fine-tuning AUC (binary)")
    assert "50%" in text and "100%" in text and "1/1, 1/1" in text
    assert "<table>" in result._repr_html_()
    frame = result.to_frame()
    assert list(frame.columns) == ["n_train", "mean", "std"]
    np.testing.assert_allclose(frame["mean"], result.scores.mean(axis=1))
    per_seed = result.to_frame(per_seed=True)
    assert len(per_seed) == 4 and "val_loss" in per_seed.columns
    fig = result.plot()
    assert fig.axes[0].get_ylabel() == "test AUC"


# ---- bad input ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    return splits()


@pytest.fixture(scope="module")
def encoder():
    return convirt.Encoder.resnet18(seed=0)


def call(encoder, data, **kwargs):
    args = list(data)
    for i, key in enumerate(
        (
            "train_images",
            "train_labels",
            "val_images",
            "val_labels",
            "test_images",
            "test_labels",
        )
    ):
        if key in kwargs:
            args[i] = kwargs.pop(key)
    return ev.finetune(encoder, *args, **dict(FAST, **kwargs))


@pytest.mark.parametrize("which", ["train", "val", "test"])
def test_labels_of_the_wrong_length(encoder, data, which):
    labels = {"train": data[1], "val": data[3], "test": data[5]}[which]
    with pytest.raises(
        ValueError,
        match=f"{which}_labels has {len(labels) - 1} rows but "
        f"{which}_images has {len(labels)}",
    ):
        call(encoder, data, **{f"{which}_labels": labels[:-1]})


@pytest.mark.parametrize(
    "fraction, error, match",
    [
        (0, ValueError, r"fraction must be in \(0, 1\]"),
        (1.5, ValueError, r"fraction must be in \(0, 1\]"),
        (-0.1, ValueError, r"fraction must be in \(0, 1\]"),
        ("half", TypeError, "fraction must be a number"),
    ],
)
def test_bad_fractions(encoder, data, fraction, error, match):
    with pytest.raises(error, match=match):
        call(encoder, data, fractions=(fraction,))


def test_nan_labels(encoder, data):
    labels = data[1].astype(np.float64)
    labels[3] = np.nan
    with pytest.raises(ValueError, match="train_labels contain NaN"):
        call(encoder, data, train_labels=labels)


def test_nan_multilabel_labels(encoder):
    data = list(splits(multilabel=True))
    labels = data[1].astype(np.float32)
    labels[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"must be 0 or 1, got nan at \[2, 1\]"):
        call(encoder, data, train_labels=labels)


def test_nan_images(encoder, data):
    images = data[0].astype(np.float32) / 255
    images[5, 3, 3] = np.nan
    with pytest.raises(
        ValueError,
        match=r"train_images contains NaN or Inf \(first: image "
        r"5\)",
    ):
        call(encoder, data, train_images=images)


def test_encoder_must_be_an_image_encoder(data, tiny_towers):
    _, text = tiny_towers
    with pytest.raises(TypeError, match="image convirt.Encoder.*a text encoder"):
        call(text, data)
    with pytest.raises(TypeError, match="image convirt.Encoder"):
        call("resnet18", data)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 1}, ValueError, "batch_size must be an integer >= 2"),
        ({"epochs": 0}, ValueError, "epochs must be an integer >= 1"),
        ({"epochs": (2, 3)}, ValueError, r"one per fraction \(1\)"),
        ({"lr": 0.0}, ValueError, "lr must be a positive"),
        ({"lr": float("nan")}, ValueError, "lr must be a positive"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay must be"),
        ({"patience": 0}, ValueError, "patience must be None or an integer >= 1"),
        ({"task": "regression"}, ValueError, "task must be None"),
        ({"metric": "f1"}, ValueError, "metric must be one of"),
        ({"seeds": ()}, ValueError, "must not be empty"),
        ({"augment": "flip"}, TypeError, "augment must be a convirt.ImageAugment"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_bad_options(encoder, data, kwargs, error, match):
    with pytest.raises(error, match=match):
        call(encoder, data, fractions=(1.0,), **kwargs)


def test_images_must_be_arrays_of_the_encoders_channels(encoder, data):
    with pytest.raises(TypeError, match="train_images must be a NumPy array"):
        call(encoder, data, train_images=list(data[0]))
    with pytest.raises(TypeError, match="uint8 or float32"):
        call(encoder, data, train_images=data[0].astype(np.int16))
    with pytest.raises(ValueError, match=r"3 channel\(s\) but the encoder takes 1"):
        call(encoder, data, val_images=np.repeat(data[2][..., None], 3, axis=3))
    with pytest.raises(ValueError, match=r"shape \(N, H, W\)"):
        call(encoder, data, test_images=data[4][0])


def test_augment_needs_uint8_images(encoder, data):
    with pytest.raises(TypeError, match="augment reads uint8 images"):
        call(
            encoder,
            data,
            train_images=data[0].astype(np.float32),
            augment=convirt.ImageAugment(32),
        )


def test_a_validation_split_with_one_class(encoder, data):
    with pytest.raises(ValueError, match="validation split has no class"):
        call(encoder, data, val_labels=np.zeros_like(data[3]))


def test_classes_unseen_in_training(encoder, data):
    test_labels = data[5].copy()
    test_labels[0] = 9
    with pytest.raises(
        ValueError,
        match=r"test_labels has classes the training labels "
        r"lack: \[9\]",
    ):
        call(encoder, data, test_labels=test_labels)
