"""ImageAugment: each transform against an independent reference (PIL, scipy.ndimage,
torch, NumPy) at fixed parameters, the sampled parameters' distributions, determinism
across threads, the output buffers, and bad input."""

import gc
import math
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, stats

import convirt
from convirt import ImageAugment

ALL_OFF = {
    "crop_scale": None,
    "flip": None,
    "degrees": None,
    "translate": None,
    "scale": None,
    "brightness": None,
    "contrast": None,
    "blur_sigma": None,
}
GREY_WEIGHTS = np.array([0.2989, 0.587, 0.114])  # torchvision's rgb_to_grayscale


def images(n, h, w, c=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def identity(n):
    """Parameters that leave an image as it is (at its own size)."""
    p = np.zeros(n, dtype=ImageAugment.parameter_dtype)
    p["crop"] = (0.0, 0.0, 1.0, 1.0)
    p["scale"] = p["brightness"] = p["contrast"] = 1.0
    return p


# ---- the NumPy reference of the documented pipeline ---------------------------------


def inside(a, size):
    """Share of a bilinear footprint at grid coordinate a inside 0..size-1."""
    return np.clip(np.minimum(a + 1.0, size - a), 0.0, 1.0)


def reference(img, p, size, fill=0.0, normalization=None):
    """augment.h's maths, written out in float64 NumPy for one uint8 image."""
    grey_input = img.ndim == 2
    img = img.astype(np.float64)
    if grey_input:
        img = img[..., None]
    h, w, c = img.shape
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    centre = size / 2.0
    px = j + 0.5 - centre - p["translate"][0] * size
    py = i + 0.5 - centre - p["translate"][1] * size
    theta = math.radians(p["angle"])
    qx = (math.cos(theta) * px - math.sin(theta) * py) / p["scale"]
    qy = (math.sin(theta) * px + math.cos(theta) * py) / p["scale"]
    if p["flip"]:
        qx = -qx
    ux, uy = qx + centre, qy + centre
    x = p["crop"][0] * w + ux * p["crop"][2] * w / size - 0.5
    y = p["crop"][1] * h + uy * p["crop"][3] * h / size - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    xa, xb = np.clip(x0, 0, w - 1).astype(int), np.clip(x0 + 1, 0, w - 1).astype(int)
    ya, yb = np.clip(y0, 0, h - 1).astype(int), np.clip(y0 + 1, 0, h - 1).astype(int)
    top = img[ya, xa] * (1 - fx) + img[ya, xb] * fx
    bottom = img[yb, xa] * (1 - fx) + img[yb, xb] * fx
    sample = (top * (1 - fy) + bottom * fy) / 255.0
    mask = (inside(ux - 0.5, size) * inside(uy - 0.5, size))[..., None]
    out = mask * sample + (1 - mask) * fill
    out = np.clip(p["brightness"] * out, 0.0, 1.0)
    grey = out @ GREY_WEIGHTS if c == 3 else out[..., 0]
    out = np.clip(p["contrast"] * out + (1 - p["contrast"]) * grey.mean(), 0.0, 1.0)
    if p["sigma"] > 0:
        r = math.ceil(3 * p["sigma"])
        out = ndimage.gaussian_filter(
            out, sigma=(p["sigma"], p["sigma"], 0), mode="mirror", radius=(r, r, 0)
        )
    if normalization is not None:
        mean, std = (
            np.broadcast_to(np.asarray(v, dtype=np.float64), (c,)) for v in normalization
        )
        out = (out - mean) / std
    return out[..., 0] if grey_input else out


# ---- each transform at fixed parameters ----------------------------------------------


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_identity_is_exact(channels):
    x = images(3, 17, 23, channels)
    aug = ImageAugment(size=17)
    # not square: identity needs size == H == W, so use a square crop of it
    x = x[:, :, :17]
    out = aug.apply(x, identity(3))
    np.testing.assert_array_equal(out, x.astype(np.float32) / np.float32(255))


def test_everything_off_is_the_identity():
    x = images(4, 20, 20, 3)
    out = ImageAugment(size=20, **ALL_OFF)(x, step=5)
    np.testing.assert_array_equal(out, x.astype(np.float32) / np.float32(255))


def test_flip_matches_numpy():
    x = images(2, 12, 15, 3)[:, :, :12]
    p = identity(2)
    p["flip"] = True
    out = ImageAugment(size=12).apply(x, p)
    np.testing.assert_array_equal(out, x[:, :, ::-1].astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("box", [(0.25, 0.2, 0.5, 0.6), (0.1234, 0.071, 0.61, 0.53)])
@pytest.mark.parametrize("channels", [None, 3])
def test_crop_and_resize_match_pil(box, channels):
    # PIL's bilinear resize is plain bilinear interpolation when it enlarges (it
    # antialiases when it shrinks); it works in double on mode "F". Tolerance: float32
    # interpolation of values up to 255, then / 255: a few 1e-7; 1e-5 leaves room.
    h, w, size = 40, 48, 56
    x = images(1, h, w, channels, seed=3)
    p = identity(1)
    p["crop"] = box
    out = ImageAugment(size=size).apply(x, p)[0]
    pil_box = (box[0] * w, box[1] * h, (box[0] + box[2]) * w, (box[1] + box[3]) * h)
    planes = x[0][..., None] if channels is None else x[0]
    expected = (
        np.stack(
            [
                np.asarray(
                    Image.fromarray(planes[..., k].astype(np.float32), mode="F").resize(
                        (size, size), Image.BILINEAR, box=pil_box
                    )
                )
                for k in range(planes.shape[-1])
            ],
            axis=-1,
        )
        / 255.0
    )
    if channels is None:
        expected = expected[..., 0]
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [None, 3])
def test_shrinking_resize_matches_torch_bilinear(channels):
    # Shrinking, the pass is bilinear without antialiasing: torch's interpolate with
    # antialias=False, align_corners=False is the reference (float32: tolerance 1e-5).
    torch = pytest.importorskip("torch")
    x = images(2, 61, 45, channels, seed=4)
    out = ImageAugment(size=24).apply(x, identity(2))
    t = torch.from_numpy(x.astype(np.float32) / 255.0)
    t = t[:, None] if channels is None else t.permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(
        t, size=(24, 24), mode="bilinear", align_corners=False, antialias=False
    )
    expected = expected[:, 0] if channels is None else expected.permute(0, 2, 3, 1)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5, rtol=0)


