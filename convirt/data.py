"""``convirt.data``: an alias kept for code written before the package was split into
modules that say what they hold. Every name it had still imports from here; new code
imports from where each now lives:

- :mod:`convirt.images` - ``decode_image``, ``dicom_to_uint8``, ``resize_center_crop``;
- :mod:`convirt.reports` - ``extract_sections``, ``format_sections``,
  ``split_sentences``, ``impressions`` (and the sentence sampling);
- :mod:`convirt.datasets` - ``ArrayDataset``, ``CSVDataset``, ``FolderDataset``,
  ``MIMICCXRDataset``, ``PairedDataset``;
- :mod:`convirt.tables` - the CSV/TSV reader those datasets share;
- :mod:`convirt.prepared` - ``prepare``, ``PreparedDataset``, ``PrepareSummary``;
- :mod:`convirt.loader` - ``BatchLoader``, ``Batch``.
"""

from . import images as _images
from . import loader as _loader
from . import prepared as _prepared
from . import reports as _reports
from . import tables as _tables
from .datasets import files as _files
from .datasets import mimic as _mimic
from .datasets import paired as _paired
from .datasets.files import CSVDataset, FolderDataset
from .datasets.mimic import MIMICCXRDataset
from .datasets.paired import ArrayDataset, PairedDataset
from .errors import DataFileError, ImageDecodeError
from .images import (  # noqa: F401 (kept names)
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    decode_image,
    dicom_to_uint8,
    resize_center_crop,
)
from .loader import Batch, BatchLoader
from .prepared import (  # noqa: F401 (kept names)
    PREPARED_FORMAT,
    PREPARED_VERSION,
    PreparedDataset,
    PrepareSummary,
    prepare,
)
from .reports import (
    extract_sections,
    format_sections,
    impressions,  # noqa: F401 (a kept name)
    split_sentences,
)

__all__ = [
    "ArrayDataset",
    "Batch",
    "BatchLoader",
    "CSVDataset",
    "DataFileError",
    "FolderDataset",
    "ImageDecodeError",
    "MIMICCXRDataset",
    "PairedDataset",
    "PrepareSummary",
    "PreparedDataset",
    "decode_image",
    "dicom_to_uint8",
    "extract_sections",
    "format_sections",
    "prepare",
    "resize_center_crop",
    "split_sentences",
]

_MODULES = (_images, _reports, _paired, _files, _mimic, _prepared, _loader)


def __getattr__(name):
    # The old module's private helpers, from their new homes (the table reader's lost
    # their underscore: convirt.tables.read_table was convirt.data._read_table).
    for module in _MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    if name.startswith("_") and hasattr(_tables, name[1:]):
        return getattr(_tables, name[1:])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
