"""Fine-tuning: the whole image encoder plus a linear head, trained end to end in the C
core at each label fraction and seed, the best epoch on the validation set kept."""

import time
from dataclasses import dataclass, field

import numpy as np

from .._core import (
    Adam,
    ImageAugment,
    LinearHead,
    binary_cross_entropy,
    softmax_cross_entropy,
)
from .._core import Encoder as _CoreEncoder
from ..augment import eval_augment as _eval_augment
from ..encoder import Encoder
from ..errors import NonFiniteError, TrainingDiverged
from .labels import (
    _METRICS,
    _check_fraction,
    _check_length,
    _is_multilabel,
    _Task,
    sample_fraction,
)
from .results import _escape, _html_table, _percent, _ScoresByFraction, _text_table

__all__ = ["FinetuneResult", "finetune"]


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
            epochs = ", ".join(
                f"{b}/{r}" for b, r in zip(self.best_epoch[f], self.epochs_run[f])
            )
            rows.append(
                (
                    _percent(fraction),
                    n_text,
                    f"{self.mean[f]:.4f} ± {self.std[f]:.4f}",
                    epochs,
                )
            )
        return rows

    _HEADER = ("fraction", "n_train", None, "epoch kept/run (per seed)")

    def __repr__(self):
        header = tuple(self.metric_name if h is None else h for h in self._HEADER)
        return _text_table(f"FinetuneResult({self._describe()})", header, self._rows())

    def _repr_html_(self):
        header = tuple(self.metric_name if h is None else h for h in self._HEADER)
        return _html_table(
            f"<b>FinetuneResult</b>: {_escape(self._describe())}", header, self._rows()
        )

    def to_frame(self, per_seed=False, per_class=False):
        """A pandas DataFrame: one row per fraction (n_train, mean, std), or with
        ``per_seed=True`` one row per (fraction, seed) with n_train, the kept epoch, the
        epochs run, the validation metric and loss and the test metric; ``per_class``
        adds a column per class (mean over seeds, or per seed)."""
        return self._frame(per_seed, per_class)

    def _seed_record(self, f, s):
        return {
            "n_train": int(self.n_train[f, s]),
            "best_epoch": int(self.best_epoch[f, s]),
            "epochs_run": int(self.epochs_run[f, s]),
            "val_" + self.metric: self.val_scores[f, s],
            "val_loss": self.val_losses[f, s],
            self.metric: self.scores[f, s],
        }


def _check_image_encoder(encoder):
    if not isinstance(encoder, _CoreEncoder) or encoder.kind != "image":
        raise TypeError(
            f"encoder must be an image convirt.Encoder (e.g. "
            f"Encoder.resnet50()), got {type(encoder).__name__}"
            + (" (a text encoder)" if isinstance(encoder, _CoreEncoder) else "")
        )
    if not hasattr(encoder, "_spec"):
        raise TypeError(
            "encoder must be a convirt.Encoder (built by its constructors), "
            "not the bare convirt._core.Encoder"
        )


def _check_images(images, name, channels=None):
    """A NumPy array (or memmap) of images (N, H, W[, C]), uint8 or finite float32."""
    if not isinstance(images, np.ndarray):
        raise TypeError(
            f"{name} must be a NumPy array (N, H, W) or (N, H, W, C) of uint8 "
            f"or float32 (a memmap works), got {type(images).__name__}"
        )
    if images.ndim not in (3, 4):
        raise ValueError(
            f"{name} must have shape (N, H, W) or (N, H, W, C), got {images.shape}"
        )
    if images.dtype not in (np.uint8, np.float32):
        raise TypeError(f"{name} must be uint8 or float32, got dtype {images.dtype}")
    if len(images) == 0:
        raise ValueError(f"{name} is empty")
    given = 1 if images.ndim == 3 else images.shape[3]
    if channels is not None and given != channels:
        raise ValueError(f"{name} have {given} channel(s) but the encoder takes {channels}")
    if images.dtype == np.float32:
        for start in range(0, len(images), 256):  # a bounded temporary per chunk
            finite = (
                np.isfinite(images[start : start + 256])
                .reshape(min(256, len(images) - start), -1)
                .all(axis=1)
            )
            if not finite.all():
                raise ValueError(
                    f"{name} contains NaN or Inf (first: image "
                    f"{start + np.flatnonzero(~finite)[0]})"
                )
    return images


