"""Checkpoint directories that survive a crash.

A checkpoint directory holds one sub-directory per save (``step-00000123``, or
``step-00000123.1`` when a step is saved twice, e.g. mid-epoch and at its end) with

- ``image_encoder.safetensors`` (and ``text_encoder.safetensors``): every tensor;
- ``optimizer.safetensors``: the optimisers' moment buffers;
- ``trainer.json``: epoch, step, position in the epoch, seeds, schedule, history and the
  full configuration,

and two pointer files, ``LAST`` and ``BEST``, naming the sub-directories of the newest
and the best (lowest validation loss) checkpoints. A save writes and fsyncs a complete new
sub-directory first and only then replaces the pointer atomically (rename), so killing the
process at any moment leaves the previous checkpoint readable. Sub-directories no
pointer names are removed after the pointers move.
"""

import json
import os
import shutil

from ._io import atomic_write

__all__ = ["CheckpointDir", "CheckpointError"]

FORMAT = "convirt-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or not a convirt checkpoint."""


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointDir:
    """The last and best checkpoints of a training run in one directory."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def __repr__(self):
        return f"CheckpointDir({self.path!r}, last={self.pointer('LAST')}, best={self.pointer('BEST')})"

    def pointer(self, which):
        """The sub-directory named by LAST or BEST, or None."""
        try:
            with open(os.path.join(self.path, which)) as f:
                name = f.read().strip()
        except FileNotFoundError:
            return None
        return os.path.join(self.path, name) if name else None

    def save(self, step, write_files, *, best=False):
        """Save a checkpoint for `step`: write_files(directory) writes every file into a
        fresh directory; then LAST (and BEST when best=True) move to it atomically.
        Errors (full disk, no permission) raise OSError and leave the previous
        checkpoint as it was."""
        os.makedirs(self.path, exist_ok=True)
        name = f"step-{step:08d}"
        serial = 0
        while os.path.exists(os.path.join(self.path, name)):  # the same step saved again
            serial += 1
            name = f"step-{step:08d}.{serial}"
        final = os.path.join(self.path, name)
        staging = os.path.join(self.path, f".staging-{name}-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        try:
            write_files(staging)
            for entry in os.listdir(staging):
                with open(os.path.join(staging, entry), "rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(staging)
            os.rename(staging, final)
            _fsync_dir(self.path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        atomic_write(os.path.join(self.path, "LAST"), name.encode())
        if best:
            atomic_write(os.path.join(self.path, "BEST"), name.encode())
        self._prune()
        return final

    def _prune(self):
        keep = {self.pointer("LAST"), self.pointer("BEST")}
        for entry in os.listdir(self.path):
            full = os.path.join(self.path, entry)
            if entry.startswith("step-") and full not in keep:
                shutil.rmtree(full, ignore_errors=True)
            elif entry.startswith(".staging-") and not entry.endswith(f"-{os.getpid()}"):
                shutil.rmtree(full, ignore_errors=True)  # left by a killed process

    def load_state(self, which="LAST"):
        """(directory, trainer state dict) of the LAST or BEST checkpoint."""
        if not os.path.isdir(self.path):
            raise CheckpointError(f"no checkpoint directory at {self.path}")
        directory = self.pointer(which)
        if directory is None:
            raise CheckpointError(f"{self.path} has no {which} checkpoint (no {which} file)")
        state_path = os.path.join(directory, "trainer.json")
        try:
            with open(state_path) as f:
                state = json.load(f)
        except FileNotFoundError:
            raise CheckpointError(f"{which} names {directory}, which has no trainer.json") from None
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{state_path} is corrupt: {error}") from None
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{state_path} is not a {FORMAT} file "
                                  f"(format: {state.get('format')!r})")
        return directory, state
