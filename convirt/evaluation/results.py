"""What the linear probe and fine-tuning results share: the scores per label fraction and
seed, their mean and spread, the table (text and HTML) and the plot against the label
fraction."""

import warnings

import numpy as np

from .._optional import require
from .labels import _METRICS

__all__ = []


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
        what = {
            "binary": "binary",
            "multiclass": f"{len(self.class_names)} classes",
            "multilabel": f"multi-label, mean over {len(self.class_names)} columns",
        }
        name = f"{self.name}: " if self.name else ""
        seeds = ", ".join(str(s) for s in self.seeds)
        return (
            f"{name}{self._WHAT} {self.metric_name} ({what[self.task]}), mean ± std "
            f"over seeds {seeds}"
        )

    def _n_train_text(self, f):
        """Training-set size at fraction f: one number, or the range over seeds."""
        n = self.n_train[f]
        return str(n[0]) if (n == n[0]).all() else f"{n.min()}-{n.max()}"

    def _frame(self, per_seed, per_class):
        pd = require("pandas", f"{type(self).__name__}.to_frame()")

        if per_seed:
            records = []
            for f, fraction in enumerate(self.fractions):
                for s, seed in enumerate(self.seeds):
                    record = {"fraction": fraction, "seed": seed, **self._seed_record(f, s)}
                    if per_class and self.per_class is not None:
                        record.update(zip(self.class_names, self.per_class[f, s]))
                    records.append(record)
            return pd.DataFrame.from_records(records).set_index(["fraction", "seed"])
        frame = pd.DataFrame(
            {"n_train": self.n_train.mean(axis=1), "mean": self.mean, "std": self.std},
            index=pd.Index(self.fractions, name="fraction"),
        )
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
        ax.errorbar(
            fractions,
            self.mean,
            yerr=self.std,
            marker="o",
            capsize=3,
            label=label if label is not None else self.name,
            **kwargs,
        )
        ax.set_xscale("log")
        # Ticks at every fraction drawn on these axes (several results may share them).
        ticks = sorted(
            set().union(
                *(np.asarray(line.get_xdata(), dtype=float).tolist() for line in ax.lines)
            )
        )
        ax.set_xticks(ticks)
        ax.set_xticklabels([_percent(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labelled training data")
        ax.set_ylabel(f"test {self.metric_name}")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend()
        return fig


def _percent(fraction):
    return f"{100 * float(fraction):g}%"


def _escape(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _text_table(title, header, rows, *, left=None):
    """A title line and aligned columns: the columns whose indices are in ``left`` are
    left-aligned, the others right-aligned (default: the first two right, the rest
    left)."""
    table = [tuple(header)] + [tuple(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    if left is None:
        left = range(2, len(header))
    lines = [title]
    for r in table:
        cells = [
            v.ljust(w) if i in left else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths))
        ]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def _html_table(title, header, rows):
    body = "".join(
        "<tr>" + "".join(f"<td>{_escape(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return (
        f"<p>{title}</p><table><thead><tr>"
        + "".join(f"<th>{_escape(h)}</th>" for h in header)
        + f"</tr></thead><tbody>{body}</tbody></table>"
    )
