"""A trained run in one line: ``convirt.load_run(run_dir)`` gives its two encoders, the
Trainer's configuration they were trained with and the run's own settings, so that what
uses them (``convirt embed``, ``convirt zero-shot``, a notebook) sees images the way the
run did: at its view size, with its normalisation.

A run is what :func:`convirt.checkpoint.find_checkpoint` accepts: a run folder of
``convirt pretrain`` (``settings.json`` and ``checkpoint/``), a Trainer's checkpoint
directory, or the sub-directory of one save.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from ._io import read_safetensors
from .augment import ImageAugment, eval_augment
from .checkpoint import RUN_CHECKPOINT_DIR, find_checkpoint, read_run_settings, read_state
from .encoder import Encoder
from .errors import CheckpointError
from .trainer_config import TrainerConfig, check_optimizer_file, check_state

__all__ = ["LoadedRun", "load_run", "read_checkpoint"]


class LoadedRun(NamedTuple):
    """What :func:`load_run` returns; unpacks as ``image, text, config, settings,
    checkpoint = load_run(...)``.

    image_encoder: the image tower (convirt.Encoder).
    text_encoder: the text tower, or None for a SimCLR run.
    config: the :class:`convirt.TrainerConfig` of the checkpoint (``image_size``, the
        augmentation and its normalisation, ...).
    settings: the run folder's settings.json (``convirt pretrain``'s settings: the
        image model, the cache, ...), or {} when the checkpoint has no run folder.
    checkpoint: the sub-directory of the save that was loaded.
    """

    image_encoder: Encoder
    text_encoder: Encoder | None
    config: TrainerConfig
    settings: dict[str, Any]
    checkpoint: str

    @property
    def image_size(self) -> int:
        """The side of the views the image encoder was trained on."""
        return self.config.image_size

    @property
    def normalization(self) -> Any:
        """The (mean, std) the training views were normalised with, or None."""
        return (self.config.augment or {}).get("normalization")

    def eval_view(self, image_size: int | None = None) -> ImageAugment:
        """The view the run validated on (nothing random): its image size, or
        ``image_size``, with its normalisation (:func:`convirt.eval_augment`)."""
        return eval_augment(image_size or self.image_size, normalization=self.normalization)


def load_run(
    run_dir: str | os.PathLike, which: str = "best", *, load_text: bool = True
) -> LoadedRun:
    """The encoders, configuration and settings of a trained run (see
    :class:`LoadedRun`). ``which``: 'best' (the checkpoint of the lowest validation
    loss, or the last when the run had no validation set) or 'last', in any case.
    ``load_text=False`` leaves the text encoder unread (``text_encoder`` is None).

    A missing folder, a folder without a checkpoint, a damaged trainer.json or
    encoder file raises :class:`convirt.CheckpointError` naming what was looked for,
    the file and the field."""
    root, directory = find_checkpoint(run_dir, which)
    image, text, state = read_checkpoint(directory, load_text=load_text)
    config = TrainerConfig.from_json(
        state["config"], os.path.join(directory, "trainer.json")
    )
    return LoadedRun(image, text, config, _run_settings(root), directory)


def read_checkpoint(directory, *, load_text=True):
    """(image encoder, text encoder or None, trainer state) of the sub-directory of one
    save, every field of its trainer.json checked; CheckpointError naming the file and
    the field otherwise (a missing encoder file: the checkpoint is incomplete). The
    text encoder is None for a SimCLR run, or when load_text is False."""
    state = read_state(directory)
    check_state(state, os.path.join(directory, "trainer.json"))
    encoders = []
    for kind in ("image", "text"):
        path = os.path.join(directory, f"{kind}_encoder.safetensors")
        if kind == "text" and (not load_text or state["config"]["method"] == "simclr"):
            encoders.append(None)
            continue
        try:
            encoders.append(Encoder.from_checkpoint(path, kind=kind))
        except (FileNotFoundError, ValueError) as error:
            raise CheckpointError(
                f"checkpoint {directory} is incomplete or corrupt: {error}"
            ) from error
    return encoders[0], encoders[1], state


def read_optimizer_state(directory):
    """The Adam state of one save (its optimizer.safetensors), checked; CheckpointError
    naming the file otherwise."""
    path = os.path.join(directory, "optimizer.safetensors")
    try:
        tensors, meta = read_safetensors(path)
    except (FileNotFoundError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {directory} is incomplete or corrupt: {error}"
        ) from error
    return check_optimizer_file(tensors, meta, path)


def _run_settings(checkpoint_root):
    """The settings.json of the run folder around a checkpoint directory, or {}."""
    if os.path.basename(os.path.normpath(checkpoint_root)) != RUN_CHECKPOINT_DIR:
        return {}
    return read_run_settings(os.path.dirname(os.path.normpath(checkpoint_root)))