def test_rotation_direction_and_translation_in_whole_pixels():
    # Independent of any interpolation: 90 degrees counter-clockwise is np.rot90, and a
    # translation of 3 pixels right and 2 down is a shift with the fill coming in.
    x = images(1, 16, 16, seed=5)
    aug = ImageAugment(size=16)
    p = identity(1)
    p["angle"] = 90.0
    np.testing.assert_allclose(aug.apply(x, p)[0], np.rot90(x[0]) / 255.0, atol=1e-6)
    p = identity(1)
    p["translate"] = (3 / 16, 2 / 16)
    expected = np.zeros((16, 16))
    expected[2:, 3:] = x[0, :-2, :-3] / 255.0
    np.testing.assert_allclose(aug.apply(x, p)[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    "angle,scale,translate,fill",
    [
        (17.0, 1.0, (0.0, 0.0), 0.0),
        (-20.0, 0.95, (0.1, -0.05), 0.0),
        (33.3, 1.05, (-0.07, 0.09), 0.4),
    ],
)
def test_affine_matches_scipy(angle, scale, translate, fill):
    # scipy.ndimage.affine_transform(order=1, mode="grid-constant") is bilinear with
    # the fill outside the image: what augment.h promises without a crop. The matrix
    # is written here from the convention: rotate counter-clockwise (as displayed)
    # about the centre, scale, then translate. float32 vs float64: tolerance 1e-5.
    size = 33
    x = images(1, size, size, seed=6)
    p = identity(1)
    p["angle"], p["scale"], p["translate"] = angle, scale, translate
    out = ImageAugment(size=size, fill=fill).apply(x, p)[0]
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    matrix = np.array([[c, s], [-s, c]]) / scale  # (row, col) out -> in
    centre = (size - 1) / 2.0
    shift = np.array([centre + translate[1] * size, centre + translate[0] * size])
    offset = centre - matrix @ shift
    expected = ndimage.affine_transform(
        x[0] / 255.0,
        matrix,
        offset=offset,
        order=1,
        mode="grid-constant",
        cval=fill,
        prefilter=False,
    )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    if fill:
        assert out[0, 0] == pytest.approx(fill)  # a corner rotated out of the image


@pytest.mark.parametrize("channels", [None, 3])
@pytest.mark.parametrize(
    "brightness,contrast", [(1.3, 1.0), (0.7, 1.0), (1.0, 0.6), (1.0, 1.4), (1.25, 0.65)]
)
def test_brightness_and_contrast_formulas(channels, brightness, contrast):
    # torchvision: brightness = clamp(b x), contrast = clamp(c x + (1 - c) mean(grey)).
    x = images(2, 9, 9, channels, seed=7)
    p = identity(2)
    p["brightness"], p["contrast"] = brightness, contrast
    out = ImageAugment(size=9).apply(x, p)
    for k in range(2):
        v = np.clip(brightness * (x[k] / 255.0), 0, 1)
        grey = v @ GREY_WEIGHTS if channels else v
        expected = np.clip(contrast * v + (1 - contrast) * grey.mean(), 0, 1)
        np.testing.assert_allclose(out[k], expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.5, 3.0])
