"""convirt.Trainer: ConVIRT pretraining (and the SimCLR image-only baseline) with the
paper's defaults, a progress bar, validation, the plateau schedule, early stopping,
history, callbacks and checkpoints that survive a crash and resume exactly."""

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _core
from ._core import Adam, ImageAugment
from .checkpoint import FORMAT, CheckpointDir, CheckpointError
from .encoder import Encoder
from .errors import NonFiniteError, TrainingDiverged
from .schedules import ReduceLROnPlateau, WarmupCosine

__all__ = ["Callback", "Trainer", "TrainingDiverged"]


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


def _as_pairs(data, name):
    """(images, reports) from a tuple or an object with .images and .reports."""
    if data is None:
        return None
    if isinstance(data, tuple) and len(data) == 2:
        images, reports = data
    elif hasattr(data, "images"):
        images, reports = data.images, getattr(data, "reports", None)
    else:
        raise TypeError(f"{name} must be (images, reports) or a dataset with .images and "
                        f".reports, got {type(data).__name__}")
    if reports is not None and len(reports) != len(images):
        raise ValueError(f"{name}: {len(images)} images but {len(reports)} reports")
    if len(images) == 0:
        raise ValueError(f"{name} is empty")
    return images, reports


def _epoch_order(seed, epoch, n, shuffle):
    if not shuffle:
        return np.arange(n)
    # A counter-style stream: the order depends on (seed, epoch) only.
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)



def paper_augment(image_size, seed=0):
    """ConVIRT's image transforms for views of image_size pixels: the paper's ranges,
    with the Gaussian blur's sigma range (0.1, 3.0) given at 224 px scaled to the view
    size, so that a small view is blurred as much as the paper's, not more (at 64 px an
    unscaled sigma of 3 erases findings a few pixels wide)."""
    return ImageAugment(image_size, blur_sigma=(0.1, 3.0 * image_size / 224), seed=seed)


def mild_augment(image_size, seed=0, flip=0.5):
    """Milder transforms than the paper's for short runs on small views: crop 80-100%
    of the area, horizontal flip with probability ``flip`` (None: never; reports name
    the side of a finding), rotation up to 5 degrees, translation 5%, brightness and
    contrast factors in [0.8, 1.2], no blur."""
    return ImageAugment(image_size, crop_scale=(0.8, 1.0), flip=flip, degrees=5.0,
                        translate=0.05, brightness=(0.8, 1.2), contrast=(0.8, 1.2),
                        blur_sigma=None, seed=seed)


AUGMENTS = {"paper": paper_augment, "mild": mild_augment}

# ---- what a checkpoint's trainer.json and optimizer.safetensors must hold -----------------

def _integer(low=0):
    def check(value):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        return None if ok else f"an integer >= {low}"
    return check


def _number(low=None, allow_inf=False):
    def check(value):
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and not math.isnan(value) and (allow_inf or not math.isinf(value))
              and (low is None or value >= low))
        return None if ok else ("a number" if allow_inf else "a finite number") + (
            f" >= {low}" if low is not None else "")
    return check


def _optional(check):
    def optional(value):
        return None if value is None else check(value)
    return optional


def _one_of(*values):
    return lambda value: None if value in values else f"one of {list(values)}"


def _of_type(kind, name):
    return lambda value: None if isinstance(value, kind) else name


def _pair(value):
    ok = (isinstance(value, list) and len(value) == 2
          and all(_number()(x) is None for x in value))
    return None if ok else "a list of 2 finite numbers"


