"""The linear probe: frozen features, standardised, into scikit-learn's
LogisticRegression, with the regularisation chosen on a validation split, at each label
fraction and seed."""

import warnings
from dataclasses import dataclass, field

import numpy as np

from .._optional import interactive, progress_bar
from .labels import (
    _METRICS,
    _as_features,
    _check_carved,
    _check_fraction,
    _check_length,
    _check_trainable,
    _is_multilabel,
    _Task,
    sample_fraction,
)
from .results import _escape, _percent, _ScoresByFraction

__all__ = ["DEFAULT_CS", "ProbeResult", "linear_probe"]

# Regularisation strengths tried by the probe: C = 1 / lambda, 1e-4 ... 1e2.
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 7))


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
            rows.append(
                (
                    _percent(fraction),
                    n_text,
                    f"{self.mean[f]:.4f} ± {self.std[f]:.4f}",
                    c_text,
                )
            )
        return rows

    def __repr__(self):
        header = ("fraction", "n_train", self.metric_name, "C (per seed)")
        rows = [header] + self._rows()
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"ProbeResult({self._describe()})"]
        for r in rows:
            cells = [
                v.rjust(w) if i < 2 else v.ljust(w)
                for i, (v, w) in enumerate(zip(r, widths))
            ]
            lines.append(("  " + "  ".join(cells)).rstrip())
        if self.n_not_converged:
            lines.append(
                f"  note: {self.n_not_converged} fits stopped at max_iter before converging"
            )
        return "\n".join(lines)

    def _repr_html_(self):
        header = ("fraction", "n_train", self.metric_name, "C (per seed)")
        body = "".join(
            "<tr>" + "".join(f"<td>{_escape(v)}</td>" for v in row) + "</tr>"
            for row in self._rows()
        )
        note = (
            f"<p><small>{self.n_not_converged} fits stopped at max_iter</small></p>"
            if self.n_not_converged
            else ""
        )
        return (
            f"<p><b>ProbeResult</b>: {_escape(self._describe())}</p><table><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in header)
            + f"</tr></thead><tbody>{body}</tbody></table>{note}"
        )

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
        return {
            "n_train": int(self.n_train[f, s]),
            "C": self.C[f, s],
            "val_" + self.metric: self.val_scores[f, s],
            self.metric: self.scores[f, s],
        }


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


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    *,
    val_features=None,
    val_labels=None,
    fractions=(0.01, 0.1, 1.0),
    seeds=(0, 1, 2),
    Cs=DEFAULT_CS,
    multilabel=None,
    metric="auc",
    val_size=0.2,
    max_iter=1000,
    class_names=None,
    name=None,
    threads=None,
    progress=None,
):
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
    progress : a tqdm bar over the (fraction, seed) fits. None (default): when someone
        is likely watching (stderr is a terminal, or a Jupyter kernel runs).

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
        raise ValueError(
            "pass both val_features and val_labels, or neither (a validation "
            "split is then carved from the training set)"
        )
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
            raise ValueError(
                f"val_size must be a share in (0, 1) of the training set, got {val_size!r}"
            )
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
    if progress is None:
        progress = interactive()
    with progress_bar(
        total=F * S,
        unit="fit",
        desc=f"linear probe{' ' + name if name else ''}",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for f, fraction in enumerate(fractions):
            for s, seed in enumerate(seeds):
                idx = sample_fraction(y, fraction, seed)
                key = idx.tobytes()
                if key not in done:
                    scaler = StandardScaler().fit(X[idx])
                    with threadpool_limits(threads):
                        val_out, test_out, missed = _fit_path(
                            scaler.transform(X[idx]),
                            y[idx],
                            scaler.transform(X_val),
                            scaler.transform(X_test),
                            Cs,
                            max_iter,
                            multilabel,
                        )
                    not_converged += missed
                    val_metric = [task.score(y_val, out, metric)[0] for out in val_out]
                    if not np.isfinite(val_metric).any():
                        raise ValueError(
                            "the validation split has no class (column) with both "
                            "positives and negatives: the metric is undefined"
                        )
                    best = int(np.nanargmax(val_metric))
                    test_metric, test_per_class = task.score(y_test, test_out[best], metric)
                    if not np.isfinite(test_metric):
                        raise ValueError(
                            "the test split has no class (column) with both "
                            "positives and negatives: the metric is undefined"
                        )
                    done[key] = (test_metric, val_metric[best], Cs[best], test_per_class)
                test_metric, val_metric, C, test_per_class = done[key]
                scores[f, s], val_scores[f, s], chosen_C[f, s] = test_metric, val_metric, C
                n_train[f, s] = len(idx)
                if per_class is not None:
                    per_class[f, s] = test_per_class
                bar.update(1)
    return ProbeResult(
        metric=metric,
        task=task.kind,
        fractions=fractions,
        seeds=seeds,
        scores=scores,
        val_scores=val_scores,
        C=chosen_C,
        n_train=n_train,
        class_names=task.class_names,
        per_class=per_class,
        name=name,
        n_not_converged=not_converged,
        Cs=Cs,
    )
