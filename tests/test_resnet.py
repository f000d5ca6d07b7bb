"""The ResNet image encoder (convirt.Encoder, kind "resnet") against a PyTorch reference
written with torch.nn.functional (tests/torch_resnet.py) on the same weights: features,
every parameter gradient, the input gradient and the running statistics; determinism,
zero copy, bad input and checkpoints."""

import functools

import numpy as np
import pytest
import torch
import torch_resnet as tr

import convirt
from convirt import Encoder

N, SIZE = 3, 64


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@functools.cache
def reference_params(depth, channels, bias_scale=None):
    """float64 parameters with torchvision's names and non-trivial batch norms.
    bias_scale: batch-norm biases of +-bias_scale, with one sign per channel for every
    batch norm that feeds a stage's residual sums (so that a sum never cancels to
    around zero, the ReLU's kink)."""
    params = tr.init_params(
        depth, channels, seed=depth + channels, dtype=torch.float64, bias_scale=bias_scale
    )
    if bias_scale is not None:
        g = torch.Generator().manual_seed(depth)
        last = "bn3" if tr.is_bottleneck(depth) else "bn2"
        for stage in range(1, 5):
            names = [
                k
                for k in params
                if k.startswith(f"layer{stage}.")
                and k.endswith((f"{last}.bias", "downsample.1.bias"))
            ]
            width = params[names[0]].shape[0]
            sign = torch.sign(torch.randn(width, generator=g, dtype=torch.float64))
            for name in names:
                params[name] = bias_scale * sign
    return params


def encoder_with(depth, channels, params=None, **kwargs):
    encoder = getattr(Encoder, f"resnet{depth}")(in_channels=channels, **kwargs)
    params = reference_params(depth, channels) if params is None else params
    encoder.load_state_dict({k: v.float().numpy() for k, v in params.items()}, strict=False)
    return encoder


def make_images(channels, dtype, n=N, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, size, size) if channels == 1 else (n, size, size, channels)
    if dtype == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.random(shape, dtype=np.float32)


def torch_features(params, images, normalization, depth, dtype=torch.float64):
    x = tr.normalise(images, *normalization).to(dtype)
    with torch.no_grad():
        return tr.forward({k: v.to(dtype) for k, v in params.items()}, x, depth).numpy()


def to_stored(name, array):
    """A PyTorch-layout gradient in the encoder's stored layout."""
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


CASES = [
    (depth, channels, dtype)
    for depth in (18, 50)
    for channels in (1, 3)
    for dtype in ("uint8", "float32")
]


@pytest.mark.parametrize("depth,channels,dtype", CASES + [(34, 3, "uint8")])
def test_eval_features_match_torch(depth, channels, dtype):
    encoder = encoder_with(depth, channels)
    images = make_images(channels, dtype)
    before = images.copy()
    features = encoder.encode(images)
    expected = torch_features(
        reference_params(depth, channels), images, encoder.normalization, depth
    )
    assert features.shape == (N, tr.feature_dim(depth)) and features.dtype == np.float32
    assert rel(features, expected) < 1e-4
    np.testing.assert_array_equal(images, before)


def torch_training_step(
    params, images, normalization, depth, grad, dtype, record=None, flips=None
):
    """Features, gradients (PyTorch layout), pixel gradient and updated running
    statistics of one training step of the reference in `dtype` (record and flips:
    see tr.forward)."""
    p = {k: v.clone().to(dtype) for k, v in params.items()}
    for k, v in p.items():
        if "running" not in k:
            v.requires_grad_(True)
    pixels = torch.from_numpy(images.astype(np.float64)).to(dtype).requires_grad_(True)
    x = pixels[..., None] if images.ndim == 3 else pixels
    scale = 1 / 255 if images.dtype == np.uint8 else 1.0
    mean, std = (torch.tensor(v, dtype=dtype) for v in normalization)
    x = ((x * scale - mean) / std).permute(0, 3, 1, 2)
    features = tr.forward(p, x, depth, training=True, record=record, flips=flips)
    (features * torch.from_numpy(grad).to(dtype)).sum().backward()
    out = {
        k: (v.detach() if "running" in k else v.grad).double().numpy() for k, v in p.items()
    }
    return features.detach().double().numpy(), out, pixels.grad.double().numpy()