_BOOL = _of_type(bool, "true or false")
_STATE_FIELDS = {
    "step": _integer(), "epoch": _integer(), "position": _integer(),
    "config": _of_type(dict, "an object"), "history": _of_type(list, "a list"),
    "steps": _of_type(list, "a list"), "best_val_loss": _number(allow_inf=True),
    "epochs_without_improvement": _integer(), "logit_scale": _number(),
    "scale_state": _of_type(dict, "an object"),
    "scheduler": _optional(_of_type(dict, "an object")),
    "optimizer": _of_type(dict, "an object"),
}
_CONFIG_FIELDS = {
    "method": _one_of("convirt", "simclr"), "image_size": _integer(32),
    "lr": _number(0), "weight_decay": _number(0), "betas": _pair, "eps": _number(0),
    "decoupled_weight_decay": _BOOL, "max_grad_norm": _optional(_number(0)),
    "schedule": _one_of("plateau", "cosine", None), "plateau_factor": _number(),
    "plateau_patience": _integer(), "warmup_steps": _integer(),
    "early_stopping_patience": _optional(_integer()), "freeze_image": _BOOL,
    "freeze_text": _BOOL, "seed": _integer(-(1 << 63)),
    "checkpoint_every": _optional(_integer(1)), "temperature": _number(),
    "image_to_text_weight": _number(), "learnable_temperature": _BOOL,
    "max_logit_scale": _number(allow_inf=True),
    "augment": _optional(_of_type(dict, "an object")),
}
_NESTED_FIELDS = {
    "optimizer": {"lr": _number(0), "step": _integer()},
    "scale_state": {"m": _number(), "v": _number(0)},
}


# Fields that older checkpoints may lack.
_OPTIONAL_FIELDS = {"augment"}


def _check_state(state, path):
    """Refuse a trainer.json whose fields resume() uses are missing or of the wrong type
    or range, naming the field (CheckpointError): nothing is built from it before."""

    def check(mapping, fields, where):
        for field, rule in fields.items():
            if field not in mapping:
                if field in _OPTIONAL_FIELDS:
                    continue
                raise CheckpointError(f"{path}: {where} lacks the field {field!r}")
            expected = rule(mapping[field])
            if expected is not None:
                raise CheckpointError(f"{path}: field {field!r} of {where} must be "
                                      f"{expected}, got {repr(mapping[field])[:60]}")

    check(state, _STATE_FIELDS, "the state")
    check(state["config"], _CONFIG_FIELDS, "'config'")
    for name, fields in _NESTED_FIELDS.items():
        check(state[name], fields, repr(name))


