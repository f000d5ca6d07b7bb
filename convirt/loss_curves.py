"""A run's loss curves on one scale: each loss divided by the loss at chance.

The contrastive loss of a batch grows with the batch: embeddings that tell nothing apart
score ln(N) for ConVIRT (each image against the N reports of its batch, and each report
against the N images) and ln(2N - 1) for SimCLR's NT-Xent (each view against the other
2N - 1 views). A validation loss over a small set (or a short last batch) and a
training loss at batch 32 are therefore not comparable as they are: plotted on one axis,
the smaller batch looks like a model that generalises better than it trains. Divided by
its chance level, every loss reads the same way: 1 is chance, 0 is perfect.
"""

import math

__all__ = ["chance_loss", "normalized_curves", "plot_loss_curves"]


def chance_loss(method, batch_size):
    """The loss of a batch of `batch_size` pairs whose embeddings tell nothing apart:
    ln(batch_size) for 'convirt', ln(2 batch_size - 1) for 'simclr'."""
    if batch_size < 2:
        raise ValueError(f"a contrastive batch has at least 2 pairs, got {batch_size}")
    return math.log(2 * batch_size - 1 if method == "simclr" else batch_size)


def _sizes(sizes):
    """'32', or '8-32' when the batch size changed along the run."""
    low, high = min(sizes), max(sizes)
    return str(low) if low == high else f"{low}-{high}"


def normalized_curves(method, steps, history, batch_size=None):
    """The training loss per step and the validation loss per epoch, each divided by
    :func:`chance_loss` at its own batch size. ``steps`` and ``history`` are a
    Trainer's; ``batch_size`` is fit()'s, for records written before the steps and
    epochs recorded theirs. Returns ``{"train": (steps, values, batch sizes),
    "validation": (steps, values, batch sizes)}`` (lists)."""
    train = _normalized(method, steps, "loss", "batch_size", "normalized_loss", batch_size)
    validation = _normalized(
        method, history, "val_loss", "val_batch_size", "val_normalized_loss", batch_size
    )
    return {"train": train, "validation": validation}


def _normalized(method, records, loss, size_key, normalized, batch_size):
    """(steps, loss / chance, batch sizes) of the records that have ``loss``."""
    series = ([], [], [])
    for record in records:
        if loss not in record:
            continue
        size = record.get(size_key, batch_size)
        value = record.get(normalized)
        if value is None:
            value = record[loss] / chance_loss(method, size)
        for column, item in zip(series, (record["step"], value, size)):
            column.append(item)
    return series


def plot_loss_curves(method, steps, history, batch_size=None, ax=None):
    """The training loss per step and the validation loss per epoch divided by their
    chance levels (:func:`normalized_curves`), the batch sizes in the legend, and the
    chance level 1 as a dashed line; on ``ax`` (a new figure when None). Returns the
    figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    curves = normalized_curves(method, steps, history, batch_size)
    at, values, sizes = curves["train"]
    if at:
        ax.plot(
            at, values, lw=1, alpha=0.6, label=f"train (batch {_sizes(sizes)}, per step)"
        )
    at, values, sizes = curves["validation"]
    if at:
        ax.plot(at, values, "o-", label=f"validation (batch {_sizes(sizes)}, per epoch)")
    ax.axhline(1.0, color="0.6", ls="--", lw=1, label="chance")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{method} loss / ln({'2 batch - 1' if method == 'simclr' else 'batch'})")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig
