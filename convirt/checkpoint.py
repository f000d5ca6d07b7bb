"""Checkpoint directories that survive a crash.

A checkpoint directory holds one sub-directory per save (``step-00000123``, or
``step-00000123.1`` when a step is saved twice, e.g. mid-epoch and at its end) with

- ``image_encoder.safetensors`` (and ``text_encoder.safetensors``): every tensor;
- ``optimizer.safetensors``: the optimisers' moment buffers;
- ``trainer.json``: epoch, step, position in the epoch, seeds, schedule, history and the
  full configuration,

and two pointer files, ``LAST`` and ``BEST``, naming the sub-directories of the newest
and the best (lowest validation loss) checkpoints. A save writes and fsyncs a complete new
sub-directory first (``.staging-step-00000123-<pid>``) and only then replaces the pointer
atomically (rename), so killing the process at any moment leaves the previous checkpoint
readable.

After the pointers move, checkpoints no pointer names are removed - only entries whose
names are exactly what a save writes (``step-`` and 8 digits, optionally ``.N``) and that
this object saved or that hold a ``trainer.json``, and staging folders of this process or
of a process that no longer runs (killed mid-save). Anything else in the folder (a
``step-by-step-notes/``, another live process's save in progress) is left alone.

A pointer must hold such a name and nothing else: a pointer naming a path outside the
folder (``../x``, an absolute path, a symbolic link out) is refused, not followed.

``convirt pretrain`` keeps a run's checkpoint directory in ``RUN/checkpoint``;
:func:`find_checkpoint` takes a run folder, a checkpoint directory or one checkpoint
folder and says what it looked for when there is none.
"""

import os
import re
import shutil

from ._io import atomic_write, read_json_object, read_regular_file
from .errors import CheckpointError

__all__ = [
    "CheckpointDir",
    "CheckpointError",
    "find_checkpoint",
    "pointer_name",
    "read_run_settings",
    "read_state",
]

FORMAT = "convirt-checkpoint-1"
# The sub-folder of a `convirt pretrain` run folder that is its checkpoint directory.
RUN_CHECKPOINT_DIR = "checkpoint"
SETTINGS_FILE = "settings.json"  # what `convirt pretrain` writes beside checkpoint/
POINTERS = ("BEST", "LAST")


# The names save() writes: a checkpoint, and its staging folder before the rename.
_CHECKPOINT_NAME = re.compile(r"step-[0-9]{8}(\.[0-9]+)?")
_STAGING_NAME = re.compile(r"\.staging-step-[0-9]{8}(?:\.[0-9]+)?-([0-9]+)")


def _process_exists(pid):
    if pid <= 0:
        return True  # not a process id: keep what it names
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def pointer_name(which):
    """'BEST' or 'LAST' for ``which`` in any case ('best', 'Last'); ValueError otherwise."""
    name = which.upper() if isinstance(which, str) else None
    if name not in POINTERS:
        raise ValueError(f"which must be 'best' or 'last' (any case), got {which!r}")
    return name


def find_checkpoint(path, which="best"):
    """(checkpoint directory, the sub-directory of one save) named by ``path``: a run
    folder of ``convirt pretrain`` (its ``checkpoint/`` sub-folder), a checkpoint
    directory (with BEST / LAST pointers) or the sub-directory of one save
    (``step-NNNNNNNN``, whose parent is the checkpoint directory; ``which`` is then not
    used).

    ``which``: 'best' (the BEST pointer, or LAST when the run kept no best: it had no
    validation set) or 'last', in any case. A missing path or a folder without a
    checkpoint raises CheckpointError saying what was looked for; a damaged pointer
    raises CheckpointError as :meth:`CheckpointDir.pointer` does."""
    which = pointer_name(which)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint directory or run folder at {path}")
    if not os.path.isdir(path):
        raise CheckpointError(
            f"{path} is a file; expected a run folder, a checkpoint directory or a "
            "checkpoint folder"
        )
    run_checkpoints = os.path.join(path, RUN_CHECKPOINT_DIR)
    roots = [run_checkpoints] if os.path.isdir(run_checkpoints) else []
    roots.append(path)
    looked_for = []
    for root in roots:
        order = (which, "LAST") if which == "BEST" else (which,)
        for name in order:
            looked_for.append(os.path.join(root, name))
            directory = CheckpointDir(root).pointer(name)
            if directory is not None:
                return root, directory
    for name in ("trainer.json", "image_encoder.safetensors"):  # one checkpoint
        looked_for.append(os.path.join(path, name))
        if os.path.isfile(looked_for[-1]):
            return os.path.dirname(os.path.abspath(path)), path
    raise CheckpointError(f"{path} has no checkpoint: looked for {', '.join(looked_for)}")


