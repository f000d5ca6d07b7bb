"""Learning-rate schedules for :class:`convirt.Adam` (or any object with an ``lr``
attribute).

- :class:`ReduceLROnPlateau` - the paper's: halve the learning rate when the validation
  loss has not improved for 5 epochs (torch.optim.lr_scheduler.ReduceLROnPlateau's
  rule, with the paper's factor and patience as defaults).
- :class:`WarmupCosine` - linear warm-up, then cosine decay to ``min_lr``, per step.

Both have ``state_dict()`` / ``load_state_dict()`` (plain floats and ints, ready for
JSON) so that a checkpoint resumes the schedule exactly.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

__all__ = ["ReduceLROnPlateau", "WarmupCosine"]


class Optimizer(Protocol):
    """What a schedule drives: anything with a settable ``lr`` (convirt.Adam)."""

    lr: float


def _check_optimizer(optimizer):
    lr = getattr(optimizer, "lr", None)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        raise TypeError(
            "the optimizer must have a numeric 'lr' attribute (e.g. convirt.Adam), "
            f"got {type(optimizer).__name__}"
        )
    return float(lr)


def _finite(value, name, low=None, low_open=False, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def _count(value, name, low=0):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


class ReduceLROnPlateau:
    """Multiply the learning rate by ``factor`` when a metric stops improving.

    Call :meth:`step` once per epoch with the validation loss. After more than
    ``patience`` epochs in a row without an improvement the learning rate becomes
    ``max(lr * factor, min_lr)`` (a change smaller than ``eps`` is skipped), then
    ``cooldown`` epochs pass before bad epochs count again. An improvement is
    ``metric < best * (1 - threshold)`` (mode "min", threshold_mode "rel"),
    ``metric < best - threshold`` ("abs"), and the mirror images for mode "max".
    This is torch.optim.lr_scheduler.ReduceLROnPlateau's rule; the defaults are the
    paper's (factor 0.5, patience 5) where torch's are 0.1 and 10. A NaN metric is
    never an improvement.

    Parameters
    ----------
    optimizer : object with a settable float ``lr`` (e.g. :class:`convirt.Adam`)
    mode : "min" or "max"
    factor : float in (0, 1)
    patience : int >= 0
    threshold : float >= 0
    threshold_mode : "rel" or "abs"
    cooldown : int >= 0
    min_lr : float >= 0
    eps : float >= 0
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        mode: str = "min",
        factor: float = 0.5,
        patience: int = 5,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        _check_optimizer(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(
                f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}"
            )
        factor = _finite(factor, "factor", low=0.0, low_open=True)
        if factor >= 1.0:
            raise ValueError(f"factor must be < 1 (it multiplies the lr), got {factor}")
        self.optimizer = optimizer
        self.mode = mode
        self.factor = factor
        self.patience = _count(patience, "patience")
        self.threshold = _finite(threshold, "threshold", low=0.0)
        self.threshold_mode = threshold_mode
        self.cooldown = _count(cooldown, "cooldown")
        self.min_lr = _finite(min_lr, "min_lr", low=0.0)
        self.eps = _finite(eps, "eps", low=0.0)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    def is_better(self, metric: float, best: float) -> bool:
        """Whether ``metric`` improves on ``best`` by more than the threshold."""
        if self.mode == "min" and self.threshold_mode == "rel":
            return metric < best * (1.0 - self.threshold)
        if self.mode == "min":
            return metric < best - self.threshold
        if self.threshold_mode == "rel":
            return metric > best * (self.threshold + 1.0)
        return metric > best + self.threshold

    def step(self, metric: float) -> bool:
        """Record one epoch's metric (e.g. the validation loss); returns True when the
        learning rate was reduced."""
        current = float(metric)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        reduced = False
        if self.num_bad_epochs > self.patience:
            old_lr = float(self.optimizer.lr)
            new_lr = max(old_lr * self.factor, self.min_lr)
            if old_lr - new_lr > self.eps:
                self.optimizer.lr = new_lr
                reduced = True
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return reduced

    @property
    def lr(self) -> float:
        """The optimizer's current learning rate."""
        return float(self.optimizer.lr)

    def state_dict(self) -> dict[str, Any]:
        """The schedule's counters and settings (floats and ints; best may be inf)."""
        return {
            "mode": self.mode,
            "factor": self.factor,
            "patience": self.patience,
            "threshold": self.threshold,
            "threshold_mode": self.threshold_mode,
            "cooldown": self.cooldown,
            "min_lr": self.min_lr,
            "eps": self.eps,
            "best": self.best,
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. The learning rate itself lives in the
        optimizer's state; restore both."""
        missing = {"best", "num_bad_epochs", "cooldown_counter", "last_epoch"} - set(state)
        if missing:
            raise KeyError(f"the ReduceLROnPlateau state dict lacks {sorted(missing)}")
        settings = {
            key: state[key]
            for key in (
                "mode",
                "factor",
                "patience",
                "threshold",
                "threshold_mode",
                "cooldown",
                "min_lr",
                "eps",
            )
            if key in state
        }
        check = ReduceLROnPlateau(self.optimizer, **settings)  # validates them
        self.__dict__.update({key: getattr(check, key) for key in settings})
        self.best = float(state["best"])
        self.num_bad_epochs = _count(state["num_bad_epochs"], "num_bad_epochs")
        self.cooldown_counter = _count(state["cooldown_counter"], "cooldown_counter")
        self.last_epoch = _count(state["last_epoch"], "last_epoch")

    def __repr__(self):
        return (
            f"ReduceLROnPlateau(mode={self.mode!r}, factor={self.factor}, "
            f"patience={self.patience}, threshold={self.threshold}, "
            f"threshold_mode={self.threshold_mode!r}, cooldown={self.cooldown}, "
            f"min_lr={self.min_lr}, eps={self.eps})"
        )


class WarmupCosine:
    """Linear warm-up then cosine decay of the learning rate, per optimisation step.

    With base = the optimizer's lr at construction (or ``base_lr``), w =
    ``warmup_steps``, T = ``total_steps`` and t = the number of :meth:`step` calls so
    far, the learning rate is::

        t <  w:       base * (s + (1 - s) * t / w)            s = warmup_start_factor
        w <= t <= T:  min_lr + (base - min_lr) * (1 + cos(pi (t - w) / (T - w))) / 2
        t >  T:       min_lr

    It is set on the optimizer at construction (t = 0) and by every :meth:`step`
    (call it after each optimizer step). The same values as torch's
    SequentialLR([LinearLR(start_factor=s, total_iters=w),
    CosineAnnealingLR(T_max=T - w, eta_min=min_lr)], milestones=[w]) for t <= T
    (with s > 0, as LinearLR requires); past T this stays at min_lr where torch's
    cosine would rise again.

    Parameters
    ----------
    optimizer : object with a settable float ``lr`` (e.g. :class:`convirt.Adam`)
    total_steps : int >= 1
    warmup_steps : int in [0, total_steps]
    min_lr : float in [0, base]
    warmup_start_factor : float in [0, 1]; 0 starts from lr = 0
    base_lr : float > 0 or None (the optimizer's lr)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        *,
        warmup_steps: int = 0,
        min_lr: float = 0.0,
        warmup_start_factor: float = 0.0,
        base_lr: float | None = None,
    ) -> None:
        lr = _check_optimizer(optimizer)
        self.optimizer = optimizer
        self.total_steps = _count(total_steps, "total_steps", low=1)
        self.warmup_steps = _count(warmup_steps, "warmup_steps")
        if self.warmup_steps > self.total_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be <= total_steps "
                f"({self.total_steps})"
            )
        self.base_lr = _finite(
            lr if base_lr is None else base_lr, "base_lr", low=0.0, low_open=True
        )
        self.min_lr = _finite(min_lr, "min_lr", low=0.0, high=self.base_lr)
        self.warmup_start_factor = _finite(
            warmup_start_factor, "warmup_start_factor", low=0.0, high=1.0
        )
        self.last_step = 0
        self.optimizer.lr = self.lr_at(0)

    def lr_at(self, step: int) -> float:
        """The learning rate after ``step`` calls of :meth:`step` (closed form)."""
        step = _count(step, "step")
        if step < self.warmup_steps:
            s = self.warmup_start_factor
            return self.base_lr * (s + (1.0 - s) * step / self.warmup_steps)
        if step >= self.total_steps:
            return self.min_lr if self.total_steps > self.warmup_steps else self.base_lr
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    def step(self) -> float:
        """Advance one optimisation step and set the optimizer's lr; returns it."""
        self.last_step += 1
        lr = self.lr_at(self.last_step)
        self.optimizer.lr = lr
        return lr

    @property
    def lr(self) -> float:
        """The learning rate of the current step."""
        return self.lr_at(self.last_step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_lr": self.min_lr,
            "warmup_start_factor": self.warmup_start_factor,
            "base_lr": self.base_lr,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` and set the optimizer's lr to that step's value
        (the learning rate is a function of the step)."""
        missing = {"base_lr", "last_step", "total_steps"} - set(state)
        if missing:
            raise KeyError(f"the WarmupCosine state dict lacks {sorted(missing)}")
        check = WarmupCosine.__new__(WarmupCosine)
        check.optimizer = self.optimizer
        check.total_steps = _count(state["total_steps"], "total_steps", low=1)
        check.warmup_steps = _count(
            state.get("warmup_steps", self.warmup_steps), "warmup_steps"
        )
        if check.warmup_steps > check.total_steps:
            raise ValueError(
                f"warmup_steps ({check.warmup_steps}) must be <= total_steps "
                f"({check.total_steps})"
            )
        check.base_lr = _finite(state["base_lr"], "base_lr", low=0.0, low_open=True)
        check.min_lr = _finite(
            state.get("min_lr", self.min_lr), "min_lr", low=0.0, high=check.base_lr
        )
        check.warmup_start_factor = _finite(
            state.get("warmup_start_factor", self.warmup_start_factor),
            "warmup_start_factor",
            low=0.0,
            high=1.0,
        )
        check.last_step = _count(state["last_step"], "last_step")
        self.__dict__.update(check.__dict__)
        self.optimizer.lr = self.lr_at(self.last_step)

    def __repr__(self):
        return (
            f"WarmupCosine(total_steps={self.total_steps}, "
            f"warmup_steps={self.warmup_steps}, min_lr={self.min_lr}, "
            f"warmup_start_factor={self.warmup_start_factor}, "
            f"base_lr={self.base_lr})"
        )
