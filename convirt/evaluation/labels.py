"""Labels: checks of features and labels, the label-fraction sampling of the paper's
1% / 10% / 100% columns (:func:`sample_fraction`), and how a task's labels are encoded
and scored (AUC or accuracy; binary, multiclass or multi-label)."""

import numpy as np

__all__ = ["sample_fraction"]

_METRICS = {"auc": "AUC", "accuracy": "accuracy"}


def _as_features(x, name, n_rows=None, n_cols=None):
    """A finite real 2-D array (not copied when it already is one)."""
    x = np.asarray(x)
    if x.dtype == object or not (
        np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
    ):
        raise TypeError(f"{name} must be a real-valued array, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (n_samples, n_features), got shape {x.shape}"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {x.shape}")
    if n_rows is not None and x.shape[0] != n_rows:
        raise ValueError(f"{name} has {x.shape[0]} rows, expected {n_rows}")
    if n_cols is not None and x.shape[1] != n_cols:
        raise ValueError(
            f"{name} has {x.shape[1]} features, but the training features have {n_cols}"
        )
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} contains NaN or Inf in {len(rows)} of {len(x)} rows "
            f"(first: row {rows[0]}); check the encoder's inputs"
        )
    return x


def _check_length(labels, n, name, features_name):
    if len(labels) != n:
        raise ValueError(
            f"{name} has {len(labels)} rows but {features_name} has {n}: "
            "one label (row) per sample is needed"
        )


def _binary_matrix(y, name):
    """A (N, K) 0/1 label matrix as int8, or a clear error."""
    y = np.asarray(y)
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise TypeError(f"multi-label {name} must be numeric 0/1, got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"multi-label {name} must be 0 or 1, got {y[i, j]} at [{i}, {j}]; "
            "map uncertain (-1) and missing (NaN) labels to 0 or 1 first"
        )
    return y.astype(np.int8)


def _is_multilabel(y, multilabel, name):
    y = np.asarray(y)
    if y.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D (one class per sample) or 2-D (multi-label "
            f"0/1 columns), got shape {y.shape}"
        )
    if multilabel is None:
        return y.ndim == 2 and y.shape[1] > 1
    if multilabel and y.ndim != 2:
        raise ValueError(
            f"multilabel=True needs 2-D {name} (n_samples, n_labels), got shape {y.shape}"
        )
    if not multilabel and y.ndim == 2 and y.shape[1] != 1:
        raise ValueError(
            f"multilabel=False needs 1-D {name} (one class per sample), got shape {y.shape}"
        )
    return bool(multilabel)


# ---- label fractions ---------------------------------------------------------------------


