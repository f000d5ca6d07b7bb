"""The Trainer's settings, as one dataclass that drives construction, the configuration a
checkpoint saves, resume, and the check of a loaded trainer.json; and the checks of the
rest of what a checkpoint's trainer.json and optimizer.safetensors hold."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import field

import numpy as np

from .errors import CheckpointError

__all__ = ["TrainerConfig"]


# ---- checks of loaded values: each returns None, or what was expected ------------------


def _integer(low=0):
    def check(value):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        return None if ok else f"an integer >= {low}"

    return check


# Step and epoch counts below 2**53: the core counts Adam's steps in an int64 and takes
# the bias corrections at (double)step, exact below 2**53; a count near 2**63 overflows
# to a negative step two updates on (and the weights turn to NaN).
_MAX_COUNT = 1 << 53


def _count(value):
    ok = _integer()(value) is None and value < _MAX_COUNT
    return None if ok else "an integer in [0, 2**53)"


# The largest learning rate read from a checkpoint: Adam's own bound (CV_ADAM_MAX_LR in
# csrc/adam.h, which says why). Adam moves each weight by about lr per step: the paper's
# is 1e-4, and Adam recipes stay below 1e-1.
_MAX_LR = 1.0


def _learning_rate(zero_allowed):
    """The check of a loaded lr: finite, > 0 (Adam's constructor) or >= 0 (its lr
    setter: a cosine schedule ends at 0), and at most _MAX_LR."""

    def check(value):
        ok = (
            _number()(value) is None
            and (value >= 0 if zero_allowed else value > 0)
            and value <= _MAX_LR
        )
        return None if ok else f"a number in {'[' if zero_allowed else '('}0, {_MAX_LR:g}]"

    return check


# exp(logit_scale) is the loss's logit scale and its inverse the temperature: the
# ContrastiveLoss takes |logit_scale| <= 80 (MAX_ABS_LOGIT_SCALE in
# csrc/py/contrastive_loss.c), where both are normal float32 numbers.
_MAX_LOGIT_SCALE = 80.0


def _logit_scale(value):
    ok = _number()(value) is None and abs(value) <= _MAX_LOGIT_SCALE
    return None if ok else f"a number in [-{_MAX_LOGIT_SCALE:.4g}, {_MAX_LOGIT_SCALE:.4g}]"


def _number(low=None, allow_inf=False):
    def check(value):
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (  # finite in float64 (10**400 is not), or +-inf where allowed
                abs(value) <= sys.float_info.max
                or (allow_inf and isinstance(value, float) and math.isinf(value))
            )
            and (low is None or value >= low)
        )
        return (
            None
            if ok
            else ("a number" if allow_inf else "a finite number")
            + (f" >= {low}" if low is not None else "")
        )

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
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(_number()(x) is None for x in value)
    )
    return None if ok else "a list of 2 finite numbers"


_BOOL = _of_type(bool, "true or false")


def _rules(check, *, derived=False, optional_in_file=False):
    """The metadata of a TrainerConfig field: the check of a loaded value, whether it is
    derived from an object given to the Trainer (the ContrastiveLoss or the
    ImageAugment) rather than a keyword of it, and whether checkpoints written before it
    existed may lack it."""
    return {"check": check, "derived": derived, "optional_in_file": optional_in_file}


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Every setting of a :class:`convirt.Trainer`, with the paper's defaults.

    The trainer's own settings are the keyword arguments of ``Trainer(...)`` (see its
    docstring). The loss's (``temperature``, ``image_to_text_weight``,
    ``learnable_temperature``, ``max_logit_scale``) are read from the ContrastiveLoss
    the trainer is given, and ``augment`` is the ImageAugment's ``config``; they are
    kept here so that a checkpoint's trainer.json holds the whole configuration in one
    object: :meth:`to_json` writes it, :meth:`from_json` checks a loaded one field by
    field and rebuilds it, and :meth:`trainer_settings` gives the keywords that rebuild
    the trainer.
    """

    # the Trainer's keyword settings
    method: str = field(default="convirt", metadata=_rules(_one_of("convirt", "simclr")))
    image_size: int = field(default=224, metadata=_rules(_integer(32)))
    lr: float = field(default=1e-4, metadata=_rules(_learning_rate(zero_allowed=False)))
    weight_decay: float = field(default=1e-6, metadata=_rules(_number(0)))
    betas: tuple = field(default=(0.9, 0.999), metadata=_rules(_pair))
    eps: float = field(default=1e-8, metadata=_rules(_number(0)))
    decoupled_weight_decay: bool = field(default=False, metadata=_rules(_BOOL))
    max_grad_norm: float | None = field(
        default=None, metadata=_rules(_optional(_number(0)))
    )
    schedule: str | None = field(
        default="plateau", metadata=_rules(_one_of("plateau", "cosine", None))
    )
    plateau_factor: float = field(default=0.5, metadata=_rules(_number()))
    plateau_patience: int = field(default=5, metadata=_rules(_integer()))
    warmup_steps: int = field(default=0, metadata=_rules(_integer()))
    early_stopping_patience: int | None = field(
        default=None, metadata=_rules(_optional(_integer()))
    )
    freeze_image: bool = field(default=False, metadata=_rules(_BOOL))
    freeze_text: bool = field(default=False, metadata=_rules(_BOOL))
    seed: int = field(default=0, metadata=_rules(_integer(-(1 << 63))))
    checkpoint_every: int | None = field(
        default=None, metadata=_rules(_optional(_integer(1)))
    )
    # scale-out (convirt.distributed, convirt.train_step); checkpoints written before
    # these existed lack them
    sync_batchnorm: bool = field(
        default=False, metadata=_rules(_BOOL, optional_in_file=True)
    )
    micro_batch: int | None = field(
        default=None, metadata=_rules(_optional(_integer(1)), optional_in_file=True)
    )
    # the ContrastiveLoss's settings (its defaults) and the ImageAugment's config
    temperature: float = field(default=0.1, metadata=_rules(_number(), derived=True))
    image_to_text_weight: float = field(
        default=0.75, metadata=_rules(_number(), derived=True)
    )
    learnable_temperature: bool = field(default=False, metadata=_rules(_BOOL, derived=True))
    max_logit_scale: float = field(
        default=100.0, metadata=_rules(_number(allow_inf=True), derived=True)
    )
    augment: dict | None = field(
        default=None,
        metadata=_rules(
            _optional(_of_type(dict, "an object")), derived=True, optional_in_file=True
        ),
    )

    def __post_init__(self):
        if self.method not in ("convirt", "simclr"):
            raise ValueError(f"method must be 'convirt' or 'simclr', got {self.method!r}")
        if self.schedule not in ("plateau", "cosine", None):
            raise ValueError(
                f"schedule must be 'plateau', 'cosine' or None, got {self.schedule!r}"
            )
        if self.micro_batch is not None and (
            isinstance(self.micro_batch, bool)
            or not isinstance(self.micro_batch, int)
            or self.micro_batch < 1
        ):
            raise ValueError(
                f"micro_batch must be None or a positive integer, got {self.micro_batch!r}"
            )
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "seed", int(self.seed))

    def __getitem__(self, name):
        """config["lr"]: the dict-style read that Trainer.config (a dict before) had."""
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)

    def replace(self, **changes):
        """A copy with ``changes``, each value checked as a loaded one is: ValueError
        naming the setting and what it must be (TypeError for a name that is not one)."""
        fields = self.__dataclass_fields__
        for name, value in changes.items():
            if name not in fields:
                raise TypeError(
                    f"{name!r} is not a setting; the settings are {list(fields)}"
                )
            expected = fields[name].metadata["check"](value)
            if expected is not None:
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def keywords(cls):
        """The names of the Trainer's keyword settings (the fields that are not the
        loss's or the augmentation's)."""
        return [f.name for f in dataclasses.fields(cls) if not f.metadata["derived"]]

    def trainer_settings(self):
        """The keyword arguments of ``Trainer(...)`` that this configuration holds."""
        return {name: getattr(self, name) for name in self.keywords()}

    def loss_settings(self):
        """The keyword arguments of the ContrastiveLoss this configuration describes."""
        names = (
            "temperature",
            "image_to_text_weight",
            "learnable_temperature",
            "max_logit_scale",
        )
        return {name: getattr(self, name) for name in names}

    def to_json(self):
        """A dict for trainer.json (betas as a list)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def check_json(cls, config, path, where="'config'"):
        """Refuse a loaded configuration whose fields are missing (except those older
        checkpoints lack) or of the wrong type or range, naming the file and the field
        (CheckpointError)."""
        fields = {f.name: f.metadata for f in dataclasses.fields(cls)}
        _check_fields(
            config,
            {name: m["check"] for name, m in fields.items()},
            path,
            where,
            optional={n for n, m in fields.items() if m["optional_in_file"]},
        )

    @classmethod
    def from_json(cls, config, path="trainer.json"):
        """The TrainerConfig of a loaded trainer.json's 'config' (checked first; keys
        that are not settings, such as fit()'s batch_size, are left out)."""
        cls.check_json(config, path)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})