@pytest.mark.parametrize("channels", [None, 3])
def test_blur_matches_scipy(sigma, channels):
    # The kernel's radius is ceil(3 sigma), mirror padding: scipy's gaussian_filter
    # with mode="mirror" and that radius. float32 sums of <= 19 taps: tolerance 2e-6.
    x = images(1, 21, 21, channels, seed=8)
    p = identity(1)
    p["sigma"] = sigma
    out = ImageAugment(size=21).apply(x, p)[0]
    r = math.ceil(3 * sigma)
    v = x[0] / 255.0
    sig = (sigma, sigma) if channels is None else (sigma, sigma, 0)
    rad = (r, r) if channels is None else (r, r, 0)
    expected = ndimage.gaussian_filter(v, sigma=sig, mode="mirror", radius=rad)
    np.testing.assert_allclose(out, expected, atol=2e-6, rtol=0)


def test_blur_wider_than_the_image():
    # radius 9 on a 5 x 5 output: the mirror folds several times, as scipy's does.
    x = images(1, 5, 5, seed=9)
    p = identity(1)
    p["sigma"] = 3.0
    out = ImageAugment(size=5).apply(x, p)[0]
    expected = ndimage.gaussian_filter(x[0] / 255.0, 3.0, mode="mirror", radius=9)
    np.testing.assert_allclose(out, expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("channels", [None, 3])
def test_full_pipeline_matches_reference(channels):
    # All transforms on at once, sampled parameters, non-square inputs, a fill.
    x = images(6, 50, 64, channels, seed=10)
    aug = ImageAugment(size=40, fill=0.25, seed=42)
    p = aug.sample_parameters(6, step=3)
    out = aug(x, step=3)
    np.testing.assert_array_equal(out, aug.apply(x, p))
    for k in range(6):
        np.testing.assert_allclose(
            out[k], reference(x[k], p[k], 40, fill=0.25), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize(
    "channels,normalization",
    [
        (None, (0.5, 0.25)),
        (3, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
        (3, ([0.5], [0.2])),
    ],
)
def test_normalization(channels, normalization):
    x = images(3, 30, 30, channels, seed=11)
    plain = ImageAugment(size=24, seed=1)
    normed = ImageAugment(size=24, seed=1, normalization=normalization)
    mean, std = (np.asarray(v, dtype=np.float64) for v in normalization)
    expected = (plain(x, step=2).astype(np.float64) - mean) / std
    np.testing.assert_allclose(normed(x, step=2), expected, atol=1e-5, rtol=1e-6)
    p = normed.sample_parameters(3, step=2)
    np.testing.assert_allclose(
        normed.apply(x, p)[1],
        reference(x[1], p[1], 24, normalization=normalization),
        atol=5e-5,
        rtol=0,
    )


# ---- inputs ----------------------------------------------------------------------------


def test_strided_views_and_memmaps_are_read_in_place(tmp_path):
    aug = ImageAugment(size=32, seed=2)
    base = images(5, 40, 44, 3, seed=12)
    expected = aug(np.ascontiguousarray(base[::2, ::-1, 1:]), step=1).copy()
    np.testing.assert_array_equal(aug(base[::2, ::-1, 1:], step=1), expected)
    # channels-first storage seen through a transpose
    planar = np.ascontiguousarray(base.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(aug(planar, step=4), aug(base, step=4))
    path = tmp_path / "images.u8"
    mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=base.shape)
    mm[:] = base
    mm.flush()
    ro = np.memmap(path, dtype=np.uint8, mode="r", shape=base.shape)
    np.testing.assert_array_equal(aug(ro, step=4), aug(base, step=4))


def test_a_list_of_different_sizes():
    aug = ImageAugment(size=28, seed=3)
    rng = np.random.default_rng(13)
    batch = [
        rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        for h, w in [(30, 40), (28, 28), (64, 33), (2, 2)]
    ]
    out = aug(batch, step=9)
    assert out.shape == (4, 28, 28)
    p = aug.sample_parameters(4, step=9)
    for k, img in enumerate(batch):
        np.testing.assert_array_equal(out[k], aug.apply([img], p[k : k + 1])[0])
        np.testing.assert_allclose(out[k], reference(img, p[k], 28), atol=1e-5)
    # a list of equal images is the same as the stacked array
    same = [b[:2, :2] for b in batch]
    np.testing.assert_array_equal(aug(same, step=1), aug(np.stack(same), step=1))


def test_single_channel_axis_and_grey_agree():
    x = images(3, 26, 26, seed=14)
    aug = ImageAugment(size=20)
    out4 = aug(x[..., None], step=2)
    assert out4.shape == (3, 20, 20, 1)
    np.testing.assert_array_equal(out4[..., 0], aug(x, step=2))


def test_inputs_are_left_unchanged_and_not_leaked():
    x = images(4, 30, 30, 3, seed=15)
    before = x.copy()
    batch = list(x)
    aug = ImageAugment(size=16)
    counts = [sys.getrefcount(a) for a in batch] + [sys.getrefcount(x)]
    for step in range(200):
        aug(batch, step=step)
        aug(x, step=step)
        with pytest.raises(ValueError):
            aug(x, out=np.zeros((4, 15, 15, 3), np.float32))
    gc.collect()
    assert [sys.getrefcount(a) for a in batch] + [sys.getrefcount(x)] == counts
    np.testing.assert_array_equal(x, before)


# ---- outputs -----------------------------------------------------------------------------


def test_out_is_written_and_returned():
    x = images(3, 30, 30, seed=16)
    aug = ImageAugment(size=24)
    out = np.full((3, 24, 24), np.nan, dtype=np.float32)
    result = aug(x, step=1, out=out)
    assert result is out
    np.testing.assert_array_equal(out, aug(x, step=1))
    p = aug.sample_parameters(3, 1)
    out2 = np.empty_like(out)
    assert aug.apply(x, p, out=out2) is out2
    np.testing.assert_array_equal(out2, out)


def test_internal_buffers_are_reused_only_when_free():
    x = images(2, 30, 30, seed=17)
    aug = ImageAugment(size=24)
    first = aug(x, step=1)
    kept = first.copy()
    second = aug(x, step=2)
    assert not np.shares_memory(first, second)  # first is still held: not overwritten
    np.testing.assert_array_equal(first, kept)
    address = first.__array_interface__["data"][0]
    del first
    third = aug(x, step=3)  # the released buffer comes back
    assert third.__array_interface__["data"][0] == address
    np.testing.assert_array_equal(third, aug.apply(x, aug.sample_parameters(2, 3)))
    view = third[0]
    del third
    fourth = aug(x, step=4)  # a view keeps its buffer alive and untouched
    assert not np.shares_memory(view, fourth)


# ---- randomness -------------------------------------------------------------------


def test_sampled_parameters_follow_their_ranges():
    n = 20000
    aug = ImageAugment(seed=7)
    p = aug.sample_parameters(n, step=11)
    crop = p["crop"]
    area = crop[:, 2] * crop[:, 3]
    ratio = crop[:, 2] / crop[:, 3]
    assert area.min() >= 0.6 - 1e-12 and area.max() <= 1.0 + 1e-12
    assert ratio.min() >= 0.75 - 1e-12 and ratio.max() <= 4 / 3 + 1e-12
    assert (crop[:, :2] >= 0).all() and (crop[:, 0] + crop[:, 2] <= 1 + 1e-12).all()
    assert (crop[:, 1] + crop[:, 3] <= 1 + 1e-12).all()
    # the crop's position is uniform over the room left
    room = 1 - crop[:, 2]
    ok = room > 1e-3
    assert stats.kstest(crop[ok, 0] / room[ok], "uniform").pvalue > 1e-4
    # the area follows torchvision's rejection sampling: compare with it in NumPy
    rng = np.random.default_rng(0)
    areas = []
    while len(areas) < n:
        s = rng.uniform(0.6, 1.0, size=10)
        r = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), size=10))
        good = (np.sqrt(s * r) <= 1) & (np.sqrt(s / r) <= 1)
        areas.append(s[good.argmax()] if good.any() else 1.0)
    assert stats.ks_2samp(area, areas).pvalue > 1e-4
    # flips at rate 1/2 (4 standard deviations: 0.014)
    assert abs(p["flip"].mean() - 0.5) < 0.014
    for field, lo, hi in [
        ("angle", -20, 20),
        ("scale", 0.95, 1.05),
        ("brightness", 0.6, 1.4),
        ("contrast", 0.6, 1.4),
        ("sigma", 0.1, 3.0),
    ]:
        v = p[field]
        assert v.min() >= lo and v.max() <= hi, field
        assert v.min() < lo + (hi - lo) * 0.01 and v.max() > hi - (hi - lo) * 0.01, field
        sd = (hi - lo) / math.sqrt(12 * n)
        assert abs(v.mean() - (lo + hi) / 2) < 5 * sd, field
        assert stats.kstest(v, "uniform", args=(lo, hi - lo)).pvalue > 1e-4, field
    for axis in range(2):
        v = p["translate"][:, axis]
        assert v.min() >= -0.1 and v.max() <= 0.1
        assert stats.kstest(v, "uniform", args=(-0.1, 0.2)).pvalue > 1e-4
    # draws are independent of each other
    assert abs(np.corrcoef(p["angle"], p["brightness"])[0, 1]) < 0.03


