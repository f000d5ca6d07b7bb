"""What Encoder.encode and embed accept as images: float intensities in [0, 1] (0-255
floats are refused with a message that says to divide by 255), and PyTorch's
(N, C, H, W) layout, read through a transposed view without a copy."""

import numpy as np
import pytest

import convirt
from convirt.encoder import FLOAT_IMAGE_RANGE


@pytest.fixture(scope="module")
def grey():
    return convirt.Encoder.resnet18(1, proj_dim=8, proj_hidden=8)


@pytest.fixture(scope="module")
def rgb():
    return convirt.Encoder.resnet18(3, proj_dim=8, proj_hidden=8)


def uint8_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("method", ["encode", "embed"])
def test_float_images_on_the_0_255_scale_are_refused(grey, method):
    images = uint8_images((2, 32, 32)).astype(np.float32)  # 0-255, not divided
    with pytest.raises(ValueError, match=r"\[0, 1\].*from 0 to 25\d: divide 0-255 images"):
        getattr(grey, method)(images)


def test_the_float_range_check_bounds(grey):
    low, high = FLOAT_IMAGE_RANGE
    assert (low, high) == (-0.5, 1.5)
    images = np.zeros((2, 32, 32), np.float32)
    images[0, 0, 0], images[1, 0, 0] = low, high  # the bounds themselves pass
    assert grey.encode(images).shape == (2, 512)
    for value in (low - 0.01, high + 0.01):
        images[1, 5, 5] = value
        with pytest.raises(ValueError, match="divide 0-255 images by 255"):
            grey.encode(images)
        images[1, 5, 5] = 0.0


def test_a_later_batch_out_of_range_is_refused_too(grey):
    images = np.random.default_rng(1).random((5, 32, 32), dtype=np.float32)
    images[4] *= 255
    with pytest.raises(ValueError, match="intensities in"):
        grey.encode(images, batch_size=2)


def test_float_images_in_range_give_the_uint8_features(grey):
    images = uint8_images((3, 32, 32), seed=2)
    np.testing.assert_allclose(
        grey.encode(images.astype(np.float32) / 255), grey.encode(images), atol=1e-5
    )


def test_nan_images_are_still_the_cores_nonfinite_error(grey):
    images = np.zeros((2, 32, 32), np.float32)
    images[1, 3, 3] = np.nan
    with pytest.raises(convirt.NonFiniteError, match="NaN"):
        grey.encode(images)


@pytest.mark.parametrize("channels", [1, 3])
def test_pytorch_layout_is_read_as_a_transposed_view(grey, rgb, channels, monkeypatch):
    encoder = grey if channels == 1 else rgb
    nhwc = uint8_images((3, 40, 36, channels), seed=3)
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))  # (N, C, H, W)
    expected = encoder.encode(nhwc if channels == 3 else nhwc[..., 0])
    seen = []
    forward = type(encoder).forward

    def spy(self, x, *args, **kwargs):
        seen.append(x)
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(type(encoder), "forward", spy)
    np.testing.assert_array_equal(encoder.encode(nchw), expected)
    np.testing.assert_array_equal(encoder.embed(nchw), encoder.embed(nhwc))
    assert seen[0].shape == (3, 40, 36, channels)
    assert np.shares_memory(seen[0], nchw)  # no copy


def test_pytorch_layout_with_other_channels_says_so(grey):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) with C = 3.*in_channels=1"):
        grey.encode(uint8_images((2, 3, 32, 32)))