# ---- what a checkpoint's trainer.json and optimizer.safetensors must hold ----------------

_STATE_FIELDS = {
    "step": _count,
    "epoch": _count,
    "position": _count,
    "config": _of_type(dict, "an object"),
    "history": _of_type(list, "a list"),
    "steps": _of_type(list, "a list"),
    "best_val_loss": _number(allow_inf=True),
    "epochs_without_improvement": _integer(),
    "logit_scale": _logit_scale,
    "scale_state": _of_type(dict, "an object"),
    "scheduler": _optional(_of_type(dict, "an object")),
    "optimizer": _of_type(dict, "an object"),
}
_NESTED_FIELDS = {
    "optimizer": {"lr": _learning_rate(zero_allowed=True), "step": _count},
    "scale_state": {"m": _number(), "v": _number(0)},
}


def _real(value):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return None if ok else "a number"


_batch_size = _integer(2)

# What plot() (convirt.loss_curves) reads of each record of "steps" and "history": the
# record's step, its loss and, when present, its batch size and normalised loss.
_RECORD_FIELDS = {
    "steps": ("loss", "batch_size", "normalized_loss"),
    "history": ("val_loss", "val_batch_size", "val_normalized_loss"),
}


def _check_records(state, path):
    """Each record of "steps" and "history" is an object; one with a loss has a step,
    the loss and, if it has them, a batch size >= 2 and a normalised loss."""
    for name, (loss, size, normalized) in _RECORD_FIELDS.items():
        for k, record in enumerate(state[name]):
            where = f"{name}[{k}]"
            if not isinstance(record, dict):
                raise CheckpointError(
                    f"{path}: {where} must be an object, got {repr(record)[:60]}"
                )
            if loss not in record:
                continue
            rules = {"step": _count, loss: _real}
            if size in record:
                rules[size] = _batch_size
            if record.get(normalized) is not None:
                rules[normalized] = _real
            _check_fields(record, rules, path, where)
    if state["config"].get("batch_size") is not None:  # fit()'s, plot()'s fallback
        _check_fields(state["config"], {"batch_size": _batch_size}, path, "'config'")