def test_parameters_are_a_pure_function_of_seed_step_index():
    aug = ImageAugment(seed=5)
    a = aug.sample_parameters(10, step=3)
    np.testing.assert_array_equal(a, aug.sample_parameters(10, step=3))
    np.testing.assert_array_equal(a[4:], aug.sample_parameters(6, step=3, first_index=4))
    assert not np.array_equal(a["angle"], aug.sample_parameters(10, step=4)["angle"])
    other_seed = ImageAugment(seed=6).sample_parameters(10, 3)
    assert not np.array_equal(a["angle"], other_seed["angle"])
    # switching a transform off leaves the others' draws alone
    b = ImageAugment(seed=5, blur_sigma=None, flip=False).sample_parameters(10, step=3)
    for field in ["crop", "angle", "translate", "scale", "brightness", "contrast"]:
        np.testing.assert_array_equal(a[field], b[field])
    assert (b["sigma"] == 0).all() and not b["flip"].any()


def test_switched_off_transforms_are_drawn_as_the_identity():
    p = ImageAugment(**ALL_OFF).sample_parameters(50, step=1)
    np.testing.assert_array_equal(p, identity(50))
    only_flip = ImageAugment(**{**ALL_OFF, "flip": 1.0}).sample_parameters(5, step=1)
    assert only_flip["flip"].all()