def _epochs_per_fraction(epochs, n_fractions):
    values = np.atleast_1d(epochs).tolist()
    if len(values) == 1:
        values = values * n_fractions
    if len(values) != n_fractions or not all(
        isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in values
    ):
        raise ValueError(
            f"epochs must be an integer >= 1 or one per fraction "
            f"({n_fractions}), got {epochs!r}"
        )
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
    spec = encoder._spec
    copy = Encoder(
        spec["kind"],
        spec["config"],
        proj_dim=spec["proj_dim"],
        proj_hidden=spec["proj_hidden"],
        seed=spec["seed"],
    )
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


def finetune(
    encoder,
    train_images,
    train_labels,
    val_images,
    val_labels,
    test_images,
    test_labels,
    *,
    fractions=(0.01, 0.1, 1.0),
    seeds=(0, 1, 2),
    task=None,
    metric="auc",
    epochs=10,
    batch_size=32,
    lr=1e-4,
    weight_decay=1e-6,
    patience=3,
    augment=None,
    eval_batch_size=64,
    class_names=None,
    name=None,
    keep_models=False,
    progress=True,
):
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
    _check_image_encoder(encoder)
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    if task not in (None, "multilabel", "multiclass"):
        raise ValueError(
            f"task must be None (inferred from the labels), 'multilabel' or "
            f"'multiclass', got {task!r}"
        )
    channels = encoder.in_channels
    train_images = _check_images(train_images, "train_images", channels)
    val_images = _check_images(val_images, "val_images", channels)
    test_images = _check_images(test_images, "test_images", channels)
    for labels, images, what in (
        (train_labels, train_images, "train"),
        (val_labels, val_images, "val"),
        (test_labels, test_images, "test"),
    ):
        if labels is None:
            raise ValueError(f"{what}_labels is None: fine-tuning needs labels")
        _check_length(np.asarray(labels), len(images), f"{what}_labels", f"{what}_images")
    multilabel = _is_multilabel(
        train_labels, None if task is None else task == "multilabel", "train_labels"
    )
    kind = _Task(train_labels, multilabel, class_names)
    y = kind.encode(train_labels, "train_labels")
    y_val = kind.encode(val_labels, "val_labels")
    y_test = kind.encode(test_labels, "test_labels")
    fractions = tuple(_check_fraction(f) for f in np.atleast_1d(fractions).tolist())
    seeds = tuple(int(s) for s in np.atleast_1d(seeds).tolist())
    if not fractions or not seeds:
        raise ValueError("fractions and seeds must not be empty")
    epochs = _epochs_per_fraction(epochs, len(fractions))
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 2
    ):
        raise ValueError(
            f"batch_size must be an integer >= 2 (batch norm needs two "
            f"images), got {batch_size!r}"
        )
    if not isinstance(eval_batch_size, (int, np.integer)) or eval_batch_size < 1:
        raise ValueError(
            f"eval_batch_size must be an integer >= 1, got {eval_batch_size!r}"
        )
    if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not (
        isinstance(weight_decay, (int, float))
        and np.isfinite(weight_decay)
        and weight_decay >= 0
    ):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if patience is not None and (
        isinstance(patience, bool)
        or not isinstance(patience, (int, np.integer))
        or patience < 1
    ):
        raise ValueError(f"patience must be None or an integer >= 1, got {patience!r}")
    eval_augment = None
    if augment is not None:
        if not isinstance(augment, ImageAugment):
            raise TypeError(
                f"augment must be a convirt.ImageAugment or None, got "
                f"{type(augment).__name__}"
            )
        if train_images.dtype != np.uint8:
            raise TypeError("augment reads uint8 images; train_images are float32")
        for images, what in ((val_images, "val_images"), (test_images, "test_images")):
            if images.dtype != np.uint8:
                raise TypeError(
                    f"with augment, {what} must be uint8 too (they are resized "
                    "by the same transform without the random parts)"
                )
        eval_augment = _eval_augment(augment.size, normalization=augment.normalization)
    for labels, what in ((y_val, "validation"), (y_test, "test")):
        constant = np.zeros((len(labels), kind.n_outputs), np.float32)
        if not np.isfinite(
            kind.score(labels, _head_outputs(constant, kind.kind), metric)[0]
        ):
            raise ValueError(
                f"the {what} split has no class (column) with both positives "
                "and negatives: the metric is undefined"
            )

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
        from .._optional import progress_bar

        bar = progress_bar(
            total=S * sum(epochs),
            unit="epoch",
            dynamic_ncols=True,
            desc=f"fine-tuning{' ' + name if name else ''}",
        )
    try:
        for f, fraction in enumerate(fractions):
            for s, seed in enumerate(seeds):
                idx = sample_fraction(y, fraction, seed)
                n_train[f, s] = len(idx)
                _reset_copy(model, encoder)
                head = LinearHead(model.feature_dim, K, seed=seed)
                optimizer = Adam(
                    [
                        model.flat_parameters[model.trainable_offset : stop],
                        head.flat_parameters,
                    ],
                    [
                        model.flat_gradients[model.trainable_offset : stop],
                        head.flat_gradients,
                    ],
                    lr=lr,
                    weight_decay=weight_decay,
                )
                run_augment = None
                if augment is not None:
                    config = dict(augment.config)
                    config["seed"] = int(
                        np.random.SeedSequence([config["seed"], seed]).generate_state(1)[0]
                    )
                    run_augment = ImageAugment(**config)
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
                                f"epoch {epoch}): {error}; try a lower lr"
                            ) from None
                        optimizer.step()
                    _encode_into(
                        model, val_images, eval_augment, eval_batch_size, val_features
                    )
                    logits = head.forward(val_features)
                    loss_v = val_loss(logits, compute_grad=False)
                    metric_v = kind.score(y_val, _head_outputs(logits, kind.kind), metric)[
                        0
                    ]
                    records.append(
                        {
                            "epoch": epoch,
                            "train_loss": float(np.mean(losses)),
                            "val_loss": loss_v,
                            "val_" + metric: metric_v,
                            "seconds": time.perf_counter() - t0,
                        }
                    )
                    if metric_v > best["metric"] or (
                        metric_v == best["metric"] and loss_v < best["loss"]
                    ):
                        state = best["state"] or (
                            np.empty_like(model.flat_parameters),
                            np.empty_like(model.flat_buffers),
                            np.empty_like(head.flat_parameters),
                        )
                        np.copyto(state[0], model.flat_parameters)
                        np.copyto(state[1], model.flat_buffers)
                        np.copyto(state[2], head.flat_parameters)
                        best.update(metric=metric_v, loss=loss_v, epoch=epoch, state=state)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            fraction=_percent(fraction),
                            seed=seed,
                            loss=f"{records[-1]['train_loss']:.3f}",
                            val=f"{metric_v:.3f}",
                        )
                    if patience is not None and epoch - best["epoch"] >= patience:
                        break
                if bar is not None:
                    bar.update(epochs[f] - epoch)
                if best["state"] is not None:
                    np.copyto(model.flat_parameters, best["state"][0])
                    np.copyto(model.flat_buffers, best["state"][1])
                    np.copyto(head.flat_parameters, best["state"][2])
                _encode_into(
                    model, test_images, eval_augment, eval_batch_size, test_features
                )
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
    config = {
        "epochs": epochs,
        "batch_size": int(batch_size),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "patience": patience,
        "augment": None if augment is None else augment.config,
    }
    return FinetuneResult(
        metric=metric,
        task=kind.kind,
        fractions=fractions,
        seeds=seeds,
        scores=out["scores"],
        val_scores=out["val_scores"],
        val_losses=out["val_losses"],
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        n_train=n_train,
        class_names=kind.class_names,
        per_class=per_class,
        history=history,
        name=name,
        config=config,
        seconds=time.perf_counter() - start_time,
        models=models,
    )