def kink_resolved_errors(ours, reference_step):
    """Relative errors of `ours` (name -> array in the stored layout, plus "features" and
    "input gradient") against the float64 reference, with the reference's kinks
    resolved the way ours were.

    In training mode a value that float32 rounding can put on either side of a ReLU's
    kink (or a max-pool window whose two largest values are that close) is a genuine
    ambiguity: a correct float32 implementation may take it either way, and the
    gradients of the batch norms around it then move by up to a few percent (on an
    AVX-512 machine, one element of layer1.0's output at 9e-7, against a float32
    spread of 9e-6 there, moved layer1.0.bn2.bias by 1.8e-2). Which elements can flip
    is decided by the references alone (tr.ambiguous_elements: float64 against PyTorch's
    own float32). Each flip's effect on every tensor is measured in float64; the flips
    that bring the reference closest to ours are chosen, and the errors returned are
    those of one exact float64 step with exactly those flips. So everything else is held
    to float64: a bug cannot hide behind a flip, because a flip moves only what that one
    element feeds, and the result must then agree everywhere."""
    record64, record32 = {}, {}
    base = reference_step(torch.float64, record=record64)
    reference_step(torch.float32, record=record32)
    ambiguous = tr.ambiguous_elements(record64, record32)

    def errors_of(step):
        f, g, x = step
        return {
            name: rel(
                value,
                f
                if name == "features"
                else x
                if name == "input gradient"
                else to_stored(name, g[name]),
            )
            for name, value in ours.items()
        }

    errors = errors_of(base)
    if max(errors.values()) < 1e-4 or not ambiguous:
        return errors, {}
    candidates = [
        (site, tuple(i))
        for site, mask in ambiguous.items()
        for i in mask.nonzero().tolist()
    ]
    assert len(candidates) <= 12, (
        f"the test's inputs put too many values on kinks: {candidates}"
    )

    def flat(step):
        f, g, x = step
        return {
            name: f
            if name == "features"
            else x
            if name == "input gradient"
            else to_stored(name, g[name])
            for name in ours
        }

    def one_flip(site, index):
        mask = torch.zeros_like(ambiguous[site])
        mask[index] = True
        return {site: mask}

    reference = flat(base)
    scale = {name: max(np.linalg.norm(r), 1e-30) for name, r in reference.items()}
    effects = {
        c: {
            name: value - reference[name]
            for name, value in flat(
                reference_step(torch.float64, flips=one_flip(*c))
            ).items()
        }
        for c in candidates
    }

    def misfit(chosen):  # flips act additively to first order (exact within one site)
        return sum(
            (
                np.linalg.norm(
                    ours[name] - reference[name] - sum(effects[c][name] for c in chosen)
                )
                / scale[name]
            )
            ** 2
            for name in ours
        )

    chosen = set()
    for _ in range(2):  # coordinate descent; the flips barely interact
        for c in candidates:
            if misfit(chosen ^ {c}) < misfit(chosen):
                chosen ^= {c}
    if not chosen:
        return errors, {}
    flips = {}
    for site, index in chosen:
        flips.setdefault(site, torch.zeros_like(ambiguous[site]))[index] = True
    return errors_of(reference_step(torch.float64, flips=flips)), sorted(chosen)