def test_crop_fallback_when_no_draw_fits():
    # a ratio of 2..3 with the whole area never fits: torchvision's fallback, the whole
    # width with the ratio clamped to 2, centred.
    p = ImageAugment(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0)).sample_parameters(3)
    np.testing.assert_allclose(p["crop"], [[0.0, 0.25, 1.0, 0.5]] * 3)
    p = ImageAugment(crop_scale=(1.0, 1.0), crop_ratio=(0.25, 0.5)).sample_parameters(1)
    np.testing.assert_allclose(p["crop"], [[0.25, 0.0, 0.5, 1.0]])
    p = ImageAugment(crop_scale=(0.7, 0.7), crop_ratio=None).sample_parameters(100)
    np.testing.assert_allclose(p["crop"][:, 2], math.sqrt(0.7))  # the image's aspect


def test_same_result_on_any_number_of_threads(threads):
    x = images(7, 70, 60, 3, seed=18)
    aug = ImageAugment(size=48, seed=9)
    convirt.set_num_threads(1)
    one = aug(x, step=12).copy()
    listed = aug(list(x), step=12).copy()
    convirt.set_num_threads(2)
    two = aug(x, step=12)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(listed, two)
    np.testing.assert_array_equal(aug(x, step=12), two)
    assert not np.array_equal(aug(x, step=13), one)