def _check_fields(mapping, fields, path, where, optional=()):
    for name, rule in fields.items():
        if name not in mapping:
            if name in optional:
                continue
            raise CheckpointError(f"{path}: {where} lacks the field {name!r}")
        expected = rule(mapping[name])
        if expected is not None:
            raise CheckpointError(
                f"{path}: field {name!r} of {where} must be "
                f"{expected}, got {repr(mapping[name])[:60]}"
            )


def check_val_batch_size(value, name):
    """A validation batch compares at least 2 pairs: batches of one would all be left
    out, and every metric would be NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise ValueError(
            f"{name} must be an integer >= 2 (a contrastive batch compares at least 2 "
            f"pairs), got {value!r}"
        )


def check_fit_batches(n_pairs, batch_size, ranks, val_batch_size, position, epoch):
    """Trainer.fit()'s batch settings for n_pairs training pairs on `ranks` processes,
    and a resumed trainer's position against them; returns the batches per epoch."""
    if batch_size < 2 or batch_size > n_pairs:
        raise ValueError(
            f"batch_size must be in [2, {n_pairs}] for {n_pairs} training pairs, got "
            f"{batch_size}"
        )
    if batch_size % ranks or batch_size // ranks < 2:
        raise ValueError(
            f"batch_size is the global batch: it must be a multiple of the {ranks} "
            f"ranks with at least 2 pairs on each, got {batch_size}"
        )
    if val_batch_size is not None:
        check_val_batch_size(val_batch_size, "val_batch_size")
    n_batches = n_pairs // batch_size
    if position > n_batches:
        raise ValueError(
            f"the trainer stopped at batch {position} of epoch {epoch + 1} (its "
            f"position), but {n_pairs} training pairs make {n_batches} batches of "
            f"{batch_size}: resume with the data it was trained on"
        )
    return n_batches


def check_state(state, path):
    """Refuse a trainer.json whose fields resume() uses are missing or of the wrong type
    or range, naming the field (CheckpointError): nothing is built from it before."""
    _check_fields(state, _STATE_FIELDS, path, "the state")
    TrainerConfig.check_json(state["config"], path)
    for name, fields in _NESTED_FIELDS.items():
        _check_fields(state[name], fields, path, repr(name))
    _check_records(state, path)


def check_optimizer_file(tensors, metadata, path):
    """The Adam state dict of optimizer.safetensors: the moment buffers (float32, finite,
    second moments >= 0) and the per-buffer sizes from the metadata; CheckpointError
    naming the file and the tensor or field otherwise."""
    state = {}
    for name in ("exp_avg", "exp_avg_sq"):
        array = tensors.get(name)
        if array is None:
            raise CheckpointError(f"{path} lacks the tensor {name!r}")
        if array.dtype != np.float32 or array.ndim != 1:
            raise CheckpointError(
                f"{path}: tensor {name!r} must be float32 of one "
                f"dimension, got {array.dtype} {array.shape}"
            )
        bad = ~np.isfinite(array)
        if name == "exp_avg_sq":
            bad |= array < 0
        if bad.any():
            where = int(np.flatnonzero(bad)[0])
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {array[where]} at element {where} "
                f"({int(bad.sum())} such); expected finite values"
                + (" >= 0" if name == "exp_avg_sq" else "")
                + " (did the run diverge before this save?)"
            )
        state[name] = array
    try:
        sizes = json.loads(metadata["sizes"])
    except KeyError:
        raise CheckpointError(
            f"{path}: the metadata lacks the field 'sizes' (the length "
            "of each optimised buffer)"
        ) from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: metadata field 'sizes' is not valid JSON ({error})"
        ) from None
    if not (
        isinstance(sizes, list)
        and all(_integer()(n) is None for n in sizes)
        and sum(sizes) == len(state["exp_avg"]) == len(state["exp_avg_sq"])
    ):
        raise CheckpointError(
            f"{path}: metadata field 'sizes' must list the buffer "
            f"lengths, summing to the {len(state['exp_avg'])} moments; "
            f"got {repr(sizes)[:60]}"
        )
    state["sizes"] = sizes
    return state
