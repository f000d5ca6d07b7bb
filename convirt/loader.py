"""BatchLoader: the one batching path. Batches of a dataset in an order that is a function
of (seed, epoch), the next batch prepared in a background thread while the current one
is used; Trainer.fit iterates it."""

import concurrent.futures
from typing import NamedTuple

import numpy as np

from .images import _check_size

__all__ = ["Batch", "BatchLoader", "Pairs", "as_pairs"]


class Batch(NamedTuple):
    """One batch: ``indices`` int64 (B,) into the dataset, ``images`` uint8
    (B, H, W[, C]) (a list of B arrays when the dataset's images are a sequence of
    arrays), ``reports`` list of B str (None when the dataset has none), ``labels``
    float32 (B, L) or None, and where it stands: ``epoch`` and ``position`` (the batch's
    number in its epoch)."""

    indices: np.ndarray
    images: np.ndarray
    reports: list
    labels: object
    epoch: int = None
    position: int = None


class BatchLoader:
    """Batches of a dataset in a deterministic order, the next one prepared in a
    background thread while the current one is used.

    Parameters
    ----------
    dataset : PairedDataset (or anything with ``__len__``, ``reports`` and
        ``load_image``). One with a uint8 (N, H, W[, C]) ``.images`` array or memmap is
        gathered from directly; one whose ``.images`` is another sequence of arrays
        gives lists of them (unless ``size`` is given). ``reports`` may be None
        (images alone).
    batch_size : int, default 32
    shuffle : bool, default True
        Epoch e uses the permutation of ``numpy.random.default_rng([seed, e])``; the
        indices inside a batch are sorted, so memmap reads go forward. Without shuffle,
        batches are consecutive and, from an array, are views (no copy).
    seed : int, default 0
    drop_last : bool, default True
        Leave out the last, smaller batch (contrastive losses prefer equal batches).
    prefetch : bool, default True
        Prepare batch k+1 in a worker thread while batch k is being used (one step
        ahead). With False everything happens in the calling thread.
    size : int, optional
        For datasets without an ``.images`` array: images are decoded and resized to
        (size, size) as they are loaded; required for such datasets.
    transform : callable, optional
        ``transform(batch) -> anything``, run in the worker thread on each Batch; the
        loader yields what it returns (augmentation that releases the GIL runs in
        parallel with the training step).
    shard : (rank, size), default (0, 1)
        Data parallelism: ``batch_size`` is the global batch and this loader reads only
        rank's ``batch_size // size`` of each one (its rows ``rank * b .. rank * b + b -
        1`` of the batch's sorted indices), so that ``size`` loaders together read every
        pair of the epoch's order exactly once, as one loader of ``batch_size`` does.
        ``batch_size`` must be a multiple of ``size``.

    Iterating gives one epoch: the first ``for`` loop is epoch 0, the next epoch 1, and
    so on; ``set_epoch(e)`` chooses the next one. ``len(loader)`` is the batch count.
    ``iterate(epoch, start)`` gives the batches of one epoch from its batch ``start`` on
    (what a resumed training run needs), without touching ``epoch``.
    """

    def __init__(
        self,
        dataset,
        batch_size=32,
        shuffle=True,
        seed=0,
        drop_last=True,
        prefetch=True,
        size=None,
        transform=None,
        shard=(0, 1),
    ):
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        images = getattr(dataset, "images", None)
        self._array = (
            images if isinstance(images, np.ndarray) and images.ndim in (3, 4) else None
        )
        # Another sequence of arrays (a list of images of different sizes, rows of a
        # memmap picked by an index): batches are lists of its items.
        self._sequence = (
            images
            if self._array is None
            and size is None
            and images is not None
            and hasattr(images, "__getitem__")
            else None
        )
        if self._array is None and self._sequence is None and size is None:
            raise ValueError(
                f"{type(dataset).__name__} has no (N, H, W) images array; "
                f"give size= to decode and resize images as they load, or "
                f"prepare() the dataset first"
            )
        rank, ranks = (int(x) for x in shard)
        if not (ranks >= 1 and 0 <= rank < ranks):
            raise ValueError(
                f"shard must be (rank, size) with 0 <= rank < size; got {shard}"
            )
        if batch_size % ranks:
            raise ValueError(
                f"the global batch_size {batch_size} must be a multiple of the {ranks} "
                f"ranks (each reads batch_size / ranks pairs of it)"
            )
        if ranks > 1 and not drop_last:
            raise ValueError("a sharded loader needs drop_last=True (equal shares)")
        self.shard = (rank, ranks)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable; got {type(transform).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.prefetch = bool(prefetch)
        self.size = None if size is None else _check_size(size)
        self.transform = transform
        self.epoch = 0

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch):
        """The epoch the next iteration runs (its order is a function of seed, epoch)."""
        self.epoch = int(epoch)

    def batch_indices(self, epoch):
        """The list of index arrays (int64) of each batch of ``epoch``."""
        n = len(self.dataset)
        order = (
            np.random.default_rng([self.seed, int(epoch)]).permutation(n)
            if self.shuffle
            else np.arange(n)
        )
        count = len(self)
        batches = [
            order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(count)
        ]
        return [
            np.sort(b).astype(np.int64) if self.shuffle else b.astype(np.int64)
            for b in batches
        ]

    def load_batch(self, indices, *, epoch=None, position=None):
        """The Batch of the given dataset indices (transform not applied)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._array is not None:
            contiguous = len(indices) > 0 and np.array_equal(
                indices, np.arange(indices[0], indices[0] + len(indices))
            )
            if contiguous:
                images = self._array[indices[0] : indices[0] + len(indices)]
            else:
                images = np.take(self._array, indices, axis=0)
        elif self._sequence is not None:
            images = [self._sequence[int(k)] for k in indices]  # views, not copies
        else:
            images = (
                np.stack([self.dataset.load_image(int(k), size=self.size) for k in indices])
                if len(indices)
                else np.zeros((0, self.size, self.size), np.uint8)
            )
        reports = getattr(self.dataset, "reports", None)
        if reports is not None:
            reports = [reports[k] for k in indices]
        labels = getattr(self.dataset, "labels", None)
        return Batch(
            indices,
            images,
            reports,
            None if labels is None else labels[indices],
            epoch,
            position,
        )

    def _make(self, epoch, position, indices):
        rank, ranks = self.shard
        if ranks > 1:
            share = len(indices) // ranks
            indices = indices[rank * share : (rank + 1) * share]
        batch = self.load_batch(indices, epoch=epoch, position=position)
        return batch if self.transform is None else self.transform(batch)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self.iterate(epoch)

    def iterate(self, epoch, start=0):
        """The batches of ``epoch`` from its batch ``start`` on, made as when iterating
        (the next one prefetched, the transform applied); ``self.epoch`` is left as it
        is."""
        epoch, start = int(epoch), int(start)
        batches = self.batch_indices(epoch)
        if not 0 <= start <= len(batches):
            raise ValueError(
                f"start must be in [0, {len(batches)}] (the batches of an "
                f"epoch), got {start}"
            )
        return self._iterate(epoch, start, batches)

    def _iterate(self, epoch, start, batches):
        if not self.prefetch:
            for b in range(start, len(batches)):
                yield self._make(epoch, b, batches[b])
            return
        with concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="convirt-prefetch"
        ) as worker:
            future = (
                worker.submit(self._make, epoch, start, batches[start])
                if start < len(batches)
                else None
            )
            try:
                for b in range(start, len(batches)):
                    batch = future.result()
                    future = (
                        worker.submit(self._make, epoch, b + 1, batches[b + 1])
                        if b + 1 < len(batches)
                        else None
                    )
                    yield batch
            finally:
                if future is not None:
                    future.cancel()

    def __repr__(self):
        return (
            f"BatchLoader({type(self.dataset).__name__}(n={len(self.dataset)}), "
            f"batch_size={self.batch_size}, shuffle={self.shuffle}, seed={self.seed}, "
            f"drop_last={self.drop_last}, prefetch={self.prefetch})"
        )


class Pairs:
    """(images, reports) as the dataset a BatchLoader reads."""

    def __init__(self, images, reports):
        self.images, self.reports = images, reports

    def __len__(self):
        return len(self.images)


def as_pairs(data, name):
    """(images, reports) from a tuple or an object with .images and .reports."""
    if data is None:
        return None
    if isinstance(data, tuple) and len(data) == 2:
        images, reports = data
    elif hasattr(data, "images"):
        images, reports = data.images, getattr(data, "reports", None)
    else:
        raise TypeError(
            f"{name} must be (images, reports) or a dataset with .images and "
            f".reports, got {type(data).__name__}"
        )
    if reports is not None and len(reports) != len(images):
        raise ValueError(f"{name}: {len(images)} images but {len(reports)} reports")
    if len(images) == 0:
        raise ValueError(f"{name} is empty")
    return images, reports
