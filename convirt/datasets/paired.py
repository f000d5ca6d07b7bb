"""The base of every dataset and the in-memory one.

Every dataset has ``len(dataset)``, ``dataset[i] -> (image, report)``, ``.reports``,
``.sources`` (where entry i came from), ``.labels`` ((N, L) float32 or None),
``.label_names`` and ``load_image(i, size=None)``.
"""

import numpy as np

from ..images import _check_size, decode_image, resize_center_crop

__all__ = ["ArrayDataset", "PairedDataset"]


class PairedDataset:
    """Base of every dataset: N (image, report) pairs.

    Subclasses fill ``reports`` (list of N str), ``sources`` (list of N str: a file path
    or ``"array[i]"``), ``labels`` ((N, L) float32 with NaN for unknown, or None),
    ``label_names`` (list of L str, or None), and implement ``_load(index, size)``.
    """

    reports = ()
    sources = ()
    labels = None
    label_names = None

    def __len__(self):
        return len(self.reports)

    def _check_index(self, index):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset index must be an integer; got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} pairs")
        return int(index) % n

    def load_image(self, index, size=None):
        """Image ``index`` as grayscale uint8 (H, W), or (size, size) when ``size`` is
        given (shorter side resized, centre cropped). Raises FileNotFoundError for a
        missing file and ImageDecodeError for a corrupt one."""
        return self._load(
            self._check_index(index), None if size is None else _check_size(size)
        )

    def _load(self, index, size):
        raise NotImplementedError

    def __getitem__(self, index):
        index = self._check_index(index)
        return self._load(index, None), self.reports[index]

    def __repr__(self):
        labels = "" if self.label_names is None else f", labels={len(self.label_names)}"
        return f"{type(self).__name__}(n={len(self)}{labels})"


def _check_reports(reports, n=None, what="reports"):
    if isinstance(reports, (str, bytes)):
        raise TypeError(
            f"{what} must be a list of strings, one per image; got a single "
            f"{type(reports).__name__}"
        )
    reports = list(reports)
    for k, report in enumerate(reports):
        if not isinstance(report, str):
            raise TypeError(f"{what}[{k}] must be a str; got {type(report).__name__}")
    if n is not None and len(reports) != n:
        raise ValueError(
            f"got {n} images but {len(reports)} {what}; they must pair up one to one"
        )
    return reports


def _check_labels(labels, label_names, n):
    if labels is None:
        if label_names is not None:
            raise ValueError("label_names given without labels")
        return None, None
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[0] != n:
        raise ValueError(
            f"labels must have shape ({n}, L) for {n} images; got {labels.shape}"
        )
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == bool):
        raise TypeError(f"labels must be numeric; got dtype {labels.dtype}")
    labels = labels.astype(np.float32, copy=False)
    if label_names is None:
        label_names = [f"label_{k}" for k in range(labels.shape[1])]
    label_names = [str(name) for name in label_names]
    if len(label_names) != labels.shape[1]:
        raise ValueError(
            f"{len(label_names)} label_names for {labels.shape[1]} label columns"
        )
    return labels, label_names


class ArrayDataset(PairedDataset):
    """Pairs from memory: uint8 images and a list of report strings.

    Parameters
    ----------
    images : uint8 ndarray (N, H, W), or a sequence of N uint8 (H_i, W_i) arrays
        Kept as given (no copy). A (N, H, W) array is also ``.images``, which
        :class:`BatchLoader` gathers batches from directly.
    reports : sequence of N str
    labels : array (N, L), optional
        Stored as float32 (NaN = unknown).
    label_names : sequence of L str, optional
    """

    def __init__(self, images, reports, labels=None, label_names=None):
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8:
                raise TypeError(
                    f"images must be uint8 (N, H, W); got dtype {images.dtype}"
                    f" (scale to 0-255 and convert with .astype(np.uint8))"
                )
            if images.ndim != 3:
                raise ValueError(
                    f"images must be uint8 (N, H, W) grayscale; got shape {images.shape}"
                )
        else:
            images = list(images)
            for k, image in enumerate(images):
                if (
                    not isinstance(image, np.ndarray)
                    or image.dtype != np.uint8
                    or image.ndim != 2
                ):
                    raise TypeError(
                        f"images[{k}] must be a uint8 (H, W) array; got {_describe(image)}"
                    )
        self.images = images
        self.reports = _check_reports(reports, len(images))
        self.sources = [f"array[{k}]" for k in range(len(images))]
        self.labels, self.label_names = _check_labels(labels, label_names, len(images))

    def _load(self, index, size):
        image = self.images[index]
        if size is None:
            return image
        return resize_center_crop(np.ascontiguousarray(image), size)

    def __getitem__(self, index):
        index = self._check_index(index)
        return self.images[index], self.reports[index]


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"a {type(value).__name__}"


class _FileDataset(PairedDataset):
    """Datasets whose images are files: ``sources`` are the paths."""

    def _load(self, index, size):
        return decode_image(self.sources[index], size=size)
