"""convirt's exceptions, one hierarchy, so that callers catch by type, never by message.

``ConvirtError`` is the base of all of them. The C core's failures arrive as
``NonFiniteError`` (NaN or Inf met or produced; a ValueError) and ``StateError`` (the
object cannot take the call now; a RuntimeError): both are created once, by the
extension, and raised from the core's status codes. Bad arguments stay the built-in
TypeError / ValueError, and an allocation that cannot be had is MemoryError.
"""

from ._core import ConvirtError, NonFiniteError, StateError

__all__ = [
    "CheckpointError",
    "ConvirtError",
    "DataFileError",
    "ImageDecodeError",
    "NonFiniteError",
    "StateError",
    "TrainingDiverged",
]


class CheckpointError(ConvirtError, ValueError):
    """A checkpoint directory or file is missing, incomplete, corrupt or not a convirt
    checkpoint; the message names the file and, where one is at fault, the field."""


class DataFileError(ConvirtError, ValueError):
    """A data file - a CSV/TSV table, a prepared cache's index or reports - cannot be
    read as what it should be (not UTF-8, malformed, truncated, a field of the wrong
    type or range). The message names the file, the line or field, and what was
    expected."""


class ImageDecodeError(ConvirtError, ValueError):
    """An image file exists but cannot be decoded (truncated, corrupt, not an image, not
    a regular file)."""


class TrainingDiverged(NonFiniteError, RuntimeError):
    """Training (pretraining or fine-tuning) met a NaN or Inf loss or gradient and
    stopped before applying the update; the weights are as they were."""
