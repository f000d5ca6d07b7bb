"""convirt.Trainer: ConVIRT pretraining (and the SimCLR image-only baseline) with the
paper's defaults, a progress bar, validation, the plateau schedule, early stopping,
history, callbacks and checkpoints that survive a crash and resume exactly."""

import dataclasses
import functools
import json
import math
import os
import time

import numpy as np

from ._core import Adam, ContrastiveLoss
from ._core import Encoder as _CoreEncoder
from .augment import AUGMENTS, ImageAugment, eval_augment, mild_augment, paper_augment
from .callbacks import Callback, CSVLogger, _FunctionCallback
from .checkpoint import FORMAT, CheckpointDir, find_checkpoint
from .distributed import config_hash
from .errors import CheckpointError, NonFiniteError, TrainingDiverged
from .loader import BatchLoader, Pairs, as_pairs
from .loss_curves import chance_loss, plot_loss_curves
from .reports import sample_sentences
from .runs import read_checkpoint, read_optimizer_state
from .schedules import ReduceLROnPlateau, WarmupCosine
from .text import tokenize
from .train_step import StepRunner, join_world
from .trainer_config import TrainerConfig, check_fit_batches, check_val_batch_size

# paper_augment, mild_augment and AUGMENTS live in convirt.augment; they stay importable
# from here, where they were first.
__all__ = [
    "AUGMENTS",
    "Callback",
    "Trainer",
    "TrainerConfig",
    "TrainingDiverged",
    "mild_augment",
    "paper_augment",
]


def _setting(name):
    return property(
        lambda self: getattr(self.config, name),
        doc=f"``config.{name}`` (see :class:`TrainerConfig`)",
    )


# The keys fit() adds to the configuration a checkpoint saves (not settings of the
# trainer: a resumed run is given them again).
_FIT_KEYS = ("batch_size", "epochs", "shuffle", "max_steps")
# What Trainer.resume(**changes) may change: when to lower the lr, to stop and to save.
RESUME_SETTINGS = ("plateau_patience", "early_stopping_patience", "checkpoint_every")