def _check_fraction(fraction):
    if isinstance(fraction, (bool, np.bool_)) or not isinstance(
        fraction, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not (0 < fraction <= 1):
        raise ValueError(
            f"fraction must be in (0, 1] (the share of training labels kept), "
            f"got {fraction}"
        )
    return float(fraction)


def _allocate(counts, size, floor):
    """Per-class sample sizes proportional to counts, each >= floor and <= its count,
    summing to max(size, floor * n_classes) (largest remainders get the rounding)."""
    counts = np.asarray(counts, dtype=np.int64)
    quota = size * counts / counts.sum()
    alloc = np.clip(np.floor(quota).astype(np.int64), floor, counts)
    target = max(size, floor * len(counts))
    remainder = quota - alloc
    while alloc.sum() < target:
        room = alloc < counts
        best = np.flatnonzero(room)[np.argmax(remainder[room])]
        alloc[best] += 1
        remainder[best] -= 1
    while alloc.sum() > target:
        spare = alloc > floor
        if not spare.any():
            break
        worst = np.flatnonzero(spare)[np.argmin(remainder[spare])]
        alloc[worst] -= 1
        remainder[worst] += 1
    return alloc


def sample_fraction(labels, fraction, seed=0, *, min_per_class=1):
    """Indices of a random subset holding ``fraction`` of the samples, in which every
    class keeps at least ``min_per_class`` positives (and, for multi-label, negatives).

    Parameters
    ----------
    labels : array (N,) of class labels (any values), or (N, K) 0/1 multi-label matrix.
    fraction : float in (0, 1]; 1 returns every index.
    seed : int; the same (labels, fraction, seed) always gives the same subset.
    min_per_class : int >= 1.

    Returns
    -------
    Sorted int64 indices. Their number is ``round(fraction * N)`` (at least 1) unless
    keeping every class needs more: then it is what the classes need (single-label:
    ``min_per_class`` per class; multi-label: what the greedy pass below took).
    Single-label subsets are stratified: each class gets its share of the size
    (largest remainders get the rounding), never less than ``min_per_class``.
    Multi-label subsets first take, from the rarest column on, random positives and
    negatives that the subset still lacks, then fill up uniformly at random.

    Raises ValueError when a class (column) has fewer than ``min_per_class`` positives
    (or negatives) in ``labels``, for a fraction outside (0, 1], and for bad labels.
    """
    fraction = _check_fraction(fraction)
    if int(min_per_class) != min_per_class or min_per_class < 1:
        raise ValueError(f"min_per_class must be an integer >= 1, got {min_per_class}")
    min_per_class = int(min_per_class)
    labels = np.asarray(labels)
    if labels.ndim not in (1, 2) or len(labels) == 0:
        raise ValueError(
            f"labels must be a non-empty 1-D array of classes or a 2-D 0/1 "
            f"matrix, got shape {labels.shape}"
        )
    n = len(labels)
    if fraction == 1.0:
        return np.arange(n, dtype=np.int64)
    size = max(1, round(fraction * n))
    rng = np.random.default_rng(seed)

    if labels.ndim == 1 or labels.shape[1] == 1:
        labels = labels.reshape(n)
        classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
        short = counts < min_per_class
        if short.any():
            listed = ", ".join(
                f"{c!r} ({k})"
                for c, k in zip(classes[short].tolist(), counts[short].tolist())
            )
            raise ValueError(
                f"too few samples to keep {min_per_class} of every class: {listed}"
            )
        alloc = _allocate(counts, size, min_per_class)
        chosen = [
            rng.choice(np.flatnonzero(codes == c), alloc[c], replace=False)
            for c in range(len(classes))
        ]
        return np.sort(np.concatenate(chosen)).astype(np.int64)

    y = _binary_matrix(labels, "labels")
    positives = y.sum(axis=0)
    negatives = n - positives
    short = (positives < min_per_class) | (negatives < min_per_class)
    if short.any():
        listed = ", ".join(
            f"column {j} ({positives[j]} positives, {negatives[j]} negatives)"
            for j in np.flatnonzero(short)
        )
        raise ValueError(
            f"too few positives or negatives to keep {min_per_class} of each "
            f"in every column: {listed}"
        )
    selected = np.zeros(n, dtype=bool)
    for j in np.argsort(np.minimum(positives, negatives), kind="stable"):
        for value in (1, 0):
            members = y[:, j] == value
            lacking = min_per_class - np.count_nonzero(selected & members)
            if lacking > 0:
                pool = np.flatnonzero(members & ~selected)
                selected[rng.choice(pool, lacking, replace=False)] = True
    missing = size - np.count_nonzero(selected)
    if missing > 0:
        selected[rng.choice(np.flatnonzero(~selected), missing, replace=False)] = True
    return np.flatnonzero(selected).astype(np.int64)


def _binary_auc(y, score):
    """ROC AUC of 0/1 y against scores; NaN when y has one class only."""
    from sklearn.metrics import roc_auc_score

    if y.min() == y.max():
        return np.nan
    return float(roc_auc_score(y, score))


class _Task:
    """The labels of a probe encoded once: classes or columns, and how to score."""

    def __init__(self, train_labels, multilabel, class_names):
        self.multilabel = multilabel
        if multilabel:
            y = np.asarray(train_labels)
            self.n_outputs = y.shape[1]
            self.kind = "multilabel"
            self.classes = None
            names = [f"column {j}" for j in range(self.n_outputs)]
        else:
            y = np.asarray(train_labels).reshape(len(train_labels))
            if y.dtype == object or not (
                np.issubdtype(y.dtype, np.number) or y.dtype == bool or y.dtype.kind in "US"
            ):
                raise TypeError(
                    f"train_labels must be numbers or strings, got dtype {y.dtype}"
                )
            if y.dtype.kind == "f" and not np.isfinite(y).all():
                raise ValueError("train_labels contain NaN or Inf")
            self.classes = np.unique(y)
            if len(self.classes) < 2:
                raise ValueError(
                    f"train_labels need at least two classes, got only "
                    f"{self.classes.tolist()}"
                )
            self.n_outputs = len(self.classes)
            self.kind = "binary" if self.n_outputs == 2 else "multiclass"
            names = [str(c) for c in self.classes]
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != self.n_outputs:
                what = "columns" if multilabel else "classes"
                raise ValueError(
                    f"class_names has {len(class_names)} names for {self.n_outputs} {what}"
                )
            names = class_names
        self.class_names = names

    def encode(self, labels, name):
        """Labels as class codes (N,) or a 0/1 matrix (N, K)."""
        labels = np.asarray(labels)
        if self.multilabel:
            if labels.ndim != 2 or labels.shape[1] != self.n_outputs:
                raise ValueError(
                    f"{name} must have shape (n, {self.n_outputs}) like the "
                    f"training labels, got {labels.shape}"
                )
            return _binary_matrix(labels, name)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise ValueError(
                f"{name} must be 1-D like the training labels, got shape {labels.shape}"
            )
        codes = np.searchsorted(self.classes, labels)
        codes = np.minimum(codes, len(self.classes) - 1)
        unknown = self.classes[codes] != labels
        if unknown.any():
            raise ValueError(
                f"{name} has classes the training labels lack: "
                f"{np.unique(labels[unknown]).tolist()[:10]}"
            )
        return codes.astype(np.int64)

    def score(self, y, outputs, metric):
        """(mean, per-class array or None) of metric for codes/matrix y and the model's
        outputs: decision values (N,) for binary, probabilities (N, K) for multiclass,
        decision values (N, K) for multi-label."""
        if self.kind == "binary":
            if metric == "auc":
                return _binary_auc(y, outputs), None
            return float(np.mean((outputs > 0) == (y == 1))), None
        if self.kind == "multiclass":
            if metric == "auc":  # one-vs-rest, macro over the classes present
                per_class = np.array(
                    [
                        _binary_auc((y == c).astype(np.int8), outputs[:, c])
                        for c in range(self.n_outputs)
                    ]
                )
                return _nanmean(per_class), per_class
            right = outputs.argmax(axis=1) == y
            # Per class: the accuracy on that class's samples (its recall).
            per_class = np.array(
                [
                    right[y == c].mean() if (y == c).any() else np.nan
                    for c in range(self.n_outputs)
                ]
            )
            return float(right.mean()), per_class
        if metric == "auc":
            per_class = np.array(
                [_binary_auc(y[:, j], outputs[:, j]) for j in range(self.n_outputs)]
            )
        else:
            per_class = np.mean((outputs > 0) == (y == 1), axis=0).astype(float)
        return _nanmean(per_class), per_class


def _nanmean(values):
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan


def _check_trainable(y, multilabel, task, name):
    """Every column has positives and negatives (multi-label): one classifier each."""
    if multilabel:
        positives = y.sum(axis=0)
        one_class = (positives == 0) | (positives == len(y))
        if one_class.any():
            listed = ", ".join(
                f"{task.class_names[j]!r} ({positives[j]} of {len(y)} positive)"
                for j in np.flatnonzero(one_class)
            )
            raise ValueError(
                f"{name}: every column needs positives and negatives to train "
                f"a classifier on; these have one class only: {listed}"
            )


def _check_carved(y, multilabel, task):
    """After carving a validation split, the rest must still hold every class."""
    if multilabel:
        positives = y.sum(axis=0)
        short = (positives < 1) | (positives > len(y) - 1)
        if short.any():
            names = [task.class_names[j] for j in np.flatnonzero(short)]
            raise ValueError(
                f"too few positives or negatives to carve a validation split "
                f"and still train on {names}; pass val_features/val_labels"
            )
    else:
        present = np.unique(y)
        if len(present) < task.n_outputs:
            lost = sorted(set(range(task.n_outputs)) - set(present.tolist()))
            lost = [task.class_names[c] for c in lost]
            raise ValueError(
                f"too few samples of classes {lost} "
                "to carve a validation split and still train; pass "
                "val_features/val_labels"
            )
