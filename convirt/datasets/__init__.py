"""Datasets: where image-report pairs come from.

Sources of pairs (each a :class:`PairedDataset`):

- :class:`ArrayDataset` - uint8 NumPy images (N, H, W) plus a list of N report strings.
- :class:`CSVDataset` - a CSV or TSV file with an image-path column and a report column.
- :class:`FolderDataset` - a folder of images, each with a report text file beside it.
- :class:`MIMICCXRDataset` - the MIMIC-CXR-JPG layout (metadata and split CSVs, the
  ``files/pXX/pYYYYYYY/sZZZZZZZZ/`` tree, the reports tree).
- :class:`convirt.prepared.PreparedDataset` - the memmap cache that
  :func:`convirt.prepared.prepare` writes from any of the above.

Built-in data that needs no download:

- :func:`synthetic_cxr` - synthetic chest radiographs with reports and labels (the
  generator lives in :mod:`convirt.synthetic`; its names are available here too, as
  they always were).
- :func:`indiana_reports` - the real Indiana University reports shipped by
  torchxrayvision's data file, when that package is installed (``with_ids=True``:
  :class:`IndianaReport` records with the report's and its images' Open-I ids).
"""

from .. import synthetic as _synthetic
from ..synthetic import (
    LABEL_NAMES,
    SyntheticCXR,
    sample_findings,
    synthetic_8x200,
    synthetic_cxr,
    write_report,
)
from .files import CSVDataset, FolderDataset
from .indiana import IndianaReport, indiana_reports
from .mimic import MIMICCXRDataset
from .paired import ArrayDataset, PairedDataset

__all__ = [
    "LABEL_NAMES",
    "ArrayDataset",
    "CSVDataset",
    "FolderDataset",
    "IndianaReport",
    "MIMICCXRDataset",
    "PairedDataset",
    "SyntheticCXR",
    "indiana_reports",
    "sample_findings",
    "synthetic_8x200",
    "synthetic_cxr",
    "write_report",
]


def __getattr__(name):
    # convirt.datasets was the synthetic generator's module: its other names (LOBES,
    # SIDES, the renderer's helpers) stay reachable from here.
    try:
        return getattr(_synthetic, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
