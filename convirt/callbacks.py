"""Hooks that Trainer.fit calls (subclass Callback, or pass functions), and the experiment
logs built on them:

- :class:`CSVLogger`: every step and every epoch as a row of a CSV file, flushed as it
  goes. A Trainer with a ``checkpoint_dir`` writes ``metrics.csv`` there by default; a
  resumed run appends to it.
- :class:`TensorBoardLogger`: the same numbers as TensorBoard scalars, through
  tensorboardX (``pip install 'convirt[tensorboard]'``; never torch).
- :class:`WandbLogger`: the same numbers to Weights & Biases (``pip install
  'convirt[wandb]'``).

tensorboardX and wandb are imported when their logger is made, so that a missing package
stops the program before training starts, not after it. Under MPI only rank 0 writes.
"""

import csv
import io
import math
import os
import time

from ._io import atomic_write
from ._optional import require

__all__ = ["CSVLogger", "Callback", "TensorBoardLogger", "WandbLogger"]


class Callback:
    """Hooks called by Trainer.fit. Override what you need; every method gets the
    trainer and returns nothing. Return True from on_step_end or on_epoch_end to stop."""

    def on_train_begin(self, trainer):
        pass

    def on_step_end(self, trainer, metrics):
        pass

    def on_epoch_end(self, trainer, record):
        pass

    def on_train_end(self, trainer):
        pass


class _FunctionCallback(Callback):
    def __init__(self, fn):
        self.fn = fn

    def on_step_end(self, trainer, metrics):
        return self.fn(trainer, metrics)


def _is_writer(trainer):
    """Rank 0 writes the logs (every rank has the same numbers)."""
    world = getattr(trainer, "world", None)
    return getattr(world, "rank", 0) == 0


def _scalars(kind, record):
    """The numbers of a step's metrics (kind 'step') or an epoch's record ('epoch') under
    the names the TensorBoard and W&B loggers give them: train/loss, ... for a step;
    val/loss, ... and epoch/train_loss, ... for an epoch."""
    out = {}
    for key, value in record.items():
        if key in ("step", "epoch") or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)):
            continue
        if kind == "step":
            name = f"train/{key}"
        elif key.startswith("val_"):
            name = f"val/{key[4:]}"
        else:
            name = f"epoch/{key}"
        out[name] = float(value)
    return out


