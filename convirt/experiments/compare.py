"""The ConVIRT paper's comparison on one labelled dataset: every encoder through the
linear probe, fine-tuning and retrieval, as one table."""

import csv
import io
import time
from dataclasses import dataclass, field

import numpy as np

from .._io import atomic_write
from .._optional import require
from ..evaluation.finetune import _check_image_encoder, _check_images, finetune
from ..evaluation.labels import (
    _METRICS,
    _binary_matrix,
    _check_fraction,
    _check_length,
    _check_trainable,
    _is_multilabel,
    _Task,
)
from ..evaluation.probe import linear_probe
from ..evaluation.results import _percent
from ..evaluation.retrieval import retrieval, retrieval_queries

__all__ = ["ComparisonTable", "compare"]


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
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join([":---"] + ["---:"] * len(self.columns)) + "|",
        ]
        for r, row in enumerate(self.rows):
            cells = [self._cell(r, c, spread, digits) for c in range(len(self.columns))]
            lines.append("| " + " | ".join([row] + cells) + " |")
        text = "\n".join(lines)
        if notes:
            legend = (
                f"LP: linear probe, FT: fine-tuning, test {_METRICS[self.metric]} at "
                "that share of the training labels (mean ± std over seeds); I→I / "
                "T→I: image→image / text→image retrieval, Precision@k (mean over "
                "query categories)."
            )
            text += "\n\n" + legend
            if self.notes:
                text += "\n\n" + "\n".join(f"- {n}" for n in self.notes)
        return text

    def __repr__(self):
        return self.to_markdown()

    def _repr_markdown_(self):
        return self.to_markdown()

    def _columns(self):
        """(group, name, values per row): each column's means, and its spreads (name +
        ' std') where there are any."""
        columns = []
        for c, (group, name) in enumerate(zip(self.groups, self.columns)):
            columns.append((group, name, self.values[:, c]))
            if np.isfinite(self.spreads[:, c]).any():
                columns.append((group, name + " std", self.spreads[:, c]))
        return columns

    def to_frame(self):
        """A pandas DataFrame: one row per method; columns (group, column) with the
        means, and (group, column + ' std') with the spreads where there are any.
        Needs pandas (not a dependency of convirt; :meth:`to_csv` does not need it)."""
        pd = require("pandas", "ComparisonTable.to_frame()")
        columns = self._columns()
        return pd.DataFrame(
            np.stack([values for _, _, values in columns], axis=1),
            index=pd.Index(self.rows, name="method"),
            columns=pd.MultiIndex.from_tuples(
                [(group, name) for group, name, _ in columns]
            ),
        )

    def to_csv(self, path):
        """Write one row per method: the means and spreads, columns named 'group: column'
        (the columns of :meth:`to_frame`, flat; an empty cell where a column does not
        apply). Written with the csv module: pandas is not needed."""
        columns = self._columns()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["method"] + [f"{group}: {name}" for group, name, _ in columns])
        for r, row in enumerate(self.rows):
            cells = [values[r] for _, _, values in columns]
            writer.writerow(
                [row] + [repr(float(v)) if np.isfinite(v) else "" for v in cells]
            )
        atomic_write(path, out.getvalue().encode("utf-8"))

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
            axes[2].bar(
                np.arange(len(retrieval_columns)) + r * width,
                np.nan_to_num(self.values[r, retrieval_columns]),
                width,
                label=row,
                color="0.7" if row == "chance" else None,
            )
        axes[2].set_xticks(np.arange(len(retrieval_columns)) + 0.4 - width / 2)
        axes[2].set_xticklabels(
            [self.columns[c] for c in retrieval_columns],
            rotation=45,
            ha="right",
            fontsize="small",
        )
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
        raise TypeError(
            f"{name} must be (images, labels), (images, labels, reports) or a "
            f"dataset with .images and .labels, got {type(data).__name__}"
        )
    if labels is None:
        raise ValueError(f"{name} has no labels: the comparison needs labelled data")
    _check_images(images, f"{name} images")
    _check_length(np.asarray(labels), len(images), f"{name} labels", f"{name} images")
    if reports is not None:
        reports = list(reports)
        _check_length(reports, len(images), f"{name} reports", f"{name} images")
    return images, labels, reports


def _comparison_setup(
    train, val, test, *, fractions, metric, ks, queries_per_category, label_names
):
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
    queries, categories = retrieval_queries(
        category_matrix(val_y, "val labels"), per_category=queries_per_category
    )
    if len(queries) == 0:
        raise ValueError(
            "no validation sample is positive for exactly one category: "
            "there are no retrieval queries"
        )
    ks = tuple(sorted({int(k) for k in np.atleast_1d(ks).tolist()}))
    if not ks or ks[0] < 1 or ks[-1] > len(test_x):
        raise ValueError(
            f"every k of the retrieval columns must be in [1, {len(test_x)}] "
            f"(the number of test images, the candidates), got {ks}"
        )
    fractions = tuple(_check_fraction(f) for f in np.atleast_1d(fractions).tolist())
    if not fractions:
        raise ValueError("fractions must not be empty")
    y = task.encode(train_y, "train labels")
    _check_trainable(y, multilabel, task, "train labels")
    return {
        "train": (train_x, train_y, train_reports),
        "val": (val_x, val_y, val_reports),
        "test": (test_x, test_y, test_reports),
        "multilabel": multilabel,
        "task": task,
        "candidates": candidates,
        "queries": queries,
        "categories": categories,
        "ks": ks,
        "fractions": fractions,
    }