def training_step_errors(depth, channels, images, grad_seed):
    """One training forward and backward of `images` on the reference parameters (with
    batch-norm biases of +-2.5), against PyTorch's float64 step: the relative error of
    the features, every parameter gradient, the pixel gradient and the updated running
    statistics, with the reference's kinks resolved as ours were; and those kinks."""
    params = reference_params(depth, channels, bias_scale=2.5)
    encoder = encoder_with(depth, channels, params).train()
    grad = np.random.default_rng(grad_seed).standard_normal(
        (len(images), tr.feature_dim(depth))
    )
    encoder.zero_grad()
    features, _ = encoder.forward(images, embeddings=False)
    d_input = encoder.backward(d_features=grad.astype(np.float32), input_grad=True)
    assert d_input.shape == images.shape and d_input.dtype == np.float32
    grads, views = encoder.gradients(), encoder.parameters()
    ours = {name: views[name] if "running" in name else grads[name] for name in params}
    ours["features"], ours["input gradient"] = features, d_input
    errors, flips = kink_resolved_errors(
        ours,
        functools.partial(
            torch_training_step, params, images, encoder.normalization, depth, grad
        ),
    )
    assert len(errors) == len(params) + 2
    return errors, flips


@pytest.mark.parametrize("depth,channels,dtype", CASES)
def test_training_step_matches_torch(depth, channels, dtype):
    """One training forward and backward: features with batch statistics, every
    parameter gradient, the pixel gradient and the updated running statistics, each
    within 1e-4 (relative norm) of PyTorch's float64 result, on any BLIS kernel set.

    Batch-norm biases of +-2.5 (one sign per channel along each stage's residual
    stream) keep most values away from the ReLU's kink; the few that float32 rounding
    can still put on either side are resolved as ours were (kink_resolved_errors)."""
    images = make_images(channels, dtype, seed=1)
    before = images.copy()
    errors, flips = training_step_errors(depth, channels, images, grad_seed=2)
    worst = sorted(errors.items(), key=lambda item: -item[1])[:5]
    assert worst[0][1] < 1e-4, (worst, "kinks resolved:", flips)
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize("winograd", [True, False])
def test_training_step_matches_torch_with_and_without_winograd(winograd):
    """The 3x3 stride-1 convolutions through Winograd's F(2x2, 3x3) and through the
    direct path, in a whole training step, at a size (160 px) where layer1's tiles split
    each image in two (the fused batch-statistics epilogue then runs per part)."""
    before_switch = convirt.get_winograd()
    convirt.set_winograd(winograd)
    try:
        images = make_images(1, "float32", n=2, size=160, seed=3)
        errors, flips = training_step_errors(18, 1, images, grad_seed=4)
    finally:
        convirt.set_winograd(before_switch)
    worst = sorted(errors.items(), key=lambda item: -item[1])[:5]
    assert worst[0][1] < 1e-4, (worst, "kinks resolved:", flips)


def test_kink_resolution_accepts_a_flip_and_still_catches_a_bug():
    """The case that failed on an AVX-512 machine (BLIS's skx kernels): ResNet-18, 3
    channels, uint8. There, element (0, 48, 0, 5) of layer1.0's output sits at 9.2e-7 in
    float64, under the float32 spread of that layer (8.7e-6), and came out on the other
    side of the ReLU: layer1.0.bn2.bias moved by 1.8e-2, layer1.0.bn1.bias and bn1.bias by
    1.4e-2, layer1.0.conv2.weight by 1.2e-2, and nothing from layer1.1 on. Here the float64
    reference with exactly that flip stands in for such a result: it must be accepted,
    and the same result with one real error added (one bias gradient off by 0.5%) must
    not be."""
    depth, channels, dtype = 18, 3, "uint8"
    params = reference_params(depth, channels, bias_scale=2.5)
    images = make_images(channels, dtype, seed=1)
    grad = np.random.default_rng(2).standard_normal((N, tr.feature_dim(depth)))
    normalization = Encoder.resnet18(in_channels=channels).normalization
    step = functools.partial(
        torch_training_step, params, images, normalization, depth, grad
    )
    site, index = "layer1.0.out", (0, 48, 0, 5)
    record = {}
    step(torch.float64, record=record)
    assert abs(record[site][index]) < 1e-6
    mask = torch.zeros_like(record[site], dtype=torch.bool)
    mask[index] = True
    f, g, x = step(torch.float64, flips={site: mask})
    flipped = {name: to_stored(name, g[name]).astype(np.float32) for name in params}
    flipped["features"], flipped["input gradient"] = (
        f.astype(np.float32),
        x.astype(np.float32),
    )
    errors, chosen = kink_resolved_errors(flipped, step)
    assert chosen == [(site, index)] and max(errors.values()) < 1e-6
    bug = dict(flipped)
    bug["layer2.0.bn1.bias"] = bug["layer2.0.bn1.bias"] * np.float32(1.005)
    errors, _ = kink_resolved_errors(bug, step)
    assert max(errors, key=errors.get) == "layer2.0.bn1.bias"
    assert 1e-3 < errors["layer2.0.bn1.bias"] < 1e-2