class CSVLogger(Callback):
    """Writes one row per training step and one per epoch into the CSV file ``path``,
    each flushed as soon as it is written, so that a killed run keeps its rows.

    Columns (:attr:`COLUMNS`): ``kind`` ('step' or 'epoch'), ``epoch`` (counted from 1,
    the epoch a step belongs to), ``step`` (optimiser updates so far), then a step's
    loss, its two directions and accuracies, ``normalized_loss`` (loss / ln of the
    candidates: 1 is chance), ``batch_size``, ``lr``, ``temperature``, ``grad_norm``,
    ``seconds``, ``pairs_per_s``; an epoch's ``train_loss``, the validation metrics
    (``val_loss``, ``val_image_to_text``, ...), ``lr_after``; ``time`` (Unix time of
    the row). A cell a row does not have is empty.

    Resuming appends: at the start of fit(), rows of steps after the trainer's current
    step (written after the last checkpoint by a run that was then killed, and about to
    be trained again) and a torn last line are dropped, the rest kept.
    """

    COLUMNS = (
        "kind",
        "epoch",
        "step",
        "loss",
        "image_to_text",
        "text_to_image",
        "accuracy_image_to_text",
        "accuracy_text_to_image",
        "normalized_loss",
        "batch_size",
        "lr",
        "temperature",
        "grad_norm",
        "seconds",
        "pairs_per_s",
        "train_loss",
        "val_loss",
        "val_image_to_text",
        "val_text_to_image",
        "val_accuracy_image_to_text",
        "val_accuracy_text_to_image",
        "val_normalized_loss",
        "val_batch_size",
        "lr_after",
        "time",
    )

    def __init__(self, path):
        self.path = os.fspath(path)
        self._file = None
        self._writer = None

    def __repr__(self):
        return f"CSVLogger({self.path!r})"

    def on_train_begin(self, trainer):
        if not _is_writer(trainer):
            return
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._keep_rows_up_to(trainer.step_count)
        # Open until on_train_end: each row is written and flushed as it comes.
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.DictWriter(
            self._file, self.COLUMNS, extrasaction="ignore", lineterminator="\n"
        )
        if self._file.tell() == 0:
            self._writer.writeheader()
            self._file.flush()

    def _keep_rows_up_to(self, step):
        """Rewrite the file (atomically) without the rows after `step`, a torn last
        line or another header, when it has any of them."""
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        kept = [row for row in rows if _row_step(row) <= step]
        if reader.fieldnames == list(self.COLUMNS) and len(kept) == len(rows):
            return  # nothing to drop
        out = io.StringIO()
        writer = csv.DictWriter(
            out, self.COLUMNS, extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(kept)
        atomic_write(self.path, out.getvalue().encode("utf-8"))

    def _write(self, row):
        if self._writer is None:
            return
        self._writer.writerow({**row, "time": f"{time.time():.3f}"})
        self._file.flush()

    def on_step_end(self, trainer, metrics):
        self._write({**metrics, "kind": "step", "epoch": metrics["epoch"] + 1})

    def on_epoch_end(self, trainer, record):
        self._write({**record, "kind": "epoch"})

    def on_train_end(self, trainer):
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None


def _row_step(row):
    """The step of a CSV row, or infinity for a row that does not hold one (a line torn
    by a kill): such a row is dropped."""
    try:
        step = float(row.get("step") or "nan")
    except ValueError:
        return math.inf
    if row.get("time") in (None, ""):  # the last column: a torn line lacks it
        return math.inf
    return step if math.isfinite(step) else math.inf


class _ScalarLogger(Callback):
    """A logger of named scalars (:func:`_scalars`) at the step they belong to: a
    subclass says where they go (``_emit``)."""

    def _emit(self, scalars, step):
        raise NotImplementedError

    def on_step_end(self, trainer, metrics):
        self._emit(_scalars("step", metrics), metrics["step"])

    def on_epoch_end(self, trainer, record):
        self._emit(_scalars("epoch", record), record["step"])


class TensorBoardLogger(_ScalarLogger):
    """Writes the metrics of every step (``train/loss``, ``train/lr``,
    ``train/grad_norm``, ...) and of every epoch (``val/loss``, ...,
    ``epoch/train_loss``) as TensorBoard scalars into ``log_dir``, at the step they
    belong to, through tensorboardX's SummaryWriter (``writer_kwargs`` go to it).

    Needs tensorboardX (``pip install 'convirt[tensorboard]'``), imported here: without
    it, ImportError before any training. Read with ``tensorboard --logdir LOG_DIR``.
    """

    def __init__(self, log_dir, **writer_kwargs):
        tensorboardx = require(
            "tensorboardX", "TensorBoardLogger", "'convirt[tensorboard]' (tensorboardX)"
        )
        self._summary_writer = tensorboardx.SummaryWriter
        self.log_dir = os.fspath(log_dir)
        self.writer_kwargs = writer_kwargs
        self.writer = None

    def __repr__(self):
        return f"TensorBoardLogger({self.log_dir!r})"

    def on_train_begin(self, trainer):
        if _is_writer(trainer):
            self.writer = self._summary_writer(self.log_dir, **self.writer_kwargs)

    def _emit(self, scalars, step):
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, global_step=step)

    def on_epoch_end(self, trainer, record):
        super().on_epoch_end(trainer, record)
        if self.writer is not None:
            self.writer.flush()

    def on_train_end(self, trainer):
        if self.writer is not None:
            self.writer.close()
        self.writer = None


class WandbLogger(_ScalarLogger):
    """Logs the metrics of every step (``train/loss``, ...) and of every epoch
    (``val/loss``, ..., ``epoch/train_loss``) to Weights & Biases at the step they
    belong to. ``wandb.init`` is called when training starts, with the trainer's
    configuration (:class:`TrainerConfig` and fit()'s settings) as the run's config,
    ``project``, ``mode`` ('online', 'offline' or 'disabled'; None: wandb's default)
    and ``init_kwargs`` (e.g. ``name=``, ``id=`` with ``resume="allow"`` to continue
    a run); ``wandb.finish`` when it ends.

    Needs wandb (``pip install 'convirt[wandb]'``), imported here: without it,
    ImportError before any training.
    """

    def __init__(self, project=None, *, mode=None, **init_kwargs):
        self.wandb = require("wandb", "WandbLogger", "'convirt[wandb]' (wandb)")
        self.init_kwargs = {"project": project, "mode": mode, **init_kwargs}
        self.init_kwargs = {k: v for k, v in self.init_kwargs.items() if v is not None}
        self.run = None

    def __repr__(self):
        return f"WandbLogger({self.init_kwargs!r})"

    def on_train_begin(self, trainer):
        if not _is_writer(trainer):
            return
        config = {**trainer.config.to_json(), **trainer.fit_settings}
        self.run = self.wandb.init(config=config, **self.init_kwargs)

    def _emit(self, scalars, step):
        if self.run is not None:
            self.wandb.log(scalars, step=step)

    def on_train_end(self, trainer):
        if self.run is not None:
            self.wandb.finish()
        self.run = None
