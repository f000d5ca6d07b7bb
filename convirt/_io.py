"""Files: atomic writes and safetensors reads with clear errors."""

import os
import tempfile

__all__ = ["atomic_write", "read_safetensors"]


def atomic_write(path, data):
    """Write bytes to path atomically: a temporary file in the same directory, fsync,
    rename over the target, fsync the directory. A crash at any moment leaves either
    the old file or the new one, never a torn one. Errors (full disk, no permission)
    raise OSError naming the path, and the old file is left as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise OSError(error.errno, f"could not write {path}: {error.strerror}") from error
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_safetensors(path):
    """(tensors as NumPy arrays, metadata dict) of a safetensors file. A missing file is
    FileNotFoundError; a truncated or corrupt one is ValueError naming the file."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        tensors = {}
        with safe_open(path, framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a readable safetensors file (truncated or "
                         f"corrupt?): {error}") from error
    return tensors, metadata