def test_embeddings_backward_through_the_head():
    """The projection head on top of the ResNet features: the embeddings and the head's
    gradients against autograd on the same head weights applied to our features, and
    d_embeddings flows into the backbone exactly as the head's feature gradient does
    (the backbone itself is checked against PyTorch above). Both backward passes share
    one forward, so no ReLU kink can be decided differently between them (comparing the
    backbone with a float64 forward instead failed on the generic kernel set, where
    rounding put one value on the other side of a kink: conv1.weight 0.5% off)."""
    encoder = encoder_with(18, 3, proj_dim=16, proj_hidden=32).train()
    images = make_images(3, "uint8", seed=3)
    head = {
        k: torch.from_numpy(v.astype(np.float64)).requires_grad_(True)
        for k, v in encoder.parameters().items()
        if k.startswith("projection.")
    }
    encoder.zero_grad()
    features, embeddings = encoder.forward(images)
    h = torch.from_numpy(features.astype(np.float64)).requires_grad_(True)
    z = torch.relu(h @ head["projection.0.weight"].T + head["projection.0.bias"])
    z = z @ head["projection.2.weight"].T + head["projection.2.bias"]
    dz = np.random.default_rng(4).standard_normal(z.shape)
    (z * torch.from_numpy(dz)).sum().backward()
    assert rel(embeddings, z.detach().numpy()) < 1e-5
    encoder.backward(d_embeddings=dz.astype(np.float32))
    through_head = {k: v.copy() for k, v in encoder.gradients().items()}
    for name, value in head.items():
        assert rel(through_head[name], value.grad.numpy()) < 1e-4, name
    encoder.zero_grad()
    encoder.backward(d_features=h.grad.numpy().astype(np.float32))
    direct = encoder.gradients()
    backbone = [k for k in direct if not k.startswith("projection.")]
    assert len(backbone) > 40
    for name in backbone:
        assert rel(through_head[name], direct[name]) < 1e-5, name
        assert np.abs(through_head[name]).max() > 0, name


def test_eval_encode_is_deterministic_and_thread_independent():
    encoder = encoder_with(50, 1)
    images = make_images(1, "uint8", n=4, size=48)
    first = encoder.encode(images)
    np.testing.assert_array_equal(encoder.encode(images), first)
    single = encoder.encode(images[:1])  # one image: BLIS gets the threads
    convirt.set_num_threads(1)
    try:
        one_thread = encoder.encode(images)
        single_one_thread = encoder.encode(images[:1])
    finally:
        convirt.set_num_threads(2)
    np.testing.assert_array_equal(one_thread, first)
    np.testing.assert_array_equal(single_one_thread, single)


def test_training_step_is_deterministic():
    """The same training step twice (same thread count) gives bitwise the same
    gradients, features and running statistics: the sums run in a fixed order."""
    images = make_images(3, "uint8", n=3, size=40, seed=12)
    grad = np.random.default_rng(13).standard_normal((3, 512)).astype(np.float32)
    results = []
    for _ in range(2):
        encoder = encoder_with(18, 3).train()
        features, _ = encoder.forward(images, embeddings=False)
        d_input = encoder.backward(d_features=grad, input_grad=True)
        results.append(
            (features, d_input, encoder.flat_gradients.copy(), encoder.flat_buffers.copy())
        )
    for first, second in zip(*results):
        np.testing.assert_array_equal(first, second)


