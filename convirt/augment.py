"""Image views: the paper's random transforms and the defaults that are policy, in one
place.

- :class:`ImageAugment` - the transforms in C (``convirt._core.ImageAugment``) with the
  ConVIRT paper's ranges as its keyword defaults: random crop keeping 60-100% of the
  area, horizontal flip with p = 0.5, rotation +-20 degrees, translation up to 10%,
  scale 0.95-1.05, brightness and contrast factors in [0.6, 1.4], Gaussian blur with
  sigma in [0.1, 3.0], output 224 x 224. Every setting is passed to C explicitly.
- :func:`paper_augment` - those ranges at another view size (the blur scaled to it);
  :func:`mild_augment` - milder ones for short runs on small views; ``AUGMENTS`` names
  both.
- :func:`eval_augment` (and :meth:`ImageAugment.eval_view`) - the evaluation view:
  the same resize, nothing random.
- ``IMAGENET_MEAN`` / ``IMAGENET_STD`` and their grey level ``GRAY_MEAN`` /
  ``GRAY_STD``: the normalisation a ResNet expects, by :func:`resnet_normalization`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._core import ImageAugment as _CImageAugment

# A range (low, high); None or False: off; True: the paper's. degrees and translate also
# take one number.
Range = Sequence[float] | float | bool | None
Normalization = tuple[Sequence[float], Sequence[float]]

__all__ = [
    "AUGMENTS",
    "GRAY_MEAN",
    "GRAY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageAugment",
    "eval_augment",
    "mild_augment",
    "paper_augment",
    "resnet_normalization",
]

# The normalisation torchvision's ImageNet ResNets were trained with, and its grey level
# for one-channel radiographs (a grey image seen as R = G = B).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)

# The paper's ranges (ConVIRT, appendix): True for a setting means these.
PAPER_RANGES: dict[str, Any] = {
    "crop_scale": (0.6, 1.0),
    "crop_ratio": (3 / 4, 4 / 3),
    "flip": 0.5,
    "degrees": 20.0,
    "translate": 0.1,
    "scale": (0.95, 1.05),
    "brightness": (0.6, 1.4),
    "contrast": (0.6, 1.4),
    "blur_sigma": (0.1, 3.0),
}
PAPER_SIZE = 224


def resnet_normalization(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a ResNet's input: ImageNet's per channel, or its grey level for one
    channel."""
    if in_channels == 1:
        return GRAY_MEAN, GRAY_STD
    return IMAGENET_MEAN[:in_channels], IMAGENET_STD[:in_channels]


class ImageAugment(_CImageAugment):
    __doc__ = _CImageAugment.__doc__

    def __init__(
        self,
        size: int = PAPER_SIZE,
        *,
        crop_scale: Range = PAPER_RANGES["crop_scale"],
        crop_ratio: Range = PAPER_RANGES["crop_ratio"],
        flip: Range = PAPER_RANGES["flip"],
        degrees: Range = PAPER_RANGES["degrees"],
        translate: Range = PAPER_RANGES["translate"],
        scale: Range = PAPER_RANGES["scale"],
        brightness: Range = PAPER_RANGES["brightness"],
        contrast: Range = PAPER_RANGES["contrast"],
        blur_sigma: Range = PAPER_RANGES["blur_sigma"],
        fill: float = 0.0,
        normalization: Normalization | None = None,
        seed: int = 0,
    ) -> None:
        settings = {
            "crop_scale": crop_scale,
            "crop_ratio": crop_ratio,
            "flip": flip,
            "degrees": degrees,
            "translate": translate,
            "scale": scale,
            "brightness": brightness,
            "contrast": contrast,
            "blur_sigma": blur_sigma,
        }
        for name, value in settings.items():
            if value is True:
                settings[name] = PAPER_RANGES[name]
        super().__init__(
            size, **settings, fill=fill, normalization=normalization, seed=seed
        )

    def eval_view(self) -> ImageAugment:
        """The evaluation view of these transforms: the same size and normalization,
        nothing random (see :func:`eval_augment`)."""
        return eval_augment(self.size, normalization=self.normalization)


def eval_augment(size: int, *, normalization: Normalization | None = None) -> ImageAugment:
    """The view images are evaluated on: resized to ``size`` x ``size`` (the
    augmentation's bilinear pass, no crop), with ``normalization`` when given, nothing
    random - what the Trainer validates on and the demo and ``convirt embed`` encode."""
    return ImageAugment(
        size,
        crop_scale=None,
        crop_ratio=None,
        flip=None,
        degrees=None,
        translate=None,
        scale=None,
        brightness=None,
        contrast=None,
        blur_sigma=None,
        normalization=normalization,
    )


def paper_augment(image_size: int, seed: int = 0) -> ImageAugment:
    """ConVIRT's image transforms for views of image_size pixels: the paper's ranges,
    with the Gaussian blur's sigma range (0.1, 3.0) given at 224 px scaled to the view
    size, so that a small view is blurred as much as the paper's, not more (at 64 px an
    unscaled sigma of 3 erases findings a few pixels wide)."""
    low, high = PAPER_RANGES["blur_sigma"]
    return ImageAugment(
        image_size, blur_sigma=(low, high * image_size / PAPER_SIZE), seed=seed
    )


def mild_augment(image_size: int, seed: int = 0, flip: Range = 0.5) -> ImageAugment:
    """Milder transforms than the paper's for short runs on small views: crop 80-100%
    of the area, horizontal flip with probability ``flip`` (None: never; reports name
    the side of a finding), rotation up to 5 degrees, translation 5%, brightness and
    contrast factors in [0.8, 1.2], no blur."""
    return ImageAugment(
        image_size,
        crop_scale=(0.8, 1.0),
        flip=flip,
        degrees=5.0,
        translate=0.05,
        brightness=(0.8, 1.2),
        contrast=(0.8, 1.2),
        blur_sigma=None,
        seed=seed,
    )


AUGMENTS = {"paper": paper_augment, "mild": mild_augment}