class Trainer:
    """Pretrains an image encoder with ConVIRT (image-report pairs) or SimCLR (images).

    Parameters (the paper's defaults):
        image_encoder: convirt.Encoder (ResNet).
        text_encoder: convirt.Encoder (BERT) with a tokenizer; None for method='simclr'.
        loss: convirt.ContrastiveLoss (default temperature 0.1, lambda 0.75).
        method: 'convirt' or 'simclr' (two augmented views per image, NT-Xent).
        augment: convirt.ImageAugment (default: paper_augment(image_size), the paper's
            transforms with the blur scaled to the view size).
        image_size: side of the augmented views fed to the image encoder (224).
        lr, weight_decay, betas, eps: Adam (1e-4, 1e-6 as L2 decay, as torch.optim.Adam);
            decoupled_weight_decay=True gives AdamW; max_grad_norm clips by global norm.
        schedule: 'plateau' (halve the learning rate when the validation loss has not
            improved for plateau_patience=5 epochs), 'cosine' (cosine with warmup_steps of
            linear warm-up over the planned steps) or None.
        early_stopping_patience: epochs without validation improvement before stopping.
        freeze_image / freeze_text: keep a whole tower fixed (eval mode, no update).
            With freeze_text, fit() embeds each distinct sentence once and reuses the
            embedding (the frozen tower must not be changed while fit runs).
        checkpoint_dir: where LAST and BEST checkpoints go (see convirt.checkpoint);
            checkpoint_every: also save every so many steps (default: each epoch).
        callbacks: Callback objects, or functions f(trainer, metrics) called each step
            (convirt.callbacks: CSVLogger, TensorBoardLogger, WandbLogger).
        metrics_csv: True (default) writes every step and epoch to metrics.csv in
            checkpoint_dir (a resumed run appends; see convirt.callbacks.CSVLogger),
            a path writes there, False writes none. Not written without checkpoint_dir
            unless a path is given, nor when callbacks hold a CSVLogger.
        progress: show a tqdm progress bar (rank 0 only under MPI).
        distributed: the convirt.distributed.World to train over; None (default) is
            the MPI world when launched by mpirun with several ranks, else one process;
            False forces one process. fit()'s batch_size is then the global batch.
        sync_batchnorm: under MPI, the ResNet's batch statistics are those of the
            global batch (all-reduced in the core) instead of each rank's.
        micro_batch: embed and backpropagate in chunks of this many pairs (gradient
            caching: the same update with the activation memory of micro_batch pairs;
            batch norm sees each chunk's statistics, see convirt.train_step).

    Use ``step(images, reports)`` for one update or ``fit(train, val, epochs)``;
    ``history`` (per epoch) and ``steps`` (per step) are lists of dicts. The settings
    are a :class:`TrainerConfig` in ``config``, with the loss's and the augmentation's:
    the checkpoint saves it and :meth:`resume` rebuilds the trainer from it.
    """

    def __init__(
        self,
        image_encoder,
        text_encoder=None,
        loss=None,
        *,
        augment=None,
        checkpoint_dir=None,
        callbacks=(),
        progress=True,
        prefetch=True,
        distributed=None,
        metrics_csv=True,
        **settings,
    ):
        unknown = sorted(set(settings) - set(TrainerConfig.keywords()))
        if unknown:
            raise TypeError(
                f"Trainer() got unexpected keyword argument(s) {unknown}; its "
                f"settings are {TrainerConfig.keywords()}"
            )
        config = TrainerConfig(**settings)  # checks method, schedule and image_size
        if not isinstance(image_encoder, _CoreEncoder) or image_encoder.kind != "image":
            raise TypeError(
                "image_encoder must be an image convirt.Encoder (e.g. Encoder.resnet50())"
            )
        if config.method == "convirt":
            if not isinstance(text_encoder, _CoreEncoder) or text_encoder.kind != "text":
                raise TypeError(
                    "method='convirt' needs a text convirt.Encoder "
                    "(e.g. Encoder.from_pretrained(path))"
                )
            if text_encoder.tokenizer is None:
                raise ValueError(
                    "the text encoder has no tokenizer; build it with "
                    "Encoder.from_pretrained() or pass tokenizer="
                )
        elif text_encoder is not None:
            raise ValueError(
                "method='simclr' trains the image encoder alone: pass text_encoder=None"
            )
        if config.freeze_image and (config.method == "simclr" or config.freeze_text):
            raise ValueError("nothing would be trained: every tower is frozen")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        if loss is not None and not isinstance(loss, ContrastiveLoss):
            raise TypeError(f"loss must be a ContrastiveLoss, got {type(loss).__name__}")
        if augment is not None and not isinstance(augment, ImageAugment):
            raise TypeError(
                f"augment must be an ImageAugment, got {type(augment).__name__}"
            )
        self.loss = loss if loss is not None else ContrastiveLoss()
        self.augment = (
            augment
            if augment is not None
            else paper_augment(config.image_size, seed=config.seed)
        )
        if self.augment.size != config.image_size:
            raise ValueError(
                f"augment.size ({self.augment.size}) must equal image_size "
                f"({config.image_size})"
            )
        # The whole configuration, the loss's and the augmentation's settings included:
        # what a checkpoint saves and resume() rebuilds the trainer from.
        self.config = dataclasses.replace(
            config,
            temperature=self.loss.temperature,
            image_to_text_weight=self.loss.image_to_text_weight,
            learnable_temperature=self.loss.learnable_temperature,
            max_logit_scale=self.loss.max_logit_scale,
            augment=self.augment.config,
        )
        self.fit_settings = {}  # what the last fit() was given (batch_size, epochs, ...)
        # Validation views: the same resize and normalisation, nothing random.
        self.eval_augment = eval_augment(
            config.image_size, normalization=self.augment.normalization
        )
        self.checkpoints = CheckpointDir(checkpoint_dir) if checkpoint_dir else None
        self.callbacks = [
            c if isinstance(c, Callback) else _FunctionCallback(c) for c in callbacks
        ]
        if metrics_csv is True:
            metrics_csv = checkpoint_dir and os.path.join(checkpoint_dir, "metrics.csv")
        if metrics_csv and not any(isinstance(c, CSVLogger) for c in self.callbacks):
            self.callbacks.insert(0, CSVLogger(metrics_csv))
        self.progress = progress
        self.prefetch = prefetch
        self.world = join_world(distributed, self.config, image_encoder, text_encoder)
        self._runner = StepRunner(
            image_encoder,
            text_encoder,
            self.loss,
            (config.freeze_image, config.freeze_text),
            self.world,
            config.micro_batch,
            self._buffer,
            config.sync_batchnorm,
        )
        params, grads = [], []
        for encoder, frozen in (
            (image_encoder, config.freeze_image),
            (text_encoder, config.freeze_text),
        ):
            if encoder is None or frozen:
                continue
            start = encoder.trainable_offset
            params.append(encoder.flat_parameters[start:])
            grads.append(encoder.flat_gradients[start:])
        self.optimizer = Adam(
            params,
            grads,
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
            weight_decay=config.weight_decay,
            decoupled_weight_decay=config.decoupled_weight_decay,
            max_grad_norm=config.max_grad_norm,
        )
        # The learnable temperature (the log of the logit scale) is one more parameter:
        # the same C Adam on a one-element buffer, at the main optimiser's learning rate,
        # without weight decay.
        self._logit_scale = np.array([self.loss.logit_scale], np.float32)
        self._logit_scale_grad = np.zeros(1, np.float32)
        self._temperature_optimizer = Adam(
            [self._logit_scale],
            [self._logit_scale_grad],
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
            weight_decay=0.0,
        )
        self.scheduler = None
        if config.schedule == "plateau":
            self.scheduler = ReduceLROnPlateau(
                self.optimizer,
                factor=config.plateau_factor,
                patience=config.plateau_patience,
            )
        self.step_count = 0  # optimiser updates done
        self.epoch = 0  # epochs completed
        self.position = 0  # batches done in the current epoch
        self.history = []  # one dict per epoch
        self.steps = []  # one dict per step
        self.best_val_loss = math.inf
        self.epochs_without_improvement = 0
        self._buffers = {}

    method = _setting("method")
    image_size = _setting("image_size")
    seed = _setting("seed")
    freeze_image = _setting("freeze_image")
    freeze_text = _setting("freeze_text")
    schedule_name = _setting("schedule")
    early_stopping_patience = _setting("early_stopping_patience")
    checkpoint_every = _setting("checkpoint_every")

    def __repr__(self):
        towers = f"image={self.image_encoder._describe()}" + (
            f", text={self.text_encoder._describe()}" if self.text_encoder else ""
        )
        return (
            f"Trainer(method={self.method!r}, {towers}, lr={self.optimizer.lr:g}, "
            f"schedule={self.schedule_name!r}, step={self.step_count}, epoch={self.epoch})"
        )

    # ---- one step -----------------------------------------------------------------------

    def _buffer(self, name, shape):
        buf = self._buffers.get(name)
        if buf is None or buf.shape != tuple(shape):
            buf = np.empty(shape, np.float32)
            self._buffers[name] = buf
        return buf

    def _view_shape(self, images, n):
        first = images[0]
        channels = first.shape[2:] if first.ndim == 3 else ()
        return (n, self.image_size, self.image_size) + tuple(channels)

    def _prepare_text(self, reports, step, sample, indices=None):
        """Token ids and mask of the reports: one sentence of each, drawn by
        convirt.reports.sample_sentences from (seed, step, index), unless sample is
        False."""
        texts = list(reports)
        if sample:
            texts = sample_sentences(texts, seed=self.seed, step=step, indices=indices)
        return tokenize(
            self.text_encoder.tokenizer, texts, max_length=self.text_encoder.max_length
        )

    def step(self, images, reports=None, *, sample_sentence=True, _text=None):
        """One update on a batch: augment the images, encode both towers, the loss, the
        backward pass and Adam. images: uint8 (N, H, W[, C]) array or a list of such
        images; reports: N strings (one sentence of each is sampled unless
        sample_sentence=False). Returns the step's metrics as a dict."""
        t0 = time.perf_counter()
        n = len(images)
        if n < 2:
            raise ValueError(f"a contrastive step needs at least 2 pairs, got {n}")
        step, first = self.step_count, self.world.rank * n
        if self.method == "convirt":
            if reports is None or len(reports) != n:
                raise ValueError("step needs one report per image")
            ids, mask = (
                _text
                if _text is not None
                else self._prepare_text(
                    reports, step, sample_sentence, indices=range(first, first + n)
                )
            )
        # A training forward updates the batch-norm running statistics; a step that fails
        # (a non-finite loss, an error in the core) puts them back, so that it changes
        # no parameter and no buffer. The copy is small (ResNet-50: 53k floats).
        towers = [e for e in (self.image_encoder, self.text_encoder) if e is not None]
        buffers = [e.flat_buffers.copy() for e in towers]
        try:
            if self.method == "convirt":
                views = self._buffer("views", self._view_shape(images, n))
                self._augment(images, step, first, views)
                result = self._runner.convirt(views, ids, mask, self._loss_call)
            else:
                views = self._buffer("views", self._view_shape(images, 2 * n))
                self._augment(images, 2 * step, first, views[:n])
                self._augment(images, 2 * step + 1, first, views[n:])
                result = self._runner.simclr(views, self._loss_call)
            if not math.isfinite(result.loss):
                raise TrainingDiverged(self._diverged_message(result.loss))
            if result.grad_logit_scale is not None and not math.isfinite(
                result.grad_logit_scale
            ):
                raise TrainingDiverged(
                    self._diverged_message(
                        f"finite but its temperature gradient {result.grad_logit_scale}"
                    )
                )
            try:
                grad_norm = self.optimizer.step(return_norm=True)
            except NonFiniteError as error:  # a finite loss, a NaN or Inf gradient
                raise TrainingDiverged(
                    self._diverged_message(f"finite but {error}")
                ) from error
        except BaseException:
            for encoder, saved in zip(towers, buffers):
                encoder.flat_buffers[...] = saved
            raise
        self._step_temperature(result)
        if self.schedule_name == "cosine" and self.scheduler is not None:
            self.scheduler.step()
        self.step_count += 1
        seconds = time.perf_counter() - t0
        metrics = {
            "step": self.step_count,
            "epoch": self.epoch,
            "loss": result.loss,
            "image_to_text": result.image_to_text,
            "text_to_image": result.text_to_image,
            "accuracy_image_to_text": result.accuracy_image_to_text,
            "accuracy_text_to_image": result.accuracy_text_to_image,
            "normalized_loss": result.loss / chance_loss(self.method, n * self.world.size),
            "batch_size": n * self.world.size,
            "lr": self.optimizer.lr,
            "temperature": self.loss.temperature,
            "grad_norm": grad_norm,
            "seconds": seconds,
            "pairs_per_s": n * self.world.size / seconds,
            "comm_seconds": self._runner.comm_seconds,
        }
        self.steps.append(metrics)
        return metrics

    def _diverged_message(self, value):
        try:
            where = self.checkpoints.pointer("LAST") if self.checkpoints else None
        except CheckpointError:
            where = None
        keep = (
            f"the last good checkpoint is {where}"
            if where
            else "no checkpoint was written (set checkpoint_dir to keep one)"
        )
        return (
            f"the loss became {value} at step {self.step_count}; training stopped "
            f"before the update, {keep}. Try a lower learning rate."
        )

    def _loss_call(self, fn):
        try:
            return fn()
        except NonFiniteError as error:  # NaN or Inf embeddings, overflowed similarities
            raise TrainingDiverged(self._diverged_message(f"NaN ({error})")) from error

    def _augment(self, images, step, first, out):
        """The views of images first .. first + n - 1 of the (global) batch `step`: the
        same as one process makes for those rows of the whole batch."""
        if first == 0:
            self.augment(images, step=step, out=out)
        else:
            params = self.augment.sample_parameters(len(out), step, first_index=first)
            self.augment.apply(images, params, out=out)

    def _step_temperature(self, result):
        if not self.loss.learnable_temperature or result.grad_logit_scale is None:
            return
        self._logit_scale[0] = self.loss.logit_scale
        self._logit_scale_grad[0] = result.grad_logit_scale
        self._temperature_optimizer.lr = self.optimizer.lr
        self._temperature_optimizer.step()
        self.loss.logit_scale = float(self._logit_scale[0])

    # ---- validation -------------------------------------------------------------------------

    _VAL_KEYS = (
        "loss",
        "image_to_text",
        "text_to_image",
        "accuracy_image_to_text",
        "accuracy_text_to_image",
    )

    def validate(self, data, batch_size=32):
        """Mean contrastive loss on `data` in eval mode: no augmentation (resize only), a
        fixed sentence of each report, forward only. Returns a dict of the losses and
        accuracies averaged over batches, ``val_normalized_loss`` (the mean of each
        batch's loss / convirt.loss_curves.chance_loss) and ``val_batch_size``. Under
        MPI every rank must call it (the batches are split over the ranks and the sums
        all-reduced)."""
        images, reports = as_pairs(data, "val")
        if len(images) < 2:
            raise ValueError("validation needs at least 2 pairs")
        check_val_batch_size(batch_size, "batch_size")
        totals = {}
        count = 0
        was = [(e, e.training) for e in (self.image_encoder, self.text_encoder) if e]
        loader = BatchLoader(
            Pairs(images, reports),
            batch_size=batch_size,
            shuffle=False,
            drop_last=False,
            prefetch=False,
        )
        try:
            for e, _ in was:
                e.eval()
            # Under MPI rank r validates batches r, r + K, ...; the sums are all-reduced.
            for b, indices in enumerate(loader.batch_indices(0)):
                if b % self.world.size != self.world.rank or len(indices) < 2:
                    continue
                batch = loader.load_batch(indices)
                n, start = len(batch.indices), int(batch.indices[0])
                views = self._buffer("val_views", self._view_shape(batch.images, n))
                self.eval_augment(batch.images, step=0, out=views)
                if self.method == "convirt":
                    texts = sample_sentences(
                        batch.reports, self.seed + 1, 0, indices=batch.indices.tolist()
                    )
                    text = self.text_encoder
                    ids, mask = tokenize(text.tokenizer, texts, max_length=text.max_length)
                    r = self._runner.evaluate(views, ids, mask, self._loss_call)
                else:
                    both = self._buffer("val_pair", (2 * n,) + views.shape[1:])
                    self.augment(batch.images, step=start, out=both[:n])
                    self.augment(batch.images, step=start + 1, out=both[n:])
                    r = self._runner.evaluate(both, None, None, self._loss_call)
                for key in self._VAL_KEYS:
                    totals[key] = totals.get(key, 0.0) + getattr(r, key)
                totals["normalized_loss"] = totals.get("normalized_loss", 0.0) + (
                    r.loss / chance_loss(self.method, n)
                )
                count += 1
        finally:
            for e, mode in was:
                e.train(mode)
        keys = sorted((*self._VAL_KEYS, "normalized_loss"))
        sums = np.array([count] + [totals.get(k, 0.0) for k in keys], np.float64)
        self.world.allreduce_sum(sums)
        result = {f"val_{k}": sums[1 + i] / sums[0] for i, k in enumerate(keys)}
        return {**result, "val_batch_size": min(batch_size, len(images))}

    # ---- the loop ---------------------------------------------------------------------------

    def _prepare_batch(self, batch, *, first_step, start):
        """What the loader's worker thread makes of a batch while the current step runs
        (the C core releases the GIL): the batch and its token arrays, the sentences
        drawn for the step the batch will be (steps count on from first_step, at the
        epoch's batch start)."""
        text = None
        if self.method == "convirt":
            step = first_step + (batch.position - start)
            text = self._prepare_text(
                batch.reports, step, True, indices=batch.indices.tolist()
            )
        return batch, text

    def fit(
        self,
        train,
        val=None,
        *,
        epochs=10,
        batch_size=32,
        shuffle=True,
        max_steps=None,
        val_batch_size=None,
    ):
        """Train for `epochs` epochs in total (a resumed trainer continues where it
        stopped) or until max_steps updates in total. train / val: (images, reports) or a
        dataset with .images and .reports. Batches come from a
        :class:`convirt.loader.BatchLoader` (epoch e in the order of its seed and e, the
        next batch and its sentences prepared in a thread). Returns the history (one
        dict per epoch)."""
        images, reports = as_pairs(train, "train")
        if self.method == "convirt" and reports is None:
            raise ValueError("ConVIRT needs reports; for images alone use method='simclr'")
        ranks = self.world.size
        if val is not None:
            as_pairs(val, "val")
        n_batches = check_fit_batches(
            len(images), batch_size, ranks, val_batch_size, self.position, self.epoch
        )
        pairs = Pairs(images, reports)
        total_steps = epochs * n_batches if max_steps is None else max_steps
        if self.schedule_name == "cosine" and self.scheduler is None:
            self.scheduler = WarmupCosine(
                self.optimizer, total_steps, warmup_steps=self.config.warmup_steps
            )
        self.fit_settings = {
            "batch_size": batch_size,
            "epochs": epochs,
            "shuffle": shuffle,
            "max_steps": max_steps,
        }
        if ranks > 1:
            self.world.check_same(
                "fit()'s settings and data size",
                config_hash({**self.fit_settings, "pairs": len(images)}),
            )
        bar = None
        if self.progress and self.world.rank == 0:
            from ._optional import progress_bar

            bar = progress_bar(
                total=total_steps,
                initial=min(self.step_count, total_steps),
                unit="step",
                desc=f"{self.method} pretraining",
                dynamic_ncols=True,
            )
        for cb in self.callbacks:
            cb.on_train_begin(self)
        stop = False
        # A frozen text tower embeds each distinct sentence once per fit (StepRunner).
        self._runner.text_cache = {} if self.freeze_text else None
        try:
            while self.epoch < epochs and not stop:
                if max_steps is not None and self.step_count >= max_steps:
                    break
                epoch_start, losses = time.perf_counter(), []
                prepare = functools.partial(
                    self._prepare_batch, first_step=self.step_count, start=self.position
                )
                loader = BatchLoader(
                    pairs,
                    batch_size=batch_size,
                    shuffle=shuffle,
                    seed=self.seed,
                    prefetch=self.prefetch,
                    transform=prepare,
                    shard=(self.world.rank, ranks),
                )
                for batch, text in loader.iterate(self.epoch, start=self.position):
                    metrics = self.step(batch.images, batch.reports, _text=text)
                    self.position += 1
                    losses.append(metrics["loss"])
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            loss=f"{metrics['loss']:.3f}",
                            lr=f"{metrics['lr']:.2g}",
                            pairs_s=f"{metrics['pairs_per_s']:.1f}",
                        )
                    if any(cb.on_step_end(self, metrics) for cb in self.callbacks):
                        stop = True
                    if (
                        self.checkpoints
                        and self.checkpoint_every
                        and self.step_count % self.checkpoint_every == 0
                    ):
                        self.save_checkpoint()
                    if stop or (max_steps is not None and self.step_count >= max_steps):
                        stop = True
                        break
                if self.position < n_batches:  # stopped inside the epoch
                    break
                record = self._end_epoch(
                    val,
                    val_batch_size or batch_size,
                    losses,
                    time.perf_counter() - epoch_start,
                )
                if any(cb.on_epoch_end(self, record) for cb in self.callbacks):
                    stop = True
                if record.get("early_stop"):
                    stop = True
        finally:
            self._runner.text_cache = None
            if bar is not None:
                bar.close()
            for cb in self.callbacks:
                cb.on_train_end(self)
        return self.history

    def _end_epoch(self, val, val_batch_size, losses, seconds):
        record = {
            "epoch": self.epoch + 1,
            "step": self.step_count,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "lr": self.optimizer.lr,
            "seconds": seconds,
        }
        improved = False
        if val is not None:
            record.update(self.validate(val, val_batch_size))
            if record["val_loss"] < self.best_val_loss:
                self.best_val_loss = record["val_loss"]
                self.epochs_without_improvement = 0
                improved = True
            else:
                self.epochs_without_improvement += 1
            if self.schedule_name == "plateau":
                self.scheduler.step(record["val_loss"])
            patience = self.early_stopping_patience
            if patience is not None and self.epochs_without_improvement >= patience:
                record["early_stop"] = True
        self.epoch += 1
        self.position = 0
        record["lr_after"] = self.optimizer.lr
        self.history.append(record)
        if self.checkpoints:
            self.save_checkpoint(best=improved)
        return record

    # ---- checkpoints ------------------------------------------------------------------------

    def state(self):
        """The trainer state that a checkpoint stores as trainer.json."""
        return {
            "format": FORMAT,
            "step": self.step_count,
            "epoch": self.epoch,
            "position": self.position,
            "config": {**self.config.to_json(), **self.fit_settings},
            "history": self.history,
            "steps": self.steps,
            "best_val_loss": self.best_val_loss,
            "epochs_without_improvement": self.epochs_without_improvement,
            "logit_scale": self.loss.logit_scale,
            "scale_state": {
                "m": float(self._temperature_optimizer.exp_avg[0]),
                "v": float(self._temperature_optimizer.exp_avg_sq[0]),
            },
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "optimizer": {"lr": self.optimizer.lr, "step": self.optimizer.step_count},
        }

    def save_checkpoint(self, best=False):
        """Write a checkpoint into checkpoint_dir (atomically: see convirt.checkpoint)."""
        if self.checkpoints is None:
            raise ValueError("this trainer has no checkpoint_dir")
        if self.world.rank != 0:  # the state is the same on every rank: rank 0 writes
            return None
        from safetensors.numpy import save

        def write(directory):
            self.image_encoder.save(os.path.join(directory, "image_encoder.safetensors"))
            if self.text_encoder is not None:
                self.text_encoder.save(os.path.join(directory, "text_encoder.safetensors"))
            state = self.optimizer.state_dict()
            tensors = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
            with open(os.path.join(directory, "optimizer.safetensors"), "wb") as f:
                f.write(save(tensors, metadata={"sizes": json.dumps(state["sizes"])}))
            with open(os.path.join(directory, "trainer.json"), "w") as f:
                json.dump(self.state(), f)

        return self.checkpoints.save(self.step_count, write, best=best)

    @classmethod
    def resume(
        cls,
        checkpoint_dir,
        *,
        which="last",
        callbacks=(),
        progress=True,
        augment=None,
        metrics_csv=True,
        **changes,
    ):
        """A trainer restored from the LAST (or BEST; any case) checkpoint of
        checkpoint_dir, a run folder or one save's folder (convirt.checkpoint's
        find_checkpoint): encoders, optimiser moments, schedule, temperature, history
        and the position in the data; fit() then continues exactly where the run
        stopped (fit's epochs count in all: epochs=trainer.epoch + 2 extends a finished
        run by two) and appends to its metrics.csv (``metrics_csv`` as in the
        constructor). ``changes``: new values of RESUME_SETTINGS; nothing else changes."""
        if not set(changes) <= set(RESUME_SETTINGS):
            raise TypeError(
                f"Trainer.resume() may change {list(RESUME_SETTINGS)} only (a resumed "
                f"run keeps its other settings), got {sorted(changes)}"
            )
        TrainerConfig().replace(**changes)  # the values, checked before anything is read
        root, directory = find_checkpoint(checkpoint_dir, which)
        image, text, state = read_checkpoint(directory)
        state["config"].update(changes)
        optimizer_state = read_optimizer_state(directory)
        try:
            return cls._restore(
                image,
                text,
                state,
                optimizer_state,
                root,
                callbacks,
                progress,
                augment,
                metrics_csv,
            )
        except (ValueError, TypeError, KeyError, OverflowError) as error:
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointError(
                f"{directory}: the saved trainer and optimizer state is refused: {error}"
            ) from error

    @classmethod
    def _restore(
        cls,
        image,
        text,
        state,
        optimizer_state,
        checkpoint_dir,
        callbacks,
        progress,
        augment,
        metrics_csv,
    ):
        """The trainer of resume(), from checked parts."""
        config = TrainerConfig.from_json(state["config"])
        loss = ContrastiveLoss(**config.loss_settings())
        if augment is None and config.augment:
            augment = ImageAugment(**config.augment)  # the same seed: the same views
        trainer = cls(
            image,
            text,
            loss,
            augment=augment,
            checkpoint_dir=checkpoint_dir,
            callbacks=callbacks,
            progress=progress,
            metrics_csv=metrics_csv,
            **config.trainer_settings(),
        )
        optimizer_state["step"] = state["optimizer"]["step"]
        trainer.optimizer.load_state_dict(optimizer_state)
        trainer.optimizer.lr = state["optimizer"]["lr"]
        trainer.loss.logit_scale = state["logit_scale"]
        trainer._temperature_optimizer.load_state_dict(
            {
                "exp_avg": np.array([state["scale_state"]["m"]], np.float32),
                "exp_avg_sq": np.array([state["scale_state"]["v"]], np.float32),
                "sizes": [1],
                "step": state["step"],
            }
        )
        if config.schedule == "cosine":
            trainer.scheduler = WarmupCosine(
                trainer.optimizer, 1, warmup_steps=config.warmup_steps
            )
        if trainer.scheduler is not None and state["scheduler"] is not None:
            trainer.scheduler.load_state_dict(state["scheduler"])
            if config.schedule == "plateau":  # the saved patience, or the new one
                trainer.scheduler.patience = config.plateau_patience
        trainer.step_count, trainer.epoch = state["step"], state["epoch"]
        trainer.position = state["position"]
        trainer.history, trainer.steps = state["history"], state["steps"]
        trainer.best_val_loss = state["best_val_loss"]
        trainer.epochs_without_improvement = state["epochs_without_improvement"]
        trainer.fit_settings = {k: v for k, v in state["config"].items() if k in _FIT_KEYS}
        return trainer

    # ---- plots ------------------------------------------------------------------------------

    def plot(self, ax=None):
        """The training loss per step and the validation loss per epoch, each divided by
        ln of its batch size (the loss at chance, so that batches of different sizes
        compare: see convirt.loss_curves); returns the matplotlib figure."""
        return plot_loss_curves(
            self.method, self.steps, self.history, self.fit_settings.get("batch_size"), ax
        )
