"""Hooks that Trainer.fit calls: subclass Callback, or pass functions."""

__all__ = ["Callback"]


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
