"""Files: atomic writes, reads that refuse what is not a regular file, and safetensors
reads with clear errors."""

import json
import os
import stat
import tempfile

from .errors import CheckpointError

__all__ = [
    "atomic_write",
    "check_regular_file",
    "read_json_object",
    "read_regular_file",
    "read_safetensors",
]


def _umask():
    """The process's file mode creation mask. os.umask can only be read by setting it,
    so it is read where the kernel shows it (Linux 4.7+: /proc/self/status) and set and
    restored only where it does not; the two calls leave it as it was."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, data):
    """Write bytes to path atomically: a temporary file in the same directory, fsync,
    rename over the target, fsync the directory. A crash at any moment leaves either
    the old file or the new one, never a torn one. The file gets the mode open() would
    give it (0o666 less the umask: 0o644 under umask 022), not mkstemp's private 0o600,
    so colleagues who may read the folder may read it. Errors (full disk, no
    permission) raise OSError naming the path, and the old file is left as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"cannot write {path}: directory {directory} does not exist"
        )
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
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
            raise OSError(
                error.errno, f"could not write {path}: {error.strerror}"
            ) from error
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _not_regular(mode):
    """What a file of this st_mode is when it is not a regular file, else None."""
    if stat.S_ISREG(mode):
        return None
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


def check_regular_file(path, error_type, expected):
    """Refuse a path that is not a regular file (after symbolic links): reading a FIFO
    blocks until some other process writes, a device may never end. Raises error_type
    ("PATH is not a regular file (a FIFO); expected EXPECTED"); a missing path raises
    FileNotFoundError. For libraries that open the path themselves; read_regular_file
    is the race-free form."""
    kind = _not_regular(os.stat(path).st_mode)
    if kind is not None:
        raise error_type(f"{path} is not a regular file ({kind}); expected {expected}")


def read_regular_file(path, error_type, expected):
    """The bytes of a regular file. It is opened without waiting (O_NONBLOCK: opening a
    FIFO would otherwise block until a writer appears) and checked on the open
    descriptor; anything but a regular file raises error_type as check_regular_file
    does. A missing file raises FileNotFoundError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        kind = _not_regular(os.fstat(fd).st_mode)
        if kind is not None:
            raise error_type(f"{path} is not a regular file ({kind}); expected {expected}")
        os.set_blocking(fd, True)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def read_json_object(path, error_type, expected):
    """The JSON object (a dict) in the regular file ``path``; error_type naming the file
    when it is not a regular file, not JSON, or not an object at the top. A missing
    file raises FileNotFoundError."""
    raw = read_regular_file(path, error_type, expected)
    try:
        value = json.loads(raw.decode("utf-8"))
    except ValueError as error:  # also UnicodeDecodeError
        raise error_type(f"{path} is not valid JSON: {error}") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise error_type(f"{path} nests JSON too deeply to be {expected}") from None
    if not isinstance(value, dict):
        raise error_type(
            f"{path} holds a JSON {type(value).__name__}; expected {expected} with an "
            "object at the top"
        )
    return value


# safetensors dtypes that NumPy holds; others (BF16, the F8 types) cannot be read here.
_NUMPY_DTYPES = {
    "BOOL",
    "U8",
    "I8",
    "U16",
    "I16",
    "F16",
    "U32",
    "I32",
    "F32",
    "U64",
    "I64",
    "F64",
}


def read_safetensors(path):
    """(tensors as NumPy arrays, metadata dict) of a safetensors file. A missing file is
    FileNotFoundError; anything else that cannot be read - not a regular file,
    truncated or corrupt, a tensor of a type NumPy has no form for (BF16) - is a
    convirt.errors.CheckpointError (a ValueError) naming the file."""
    import safetensors
    from safetensors import safe_open

    # safetensors 0.8 exports SafetensorError; other versions named it differently.
    library_error = getattr(safetensors, "SafetensorError", None) or getattr(
        safetensors, "SafetensorsError", RuntimeError
    )
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    check_regular_file(path, CheckpointError, "a safetensors file")
    try:
        tensors = {}
        with safe_open(path, framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():  # noqa: SIM118 (not a dict)
                dtype = f.get_slice(key).get_dtype()
                if dtype not in _NUMPY_DTYPES:
                    raise CheckpointError(
                        f"{path}: tensor {key!r} has dtype {dtype}, which NumPy cannot "
                        f"hold; expected F32 (F16 and F64 are converted). Convert the "
                        f"file first, e.g. with PyTorch: save_file({{k: v.float() for k, "
                        f"v in state.items()}}, path)"
                    )
                tensors[key] = f.get_tensor(key)
    except CheckpointError:
        raise
    except (library_error, OSError, ValueError, RuntimeError, TypeError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {error}"
        ) from error
    return tensors, metadata