def _check_optimizer_file(tensors, metadata, path):
    """The Adam state dict of optimizer.safetensors: the moment buffers (float32, finite,
    second moments >= 0) and the per-buffer sizes from the metadata; CheckpointError
    naming the file and the tensor or field otherwise."""
    state = {}
    for name in ("exp_avg", "exp_avg_sq"):
        array = tensors.get(name)
        if array is None:
            raise CheckpointError(f"{path} lacks the tensor {name!r}")
        if array.dtype != np.float32 or array.ndim != 1:
            raise CheckpointError(f"{path}: tensor {name!r} must be float32 of one "
                                  f"dimension, got {array.dtype} {array.shape}")
        bad = ~np.isfinite(array)
        if name == "exp_avg_sq":
            bad |= array < 0
        if bad.any():
            where = int(np.flatnonzero(bad)[0])
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {array[where]} at element {where} "
                f"({int(bad.sum())} such); expected finite values"
                + (" >= 0" if name == "exp_avg_sq" else "")
                + " (did the run diverge before this save?)")
        state[name] = array
    try:
        sizes = json.loads(metadata["sizes"])
    except KeyError:
        raise CheckpointError(f"{path}: the metadata lacks the field 'sizes' (the length "
                              "of each optimised buffer)") from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: metadata field 'sizes' is not valid JSON "
                              f"({error})") from None
    if not (isinstance(sizes, list) and all(_integer()(n) is None for n in sizes)
            and sum(sizes) == len(state["exp_avg"]) == len(state["exp_avg_sq"])):
        raise CheckpointError(f"{path}: metadata field 'sizes' must list the buffer "
                              f"lengths, summing to the {len(state['exp_avg'])} moments; "
                              f"got {repr(sizes)[:60]}")
    state["sizes"] = sizes
    return state


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
        checkpoint_dir: where LAST and BEST checkpoints go (see convirt.checkpoint);
            checkpoint_every: also save every so many steps (default: each epoch).
        callbacks: Callback objects, or functions f(trainer, metrics) called each step.
        progress: show a tqdm progress bar.

    Use ``step(images, reports)`` for one update or ``fit(train, val, epochs)``;
    ``history`` (per epoch) and ``steps`` (per step) are lists of dicts.
    """

    def __init__(self, image_encoder, text_encoder=None, loss=None, *, method="convirt",
                 augment=None, image_size=224, lr=1e-4, weight_decay=1e-6,
                 betas=(0.9, 0.999), eps=1e-8, decoupled_weight_decay=False,
                 max_grad_norm=None, schedule="plateau", plateau_factor=0.5,
                 plateau_patience=5, warmup_steps=0, early_stopping_patience=None,
                 freeze_image=False, freeze_text=False, seed=0, checkpoint_dir=None,
                 checkpoint_every=None, callbacks=(), progress=True, prefetch=True):
        if method not in ("convirt", "simclr"):
            raise ValueError(f"method must be 'convirt' or 'simclr', got {method!r}")
        if not isinstance(image_encoder, _core.Encoder) or image_encoder.kind != "image":
            raise TypeError("image_encoder must be an image convirt.Encoder (e.g. "
                            "Encoder.resnet50())")
        if method == "convirt":
            if not isinstance(text_encoder, _core.Encoder) or text_encoder.kind != "text":
                raise TypeError("method='convirt' needs a text convirt.Encoder "
                                "(e.g. Encoder.from_pretrained(path))")
            if text_encoder.tokenizer is None:
                raise ValueError("the text encoder has no tokenizer; build it with "
                                 "Encoder.from_pretrained() or pass tokenizer=")
        elif text_encoder is not None:
            raise ValueError("method='simclr' trains the image encoder alone: pass "
                             "text_encoder=None")
        if freeze_image and (method == "simclr" or freeze_text):
            raise ValueError("nothing would be trained: every tower is frozen")
        if schedule not in ("plateau", "cosine", None):
            raise ValueError(f"schedule must be 'plateau', 'cosine' or None, got {schedule!r}")
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {image_size}")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.loss = loss if loss is not None else _core.ContrastiveLoss()
        self.method = method
        self.image_size = int(image_size)
        self.augment = augment if augment is not None else paper_augment(
            self.image_size, seed=seed)
        if self.augment.size != self.image_size:
            raise ValueError(f"augment.size ({self.augment.size}) must equal image_size "
                             f"({self.image_size})")
        # Validation views: the same resize, nothing random.
        self.eval_augment = ImageAugment(self.image_size, crop_scale=None, flip=None,
                                         degrees=None, translate=None, scale=None,
                                         brightness=None, contrast=None, blur_sigma=None,
                                         normalization=self.augment.normalization)
        self.seed = int(seed)
        self.freeze_image, self.freeze_text = bool(freeze_image), bool(freeze_text)
        self.schedule_name = schedule
        self.early_stopping_patience = early_stopping_patience
        self.checkpoints = CheckpointDir(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_every = checkpoint_every
        self.callbacks = [c if isinstance(c, Callback) else _FunctionCallback(c)
                          for c in callbacks]
        self.progress = progress
        self.prefetch = prefetch
        self.config = {
            "method": method, "image_size": self.image_size, "lr": lr,
            "weight_decay": weight_decay, "betas": list(betas), "eps": eps,
            "decoupled_weight_decay": decoupled_weight_decay, "max_grad_norm": max_grad_norm,
            "schedule": schedule, "plateau_factor": plateau_factor,
            "plateau_patience": plateau_patience, "warmup_steps": warmup_steps,
            "early_stopping_patience": early_stopping_patience, "freeze_image": freeze_image,
            "freeze_text": freeze_text, "seed": self.seed, "checkpoint_every": checkpoint_every,
            "temperature": self.loss.temperature,
            "image_to_text_weight": self.loss.image_to_text_weight,
            "learnable_temperature": self.loss.learnable_temperature,
            "max_logit_scale": self.loss.max_logit_scale,
            "augment": self.augment.config,
        }
        params, grads = [], []
        for encoder, frozen in ((image_encoder, freeze_image), (text_encoder, freeze_text)):
            if encoder is None or frozen:
                continue
            start = encoder.trainable_offset
            params.append(encoder.flat_parameters[start:])
            grads.append(encoder.flat_gradients[start:])
        self.optimizer = Adam(params, grads, lr=lr, betas=tuple(betas), eps=eps,
                              weight_decay=weight_decay,
                              decoupled_weight_decay=decoupled_weight_decay,
                              max_grad_norm=max_grad_norm)
        # The learnable temperature is one scalar: Adam on it in Python.
        self._scale_state = {"m": 0.0, "v": 0.0}
        self.scheduler = None
        if schedule == "plateau":
            self.scheduler = ReduceLROnPlateau(self.optimizer, factor=plateau_factor,
                                               patience=plateau_patience)
        self.step_count = 0          # optimiser updates done
        self.epoch = 0               # epochs completed
        self.position = 0            # batches done in the current epoch
        self.history = []            # one dict per epoch
        self.steps = []              # one dict per step
        self.best_val_loss = math.inf
        self.epochs_without_improvement = 0
        self._buffers = {}

    def __repr__(self):
        towers = (f"image={self.image_encoder._describe()}"
                  + (f", text={self.text_encoder._describe()}" if self.text_encoder else ""))
        return (f"Trainer(method={self.method!r}, {towers}, lr={self.optimizer.lr:g}, "
                f"schedule={self.schedule_name!r}, step={self.step_count}, epoch={self.epoch})")

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
        from .text import sample_sentences, tokenize

        texts = list(reports)
        if sample:
            texts = sample_sentences(texts, seed=self.seed, step=step, indices=indices)
        return tokenize(self.text_encoder.tokenizer, texts,
                        max_length=self.text_encoder.max_length)

    def step(self, images, reports=None, *, sample_sentence=True, _text=None):
        """One update on a batch: augment the images, encode both towers, the loss, the
        backward pass and Adam. images: uint8 (N, H, W[, C]) array or a list of such
        images; reports: N strings (one sentence of each is sampled unless
        sample_sentence=False). Returns the step's metrics as a dict."""
        t0 = time.perf_counter()
        n = len(images)
        if n < 2:
            raise ValueError(f"a contrastive step needs at least 2 pairs, got {n}")
        step = self.step_count
        if self.method == "convirt":
            if reports is None or len(reports) != n:
                raise ValueError("step needs one report per image")
            ids, mask = _text if _text is not None else self._prepare_text(
                reports, step, sample_sentence)
        # A training forward updates the batch-norm running statistics; a step that fails
        # (a non-finite loss, an error in the core) puts them back, so that it changes
        # no parameter and no buffer. The copy is small (ResNet-50: 53k floats).
        towers = [e for e in (self.image_encoder, self.text_encoder) if e is not None]
        buffers = [e.flat_buffers.copy() for e in towers]
        try:
            if self.method == "convirt":
                views = self._buffer("views", self._view_shape(images, n))
                self.augment(images, step=step, out=views)
                result = self._convirt_forward_backward(views, ids, mask)
            else:
                views = self._buffer("views", self._view_shape(images, 2 * n))
                self.augment(images, step=2 * step, out=views[:n])
                self.augment(images, step=2 * step + 1, out=views[n:])
                result = self._simclr_forward_backward(views)
            if not math.isfinite(result.loss):
                raise TrainingDiverged(self._diverged_message(result.loss))
            try:
                grad_norm = self.optimizer.step(return_norm=True)
            except NonFiniteError as error:  # a finite loss, a NaN or Inf gradient
                raise TrainingDiverged(self._diverged_message(f"finite but {error}")) \
                    from error
        except BaseException:
            for encoder, saved in zip(towers, buffers):
                encoder.flat_buffers[...] = saved
            raise
        self._step_temperature(result)
        if self.schedule_name == "cosine" and self.scheduler is not None:
            self.scheduler.step()
        self.step_count += 1
        seconds = time.perf_counter() - t0
        metrics = {"step": self.step_count, "epoch": self.epoch, "loss": result.loss,
                   "image_to_text": result.image_to_text,
                   "text_to_image": result.text_to_image,
                   "accuracy_image_to_text": result.accuracy_image_to_text,
                   "accuracy_text_to_image": result.accuracy_text_to_image,
                   "lr": self.optimizer.lr, "temperature": self.loss.temperature,
                   "grad_norm": grad_norm, "seconds": seconds, "pairs_per_s": n / seconds}
        self.steps.append(metrics)
        return metrics

    def _diverged_message(self, value):
        try:
            where = self.checkpoints.pointer("LAST") if self.checkpoints else None
        except CheckpointError:
            where = None
        keep = (f"the last good checkpoint is {where}" if where
                else "no checkpoint was written (set checkpoint_dir to keep one)")
        return (f"the loss became {value} at step {self.step_count}; training stopped "
                f"before the update, {keep}. Try a lower learning rate.")

    def _loss_call(self, fn):
        try:
            return fn()
        except NonFiniteError as error:  # NaN or Inf embeddings, overflowed similarities
            raise TrainingDiverged(self._diverged_message(f"NaN ({error})")) from error

    def _convirt_forward_backward(self, views, ids, mask):
        image, text = self.image_encoder, self.text_encoder
        image.train(not self.freeze_image)
        text.train(not self.freeze_text)
        _, v = image.forward(views, features=False,
                             embeddings_out=self._buffer("v", (len(views), image.proj_dim)))
        _, u = text.forward(ids, mask, features=False,
                            embeddings_out=self._buffer("u", (len(ids), text.proj_dim)))
        gv, gu = self._buffer("gv", v.shape), self._buffer("gu", u.shape)
        result = self._loss_call(lambda: self.loss(v, u, grad_v=gv, grad_u=gu))
        if not math.isfinite(result.loss):
            return result
        if not self.freeze_image:
            image.zero_grad()
            image.backward(gv)
        if not self.freeze_text:
            text.zero_grad()
            text.backward(gu)
        return result

    def _simclr_forward_backward(self, views):
        image = self.image_encoder.train()
        _, z = image.forward(views, features=False,
                             embeddings_out=self._buffer("z", (len(views), image.proj_dim)))
        gz = self._buffer("gz", z.shape)
        result = self._loss_call(lambda: self.loss.nt_xent(z, grad=gz))
        if math.isfinite(result.loss):
            image.zero_grad()
            image.backward(gz)
        return result

    def _step_temperature(self, result):
        if not self.loss.learnable_temperature or result.grad_logit_scale is None:
            return
        beta1, beta2 = self.config["betas"]
        state, g = self._scale_state, result.grad_logit_scale
        t = self.step_count + 1
        state["m"] = beta1 * state["m"] + (1 - beta1) * g
        state["v"] = beta2 * state["v"] + (1 - beta2) * g * g
        m_hat, v_hat = state["m"] / (1 - beta1 ** t), state["v"] / (1 - beta2 ** t)
        self.loss.logit_scale = self.loss.logit_scale - self.optimizer.lr * m_hat / (
            math.sqrt(v_hat) + self.config["eps"])

    # ---- validation -------------------------------------------------------------------------

    def validate(self, data, batch_size=32):
        """Mean contrastive loss on `data` in eval mode: no augmentation (resize only), a
        fixed sentence of each report, forward only. Returns a dict of the losses and
        accuracies averaged over batches."""
        images, reports = _as_pairs(data, "val")
        n = len(images)
        if n < 2:
            raise ValueError("validation needs at least 2 pairs")
        totals = {}
        count = 0
        was = [(e, e.training) for e in (self.image_encoder, self.text_encoder) if e]
        try:
            for e, _ in was:
                e.eval()
            for start in range(0, n - 1, batch_size):
                stop = min(start + batch_size, n)
                if stop - start < 2:
                    break
                batch = [images[i] for i in range(start, stop)]
                views = self._buffer("val_views", self._view_shape(batch, len(batch)))
                self.eval_augment(batch, step=0, out=views)
                if self.method == "convirt":
                    from .text import sample_sentences, tokenize

                    texts = sample_sentences([reports[i] for i in range(start, stop)],
                                             seed=self.seed + 1, step=0,
                                             indices=range(start, stop))
                    ids, mask = tokenize(self.text_encoder.tokenizer, texts,
                                         max_length=self.text_encoder.max_length)
                    _, v = self.image_encoder.forward(views, features=False)
                    _, u = self.text_encoder.forward(ids, mask, features=False)
                    r = self._loss_call(lambda: self.loss(v, u, compute_grad=False))
                else:
                    both = self._buffer("val_pair", (2 * len(batch),) + views.shape[1:])
                    self.augment(batch, step=start, out=both[:len(batch)])
                    self.augment(batch, step=start + 1, out=both[len(batch):])
                    _, z = self.image_encoder.forward(both, features=False)
                    r = self._loss_call(lambda: self.loss.nt_xent(z, compute_grad=False))
                for key in ("loss", "image_to_text", "text_to_image",
                            "accuracy_image_to_text", "accuracy_text_to_image"):
                    totals[key] = totals.get(key, 0.0) + getattr(r, key)
                count += 1
        finally:
            for e, mode in was:
                e.train(mode)
        return {f"val_{k}": v / count for k, v in totals.items()}

    # ---- the loop ---------------------------------------------------------------------------

    def _batches(self, images, reports, order, batch_size, start_batch):
        """(indices, image views, text arrays) per batch, prepared one batch ahead in a
        thread while the C core runs the current step (it releases the GIL)."""
        n_batches = len(order) // batch_size
        first_step = self.step_count  # read here: the worker runs while steps advance

        def prepare(b):
            idx = order[b * batch_size:(b + 1) * batch_size]
            batch_images = [images[i] for i in idx]  # views into the array or memmap
            text = None
            if self.method == "convirt":
                step = first_step + (b - start_batch)
                text = self._prepare_text([reports[i] for i in idx], step, True,
                                          indices=[int(i) for i in idx])
            return idx, batch_images, text

        if not self.prefetch:
            for b in range(start_batch, n_batches):
                yield prepare(b)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(prepare, start_batch) if start_batch < n_batches else None
            for b in range(start_batch, n_batches):
                current = future.result()
                future = pool.submit(prepare, b + 1) if b + 1 < n_batches else None
                yield current

    def fit(self, train, val=None, *, epochs=10, batch_size=32, shuffle=True,
            max_steps=None, val_batch_size=None):
        """Train for `epochs` epochs in total (a resumed trainer continues where it
        stopped) or until max_steps updates in total. train / val: (images, reports) or a
        dataset with .images and .reports. Returns the history (one dict per epoch)."""
        images, reports = _as_pairs(train, "train")
        if self.method == "convirt" and reports is None:
            raise ValueError("ConVIRT needs reports; for images alone use method='simclr'")
        if batch_size < 2 or batch_size > len(images):
            raise ValueError(f"batch_size must be in [2, {len(images)}] for {len(images)} "
                             f"training pairs, got {batch_size}")
        if val is not None:
            _as_pairs(val, "val")
        n_batches = len(images) // batch_size
        total_steps = epochs * n_batches if max_steps is None else max_steps
        if self.schedule_name == "cosine" and self.scheduler is None:
            self.scheduler = WarmupCosine(self.optimizer, total_steps,
                                          warmup_steps=self.config["warmup_steps"])
        self.config.update({"batch_size": batch_size, "epochs": epochs, "shuffle": shuffle,
                            "max_steps": max_steps})
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=min(self.step_count, total_steps),
                       unit="step", desc=f"{self.method} pretraining", dynamic_ncols=True)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        stop = False
        try:
            while self.epoch < epochs and not stop:
                if max_steps is not None and self.step_count >= max_steps:
                    break
                epoch_start, losses = time.perf_counter(), []
                order = _epoch_order(self.seed, self.epoch, len(images), shuffle)
                for idx, batch_images, text in self._batches(images, reports, order,
                                                             batch_size, self.position):
                    batch_reports = ([reports[i] for i in idx] if reports is not None
                                     else None)
                    metrics = self.step(batch_images, batch_reports, _text=text)
                    self.position += 1
                    losses.append(metrics["loss"])
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                                        lr=f"{metrics['lr']:.2g}",
                                        pairs_s=f"{metrics['pairs_per_s']:.1f}")
                    if any(cb.on_step_end(self, metrics) for cb in self.callbacks):
                        stop = True
                    if (self.checkpoints and self.checkpoint_every
                            and self.step_count % self.checkpoint_every == 0):
                        self.save_checkpoint()
                    if stop or (max_steps is not None and self.step_count >= max_steps):
                        stop = True
                        break
                if self.position < n_batches:  # stopped inside the epoch
                    break
                record = self._end_epoch(val, val_batch_size or batch_size, losses,
                                         time.perf_counter() - epoch_start)
                if any(cb.on_epoch_end(self, record) for cb in self.callbacks):
                    stop = True
                if record.get("early_stop"):
                    stop = True
        finally:
            if bar is not None:
                bar.close()
            for cb in self.callbacks:
                cb.on_train_end(self)
        return self.history

    def _end_epoch(self, val, val_batch_size, losses, seconds):
        record = {"epoch": self.epoch + 1, "step": self.step_count,
                  "train_loss": float(np.mean(losses)) if losses else math.nan,
                  "lr": self.optimizer.lr, "seconds": seconds}
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
            "format": FORMAT, "step": self.step_count, "epoch": self.epoch,
            "position": self.position, "config": self.config, "history": self.history,
            "steps": self.steps, "best_val_loss": self.best_val_loss,
            "epochs_without_improvement": self.epochs_without_improvement,
            "logit_scale": self.loss.logit_scale, "scale_state": self._scale_state,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "optimizer": {"lr": self.optimizer.lr, "step": self.optimizer.step_count},
        }

    def save_checkpoint(self, best=False):
        """Write a checkpoint into checkpoint_dir (atomically: see convirt.checkpoint)."""
        if self.checkpoints is None:
            raise ValueError("this trainer has no checkpoint_dir")
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
    def resume(cls, checkpoint_dir, *, which="LAST", callbacks=(), progress=True,
               augment=None):
        """A trainer restored from checkpoint_dir's LAST (or BEST) checkpoint: encoders,
        optimiser moments, schedule, temperature, history and the position in the data;
        fit() then continues exactly where the run stopped."""
        from ._io import read_safetensors

        directory, state = CheckpointDir(checkpoint_dir).load_state(which)
        state_path = os.path.join(directory, "trainer.json")
        _check_state(state, state_path)
        optimizer_path = os.path.join(directory, "optimizer.safetensors")
        try:
            image = Encoder.from_checkpoint(os.path.join(directory, "image_encoder.safetensors"))
            text_path = os.path.join(directory, "text_encoder.safetensors")
            text = Encoder.from_checkpoint(text_path) if os.path.exists(text_path) else None
            optimizer_tensors, optimizer_meta = read_safetensors(optimizer_path)
        except (FileNotFoundError, ValueError) as error:
            raise CheckpointError(f"checkpoint {directory} is incomplete or corrupt: "
                                  f"{error}") from error
        optimizer_state = _check_optimizer_file(optimizer_tensors, optimizer_meta,
                                                optimizer_path)
        try:
            return cls._restore(image, text, state, optimizer_state, checkpoint_dir,
                                callbacks, progress, augment)
        except (ValueError, TypeError, KeyError, OverflowError) as error:
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointError(f"{state_path} (with {optimizer_path}): the saved state "
                                  f"is refused: {error}") from error

    @classmethod
    def _restore(cls, image, text, state, optimizer_state, checkpoint_dir, callbacks,
                 progress, augment):
        """The trainer of resume(), from checked parts."""
        config = state["config"]
        loss = _core.ContrastiveLoss(temperature=config["temperature"],
                                     image_to_text_weight=config["image_to_text_weight"],
                                     learnable_temperature=config["learnable_temperature"],
                                     max_logit_scale=config["max_logit_scale"])
        if augment is None and config.get("augment"):
            augment = ImageAugment(**config["augment"])  # the same seed: the same views
        trainer = cls(image, text, loss, method=config["method"], augment=augment,
                      image_size=config["image_size"], lr=config["lr"],
                      weight_decay=config["weight_decay"], betas=tuple(config["betas"]),
                      eps=config["eps"],
                      decoupled_weight_decay=config["decoupled_weight_decay"],
                      max_grad_norm=config["max_grad_norm"], schedule=config["schedule"],
                      plateau_factor=config["plateau_factor"],
                      plateau_patience=config["plateau_patience"],
                      warmup_steps=config["warmup_steps"],
                      early_stopping_patience=config["early_stopping_patience"],
                      freeze_image=config["freeze_image"], freeze_text=config["freeze_text"],
                      seed=config["seed"], checkpoint_dir=checkpoint_dir,
                      checkpoint_every=config["checkpoint_every"], callbacks=callbacks,
                      progress=progress)
        optimizer_state["step"] = state["optimizer"]["step"]
        trainer.optimizer.load_state_dict(optimizer_state)
        trainer.optimizer.lr = state["optimizer"]["lr"]
        trainer.loss.logit_scale = state["logit_scale"]
        trainer._scale_state = dict(state["scale_state"])
        if config["schedule"] == "cosine":
            trainer.scheduler = WarmupCosine(trainer.optimizer, 1,
                                             warmup_steps=config["warmup_steps"])
        if trainer.scheduler is not None and state["scheduler"] is not None:
            trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.step_count, trainer.epoch = state["step"], state["epoch"]
        trainer.position = state["position"]
        trainer.history, trainer.steps = state["history"], state["steps"]
        trainer.best_val_loss = state["best_val_loss"]
        trainer.epochs_without_improvement = state["epochs_without_improvement"]
        trainer.config.update({k: v for k, v in config.items() if k not in trainer.config})
        return trainer

    # ---- plots ------------------------------------------------------------------------------

    def plot(self, ax=None):
        """The training loss per step and the validation loss per epoch; returns the
        matplotlib figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(7, 4))
        else:
            fig = ax.figure
        if self.steps:
            ax.plot([s["step"] for s in self.steps], [s["loss"] for s in self.steps],
                    lw=1, alpha=0.6, label="train (per step)")
        val = [(r["step"], r["val_loss"]) for r in self.history if "val_loss" in r]
        if val:
            ax.plot(*zip(*val), "o-", label="validation (per epoch)")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{self.method} loss")
        ax.legend()
        ax.grid(alpha=0.3)
        return fig