# ---- settings ---------------------------------------------------------------------


def test_defaults_repr_and_config_round_trip():
    aug = ImageAugment()
    assert aug.size == 224 and aug.crop_scale == (0.6, 1.0) and aug.flip == 0.5
    assert aug.degrees == (-20.0, 20.0) and aug.translate == (0.1, 0.1)
    assert aug.scale == (0.95, 1.05) and aug.brightness == (0.6, 1.4)
    assert aug.contrast == (0.6, 1.4) and aug.blur_sigma == (0.1, 3.0)
    assert aug.crop_ratio == pytest.approx((3 / 4, 4 / 3)) and aug.fill == 0.0
    assert "ImageAugment(size=224" in repr(aug) and "blur_sigma=(0.1, 3.0)" in repr(aug)
    custom = ImageAugment(
        96,
        degrees=(-5, 10),
        translate=(0.05, 0.2),
        blur_sigma=None,
        flip=True,
        normalization=(0.5, 0.25),
        seed=2**63 + 5,
    )
    again = ImageAugment(**custom.config)
    assert again.config == custom.config
    assert custom.blur_sigma is None and custom.flip == 0.5
    np.testing.assert_array_equal(
        custom.sample_parameters(8, 1), again.sample_parameters(8, 1)
    )


def test_pickle_round_trip():
    import pickle

    aug = ImageAugment(64, degrees=5, blur_sigma=None, normalization=(0.5, 0.25), seed=11)
    again = pickle.loads(pickle.dumps(aug))
    assert again.config == aug.config
    x = images(2, 70, 70, seed=19)
    np.testing.assert_array_equal(again(x, step=3), aug(x, step=3))


# ---- bad input (the array rules every entry point shares are in test_array_rules.py) ---


@pytest.fixture
def aug():
    return ImageAugment(size=16)


def test_wrong_dtype_in_a_list(aug):
    # an array's dtype, and out's: test_array_rules.py
    with pytest.raises(TypeError, match="uint8"):
        aug([np.zeros((20, 20), np.uint16)])


def test_not_an_array_or_list(aug):
    with pytest.raises(TypeError, match="images must be a uint8 NumPy array"):
        aug({"a": 1})
    with pytest.raises(TypeError, match="images\\[1\\] must be a NumPy array"):
        aug([np.zeros((4, 4), np.uint8), "not an image"])