def read_state(directory):
    """The trainer state dict of one checkpoint folder (its trainer.json, format
    checked); CheckpointError naming the file otherwise."""
    state_path = os.path.join(directory, "trainer.json")
    try:
        state = read_json_object(state_path, CheckpointError, "a trainer.json file")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {directory} has no trainer.json") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(
            f"{state_path} is not a {FORMAT} file (format: {state.get('format')!r})"
        )
    return state


def read_run_settings(run_dir):
    """The settings.json that ``convirt pretrain`` writes in a run folder, or {} when
    there is none; CheckpointError naming the file when it is damaged."""
    path = os.path.join(run_dir, SETTINGS_FILE)
    try:
        return read_json_object(path, CheckpointError, "the run's settings.json")
    except FileNotFoundError:
        return {}


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
        self._saved = set()  # names of the checkpoints this object wrote

    def __repr__(self):
        def show(which):
            try:
                return self.pointer(which)
            except CheckpointError:
                return "<unreadable>"

        return f"CheckpointDir({self.path!r}, last={show('LAST')}, best={show('BEST')})"

    def pointer(self, which):
        """The sub-directory named by LAST or BEST, or None when there is no such
        pointer. A pointer that is not a regular file, holds anything but a checkpoint
        name (``step-00000123``) or leads outside the folder raises CheckpointError."""
        path = os.path.join(self.path, which)
        try:
            raw = read_regular_file(path, CheckpointError, f"a {which} pointer file")
        except FileNotFoundError:
            return None
        name = raw.decode("ascii", errors="replace").strip()
        if not name:
            return None
        if not _CHECKPOINT_NAME.fullmatch(name):
            raise CheckpointError(
                f"{path} holds {raw[:80]!r}; expected the name of a "
                "checkpoint folder inside it, step-NNNNNNNN (a path "
                "elsewhere is not followed)"
            )
        full = os.path.join(self.path, name)
        if os.path.dirname(os.path.realpath(full)) != os.path.realpath(self.path):
            raise CheckpointError(
                f"{path} names {name}, a symbolic link that leads "
                f"outside {self.path} (to {os.path.realpath(full)}); "
                "a checkpoint must be a folder inside it"
            )
        return full

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
        self._saved.add(name)
        atomic_write(os.path.join(self.path, "LAST"), name.encode())
        if best:
            atomic_write(os.path.join(self.path, "BEST"), name.encode())
        self._prune()
        return final

    def _prune(self):
        """Remove checkpoints no pointer names and staging folders no process owns:
        only entries named exactly as save() names them (see the module docstring)."""
        try:
            keep = {self.pointer("LAST"), self.pointer("BEST")}
        except CheckpointError:
            return  # a damaged pointer: remove nothing rather than guess
        for entry in os.listdir(self.path):
            full = os.path.join(self.path, entry)
            if os.path.islink(full) or not os.path.isdir(full):
                continue
            if _CHECKPOINT_NAME.fullmatch(entry):
                ours = entry in self._saved or os.path.isfile(
                    os.path.join(full, "trainer.json")
                )
                if ours and full not in keep:
                    shutil.rmtree(full, ignore_errors=True)
                continue
            staging = _STAGING_NAME.fullmatch(entry)
            if staging and not _process_exists(int(staging.group(1))):
                shutil.rmtree(full, ignore_errors=True)  # left by a killed process

    def load_state(self, which="LAST"):
        """(directory, trainer state dict) of the LAST or BEST checkpoint (any case)."""
        which = pointer_name(which)
        if not os.path.isdir(self.path):
            raise CheckpointError(f"no checkpoint directory at {self.path}")
        directory = self.pointer(which)
        if directory is None:
            raise CheckpointError(
                f"{self.path} has no {which} checkpoint (no {which} file)"
            )
        return directory, read_state(directory)