def test_non_square_images():
    depth, channels = 50, 3
    encoder = encoder_with(depth, channels)
    images = make_images(channels, "uint8", n=2, size=64)[:, :40, :, :]  # 40 x 64
    expected = torch_features(
        reference_params(depth, channels), images, encoder.normalization, depth
    )
    assert rel(encoder.encode(images), expected) < 1e-4


@pytest.mark.parametrize("depth", [18, 50])
def test_eval_encode_does_not_depend_on_the_batch(depth):
    """Each image's features are the same alone, in a batch, or in another batch: equal
    up to the order of a few float sums inside the GEMMs (BLIS picks its kernels by
    matrix size, and a layer's tiles go to convirt's small-GEMM kernel or to BLIS by
    their rows). Features reach about 3; atol 4e-6 is about 1e-6 of that (2e-6 was
    passed by 1% on one element of 10240 under BLIS's generic kernels)."""
    encoder = encoder_with(depth, 3)
    images = make_images(3, "float32", n=5, size=40, seed=7)
    together = encoder.encode(images)
    alone = np.concatenate([encoder.encode(images[i : i + 1]) for i in range(5)])
    shuffled = encoder.encode(images[::-1])[::-1]
    in_batches = encoder.encode(images, batch_size=2)
    for other in (alone, shuffled, in_batches):
        np.testing.assert_allclose(other, together, rtol=2e-5, atol=4e-6)


def test_encode_more_images_than_batch_size():
    encoder = Encoder.resnet18()
    images = make_images(1, "uint8", n=5, size=36)
    features = encoder.encode(images, batch_size=2)
    embeddings = encoder.embed(images, batch_size=3)
    assert features.shape == (5, 512) and embeddings.shape == (5, 512)
    np.testing.assert_allclose(
        features[4:], encoder.encode(images[4:]), rtol=2e-5, atol=2e-6
    )
    assert np.all(np.isfinite(embeddings))


def test_training_then_eval_uses_updated_running_statistics():
    encoder = Encoder.resnet18(in_channels=1, seed=3)
    images = make_images(1, "uint8", n=4, size=40)
    before = encoder.parameters()["layer1.0.bn1.running_var"].copy()
    encoder.train()
    encoder.forward(images, embeddings=False)
    after = encoder.parameters()["layer1.0.bn1.running_var"]
    assert not np.allclose(before, after)
    encoder.eval()
    params = {
        k: torch.from_numpy(v.copy())
        for k, v in encoder.state_dict().items()
        if not k.startswith("projection.")
    }
    expected = torch_features(
        {k: v.double() for k, v in params.items()}, images, encoder.normalization, 18
    )
    assert rel(encoder.encode(images), expected) < 1e-4


# ---- zero copy ------------------------------------------------------------------------------------


def test_outputs_share_memory_with_supplied_buffers():
    encoder = Encoder.resnet18(in_channels=3, proj_dim=8)
    images = make_images(3, "uint8", n=2, size=32)
    features_out = np.empty((2, 512), np.float32)
    embeddings_out = np.empty((2, 8), np.float32)
    features, embeddings = encoder.forward(
        images, features_out=features_out, embeddings_out=embeddings_out
    )
    assert np.shares_memory(features, features_out)
    assert np.shares_memory(embeddings, embeddings_out)
    out = np.empty((2, 512), np.float32)
    assert np.shares_memory(encoder.encode(images, out=out), out)


def test_parameter_views_share_the_flat_buffers():
    encoder = Encoder.resnet50(in_channels=1)
    flat, buffers = encoder.flat_parameters, encoder.flat_buffers
    views = encoder.parameters()
    assert views["conv1.weight"].shape == (64, 7, 7, 1)  # stored (K, R, S, C)
    assert views["layer4.2.conv3.weight"].shape == (2048, 1, 1, 512)
    for name, view in views.items():
        assert np.shares_memory(view, buffers if "running" in name else flat), name
    grads = encoder.gradients()
    assert all(np.shares_memory(g, encoder.flat_gradients) for g in grads.values())
    assert "fc.weight" not in views and not any("num_batches" in k for k in views)
    assert (
        len([k for k in views if not k.startswith("projection.")]) == 265
    )  # torchvision: 320 keys less fc (2) and num_batches_tracked (53)
    # writing through a view changes the network
    images = make_images(1, "uint8", n=1, size=32)
    first = encoder.encode(images)
    views["layer4.2.bn3.bias"][...] += 1.0
    assert not np.allclose(encoder.encode(images), first)