def test_empty_batch(aug):
    with pytest.raises(ValueError, match="empty batch"):
        aug(np.zeros((0, 20, 20), np.uint8))
    with pytest.raises(ValueError, match="empty list"):
        aug([])


def test_too_small_images(aug):
    with pytest.raises(ValueError, match="at least 2 x 2"):
        aug(np.zeros((2, 1, 20), np.uint8))
    with pytest.raises(ValueError, match="at least 2 x 2"):
        aug([np.zeros((8, 8), np.uint8), np.zeros((5, 1), np.uint8)])


def test_wrong_channels(aug):
    # the rank: test_array_rules.py
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\)"):
        aug(np.zeros((2, 20, 20, 2), np.uint8))
    with pytest.raises(ValueError, match="must agree"):
        aug([np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8)])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"crop_scale": (0.9, 0.6)}, ValueError, "crop_scale"),
        ({"crop_scale": (0.0, 1.0)}, ValueError, "crop_scale"),
        ({"crop_scale": (0.5, 1.2)}, ValueError, "crop_scale"),
        ({"crop_scale": 0.5}, TypeError, "crop_scale must be a \\(low, high\\) pair"),
        ({"crop_scale": "ab"}, TypeError, "crop_scale"),
        ({"crop_ratio": (-1.0, 2.0)}, ValueError, "crop_ratio"),
        ({"crop_ratio": (2.0, 1.0)}, ValueError, "crop_ratio"),
        ({"flip": 1.5}, ValueError, "flip must be a probability"),
        ({"flip": (0.2, 0.4)}, TypeError, "flip"),
        ({"degrees": -5}, ValueError, "degrees must be >= 0"),
        ({"degrees": (30, 10)}, ValueError, "degrees"),
        ({"degrees": (-200, 0)}, ValueError, "degrees"),
        ({"degrees": (1, 2, 3)}, TypeError, "degrees"),
        ({"translate": 1.5}, ValueError, "translate"),
        ({"translate": -0.1}, ValueError, "translate"),
        ({"scale": (0.0, 1.0)}, ValueError, "scale"),
        ({"scale": (1.1, 0.9)}, ValueError, "scale"),
        ({"brightness": (1.4, 0.6)}, ValueError, "brightness"),
        ({"brightness": (-0.1, 1.0)}, ValueError, "brightness"),
        ({"contrast": (1.4, 0.6)}, ValueError, "contrast"),
        ({"contrast": (float("nan"), 1.0)}, ValueError, "contrast"),
        ({"blur_sigma": (0.0, 1.0)}, ValueError, "blur_sigma"),
        ({"blur_sigma": (1.0, 100.0)}, ValueError, "blur_sigma"),
        ({"size": 1}, ValueError, "size must be in"),
        ({"size": 0}, ValueError, "size must be in"),
        ({"fill": 2.0}, ValueError, "fill"),
        ({"fill": -0.1}, ValueError, "fill"),
        ({"normalization": (0.5,)}, TypeError, "normalization"),
        ({"normalization": ((0.5, 0.5), 0.2)}, ValueError, "normalization"),
        ({"normalization": (0.5, 0.0)}, ValueError, "positive"),
        ({"normalization": ((1, 2, 3), (1, 2))}, ValueError, "normalization"),
        # factors and stds the float32 math cannot take: the output was all NaN or Inf
        ({"brightness": (1e39, 1e39)}, ValueError, r"brightness .* <= 3.40282e\+38"),
        ({"contrast": (0.5, 1e300)}, ValueError, r"contrast .* <= 3.40282e\+38"),
        ({"normalization": (0.0, 1e-45)}, ValueError, r"stds in \[1e-6"),
        ({"normalization": (0.0, 1e-7)}, ValueError, "std 1e-07"),
        ({"normalization": (0.5, 1e39)}, ValueError, "std 1e\\+39"),
        ({"normalization": (-2e6, 1.0)}, ValueError, r"means in \[-1e6, 1e6\]"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        ImageAugment(**kwargs)


def test_a_refused_reinit_changes_nothing():
    # aug.__init__(32, normalization=(0.5, 0)) raised but had already dropped the
    # existing normalization (read_normalization wrote into the object, then checked).
    aug = ImageAugment(16, **ALL_OFF, normalization=(0.5, 0.25), seed=3)
    x = images(2, 16, 16)
    config, before = aug.config, aug(x).copy()
    for kwargs in [
        {"normalization": (0.5, 0)},
        {"normalization": (0.5, 1e-45)},
        {"normalization": ((0.5, 0.5, 0.5), (0.2, 0.2))},
        {"brightness": (1e39, 1e39)},
        {"size": 1},
        {"seed": -1},
    ]:
        with pytest.raises(ValueError):
            aug.__init__(**{"size": 32, **ALL_OFF, **kwargs})
        assert aug.config == config, kwargs
        np.testing.assert_array_equal(aug(x), before)


def test_extreme_accepted_factors_and_stds_give_finite_output():
    x = images(3, 12, 12, 3)
    for kwargs in [
        {"brightness": (3.4e38, 3.4e38)},
        {"contrast": (3.4e38, 3.4e38)},
        {"brightness": (0.0, 0.0), "contrast": (3.4e38, 3.4e38)},
        {"normalization": (1e6, 1e-6)},
        {"normalization": (-1e6, 3.4e38)},
    ]:
        aug = ImageAugment(8, **{**ALL_OFF, **kwargs})
        assert np.isfinite(aug(x)).all(), kwargs
    p = identity(3)
    p["brightness"] = 3.4e38  # every pixel but black ones becomes white
    out = ImageAugment(12, **ALL_OFF).apply(x, p)
    np.testing.assert_array_equal(out, (x > 0).astype(np.float32))


def test_rgb_normalization_on_grey_images():
    aug = ImageAugment(size=8, normalization=((0.4, 0.5, 0.6), (0.2, 0.2, 0.2)))
    with pytest.raises(ValueError, match="3 values"):
        aug(np.zeros((1, 10, 10), np.uint8))


def test_bad_step(aug):
    x = np.zeros((1, 10, 10), np.uint8)
    with pytest.raises(ValueError, match="step"):
        aug(x, step=-1)
    with pytest.raises(TypeError, match="step"):
        aug(x, step=1.5)
    with pytest.raises(ValueError, match="n must be >= 0"):
        aug.sample_parameters(-1)


def test_bad_parameters(aug):
    x = np.zeros((2, 10, 10), np.uint8)
    with pytest.raises(TypeError, match="parameter_dtype"):
        aug.apply(x, np.zeros((2, 12)))
    with pytest.raises(TypeError, match="structured array"):
        aug.apply(x, {"angle": [0, 0]})
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        aug.apply(x, identity(3))
    with pytest.raises(ValueError, match="C-contiguous"):
        aug.apply(x, identity(4)[::2])
    for field, value, match in [
        ("crop", (0.5, 0.0, 0.6, 1.0), "crop of image 1"),
        ("crop", (0.0, 0.0, 0.0, 1.0), "crop of image 1"),
        ("crop", (-0.1, 0.0, 0.5, 1.0), "crop of image 1"),
        ("scale", 0.0, "scale of image 1"),
        ("brightness", -1.0, "image 1"),
        ("brightness", 1e300, "image 1"),
        ("contrast", 1e39, "image 1"),
        ("sigma", 65.0, "sigma of image 1"),
        ("sigma", -1.0, "sigma of image 1"),
        ("angle", float("nan"), "image 1 are not all finite"),
    ]:
        p = identity(2)
        p[field][1] = value
        with pytest.raises(ValueError, match=match):
            aug.apply(x, p)


def test_paper_augment_scales_the_blur_to_the_view_size():
    assert convirt.paper_augment(224).blur_sigma == pytest.approx((0.1, 3.0))
    assert convirt.paper_augment(64).blur_sigma == pytest.approx((0.1, 3.0 * 64 / 224))
    small = convirt.paper_augment(64)
    assert small.crop_scale == pytest.approx((0.6, 1.0)) and small.flip == 0.5