def compare(
    encoders,
    train,
    val,
    test,
    *,
    fractions=(0.01, 0.1, 1.0),
    probe_seeds=(0, 1, 2),
    finetune_seeds=(0,),
    finetune_options=None,
    metric="auc",
    ks=(5, 10, 50),
    queries_per_category=None,
    label_names=None,
    include_chance=True,
    batch_size=64,
    probe_threads=1,
    progress=True,
):
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
        raise TypeError(
            "encoders must be a non-empty dict {name: Encoder or (image, text)}"
        )
    setup = _comparison_setup(
        train,
        val,
        test,
        fractions=fractions,
        metric=metric,
        ks=ks,
        queries_per_category=queries_per_category,
        label_names=label_names,
    )
    train_x, train_y, _ = setup["train"]
    val_x, val_y, val_reports = setup["val"]
    test_x, test_y, _ = setup["test"]
    multilabel, task, names = setup["multilabel"], setup["task"], setup["task"].class_names
    candidates, queries, categories = (
        setup["candidates"],
        setup["queries"],
        setup["categories"],
    )
    ks, fractions = setup["ks"], setup["fractions"]
    towers = {}
    for row, value in encoders.items():
        image, text = value if isinstance(value, tuple) else (value, None)
        _check_image_encoder(image)
        if text is not None and (not hasattr(text, "kind") or text.kind != "text"):
            raise TypeError(f"encoders[{row!r}]: the second tower must be a text Encoder")
        towers[str(row)] = (image, text)

    columns = (
        [f"LP {_percent(f)}" for f in fractions]
        + [f"FT {_percent(f)}" for f in fractions]
        + [f"I→I P@{k}" for k in ks]
        + [f"T→I P@{k}" for k in ks]
    )
    groups = (
        ["linear probe"] * len(fractions)
        + ["fine-tuning"] * len(fractions)
        + ["image→image retrieval"] * len(ks)
        + ["text→image retrieval"] * len(ks)
    )
    rows = (["chance"] if include_chance else []) + list(towers)
    values = np.full((len(rows), len(columns)), np.nan)
    spreads = np.full((len(rows), len(columns)), np.nan)
    F, nk = len(fractions), len(ks)
    if include_chance:
        if metric == "auc":
            values[0, : 2 * F] = 0.5
        prevalence = candidates.mean(axis=0)[np.unique(categories)].mean()
        values[0, 2 * F :] = prevalence
    results = {}
    for row, (image, text) in towers.items():
        t0 = time.perf_counter()
        features = {}
        for split, images in (("train", train_x), ("val", val_x), ("test", test_x)):
            features[split] = image.encode(images, batch_size=batch_size, progress=False)
        probe = linear_probe(
            features["train"],
            train_y,
            features["test"],
            test_y,
            val_features=features["val"],
            val_labels=val_y,
            fractions=fractions,
            seeds=probe_seeds,
            metric=metric,
            multilabel=multilabel,
            class_names=label_names,
            name=row,
            threads=probe_threads,
            progress=progress,
        )
        tuned = finetune(
            image,
            train_x,
            train_y,
            val_x,
            val_y,
            test_x,
            test_y,
            fractions=fractions,
            seeds=finetune_seeds,
            metric=metric,
            task="multilabel" if multilabel else "multiclass",
            class_names=label_names,
            name=row,
            progress=progress,
            **(finetune_options or {}),
        )
        image_to_image = retrieval(
            features["val"][queries],
            categories,
            features["test"],
            candidates,
            ks=ks,
            category_names=names,
        )
        text_to_image = None
        if text is not None and val_reports is not None:
            u = text.embed(
                [val_reports[i] for i in queries], batch_size=batch_size, progress=False
            )
            v = image.embed(test_x, batch_size=batch_size, progress=False)
            text_to_image = retrieval(
                u, categories, v, candidates, ks=ks, category_names=names
            )
        r = rows.index(row)
        values[r, :F], values[r, F : 2 * F] = probe.mean, tuned.mean
        if len(probe.seeds) > 1:  # one seed has no spread to show
            spreads[r, :F] = probe.std
        if len(tuned.seeds) > 1:
            spreads[r, F : 2 * F] = tuned.std
        values[r, 2 * F : 2 * F + nk] = image_to_image.mean
        if text_to_image is not None:
            values[r, 2 * F + nk :] = text_to_image.mean
        results[row] = {
            "linear_probe": probe,
            "finetune": tuned,
            "image_to_image": image_to_image,
            "text_to_image": text_to_image,
            "seconds": time.perf_counter() - t0,
        }
    kind = "label columns" if multilabel else "classes"
    per_category = ", ".join(
        f"{names[c]} {n}" for c, n in zip(*np.unique(categories, return_counts=True))
    )
    seeds_text = (
        f"linear probe seeds {', '.join(map(str, probe_seeds))}; fine-tuning "
        f"seeds {', '.join(map(str, finetune_seeds))}"
    )
    notes = [
        (
            f"{len(train_x)} training, {len(val_x)} validation and {len(test_x)} test "
            f"images; {task.n_outputs} {kind}: {', '.join(names)}"
        ),
        seeds_text,
        (
            f"retrieval: {len(queries)} validation queries positive for exactly one "
            f"category ({per_category}), candidates the {len(test_x)} test images; "
            "image→image on backbone features, text→image on projected embeddings of "
            "the query images' reports"
        ),
    ]
    if include_chance:
        notes.append(
            "chance: AUC 0.5; retrieval: the share of positives among the "
            "candidates, mean over the query categories"
        )
    return ComparisonTable(
        rows=rows,
        columns=columns,
        groups=groups,
        values=values,
        spreads=spreads,
        metric=metric,
        results=results,
        notes=notes,
    )