def test_memmap_input(tmp_path):
    images = make_images(1, "uint8", n=3, size=40)
    mm = np.memmap(tmp_path / "images.u8", dtype=np.uint8, mode="w+", shape=images.shape)
    mm[...] = images
    mm.flush()
    readonly = np.memmap(
        tmp_path / "images.u8", dtype=np.uint8, mode="r", shape=images.shape
    )
    encoder = Encoder.resnet18()
    np.testing.assert_array_equal(encoder.encode(readonly), encoder.encode(images))
    encoder.train()
    encoder.forward(readonly, embeddings=False)
    d_input = encoder.backward(d_features=np.ones((3, 512), np.float32), input_grad=True)
    assert d_input.shape == images.shape and np.all(np.isfinite(d_input))


def test_strided_input_is_read_in_place():
    """A view (every other image, cropped, channels reversed) gives the features of its
    contiguous copy."""
    base = make_images(3, "float32", n=6, size=50, seed=5)
    view = base[::2, 3:43, 5:45, ::-1]
    encoder = encoder_with(18, 3)
    np.testing.assert_allclose(
        encoder.encode(view),
        encoder.encode(np.ascontiguousarray(view)),
        rtol=1e-6,
        atol=1e-7,
    )


# ---- bad input (the array rules every entry point shares are in test_array_rules.py) --------------


@pytest.fixture(scope="module")
def small_encoder():
    return Encoder.resnet18(in_channels=3, proj_dim=8)


def test_wrong_dtype(small_encoder):
    with pytest.raises(TypeError, match="float32 or uint8"):
        small_encoder.encode(np.zeros((1, 32, 32, 3), np.float64))
    with pytest.raises(TypeError, match="float32 or uint8"):
        small_encoder.encode(np.zeros((1, 32, 32, 3), np.int16))


def test_wrong_channel_count(small_encoder):
    with pytest.raises(ValueError, match="1 channel.*in_channels=3"):
        small_encoder.encode(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="4 channel.*in_channels=3"):
        small_encoder.encode(np.zeros((2, 32, 32, 4), np.uint8))


def test_image_too_small(small_encoder):
    with pytest.raises(ValueError, match="at least 32 x 32.*31 x 40"):
        small_encoder.encode(np.zeros((2, 31, 40, 3), np.uint8))


def test_nan_input(small_encoder):
    images = np.zeros((2, 32, 32, 3), np.float32)
    images[1, 5, 7, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        small_encoder.encode(images)


def test_read_only_output(small_encoder):
    # forward's own outputs: test_array_rules.py; encode() checks out in Python
    out = np.empty((2, 512), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        small_encoder.encode(np.zeros((2, 32, 32, 3), np.uint8), out=out)


def test_training_batch_too_small_for_batch_norm():
    encoder = Encoder.resnet18().train()
    with pytest.raises(ValueError, match="more than one value per channel.*layer4"):
        encoder.forward(np.zeros((1, 32, 32), np.uint8))
    encoder.forward(np.zeros((2, 32, 32), np.uint8))  # two images are enough


def test_backward_needs_a_training_forward():
    encoder = Encoder.resnet18()
    encoder.encode(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(RuntimeError, match="training"):
        encoder.backward(d_features=np.zeros((2, 512), np.float32))


def test_nonfinite_weights_are_reported():
    encoder = Encoder.resnet18()
    encoder.parameters()["layer2.0.conv1.weight"][0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        encoder.encode(np.full((2, 32, 32), 100, np.uint8))


# ---- checkpoints ------------------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path):
    encoder = Encoder.resnet50(
        in_channels=3,
        proj_dim=16,
        seed=5,
        normalization=((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
    )
    encoder.train()
    encoder.forward(make_images(3, "uint8", n=2, size=32))  # moves the running statistics
    encoder.eval()
    path = tmp_path / "encoder.safetensors"
    encoder.save(path)
    restored = Encoder.from_checkpoint(path)
    assert restored.normalization == encoder.normalization
    np.testing.assert_array_equal(restored.flat_parameters, encoder.flat_parameters)
    np.testing.assert_array_equal(restored.flat_buffers, encoder.flat_buffers)
    images = make_images(3, "uint8", n=2, size=32, seed=9)
    np.testing.assert_array_equal(restored.encode(images), encoder.encode(images))
    other = Encoder.resnet50(in_channels=3, proj_dim=16, seed=99).load(path)
    np.testing.assert_array_equal(other.flat_parameters, encoder.flat_parameters)


def test_load_torchvision_checkpoint(tmp_path):
    """A torchvision-named state dict written by torch (OIHW convolution weights, an fc
    layer and num_batches_tracked, which the encoder has no use for) loads and gives
    the reference's features."""
    from safetensors.torch import save_file

    depth, channels = 18, 3
    params = {
        k: v.float().contiguous() for k, v in reference_params(depth, channels).items()
    }
    state = dict(params)
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    for name in [k[: -len(".running_mean")] for k in params if k.endswith("running_mean")]:
        state[name + ".num_batches_tracked"] = torch.tensor(7)
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    encoder = Encoder.resnet18(in_channels=channels)
    with pytest.raises(ValueError, match="missing 4: projection"):
        encoder.load(path)  # strict: the head is not in a torchvision file
    encoder.load(path, strict=False)
    images = make_images(channels, "uint8", seed=11)
    expected = torch_features(
        {k: v.double() for k, v in params.items()}, images, encoder.normalization, depth
    )
    assert rel(encoder.encode(images), expected) < 1e-4


def test_truncated_and_corrupt_files(tmp_path):
    encoder = Encoder.resnet18()
    path = tmp_path / "encoder.safetensors"
    encoder.save(path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        encoder.load(truncated)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 64 + data[64:])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        Encoder.from_checkpoint(corrupt)
    with pytest.raises(FileNotFoundError):
        encoder.load(tmp_path / "missing.safetensors")


def test_missing_extra_and_misshaped_tensors_on_load():
    encoder = Encoder.resnet18()
    state = encoder.state_dict()
    before = encoder.flat_parameters.copy()
    missing = {k: v for k, v in state.items() if k != "layer3.1.bn2.weight"}
    with pytest.raises(ValueError, match="missing 1: layer3.1.bn2.weight"):
        encoder.load_state_dict(missing)
    extra = dict(state, **{"layer5.0.conv1.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="unexpected 1: layer5.0.conv1.weight"):
        encoder.load_state_dict(extra)
    wrong = dict(state)
    wrong["layer1.0.conv2.weight"] = np.zeros((64, 64, 3, 1), np.float32)
    with pytest.raises(
        ValueError, match=r"layer1.0.conv2.weight: expected \(64, 64, 3, 3\)"
    ):
        encoder.load_state_dict(wrong)
    np.testing.assert_array_equal(encoder.flat_parameters, before)  # nothing changed


def test_pickle_and_deepcopy_copy_the_encoder_by_value():
    import copy
    import pickle

    encoder = Encoder.resnet18(proj_dim=8, seed=3)
    encoder.train()
    images = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    for clone in (pickle.loads(pickle.dumps(encoder)), copy.deepcopy(encoder)):
        assert type(clone) is Encoder and clone.training and clone is not encoder
        assert clone.normalization == encoder.normalization
        for name, view in encoder.parameters().items():
            np.testing.assert_array_equal(clone.parameters()[name], view)
        assert not np.shares_memory(clone.flat_parameters, encoder.flat_parameters)
        np.testing.assert_array_equal(
            clone.eval().embed(images), encoder.eval().embed(images)
        )
        encoder.train()
